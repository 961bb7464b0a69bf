"""ComputeService: the configured driver plus the state store, and the operations the CLI
and embedders call (boot, delete, power, snapshot, console, volumes, password).

The record keeping around each driver call (task-state claim, outcome, fault, events) is
`virt.compute.records.RecordKeeping`; the lifecycle rules it applies are `virt.lifecycle`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from oslo_config import cfg

from virt.compute.records import RecordKeeping
from virt.config import build_conf, configured_flavors, make_state_dir
from virt.driver import Capability, ComputeDriver, load_driver, power
from virt.errors import (
    InstanceExists,
    InstanceNotRunning,
    InvalidRequest,
    UnsupportedOperation,
    VolumeNotFound,
)
from virt.lifecycle import SETTLED, vm_state_for
from virt.masking import remember
from virt.model import (
    BlockDevice,
    Flavor,
    ImageRef,
    Instance,
    PowerOffResult,
    PowerState,
    TaskState,
    Vif,
    VmState,
    VolumeConnection,
    new_uuid,
)
from virt.store import BlockDeviceRecord, EventRecord, InstanceRecord, Store, utcnow
from virt.volume import parse_glusterfs_volume, parse_iscsi_target

LOG = logging.getLogger(__name__)

#: Each protocol's connection_info check, run on a boot's volumes before it is recorded.
_CONNECTION_PARSERS: dict[str, Callable[[VolumeConnection], object]] = {
    "iscsi": parse_iscsi_target, "glusterfs": parse_glusterfs_volume}

T = TypeVar("T")

_PASSWORD_STATES = (VmState.ACTIVE,)


class ComputeService(RecordKeeping):
    """The operations the CLI and embedders call, on the configured driver and store.

    An engine that cannot be reached does not stop the service from starting: the stored
    records can still be listed and shown (power state unknown, `engine_unavailable` says
    why), and every operation that needs the engine raises HypervisorUnavailable before it
    claims or records anything.
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        *,
        driver: ComputeDriver | None = None,
        store: Store | None = None,
    ) -> None:
        self.conf = conf
        self.host: str = conf.host
        if store is None:
            make_state_dir(conf)
        self.store = store or Store.from_conf(conf)
        try:
            self.driver = driver or load_driver(conf.compute_driver, conf)
            self._start_engine()  # an unreachable engine leaves the records readable
        except BaseException:
            if store is None:
                self.store.close()
            raise

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str]) -> ComputeService:
        return cls(build_conf(path))

    def close(self) -> None:
        """Stop listening to the driver and release it and the store."""
        self.driver.unregister_event_listener(self._on_event)
        self.driver.cleanup_host(host=self.host)
        self.store.close()

    def __enter__(self) -> ComputeService:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- flavors -----------------------------------------------------------------------------

    def flavor(
        self,
        name: str | None = None,
        *,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        disk_gb: int | None = None,
    ) -> Flavor:
        """A named flavor from config, or explicit sizes; not both."""
        sizes = (vcpus, memory_mb, disk_gb)
        if name:
            if any(v is not None for v in sizes):
                raise InvalidRequest("give either a flavor name or explicit sizes, not both")
            flavors = configured_flavors(self.conf)
            if name not in flavors:
                raise InvalidRequest(
                    f"unknown flavor {name!r}; configured flavors: {', '.join(sorted(flavors))}",
                    hint="add it to [DEFAULT] flavors or give --vcpus/--memory-mb/--disk-gb",
                )
            return flavors[name]
        if vcpus is None or memory_mb is None:
            raise InvalidRequest(
                "a flavor is needed", hint="give --flavor NAME or --vcpus N --memory-mb M"
            )
        return Flavor(
            name=f"custom-{vcpus}c-{memory_mb}m-{disk_gb or 0}g",
            vcpus=vcpus,
            memory_mb=memory_mb,
            root_gb=disk_gb or 0,
        )

    # -- queries -----------------------------------------------------------------------------

    def list_instances(self, *, all_hosts: bool = False) -> list[InstanceRecord]:
        """This host's instances, or every host's with `all_hosts`."""
        return self.store.list_instances(host=None if all_hosts else self.host)

    def block_devices(self, ref: str) -> list[BlockDeviceRecord]:
        return self.store.list_block_devices(self.get(ref).uuid)

    def events(self, ref: str) -> list[EventRecord]:
        return self.store.list_events(self.get(ref).uuid)

    def refresh(self, ref: str) -> tuple[InstanceRecord, PowerState]:
        """Ask the engine for the power state and record it if it changed.

        Returns the record and the live power state (UNKNOWN when the engine cannot be
        reached; the stored state is then left as it was).
        """
        record = self.get(ref)
        if not self.is_here(record):  # only its own host's driver can read its guest
            return record, PowerState.UNKNOWN
        power = self._power_state(record.to_instance())
        if power is None:
            return record, PowerState.UNKNOWN
        if power is not record.power_state:
            values: dict[str, Any] = {"power_state": power}
            if record.task_state is None and record.vm_state in SETTLED:
                values["vm_state"] = vm_state_for(power, record.vm_state)
            record = self.store.update_instance(
                record.uuid, expected_task_state=record.task_state, **values
            )
        return record, power

    def reset_state(self, ref: str, *, vm_state: str | None = None) -> InstanceRecord:
        """Clear a task left behind by a process that died, and re-read the power state.

        The vm_state follows the engine's power state unless `vm_state` forces one (Nova's
        `reset-state --active`). Recorded as an event with what was cleared.
        Without the engine only a forced vm_state can be set (the power state stays).
        """
        record = self.get_owned(ref, "reset-state")
        if vm_state is not None and vm_state not in {str(s) for s in VmState}:
            raise InvalidRequest(
                f"unknown vm_state {vm_state!r}",
                hint=f"use one of {', '.join(str(s) for s in VmState)}",
            )
        if vm_state is None:
            self.require_engine("reset-state (without --state)")
        power = self._power_state(record.to_instance())
        values: dict[str, Any] = {"task_state": None}
        if power is not None:
            values["power_state"] = power
        values["vm_state"] = vm_state or vm_state_for(power or PowerState.UNKNOWN, VmState.ERROR)
        detail = f"task {record.task_state or '-'} cleared, was {record.vm_state}"
        with self.store.transaction() as conn:
            updated = self.store.update_instance(record.uuid, conn=conn, **values)
            self.store.add_event(record.uuid, "reset_state", host=self.host, detail=detail,
                                 conn=conn)
        return updated

    def host_status(self) -> dict[str, Any]:
        """This host: the driver's resources plus what the store knows."""
        self.require_engine("read the host's resources")
        resources = self.driver.get_available_resource().as_dict()
        host = self.store.heartbeat(self.host, driver=self.driver.name)
        instances = self.store.list_instances(host=self.host)
        return {
            "host": self.host,
            "driver": self.driver.name,
            "status": host.status,
            "instances": len(instances),
            "capabilities": sorted(c.value for c in self.driver.connection_capabilities),
            "resources": resources,
        }

    # -- boot and delete ---------------------------------------------------------------------

    def boot(
        self,
        name: str,
        *,
        image: ImageRef,
        flavor: Flavor,
        power_on: bool = True,
        block_devices: Sequence[BlockDevice] = (),
        vifs: Sequence[Vif] = (),
        admin_password: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> InstanceRecord:
        """Record and spawn a new instance.

        On failure the record is left in ERROR with the reason; the driver's spawn has
        removed whatever it created (a failed spawn leaves nothing behind).
        """
        remember(admin_password)
        instance = Instance(
            uuid=new_uuid(), name=name, flavor=flavor, image=image, host=self.host,
            metadata=metadata or {},
        )
        self._check_boot_volumes(block_devices)
        self.require_engine("boot")  # no ERROR record for a spawn that cannot be tried
        record = self._record_new(instance, block_devices, vifs)
        LOG.info("spawning %s (%s) on %s", name, instance.uuid, self.host)
        try:
            self.driver.spawn(
                instance=instance,
                block_devices=block_devices,
                vifs=vifs,
                admin_password=admin_password,
                power_on=power_on,
            )
        except BaseException as exc:  # also Ctrl-C: never leave the record in spawning
            self._fail_spawn(record, instance, exc)
            raise
        power = self._power_state(instance) or PowerState.UNKNOWN  # lost right after spawn
        fallback = VmState.ACTIVE if power_on else VmState.STOPPED
        with self.store.transaction() as conn:
            spawned = self.store.update_instance(
                record.uuid,
                expected_task_state=TaskState.SPAWNING,
                vm_state=vm_state_for(power, fallback),
                task_state=None,
                power_state=power,
                launched_at=utcnow(),
                conn=conn,
            )
            self.store.add_event(
                record.uuid, "spawned", host=self.host, detail=power.value, conn=conn
            )
        return spawned

    def _check_boot_volumes(self, block_devices: Sequence[BlockDevice]) -> None:
        """Refusals before anything is recorded: no ERROR record for a request never tried."""
        for bdm in block_devices:
            self._require_volume_support(bdm.connection)
            # Malformed connection_info: refused before the instance is recorded (a boot
            # that could never work leaves no ERROR record whose name blocks the retry).
            parse = _CONNECTION_PARSERS.get(str(bdm.connection.driver_volume_type).lower())
            if parse is not None:
                parse(bdm.connection)
        volume_ids = [b.volume_id for b in block_devices if b.volume_id]
        for volume_id in {v for v in volume_ids if volume_ids.count(v) > 1}:
            raise InvalidRequest(f"volume {volume_id} is given twice")
        mountpoints = [b.mountpoint for b in block_devices]
        for mountpoint in {m for m in mountpoints if mountpoints.count(m) > 1}:
            raise InvalidRequest(f"two volumes at {mountpoint}")

    def _record_new(self, instance: Instance, block_devices: Sequence[BlockDevice],
                    vifs: Sequence[Vif]) -> InstanceRecord:
        """Record the instance as spawning, with its volumes and VIFs, in one transaction."""
        with self.store.transaction() as conn:
            if self.store.list_instances(name=instance.name, conn=conn):
                raise InstanceExists(
                    instance.name, hint="choose another name or delete the existing instance")
            for bdm in block_devices:
                self._refuse_attached_elsewhere(bdm, instance.uuid, conn=conn)
            record = self.store.create_instance(
                instance, task_state=TaskState.SPAWNING, node=self.host, conn=conn
            )
            for bdm in block_devices:
                self.store.add_block_device(record.uuid, bdm, conn=conn)
            for vif in vifs:
                self.store.add_vif(record.uuid, vif, conn=conn)
            self.store.add_event(record.uuid, "spawning", host=self.host, conn=conn)
        return record

    def delete(self, ref: str) -> InstanceRecord:
        """Destroy the guest and its disks, then soft-delete the record.

        Allowed in any state and with any task in progress (a crashed operation must not
        make an instance undeletable).
        """
        record = self.get_owned(ref, "delete")
        self.require_engine("delete")  # the record stays as it was
        self.store.update_instance(record.uuid, task_state=TaskState.DELETING)
        instance = record.to_instance()
        bdms = [b.to_block_device() for b in self.store.list_block_devices(record.uuid)]
        try:
            self.driver.destroy(instance=instance, block_devices=bdms)
        except Exception as exc:
            self._record_failure(record, "delete", exc, vm_state=VmState.ERROR)
            raise
        self.store.add_event(record.uuid, "deleted", host=self.host)
        self.store.delete_instance(record.uuid)
        return self.store.get_instance(record.uuid, read_deleted=True)

    # -- power and lifecycle -----------------------------------------------------------------

    def start(self, ref: str) -> InstanceRecord:
        def call(instance: Instance, record: InstanceRecord) -> None:
            bdms = [b.to_block_device() for b in self.store.list_block_devices(record.uuid)]
            self.driver.power_on(instance=instance, block_devices=bdms)

        return self._operate(ref, "start", TaskState.POWERING_ON,
                             (VmState.STOPPED, VmState.ACTIVE), call)[0]

    def stop(self, ref: str, *, timeout: float = 60) -> tuple[InstanceRecord, PowerOffResult]:
        """Shut the guest down cleanly, forcing it off after `timeout` seconds."""
        timeout = power.check_timeout(timeout, "stop timeout")

        def call(instance: Instance, _record: InstanceRecord) -> PowerOffResult:
            return self.driver.power_off(instance=instance, timeout=timeout,
                                         retry_interval=min(10.0, timeout))

        return self._operate(
            ref, "stop", TaskState.POWERING_OFF,
            (*SETTLED, VmState.ERROR, VmState.RESCUED), call,
        )

    def reboot(self, ref: str, *, hard: bool = False) -> InstanceRecord:
        states = (*SETTLED, VmState.ERROR) if hard else (VmState.ACTIVE,)
        task = TaskState.REBOOTING_HARD if hard else TaskState.REBOOTING
        return self._operate(
            ref, "reboot", task, states,
            lambda instance, _r: self.driver.reboot(instance=instance, hard=hard),
        )[0]

    def pause(self, ref: str) -> InstanceRecord:
        return self._operate(
            ref, "pause", TaskState.PAUSING, (VmState.ACTIVE,),
            lambda instance, _r: self.driver.pause(instance=instance),
            capability=Capability.PAUSE,
        )[0]

    def unpause(self, ref: str) -> InstanceRecord:
        return self._operate(
            ref, "unpause", TaskState.UNPAUSING, (VmState.PAUSED, VmState.ACTIVE),
            lambda instance, _r: self.driver.unpause(instance=instance),
            capability=Capability.PAUSE,
        )[0]

    def suspend(self, ref: str) -> InstanceRecord:
        return self._operate(
            ref, "suspend", TaskState.SUSPENDING, (VmState.ACTIVE, VmState.PAUSED),
            lambda instance, _r: self.driver.suspend(instance=instance),
            capability=Capability.SUSPEND,
        )[0]

    def resume(self, ref: str) -> InstanceRecord:
        def call(instance: Instance, record: InstanceRecord) -> None:
            bdms = [b.to_block_device() for b in self.store.list_block_devices(record.uuid)]
            self.driver.resume(instance=instance, block_devices=bdms)

        return self._operate(ref, "resume", TaskState.RESUMING,
                             (VmState.SUSPENDED, VmState.ACTIVE), call,
                             capability=Capability.SUSPEND)[0]

    def snapshot(self, ref: str, name: str) -> tuple[InstanceRecord, ImageRef]:
        """Capture the root disk as image `name`; returns the image a later boot can use."""
        if not name or not name.strip():
            raise InvalidRequest("snapshot name must not be empty")
        return self._operate(
            ref, "snapshot", TaskState.IMAGE_SNAPSHOT, SETTLED,
            lambda instance, _r: self.driver.snapshot(instance=instance, name=name),
            capability=Capability.SNAPSHOT,
            detail=lambda image: f"{name}: {image.ref}",
        )

    def console(self, ref: str, *, max_bytes: int = 64 * 1024) -> str:
        """The tail of the guest's console log."""
        if not self.driver.supports(Capability.CONSOLE_OUTPUT):
            raise UnsupportedOperation(self.driver.name, "console output")
        record = self.get_owned(ref, "read the console of")
        self.require_engine("read the console")
        return self.driver.get_console_output(instance=record.to_instance(), max_bytes=max_bytes)

    def check_set_password(self, ref: str) -> InstanceRecord:
        """Refuse now what set_password would refuse (so a CLI asks for no password in
        vain): the driver's capability, an instance of this host, active and running."""
        record = self._admit(ref, "set-password", _PASSWORD_STATES,
                             capability=Capability.SET_ADMIN_PASSWORD)
        if self._power_state(record.to_instance()) not in (None, PowerState.RUNNING,
                                                           PowerState.UNKNOWN):
            raise InstanceNotRunning(record.name, "set-password")
        return record

    def set_password(self, ref: str, password: str) -> InstanceRecord:
        """Set the guest's admin password through the driver (the password is never logged)."""
        if not password:
            raise InvalidRequest("the new password must not be empty")
        remember(password)
        return self._operate(
            ref, "set-password", TaskState.UPDATING_PASSWORD, _PASSWORD_STATES,
            lambda instance, _r: self.driver.set_admin_password(
                instance=instance, password=password),
            capability=Capability.SET_ADMIN_PASSWORD,
        )[0]

    # -- volumes -----------------------------------------------------------------------------

    def attach_volume(
        self,
        ref: str,
        connection_info: VolumeConnection | Mapping[str, Any] | str,
        mountpoint: str,
        *,
        disk_bus: str | None = None,
        delete_on_termination: bool = False,
    ) -> BlockDeviceRecord:
        """Attach a volume at `mountpoint` (`/dev/vdb` or `vdb`) and record it; the volume is
        a parsed VolumeConnection or Nova's connection_info (a mapping or its JSON text)."""
        connection = (connection_info if isinstance(connection_info, VolumeConnection)
                      else VolumeConnection.from_connection_info(connection_info))
        self._require_volume_support(connection)
        bdm = BlockDevice(
            connection=connection,
            mountpoint=mountpoint,
            disk_bus=disk_bus,
            delete_on_termination=delete_on_termination,
        )
        record = self.get_owned(ref, "volume attach")
        taken = {b.mountpoint: b for b in self.store.list_block_devices(record.uuid)}
        if bdm.mountpoint in taken:
            raise InvalidRequest(
                f"instance {record.name} already has a volume at {bdm.mountpoint}",
                hint="detach it first or choose another mountpoint",
            )
        if bdm.volume_id and any(b.volume_id == bdm.volume_id for b in taken.values()):
            raise InvalidRequest(f"volume {bdm.volume_id} is already attached to {record.name}")
        self._refuse_attached_elsewhere(bdm, record.uuid)

        def call(instance: Instance, _record: InstanceRecord) -> BlockDeviceRecord:
            self.driver.attach_volume(instance=instance, block_device=bdm)
            try:
                with self.store.transaction() as conn:  # checked again, with the insert
                    self._refuse_attached_elsewhere(bdm, instance.uuid, conn=conn)
                    return self.store.add_block_device(instance.uuid, bdm, conn=conn)
            except BaseException:
                # Not recorded means not attached: undo on the hypervisor.
                self.driver.detach_volume(instance=instance, block_device=bdm)
                raise

        return self._operate(
            ref, "volume attach", TaskState.ATTACHING_VOLUME,
            (VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED), call,
            capability=Capability.VOLUME_ATTACH,
            detail=lambda b: f"{b.volume_id or '-'} at {b.mountpoint}",
        )[1]

    def detach_volume(self, ref: str, volume: str) -> BlockDeviceRecord:
        """Detach the volume at mountpoint `volume` (or with volume id `volume`)."""
        if not self.driver.supports(Capability.VOLUME_ATTACH):
            raise UnsupportedOperation(self.driver.name, "volume detach")
        record = self.get_owned(ref, "volume detach")
        bdm_record = self.store.find_block_device(record.uuid, volume)

        def call(instance: Instance, _record: InstanceRecord) -> BlockDeviceRecord:
            try:
                self.driver.detach_volume(
                    instance=instance, block_device=bdm_record.to_block_device()
                )
            except VolumeNotFound:
                LOG.warning("volume %s was no longer attached to %s on the hypervisor; "
                            "removing the record", bdm_record.mountpoint, instance.uuid)
            self.store.remove_block_device(bdm_record.id)
            return bdm_record

        return self._operate(
            ref, "volume detach", TaskState.DETACHING_VOLUME,
            (VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.ERROR), call,
            detail=lambda b: f"{b.volume_id or '-'} at {b.mountpoint}",
        )[1]

    def _refuse_attached_elsewhere(
        self, bdm: BlockDevice, uuid: str, *, conn: sa.Connection | None = None
    ) -> None:
        """A volume is attached to one live instance only, unless both its new and every
        existing attachment's connection_info say `multiattach: true`."""
        if not bdm.volume_id:
            return
        rows = self.store.attachments_of_volume(bdm.volume_id, excluding_uuid=uuid, conn=conn)
        if not rows:
            return
        if bdm.connection.multiattach and all(
            VolumeConnection.from_connection_info(row.connection_info).multiattach
            for row in rows
        ):
            return
        where = ", ".join(f"{row.name} (host {row.host})" for row in rows)
        raise InvalidRequest(
            f"volume {bdm.volume_id} is already attached to {where}",
            hint="detach it there first; only a volume whose connection_info says "
            "\"multiattach\": true may be attached to several instances",
        )

    def _require_volume_support(self, connection: VolumeConnection) -> None:
        if not self.driver.supports(Capability.VOLUME_ATTACH):
            raise UnsupportedOperation(self.driver.name, "volume attach")
        chap = str(connection.data.get("auth_method", "")).upper() == "CHAP"
        if chap and not self.driver.supports(Capability.VOLUME_ISCSI_CHAP):
            raise UnsupportedOperation(self.driver.name, "iSCSI volumes with CHAP")
