"""ComputeService: the configured driver plus the state store, and the record keeping
around every driver call.

Each operation finds the instance in the store, claims it by setting its task_state (a
compare-and-swap, so two processes never run operations on one instance at once), calls the
driver, then records the outcome: the power state the driver reports, the vm_state that
follows from it, the task_state cleared, and an event. A failure is recorded as the
instance's fault and raised unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from oslo_config import cfg

from virt.config import build_conf, configured_flavors, make_state_dir
from virt.driver import Capability, ComputeDriver, load_driver
from virt.errors import (
    HypervisorUnavailable,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    InvalidState,
    UnsupportedOperation,
    VirtError,
    VolumeNotFound,
)
from virt.events import LifecycleEvent, Transition
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

LOG = logging.getLogger(__name__)

T = TypeVar("T")

# What a lifecycle event says about the guest's power state.
EVENT_POWER_STATE = {
    Transition.STARTED: PowerState.RUNNING,
    Transition.RESUMED: PowerState.RUNNING,
    Transition.STOPPED: PowerState.SHUTDOWN,
    Transition.PAUSED: PowerState.PAUSED,
    Transition.SUSPENDED: PowerState.SUSPENDED,
    Transition.CRASHED: PowerState.CRASHED,
}

# The vm_state an idle instance has when the engine reports this power state.
POWER_VM_STATE = {
    PowerState.RUNNING: VmState.ACTIVE,
    PowerState.PAUSED: VmState.PAUSED,
    PowerState.SUSPENDED: VmState.SUSPENDED,
    PowerState.SHUTDOWN: VmState.STOPPED,
    PowerState.CRASHED: VmState.ERROR,
}

_SETTLED = (VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED)
_PASSWORD_STATES = (VmState.ACTIVE,)


def _vm_state_for(power: PowerState, fallback: str) -> str:
    return POWER_VM_STATE.get(power, fallback)


class ComputeService:
    """The operations the CLI and embedders call, on the configured driver and store."""

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
            self.driver.init_host(host=self.host)
            self.store.heartbeat(self.host, driver=self.driver.name)
        except BaseException:
            if store is None:
                self.store.close()
            raise
        self.driver.register_event_listener(self._on_event)

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

    def get(self, ref: str) -> InstanceRecord:
        """The live instance named `ref` (or with uuid `ref`), on any host."""
        return self.store.find_instance(ref)

    def get_owned(self, ref: str, operation: str) -> InstanceRecord:
        """The live instance `ref`, which must be on this host for `operation`.

        Another host's instance is refused (InvalidState): this host's driver does not
        have its guest, so acting on it would corrupt its record (or delete the record of
        a guest that keeps running elsewhere).
        """
        return self._require_here(self.get(ref), operation)

    def is_here(self, record: InstanceRecord) -> bool:
        """Whether `record` belongs to this host (a record without a host counts as ours)."""
        return not record.host or record.host == self.host

    def _require_here(self, record: InstanceRecord, operation: str) -> InstanceRecord:
        if not self.is_here(record):
            raise InvalidState(
                f"cannot {operation} instance {record.name}: it is on host '{record.host}', "
                f"not this host '{self.host}'",
                hint=f"run the command on {record.host}; if {record.host} is dead, move its "
                "instances here with virtkit-recover",
            )
        return record

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
        if power is not PowerState.UNKNOWN and power is not record.power_state:
            values: dict[str, Any] = {"power_state": power}
            if record.task_state is None and record.vm_state in _SETTLED:
                values["vm_state"] = _vm_state_for(power, record.vm_state)
            record = self.store.update_instance(
                record.uuid, expected_task_state=record.task_state, **values
            )
        return record, power

    def reset_state(self, ref: str, *, vm_state: str | None = None) -> InstanceRecord:
        """Clear a task left behind by a process that died, and re-read the power state.

        The vm_state follows the engine's power state unless `vm_state` forces one (Nova's
        `reset-state --active`). Recorded as an event with what was cleared.
        """
        record = self.get_owned(ref, "reset-state")
        if vm_state is not None and vm_state not in {str(s) for s in VmState}:
            raise InvalidRequest(
                f"unknown vm_state {vm_state!r}",
                hint=f"use one of {', '.join(str(s) for s in VmState)}",
            )
        power = self._power_state(record.to_instance())
        values: dict[str, Any] = {"task_state": None}
        if power is not PowerState.UNKNOWN:
            values["power_state"] = power
        values["vm_state"] = vm_state or _vm_state_for(power, VmState.ERROR)
        detail = f"task {record.task_state or '-'} cleared, was {record.vm_state}"
        with self.store.transaction() as conn:
            updated = self.store.update_instance(record.uuid, conn=conn, **values)
            self.store.add_event(record.uuid, "reset_state", host=self.host, detail=detail,
                                 conn=conn)
        return updated

    def host_status(self) -> dict[str, Any]:
        """This host: the driver's resources plus what the store knows."""
        resources = self.driver.get_available_resource().as_dict()
        host = self.store.heartbeat(self.host, driver=self.driver.name)
        instances = self.store.list_instances(host=self.host)
        return {
            "host": self.host,
            "driver": self.driver.name,
            "status": host.status,
            "instances": len(instances),
            "capabilities": sorted(c.value for c in self.driver.capabilities),
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

        On failure the record is left in ERROR with the reason, and the driver is asked to
        destroy whatever it may have created, so nothing stays on the hypervisor.
        """
        instance = Instance(
            uuid=new_uuid(), name=name, flavor=flavor, image=image, host=self.host,
            metadata=metadata or {},
        )
        # Refusals before anything is recorded: no ERROR record for a request never tried.
        for bdm in block_devices:
            self._require_volume_support(bdm.connection)
        volume_ids = [b.volume_id for b in block_devices if b.volume_id]
        for volume_id in {v for v in volume_ids if volume_ids.count(v) > 1}:
            raise InvalidRequest(f"volume {volume_id} is given twice")
        mountpoints = [b.mountpoint for b in block_devices]
        for mountpoint in {m for m in mountpoints if mountpoints.count(m) > 1}:
            raise InvalidRequest(f"two volumes at {mountpoint}")
        with self.store.transaction() as conn:
            if self.store.list_instances(name=name, conn=conn):
                raise InstanceExists(
                    name, hint="choose another name or delete the existing instance")
            for bdm in block_devices:
                self._refuse_attached_elsewhere(bdm, instance.uuid, conn=conn)
            self.store.create_instance(
                instance, task_state=TaskState.SPAWNING, node=self.host, conn=conn
            )
            for bdm in block_devices:
                self.store.add_block_device(instance.uuid, bdm, conn=conn)
            for vif in vifs:
                self.store.add_vif(instance.uuid, vif, conn=conn)
            self.store.add_event(instance.uuid, "spawning", host=self.host, conn=conn)
        LOG.info("spawning %s (%s) on %s", name, instance.uuid, self.host)
        try:
            self.driver.spawn(
                instance=instance,
                image=image,
                block_devices=block_devices,
                vifs=vifs,
                admin_password=admin_password,
                power_on=power_on,
            )
        except BaseException as exc:  # also Ctrl-C: never leave the record in spawning
            self._fail_spawn(instance, block_devices, exc)
            raise
        power = self._power_state(instance)
        fallback = VmState.ACTIVE if power_on else VmState.STOPPED
        with self.store.transaction() as conn:
            record = self.store.update_instance(
                instance.uuid,
                expected_task_state=TaskState.SPAWNING,
                vm_state=_vm_state_for(power, fallback),
                task_state=None,
                power_state=power,
                launched_at=utcnow(),
                conn=conn,
            )
            self.store.add_event(
                instance.uuid, "spawned", host=self.host, detail=power.value, conn=conn
            )
        return record

    def _fail_spawn(
        self, instance: Instance, block_devices: Sequence[BlockDevice], exc: BaseException
    ) -> None:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _reason(exc)
        # The caller gets the exception; a warning here would say the same thing twice.
        LOG.info("spawn of %s (%s) failed: %s", instance.name, instance.uuid, reason)
        try:
            self.driver.destroy(instance=instance, block_devices=block_devices)
            if self.driver.instance_exists(instance=instance):
                reason += "; the guest is still on the hypervisor after cleanup"
        except BaseException as cleanup_exc:  # a second Ctrl-C must not skip the record
            reason += f"; cleanup failed: {_reason(cleanup_exc)}"
        try:
            self.store.update_instance(
                instance.uuid,
                vm_state=VmState.ERROR,
                task_state=None,
                power_state=PowerState.NOSTATE,
                fault=f"spawn: {reason}",
            )
            self.store.add_event(instance.uuid, "spawn_failed", host=self.host, detail=reason)
        except VirtError as store_exc:  # the spawn error matters more
            LOG.error("could not record the failed spawn of %s: %s", instance.uuid, store_exc)

    def delete(self, ref: str) -> InstanceRecord:
        """Destroy the guest and its disks, then soft-delete the record.

        Allowed in any state and with any task in progress (a crashed operation must not
        make an instance undeletable).
        """
        record = self.get_owned(ref, "delete")
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
        if not math.isfinite(timeout) or timeout < 0:
            raise InvalidRequest(
                f"stop timeout must be a finite number of seconds, 0 or more, got {timeout}",
                hint="0 forces the guest off at once",
            )

        def call(instance: Instance, _record: InstanceRecord) -> PowerOffResult:
            return self.driver.power_off(instance=instance, timeout=timeout,
                                         retry_interval=min(10.0, timeout))

        return self._operate(
            ref, "stop", TaskState.POWERING_OFF,
            (*_SETTLED, VmState.ERROR, VmState.RESCUED), call,
        )

    def reboot(self, ref: str, *, hard: bool = False) -> InstanceRecord:
        states = (*_SETTLED, VmState.ERROR) if hard else (VmState.ACTIVE,)
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
            ref, "snapshot", TaskState.IMAGE_SNAPSHOT, _SETTLED,
            lambda instance, _r: self.driver.snapshot(instance=instance, name=name),
            capability=Capability.SNAPSHOT,
            detail=lambda image: f"{name}: {image.ref}",
        )

    def console(self, ref: str, *, max_bytes: int = 64 * 1024) -> str:
        """The tail of the guest's console log."""
        if not self.driver.supports(Capability.CONSOLE_OUTPUT):
            raise UnsupportedOperation(self.driver.name, "console output")
        record = self.get_owned(ref, "read the console of")
        return self.driver.get_console_output(instance=record.to_instance(), max_bytes=max_bytes)

    def check_set_password(self, ref: str) -> InstanceRecord:
        """Refuse now what set_password would refuse (so a CLI asks for no password in
        vain): the driver's capability, an instance of this host, active and running."""
        record = self._admit(ref, "set-password", _PASSWORD_STATES,
                             capability=Capability.SET_ADMIN_PASSWORD)
        if self._power_state(record.to_instance()) not in (PowerState.RUNNING,
                                                           PowerState.UNKNOWN):
            raise InstanceNotRunning(record.name, "set-password")
        return record

    def set_password(self, ref: str, password: str) -> InstanceRecord:
        """Set the guest's admin password through the driver (the password is never logged)."""
        if not password:
            raise InvalidRequest("the new password must not be empty")
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
        connection_info: Mapping[str, Any] | str,
        mountpoint: str,
        *,
        disk_bus: str | None = None,
        delete_on_termination: bool = False,
    ) -> BlockDeviceRecord:
        """Attach a volume given Nova's connection_info at `mountpoint` and record it."""
        connection = VolumeConnection.from_connection_info(connection_info)
        self._require_volume_support(connection)
        bdm = BlockDevice(
            connection=connection,
            mountpoint=mountpoint if mountpoint.startswith("/dev/") else f"/dev/{mountpoint}",
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

    # -- the record keeping ------------------------------------------------------------------

    def _operate(
        self,
        ref: str,
        operation: str,
        task_state: TaskState,
        allowed: Sequence[str],
        call: Callable[[Instance, InstanceRecord], T],
        *,
        capability: Capability | None = None,
        detail: Callable[[T], str] | None = None,
    ) -> tuple[InstanceRecord, T]:
        """Claim the instance with `task_state`, run `call`, record the outcome."""
        record = self._admit(ref, operation, allowed, capability=capability)
        record = self.store.update_instance(
            record.uuid,
            expected_task_state=None,
            expected_vm_state=tuple(allowed),
            task_state=task_state,
        )
        instance = record.to_instance()
        try:
            result = call(instance, record)
        except InstanceNotFound as exc:
            self._record_failure(record, operation, exc)
            raise InstanceNotFound(
                record.name,
                hint="it is in the state store but the hypervisor has no such guest; "
                "delete it, or recover it with virtkit-recover",
            ) from exc
        except Exception as exc:
            self._record_failure(record, operation, exc)
            raise
        power = self._power_state(instance)
        values: dict[str, Any] = {"task_state": None, "fault": None}
        if power is not PowerState.UNKNOWN:
            values["power_state"] = power
            values["vm_state"] = _vm_state_for(power, record.vm_state)
        text = detail(result) if detail is not None else None
        with self.store.transaction() as conn:
            updated = self.store.update_instance(record.uuid, conn=conn, **values)
            self.store.add_event(record.uuid, operation.replace(" ", "_"), host=self.host,
                                 detail=text, conn=conn)
        return updated, result

    def _admit(
        self,
        ref: str,
        operation: str,
        allowed: Sequence[str],
        *,
        capability: Capability | None = None,
    ) -> InstanceRecord:
        """The instance `ref`, if the driver can do `operation` and its vm_state allows it."""
        if capability is not None and not self.driver.supports(capability):
            raise UnsupportedOperation(self.driver.name, operation)
        record = self.get_owned(ref, operation)
        if record.vm_state not in allowed:
            raise InvalidState(
                f"cannot {operation} instance {record.name}: it is {record.vm_state}",
                hint=f"{operation} needs it {' or '.join(str(s) for s in allowed)}",
            )
        return record

    def _record_failure(
        self,
        record: InstanceRecord,
        operation: str,
        exc: BaseException,
        *,
        vm_state: str | None = None,
    ) -> None:
        reason = _reason(exc)
        LOG.info("%s of %s (%s) failed: %s", operation, record.name, record.uuid, reason)
        values: dict[str, Any] = {"task_state": None, "fault": f"{operation}: {reason}"}
        power = self._power_state(record.to_instance())
        if power is not PowerState.UNKNOWN:
            values["power_state"] = power
            if vm_state is None:
                vm_state = _vm_state_for(power, record.vm_state)
        if vm_state is not None:
            values["vm_state"] = vm_state
        try:
            self.store.update_instance(record.uuid, **values)
            self.store.add_event(record.uuid, f"{operation.replace(' ', '_')}_failed",
                                 host=self.host, detail=reason)
        except VirtError as store_exc:  # the original error matters more
            LOG.error("could not record the failure of %s on %s: %s", operation, record.uuid,
                      store_exc)

    def _power_state(self, instance: Instance) -> PowerState:
        """What the engine says now; NOSTATE if it has no such guest, UNKNOWN if unreachable."""
        try:
            return self.driver.get_info(instance=instance).state
        except InstanceNotFound:
            return PowerState.NOSTATE
        except HypervisorUnavailable as exc:
            LOG.warning("cannot read the power state of %s: %s", instance.uuid, exc)
            return PowerState.UNKNOWN

    def _on_event(self, event: LifecycleEvent) -> None:
        """Driver lifecycle event → power state (and vm_state of an idle instance) + history."""
        power = EVENT_POWER_STATE.get(event.transition)
        with self.store.transaction() as conn:
            try:
                record = self.store.get_instance(event.instance_uuid, conn=conn)
            except InstanceNotFound:
                LOG.debug("event %s for unknown instance %s ignored", event.transition.value,
                          event.instance_uuid)
                return
            values: dict[str, Any] = {}
            if power is not None:
                values["power_state"] = power
                if record.task_state is None and record.vm_state in _SETTLED:
                    values["vm_state"] = _vm_state_for(power, record.vm_state)
            if values:
                self.store.update_instance(record.uuid, conn=conn, **values)
            self.store.add_event(
                record.uuid,
                event.transition.value,
                host=self.host,
                detail=f"lifecycle event seq {event.seq}",
                timestamp=dt.datetime.fromtimestamp(event.timestamp, dt.UTC).replace(tzinfo=None),
                conn=conn,
            )


def _reason(exc: BaseException) -> str:
    """One line for a fault: the virtkit message, or the type and text of anything else."""
    if isinstance(exc, VirtError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
