"""SmartOSDriver: every instance is one vmadm VM (an OS zone, or a bhyve/kvm guest) on one
global zone, marked as virtkit's in its internal_metadata."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from typing import Any

from oslo_config import cfg

from drivers.smartos import guest, images, resources, spec, states
from drivers.smartos.commands import ToolFailed, Tools
from drivers.smartos.connection import CommandTimeout, make_executor
from drivers.smartos.events import StatePoller
from drivers.smartos.options import GROUP, OPTS
from virt.driver import Capability, ComputeDriver, power, spawn_image
from virt.driver.rollback import SpawnRollback
from virt.driver.transitions import LifecycleDispatcher
from virt.errors import (
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    SpawnError,
    UnsupportedOperation,
    VirtError,
)
from virt.events import Listener
from virt.model import (
    BlockDevice,
    HostResources,
    ImageRef,
    Instance,
    InstanceInfo,
    PowerOffResult,
    PowerState,
    Vif,
)

LOG = logging.getLogger(__name__)

#: `vmadm list` fields of the listing (alias last: it may hold ':').
LIST_FIELDS = ("uuid", "state", "alias")


def _ident(instance: Instance) -> str:
    return f"{instance.name} ({instance.uuid})"


class SmartOSDriver(ComputeDriver):
    """Instances as vmadm VMs of a SmartOS global zone, here or over SSH (`[smartos] host`)."""

    name = "smartos"
    capabilities = frozenset(
        {
            Capability.SNAPSHOT,
            Capability.SET_ADMIN_PASSWORD,
            Capability.INJECT_FILE,
            Capability.LIFECYCLE_EVENTS,
        }
    )
    config_group = GROUP
    config_opts = OPTS

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        opts = conf[GROUP]
        self.executor = make_executor(
            opts.host, bin_dir=opts.bin_dir, timeout=opts.command_timeout,
            key_file=opts.ssh_key_file, known_hosts=opts.known_hosts_file,
            persist=opts.control_persist)
        self.tools = Tools(self.executor, zpool=opts.zpool)
        self.images = images.Images(self.tools, image_dir=opts.image_dir,
                                    timeout=opts.provision_timeout)
        self._host: str = conf.host
        self._poller: StatePoller | None = None
        self._dispatcher: LifecycleDispatcher[Any] | None = None
        self._lock = threading.Lock()

    @property
    def _opts(self) -> Any:
        return self.conf[GROUP]

    # -- host ------------------------------------------------------------------------------

    def init_host(self, *, host: str) -> None:
        self._host = host
        with self.tools.translate("read sysinfo of the global zone"):
            info = self.tools.sysinfo()
        LOG.info("smartos: global zone %s (%s), platform %s, %s", info.get("Hostname"),
                 self.executor.where, info.get("Live Image"), self._opts.zpool)

    def cleanup_host(self, *, host: str) -> None:
        with self._lock:
            poller, self._poller = self._poller, None
            dispatcher, self._dispatcher = self._dispatcher, None
        if poller is not None:
            poller.stop()
        if dispatcher is not None:
            dispatcher.stop()
        self.executor.close()

    def get_available_resource(self) -> HostResources:
        with self.tools.translate("read the global zone's resources"):
            info = self.tools.sysinfo()
            pool = self.tools.zpool_list()
            ours = self.tools.vm_list(resources.FIELDS, self._filters())
        return resources.host_resources(info, pool, ours, host=self._host,
                                        zpool=self._opts.zpool)

    # -- state -----------------------------------------------------------------------------

    def _filters(self) -> dict[str, str]:
        """`vmadm list` filters selecting the VMs virtkit made for this host."""
        return {f"internal_metadata.{spec.MARK_MANAGED}": "true",
                f"internal_metadata.{spec.MARK_HOST}": self._host}

    def _list(self) -> list[dict[str, str]]:
        with self.tools.translate("list the VMs"):
            return self.tools.vm_list(LIST_FIELDS, self._filters())

    def list_instances(self) -> list[str]:
        return sorted(row["alias"] or row["uuid"] for row in self._list())

    def list_instance_uuids(self) -> list[str]:
        return sorted(row["uuid"] for row in self._list())

    def _states(self) -> dict[str, PowerState]:
        return {row["uuid"]: states.power_state(row["state"]) for row in self._list()}

    def _find(self, instance: Instance) -> dict[str, Any] | None:
        """`vmadm get` of the instance's VM, or None if it has none (or it is not ours)."""
        with self.tools.translate("read the VM", instance=_ident(instance)):
            vm = self.tools.vm_get(instance.uuid)
        if vm is None or not spec.is_ours(vm, self._host):
            return None
        return vm

    def _require(self, instance: Instance) -> dict[str, Any]:
        vm = self._find(instance)
        if vm is None:
            raise InstanceNotFound(_ident(instance))
        return vm

    def get_info(self, *, instance: Instance) -> InstanceInfo:
        vm = self._require(instance)
        hvm = vm.get("brand") in spec.HVM_BRANDS
        memory = int((vm.get("ram") if hvm else vm.get("max_physical_memory")) or 0)
        cpus = int(vm.get("vcpus") or 0) if hvm else math.ceil(int(vm.get("cpu_cap") or 0) / 100)
        return InstanceInfo(state=states.power_state(str(vm.get("state"))),
                            internal_id=str(vm["uuid"]), max_mem_kb=memory * 1024 or None,
                            num_cpu=cpus or None)

    def instance_exists(self, *, instance: Instance) -> bool:
        return self._find(instance) is not None

    # -- spawn / destroy -------------------------------------------------------------------

    def spawn(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        vifs: Sequence[Vif] = (),
        admin_password: str | None = None,
        power_on: bool = True,
    ) -> None:
        image = spec.image_uuid(spawn_image(instance))
        if block_devices:
            raise UnsupportedOperation(self.name, "spawn with block devices",
                                       reason="volumes cannot be attached")
        if admin_password is not None:
            guest.check_password(admin_password)
            if not power_on:
                raise InvalidRequest("an admin password needs a running zone: spawn with "
                                     "power_on=True or set it after power_on")
        ident = _ident(instance)
        # No lookup first: vmadm create refuses a uuid that exists (InstanceExists).
        payload = self._payload(instance, image, vifs, power_on)
        if admin_password is not None and payload["brand"] in spec.HVM_BRANDS:
            raise UnsupportedOperation(self.name, "set_admin_password",
                                       reason=_HVM_GUEST_REASON)
        with SpawnRollback(ident) as rollback:
            try:
                self._create(instance, payload, rollback)
            except InstanceExists:
                if self._parked(instance) is None:
                    raise
                self._take_back(instance, payload, rollback)
            if admin_password is not None:
                guest.set_password(self.tools, instance.uuid, ident=ident,
                                   user=guest.admin_user(instance), password=admin_password)
        LOG.info("smartos: spawned %s (%s from image %s)", ident, payload["brand"],
                 payload.get("image_uuid") or payload["disks"][0]["image_uuid"])

    def _payload(self, instance: Instance, image: str, vifs: Sequence[Vif],
                 power_on: bool) -> dict[str, Any]:
        manifest = self.images.ensure(image)
        settings = spec.Settings(host=self._host, nic_tag=self._opts.nic_tag,
                                 resolvers=tuple(self._opts.resolvers), zpool=self._opts.zpool)
        return spec.payload(instance, manifest, vifs, settings, power_on=power_on)

    def _create(self, instance: Instance, payload: Mapping[str, Any],
                rollback: SpawnRollback) -> None:
        """`vmadm create`; a failure removes what it may have left (a `failed` VM) and says
        why, with the state vmadm left the VM in."""
        ident = _ident(instance)
        try:
            with self.tools.translate("create the VM", instance=ident):
                self.tools.vm_create(payload, timeout=self._opts.provision_timeout)
        except InstanceExists:
            raise
        except VirtError as exc:
            rollback.push(f"VM {instance.uuid} vmadm may have made",
                          lambda: self._delete_leftover(instance))
            state = self._state_after_failure(instance)
            if state == "failed":
                raise SpawnError(f"VM of {ident} failed to provision (vmadm left it in state "
                                 f"failed; removed): {exc.message}") from None
            raise
        # vmadm create returns once provisioning is over: 0 means running (autoboot) or
        # stopped; a failed provisioning exits 1 and leaves the VM `failed` (above).
        rollback.push(f"VM {instance.uuid}", lambda: self._delete_vm(instance))

    def _state_after_failure(self, instance: Instance) -> str | None:
        try:
            vm = self._find(instance)
        except VirtError:
            return None
        return str(vm.get("state")) if vm else None

    def _delete_vm(self, instance: Instance) -> None:
        """`vmadm delete`; a VM already gone is fine."""
        with self.tools.translate("delete the VM", instance=_ident(instance)):
            try:
                self.tools.vm_delete(instance.uuid)
            except ToolFailed as exc:
                if "not found" not in exc.message and "No such zone" not in exc.message:
                    raise

    def _delete_leftover(self, instance: Instance) -> None:
        if self._find(instance) is not None:
            self._delete_vm(instance)

    def destroy(
        self,
        *,
        instance: Instance,
        block_devices: Sequence[BlockDevice] = (),
        destroy_disks: bool = True,
    ) -> None:
        with self.tools.translate("read the VM", instance=_ident(instance)):
            vm = self.tools.vm_get(instance.uuid)
        if vm is None or not (spec.is_ours(vm, self._host) or spec.is_parked(vm, self._host)):
            return  # unknown, or not virtkit's: a no-op
        if destroy_disks:
            self._delete_vm(instance)
            LOG.info("smartos: destroyed %s", _ident(instance))
        elif spec.is_ours(vm, self._host):
            self._park(instance, vm)
            LOG.info("smartos: destroyed %s, its zone and datasets kept (parked, stopped) for "
                     "a later spawn", _ident(instance))

    def _park(self, instance: Instance, vm: Mapping[str, Any]) -> None:
        """Keep the VM's disks: stop it and mark it parked (no longer listed as an instance).
        vmadm delete always destroys a zone's datasets; a parked VM keeps them all."""
        ident = _ident(instance)
        with self.tools.translate("park the VM", instance=ident):
            if vm.get("state") != "stopped":
                self.tools.vm_stop(instance.uuid, force=True)
            self.tools.vm_update(instance.uuid, {"set_internal_metadata": spec.parked_marks()})

    def _parked(self, instance: Instance) -> dict[str, Any] | None:
        """The instance's parked VM (a destroy that kept its disks), or None."""
        with self.tools.translate("read the VM", instance=_ident(instance)):
            vm = self.tools.vm_get(instance.uuid)
        return vm if vm is not None and spec.is_parked(vm, self._host) else None

    def _take_back(self, instance: Instance, payload: Mapping[str, Any],
                   rollback: SpawnRollback) -> None:
        """Spawn onto the parked VM: its disks as destroy left them, the flavor and marks of
        `payload`; started if the payload boots (a failure parks it again)."""
        ident = _ident(instance)
        update = {k: payload[k] for k in spec.TAKE_BACK_KEYS if k in payload}
        update["set_internal_metadata"] = payload["internal_metadata"]
        with self.tools.translate("take the parked VM back", instance=ident):
            self.tools.vm_update(instance.uuid, update)
        rollback.push(f"VM {instance.uuid} parked again",
                      lambda: self._park(instance, {"state": "running"}))
        if payload.get("autoboot"):
            with self.tools.translate("start the VM", instance=ident):
                self.tools.vm_start(instance.uuid)
        LOG.info("smartos: %s spawned onto its parked VM (its disks kept)", ident)

    # -- power -----------------------------------------------------------------------------

    def reboot(self, *, instance: Instance, hard: bool = False, timeout: float = 60) -> None:
        grace = power.reboot_grace(timeout, self._opts.reboot_timeout)
        vm = self._require(instance)
        ident = _ident(instance)
        with self.tools.translate("reboot the VM", instance=ident):
            if vm.get("state") != "running":
                self.tools.vm_start(instance.uuid)
                return
            if not hard:
                try:
                    self.tools.vm_reboot(instance.uuid, bound=grace + self.executor.timeout)
                    return
                except CommandTimeout:
                    LOG.info("smartos: %s did not reboot within %gs; forcing it", ident, grace)
            self.tools.vm_reboot(instance.uuid, force=True)

    def power_off(
        self, *, instance: Instance, timeout: float = 60, retry_interval: float = 10
    ) -> PowerOffResult:
        vm = self._require(instance)
        ident = _ident(instance)
        deadline = time.monotonic() + power.check_timeout(timeout)
        hvm = vm.get("brand") in spec.HVM_BRANDS

        unread = [vm]  # the kit's first look: the state _require has just read

        def is_off() -> bool:
            current = unread.pop() if unread else self._find(instance)
            return current is None or current.get("state") != "running"

        def request_stop() -> None:
            # vmadm stop waits for the guest itself; it is bounded by what is left of the
            # caller's timeout (killed then), and an HVM guest's -t is longer than that, so
            # that a forced stop is always this driver's own and known as such.
            left = max(deadline - time.monotonic(), power.MIN_RETRY_INTERVAL)
            grace = left + self.executor.timeout if hvm else None
            try:
                self.tools.vm_stop(instance.uuid, grace=grace, bound=left)
            except CommandTimeout:
                LOG.debug("smartos: %s still stopping after %gs", ident, timeout)

        def force_off() -> bool:
            if is_off():
                return False
            self.tools.vm_stop(instance.uuid, force=True)
            return True

        if vm.get("state") != "running":
            return PowerOffResult(clean=True, forced=False, duration_s=0.0, already_off=True)
        with self.tools.translate("power off the VM", instance=ident):
            result = power.graceful_power_off(
                timeout=timeout, retry_interval=retry_interval, is_off=is_off,
                request_stop=request_stop,
                wait_off=lambda seconds: power.poll_until(is_off, seconds, 0.5),
                force_off=force_off)
        LOG.info("smartos: %s %s", ident, f"was forced off (vmadm stop -F) after {timeout:g}s"
                 if result.forced else "shut down cleanly (vmadm stop)")
        return result

    def power_on(self, *, instance: Instance, block_devices: Sequence[BlockDevice] = ()) -> None:
        vm = self._require(instance)
        if power.should_power_on(states.power_state(str(vm.get("state"))), _ident(instance)):
            with self.tools.translate("start the VM", instance=_ident(instance)):
                self.tools.vm_start(instance.uuid)

    # -- images ----------------------------------------------------------------------------

    def snapshot(self, *, instance: Instance, name: str) -> ImageRef:
        if not isinstance(name, str) or not name.strip() or len(name) > 512:
            raise InvalidRequest("a snapshot name must be a non-empty string of at most 512 "
                                 "characters")
        vm = self._require(instance)
        image = str(uuidlib.uuid4())
        booted = _origin_image(vm)
        source = self.images.manifest(booted) if booted else None
        manifest = self.images.capture(vm, image=image, name=name, source=source,
                                       tags={spec.SNAPSHOT_OF: instance.uuid})
        LOG.info("smartos: snapshot of %s is image %s (%s)", _ident(instance), image, name)
        hvm = manifest["type"] == spec.HVM_IMAGE
        return ImageRef(ref=image, disk_format="zvol" if hvm else None,
                        properties={"name": name, spec.SNAPSHOT_OF: instance.uuid})

    # -- guest -----------------------------------------------------------------------------

    def _running_zone(self, instance: Instance, operation: str) -> dict[str, Any]:
        vm = self._require(instance)
        if vm.get("brand") in spec.HVM_BRANDS:
            raise UnsupportedOperation(self.name, operation, reason=_HVM_GUEST_REASON)
        if vm.get("state") != "running":
            raise InstanceNotRunning(_ident(instance), operation)
        return vm

    def set_admin_password(self, *, instance: Instance, password: str) -> None:
        guest.check_password(password)
        self._running_zone(instance, "set_admin_password")
        guest.set_password(self.tools, instance.uuid, ident=_ident(instance),
                           user=guest.admin_user(instance), password=password)

    def inject_file(self, *, instance: Instance, path: str, contents: bytes) -> None:
        target = guest.validate_guest_path(path)
        if not isinstance(contents, bytes | bytearray):
            raise InvalidRequest("file contents must be bytes")
        self._running_zone(instance, "inject_file")
        guest.write_file(self.tools, instance.uuid, ident=_ident(instance), path=target,
                         contents=bytes(contents))

    # -- events ----------------------------------------------------------------------------

    def register_event_listener(self, listener: Listener) -> None:
        super().register_event_listener(listener)
        with self._lock:
            if self._poller is None:
                # A reboot (stopped, then running) is not a shutdown: the dispatcher holds
                # STOPPED back.
                self._dispatcher = LifecycleDispatcher(
                    self.emit_event, stopped_delay=self._opts.stopped_event_delay,
                    name="smartos")
                self._poller = StatePoller(self._states, self._dispatcher.push,
                                           interval=self._opts.poll_interval)
                self._poller.start()

    @property
    def event_poller(self) -> StatePoller | None:
        return self._poller


_HVM_GUEST_REASON = ("zlogin reaches the zone around an HVM guest, not the guest's own "
                     "operating system")


def _origin_image(vm: Mapping[str, Any]) -> str | None:
    """The image the VM's root dataset was cloned from."""
    if vm.get("brand") in spec.HVM_BRANDS:
        disks = [d for d in vm.get("disks") or [] if d.get("boot")] or vm.get("disks") or [{}]
        return disks[0].get("image_uuid")
    return vm.get("image_uuid")

