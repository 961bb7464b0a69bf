"""The fake driver: an in-process hypervisor with the reference semantics of the interface.

It declares every capability. Its "hypervisor" is a directory of small JSON files under
`instances_path` (see `drivers.fake.state`), so successive CLI processes (and several
processes on one host) see the same instances. The
`[fake]` latency options stand for the engine's and the SAN's waits in benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from oslo_config import cfg

from drivers.fake import records, volumes
from drivers.fake.state import Change, HostState
from virt.driver import Capability, ComputeDriver, power, spawn_image
from virt.errors import (
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    InvalidState,
    SpawnError,
    VolumeError,
    VolumeNotFound,
)
from virt.events import LifecycleEvent, Transition
from virt.model import (
    BlockDevice,
    HostResources,
    ImageRef,
    Instance,
    InstanceInfo,
    PowerOffResult,
    PowerState,
    Vif,
    VolumeConnector,
)

LOG = logging.getLogger(__name__)

SNAPSHOT_SCHEME = "fake-snapshot:"
HYPERVISOR_VERSION = 1_000_000

FAKE_OPTS: list[cfg.Opt] = [
    cfg.IntOpt("spawn_latency_ms", default=0, min=0,
               help="Simulated engine time per spawn, in milliseconds."),
    cfg.IntOpt("volume_latency_ms", default=0, min=0,
               help="Simulated storage time per volume attach or detach, in milliseconds."),
    cfg.IntOpt("operation_latency_ms", default=0, min=0,
               help="Simulated engine time per other mutating operation (power, pause, "
               "snapshot, destroy ...), in milliseconds."),
    cfg.StrOpt("fail_spawn_on_name_prefix", default="",
               help="Fault injection: a spawn of an instance whose name starts with this "
               "prefix fails with SpawnError (after its simulated work) and leaves nothing "
               "behind. Empty disables it."),
    cfg.IntOpt("vcpus", default=16, min=1, help="vCPUs the fake host reports."),
    cfg.IntOpt("memory_mb", default=65536, min=1, help="Memory the fake host reports, in MiB."),
    cfg.IntOpt("local_gb", default=2048, min=1, help="Disk the fake host reports, in GiB."),
    cfg.ListOpt("chap_credentials", default=[], secret=True,
                help="The fake SAN's CHAP-protected targets, as TARGET_IQN=USER:PASSWORD "
                "items. An attach to one of them with other credentials fails with a CHAP "
                "authentication error; other targets take any credentials."),
    cfg.StrOpt("my_ip", default="127.0.0.1",
               help="IP address reported in this host's volume connector."),
]

def _check_instance(instance: Any) -> Instance:
    if not isinstance(instance, Instance):
        raise InvalidRequest(f"instance must be a virt.model.Instance, got {type(instance).__name__}")
    return instance


class FakeDriver(ComputeDriver):
    """Reference driver: every capability, real state machine, state in JSON files."""

    name: ClassVar[str] = "fake"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    config_group: ClassVar[str | None] = "fake"
    config_opts: ClassVar[Sequence[cfg.Opt]] = FAKE_OPTS

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self._host: str = conf.host
        self._state: HostState | None = None

    # -- plumbing --------------------------------------------------------------------------

    @property
    def _hypervisor(self) -> HostState:
        """The hypervisor's state, opened on first use."""
        if self._state is None:
            base = Path(self.conf.instances_path)
            self._state = HostState(base / f"fake-hypervisor-{self._host}", self._host,
                                    legacy=base / f"fake-hypervisor-{self._host}.json")
        return self._state

    def _sleep(self, option: str) -> None:
        ms = getattr(self.conf.fake, option)
        if ms:
            time.sleep(ms / 1000.0)

    def _emit(self, uuid: str, transitions: Sequence[Transition]) -> None:
        for transition in transitions:
            self.emit_event(LifecycleEvent(uuid, transition))

    def _mutate(
        self,
        instance: Instance,
        change: Callable[[dict[str, Any], Change], list[Transition] | None],
        *,
        missing: Callable[[str], Exception] | None = None,
    ) -> None:
        """Apply `change(record, txn)` to one instance atomically, then emit its events."""
        _check_instance(instance)
        with self._hypervisor.transaction(instance.uuid) as txn:
            record = txn.record
            if record is None:
                raise (missing or InstanceNotFound)(instance.uuid)
            events = change(record, txn)
        if events:
            self._emit(instance.uuid, events)

    def _record(self, instance: Instance) -> dict[str, Any]:
        _check_instance(instance)
        record = self._hypervisor.record(instance.uuid)
        if record is None:
            raise InstanceNotFound(instance.uuid)
        return record

    def _check_image(self, image: ImageRef, txn: Change) -> None:
        # Images are "found" unless they point at something that is not there: an absolute
        # path that does not exist, or a snapshot this host never took.
        if not isinstance(image, ImageRef):
            raise InvalidRequest(f"image must be a virt.model.ImageRef, got {type(image).__name__}")
        for path in (image.ref, image.kernel, image.ramdisk):
            if path and path.startswith("/") and not Path(path).exists():
                raise ImageNotFound(
                    f"image file {path} does not exist", hint="give an existing image path"
                )
        if image.ref.startswith(SNAPSHOT_SCHEME) and image.ref not in txn.images:
            raise ImageNotFound(
                f"snapshot image {image.ref} does not exist on fake host {self._host}"
            )

    # -- host ------------------------------------------------------------------------------

    def init_host(self, *, host: str) -> None:
        if not host:
            raise InvalidRequest("init_host needs a host name")
        if host != self._host:
            self._host, self._state = host, None
        self._hypervisor.check()  # fail now, not on the first operation, if the path is unusable

    def cleanup_host(self, *, host: str) -> None:
        self._state = None

    def get_available_resource(self) -> HostResources:
        fake = self.conf.fake
        guests = self._hypervisor.records()
        vcpus_used = sum(r["flavor"]["vcpus"] for r in guests)
        memory_used = sum(r["flavor"]["memory_mb"] for r in guests)
        disk_used = sum(r["flavor"]["root_gb"] + r["flavor"]["ephemeral_gb"] for r in guests)
        cpu_info = {"arch": "x86_64", "model": "fake", "vendor": "virtkit",
                    "topology": {"sockets": 1, "cores": fake.vcpus, "threads": 1}}
        return HostResources(
            vcpus=fake.vcpus,
            memory_mb=fake.memory_mb,
            local_gb=fake.local_gb,
            vcpus_used=vcpus_used,
            memory_mb_used=memory_used,
            local_gb_used=disk_used,
            hypervisor_type="fake",
            hypervisor_version=HYPERVISOR_VERSION,
            hypervisor_hostname=self._host,
            cpu_info=json.dumps(cpu_info, sort_keys=True),
            disk_available_least=fake.local_gb - disk_used,
            supported_instances=(("x86_64", "fake", "hvm"),),
        )

    def get_volume_connector(self, *, instance: Instance | None = None) -> VolumeConnector:
        return VolumeConnector(
            host=self._host,
            ip=self.conf.fake.my_ip,
            initiator=f"iqn.2010-10.org.virtkit:{self._host}",
        )

    def instance_disk_path(self, *, instance: Instance) -> str:
        return self._hypervisor.disk_path(_check_instance(instance).uuid)

    # -- state -----------------------------------------------------------------------------

    def list_instances(self) -> list[str]:
        return sorted(r["name"] for r in self._hypervisor.records())

    def list_instance_uuids(self) -> list[str]:
        return sorted(self._hypervisor.uuids())

    def get_info(self, *, instance: Instance) -> InstanceInfo:
        record = self._record(instance)
        cpu_time = record["cpu_time_ns"]
        if record["running_since"]:
            cpu_time += int((time.time() - record["running_since"]) * 1e9 * 0.01)
        memory_kb = record["flavor"]["memory_mb"] * 1024
        return InstanceInfo(
            state=PowerState(record["state"]),
            internal_id=record["uuid"],
            max_mem_kb=memory_kb,
            mem_kb=memory_kb,
            num_cpu=record["flavor"]["vcpus"],
            cpu_time_ns=cpu_time,
        )

    def instance_exists(self, *, instance: Instance) -> bool:
        _check_instance(instance)
        return self._hypervisor.exists(instance.uuid)

    # -- lifecycle -------------------------------------------------------------------------

    def spawn(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        vifs: Sequence[Vif] = (),
        admin_password: str | None = None,
        power_on: bool = True,
    ) -> None:
        _check_instance(instance)
        image = spawn_image(instance)
        fake = self.conf.fake
        self._check_capacity(instance, fake)
        for bdm in block_devices:
            self._check_block_device(bdm)
        mountpoints = [b.mountpoint for b in block_devices]
        if len(set(mountpoints)) != len(mountpoints):
            raise InvalidRequest(f"two block devices of instance {instance.uuid} share a mountpoint")
        prefix = fake.fail_spawn_on_name_prefix
        attached = {b.mountpoint: volumes.bdm_record(b) for b in block_devices}
        # The engine's work happens outside the lock, so spawns on one host overlap.
        self._sleep("spawn_latency_ms")
        with self._hypervisor.transaction(instance.uuid) as txn:
            if txn.record is not None:
                raise InstanceExists(instance.uuid)
            self._check_image(image, txn)
            if prefix and instance.name.startswith(prefix):
                raise SpawnError(
                    f"spawn of instance {instance.uuid} failed: fault injected by "
                    f"[fake] fail_spawn_on_name_prefix={prefix!r}"
                )
            record = records.new_instance(instance, image, PowerState.SHUTDOWN)
            if txn.disk is None:  # a disk kept by destroy(destroy_disks=False) is reused
                files = txn.images.get(image.ref, {}).get("files", {}) \
                    if image.ref.startswith(SNAPSHOT_SCHEME) else {}
                txn.disk = {"image": image.ref, "files": dict(files)}
            now = time.time()
            for entry in attached.values():
                entry["attached_at"] = now
            record["block_devices"] = attached
            record["vifs"] = [{"id": v.id, "address": v.address, "network": v.network}
                              for v in vifs]
            if admin_password:
                records.set_password(record, admin_password)
            records.console(record, f"virtkit-fake: defined {instance.name} ({instance.uuid})")
            if power_on:
                records.start(record)
            txn.record = record
        LOG.info("fake: spawned %s (%s)", instance.name, instance.uuid)
        if power_on:
            self._emit(instance.uuid, [Transition.STARTED])

    def destroy(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        destroy_disks: bool = True,
    ) -> None:
        _check_instance(instance)
        self._sleep("operation_latency_ms")
        with self._hypervisor.transaction(instance.uuid) as txn:
            record, txn.record = txn.record, None
            if destroy_disks:
                txn.disk = None
            if record is None:
                LOG.debug("fake: instance %s has no guest to remove", instance.uuid)
                return
        if record["state"] in records.ALIVE or record["state"] == PowerState.SUSPENDED.value:
            self._emit(instance.uuid, [Transition.STOPPED])

    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        power.check_timeout(timeout)
        self._sleep("operation_latency_ms")

        def change(record: dict[str, Any], _txn: Change) -> list[Transition]:
            if not hard:
                power.require_running(records.state_of(record), instance.uuid, "soft reboot",
                                      hint="use a hard reboot")
                records.console(record, "reboot: Restarting system")
                records.start(record)
                return []
            was_running = record["state"] in records.ALIVE
            if was_running:
                records.stop(record, "Power down (hard reboot)")
            records.start(record)
            return [Transition.STOPPED, Transition.STARTED] if was_running else [
                Transition.STARTED]

        self._mutate(instance, change)

    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        # The fake guest obeys the first soft request at once: only a timeout of 0 forces.
        self._sleep("operation_latency_ms")

        def stop(how: str) -> bool:
            def change(record: dict[str, Any], _txn: Change) -> list[Transition]:
                if records.state_of(record) is PowerState.SHUTDOWN:
                    return []
                records.stop(record, how)
                return [Transition.STOPPED]

            self._mutate(instance, change)
            return True

        return power.graceful_power_off(
            timeout=timeout, retry_interval=retry_interval,
            is_off=lambda: records.state_of(self._record(instance)) is PowerState.SHUTDOWN,
            request_stop=lambda: stop("Power down"),
            wait_off=lambda _seconds: records.state_of(self._record(instance)) is PowerState.SHUTDOWN,
            force_off=lambda: stop("Power down (forced)"),
        )

    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        self._sleep("operation_latency_ms")

        def change(record: dict[str, Any], _txn: Change) -> list[Transition]:
            if not power.should_power_on(records.state_of(record), instance.uuid):
                return []
            self._reconnect(record, block_devices)
            records.start(record)
            return [Transition.STARTED]

        self._mutate(instance, change)

    def _reconnect(self, record: dict[str, Any], block_devices: Sequence[BlockDevice]) -> None:
        """The volumes a power-on or resume is given are attached (again) at their
        mountpoints."""
        for bdm in block_devices:
            record["block_devices"].setdefault(bdm.mountpoint, volumes.bdm_record(bdm))

    def pause(self, *, instance: Instance) -> None:
        self._set_state(instance, power.should_pause, PowerState.PAUSED, Transition.PAUSED)

    def unpause(self, *, instance: Instance) -> None:
        self._set_state(instance, power.should_unpause, PowerState.RUNNING, Transition.RESUMED)

    def suspend(self, *, instance: Instance) -> None:
        self._set_state(instance, power.should_suspend, PowerState.SUSPENDED,
                        Transition.SUSPENDED, console="PM: suspend entry (deep)")

    def resume(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        self._set_state(instance, power.should_resume, PowerState.RUNNING, Transition.RESUMED,
                        console="PM: suspend exit", block_devices=block_devices)

    def _set_state(self, instance: Instance, guard: Callable[[PowerState, str], bool],
                   state: PowerState, event: Transition, console: str | None = None,
                   block_devices: Sequence[BlockDevice] = ()) -> None:
        """Move the guest to `state` if the kit's `guard` says so (False: already there):
        paused or suspended, its clock stands still; running, it goes on in the same boot."""
        self._sleep("operation_latency_ms")

        def change(record: dict[str, Any], _txn: Change) -> list[Transition]:
            if not guard(records.state_of(record), instance.uuid):
                return []
            if state is PowerState.RUNNING:
                self._reconnect(record, block_devices)
                records.thaw(record)
            else:
                records.freeze(record, state)
            if console:
                records.console(record, console)
            return [event]

        self._mutate(instance, change)

    def snapshot(self, *, instance: Instance, name: str) -> ImageRef:
        if not name or not name.strip():
            raise InvalidRequest("snapshot name must not be empty")
        self._sleep("operation_latency_ms")
        ref = f"{SNAPSHOT_SCHEME}{uuidlib.uuid4()}"
        taken: list[ImageRef] = []

        def change(record: dict[str, Any], txn: Change) -> None:
            source = record["image"]
            image = ImageRef(
                ref=ref,
                disk_format=source["disk_format"],
                kernel=source["kernel"],
                ramdisk=source["ramdisk"],
                kernel_cmdline=source["kernel_cmdline"],
                properties={"name": name, "source_instance": instance.uuid},
            )
            disk = txn.disk or {"files": {}}
            txn.images[ref] = {**records.image_record(image), "name": name,
                               "source_instance": instance.uuid, "created_at": time.time(),
                               "files": dict(disk["files"])}
            records.console(record, f"virtkit-fake: snapshot {name!r} taken as {ref}")
            taken.append(image)

        self._mutate(instance, change,
                     missing=lambda uuid: InstanceNotRunning(uuid, "snapshot"))
        return taken[0]

    def rescue(
        self, *, instance: Instance, image: ImageRef, rescue_password: str | None = None
    ) -> None:
        self._sleep("operation_latency_ms")

        def change(record: dict[str, Any], txn: Change) -> list[Transition]:
            if record["rescued"]:
                raise InvalidState(f"instance {instance.uuid} is already in rescue mode",
                                   hint="unrescue it first")
            if records.state_of(record) not in (PowerState.RUNNING, PowerState.SHUTDOWN):
                raise InvalidState(f"cannot rescue instance {instance.uuid}: it is "
                                   f"{record['state']}, rescue needs it running or shutdown")
            self._check_image(image, txn)
            events = [Transition.STOPPED] if record["state"] in records.ALIVE else []
            record.update(rescued=True, rescue_image=image.ref, disks=["rescue", "root"])
            records.console(record, f"virtkit-fake: rescue boot from {image.ref}")
            records.start(record)
            return [*events, Transition.STARTED]

        self._mutate(instance, change)

    def unrescue(self, *, instance: Instance) -> None:
        self._sleep("operation_latency_ms")

        def change(record: dict[str, Any], _txn: Change) -> list[Transition]:
            if not record["rescued"]:
                return []
            record.update(rescued=False, disks=["root"])
            record.pop("rescue_image", None)
            records.stop(record, "Power down (leaving rescue)")
            records.start(record)
            return [Transition.STOPPED, Transition.STARTED]

        self._mutate(instance, change)

    # -- volumes ---------------------------------------------------------------------------

    def _check_capacity(self, instance: Instance, fake: Any) -> None:
        """Refuse a flavor bigger than the whole host, as a real engine cannot start it.

        Only one instance against the host: the sum may exceed it (overcommit is the
        scheduler's business, as in Nova).
        """
        flavor = instance.flavor
        problems = [f"{wanted} {unit} but this host has {has}" for wanted, has, unit in (
            (flavor.vcpus, fake.vcpus, "vCPUs"),
            (flavor.memory_mb, fake.memory_mb, "MiB of memory"),
            (flavor.root_gb + flavor.ephemeral_gb, fake.local_gb, "GiB of disk"),
        ) if wanted > has]
        if problems:
            raise InvalidRequest(
                f"flavor {flavor.name!r} does not fit this fake host: " + "; ".join(problems),
                hint="use a smaller flavor or raise [fake] vcpus, memory_mb or local_gb",
            )

    def _check_block_device(self, bdm: BlockDevice) -> None:
        volumes.check_block_device(bdm)
        volumes.check_chap(bdm, self.conf.fake.chap_credentials)

    def attach_volume(self, *, instance: Instance, block_device: BlockDevice) -> None:
        self._check_block_device(block_device)
        entry = volumes.bdm_record(block_device)  # before the wait: it needs no state
        self._sleep("volume_latency_ms")

        def change(record: dict[str, Any], _txn: Change) -> None:
            attached = record["block_devices"]
            if block_device.mountpoint in attached:
                raise VolumeError(
                    f"instance {instance.uuid} already has a volume at {block_device.mountpoint}",
                    hint="detach it first or choose another mountpoint")
            if block_device.volume_id and any(
                b["volume_id"] == block_device.volume_id for b in attached.values()
            ):
                raise VolumeError(
                    f"volume {block_device.volume_id} is already attached to {instance.uuid}")
            entry["attached_at"] = time.time()
            attached[block_device.mountpoint] = entry
            records.console(record, f"virtio_blk: [{block_device.device_name}] attached")

        self._mutate(instance, change)

    def detach_volume(self, *, instance: Instance, block_device: BlockDevice) -> None:
        _check_instance(instance)
        self._sleep("volume_latency_ms")

        def change(record: dict[str, Any], _txn: Change) -> None:
            attached = record["block_devices"]
            found = [m for m, b in attached.items()
                     if (block_device.volume_id and b["volume_id"] == block_device.volume_id)
                     or (not block_device.volume_id and m == block_device.mountpoint)]
            if not found:
                raise VolumeNotFound(
                    f"volume {block_device.volume_id or block_device.mountpoint} is not attached "
                    f"to instance {instance.uuid}")
            for mountpoint in found:
                del attached[mountpoint]
            records.console(record, f"virtio_blk: [{block_device.device_name}] detached")

        self._mutate(instance, change)

    # -- guest -----------------------------------------------------------------------------

    def get_console_output(self, *, instance: Instance, max_bytes: int = 64 * 1024) -> str:
        if max_bytes < 0:
            raise InvalidRequest(f"max_bytes must not be negative, got {max_bytes}")
        text = "".join(line + "\n" for line in self._record(instance)["console"])
        data = text.encode("utf-8")[-max_bytes:] if max_bytes else b""
        return data.decode("utf-8", errors="ignore")

    def set_admin_password(self, *, instance: Instance, password: str) -> None:
        if not password:
            raise InvalidRequest("the new admin password must not be empty")
        self._sleep("operation_latency_ms")

        def change(record: dict[str, Any], _txn: Change) -> None:
            if record["state"] != PowerState.RUNNING.value:
                raise InstanceNotRunning(instance.uuid, "set_admin_password")
            # Only a salted hash and the time are kept: the password never touches the file.
            records.set_password(record, password)
            records.console(record, "virtkit-agent: admin password changed")

        self._mutate(instance, change)

    def inject_file(self, *, instance: Instance, path: str, contents: bytes) -> None:
        if not path or not path.startswith("/"):
            raise InvalidRequest(f"inject_file needs an absolute guest path, got {path!r}")
        if not isinstance(contents, bytes | bytearray):
            raise InvalidRequest("inject_file contents must be bytes")
        self._sleep("operation_latency_ms")

        def change(record: dict[str, Any], txn: Change) -> None:
            disk = txn.disk or {"image": record["image"]["ref"], "files": {}}
            disk["files"][path] = {"size": len(contents),
                                   "sha256": hashlib.sha256(contents).hexdigest()}
            txn.disk = disk
            records.console(record, f"virtkit-fake: injected {path} ({len(contents)} bytes)")

        self._mutate(instance, change)

