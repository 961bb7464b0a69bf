"""The record keeping around every driver call of the compute service.

Each operation finds the instance in the store, claims it by setting its task_state (a
compare-and-swap, so two processes never run operations on one instance at once), calls the
driver, then records the outcome: the power state the driver reports, the vm_state that
follows from it (`virt.lifecycle`), the task_state cleared, and an event. A failure is
recorded as the instance's fault and raised unchanged. An instance that virtkit-recover has
claimed (task_state `recovering`) is refused until the recovery ends.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from virt.driver import Capability, ComputeDriver
from virt.driver.transitions import POWER_STATE_AFTER
from virt.errors import (
    HypervisorUnavailable,
    InstanceNotFound,
    InvalidState,
    UnsupportedOperation,
    VirtError,
)
from virt.events import LifecycleEvent
from virt.lifecycle import (
    SETTLED,
    engine_power_state,
    failure_reason,
    fault_text,
    spawn_leftover,
    vm_state_for,
)
from virt.model import Instance, PowerState, TaskState, VmState
from virt.store import InstanceRecord, Store

LOG = logging.getLogger(__name__)

T = TypeVar("T")


class RecordKeeping:
    """Finding, admitting and recording instances for the operations of ComputeService."""

    #: How long an unreachable engine stands before an operation asks it again.
    ENGINE_RETRY_S = 10.0

    host: str
    store: Store
    driver: ComputeDriver
    _engine_down: HypervisorUnavailable | None = None
    _engine_down_at = 0.0

    # -- the engine --------------------------------------------------------------------------

    def _start_engine(self) -> None:
        """init_host. An unreachable engine is remembered, not raised: the stored records
        stay readable, and what needs the engine is refused (`require_engine`)."""
        try:
            self.driver.init_host(host=self.host)
            # Idempotent; a driver may ask the engine for its guests' states here.
            self.driver.register_event_listener(self._on_event)
        except HypervisorUnavailable as exc:
            self._engine_lost(exc)
            return
        self._engine_down = None
        self.store.heartbeat(self.host, driver=self.driver.name)

    def _engine_lost(self, exc: HypervisorUnavailable) -> None:
        """Remember that the engine cannot be reached (and since when)."""
        self._engine_down, self._engine_down_at = exc, time.monotonic()
        LOG.info("the %s engine cannot be reached: %s", self.driver.name, exc)

    @property
    def engine_unavailable(self) -> HypervisorUnavailable | None:
        """Why the engine could not be reached when last asked; None if it could."""
        return self._engine_down

    def require_engine(self, operation: str) -> None:
        """HypervisorUnavailable, before anything is claimed or recorded, if the engine
        cannot be reached (asked again once ENGINE_RETRY_S have passed)."""
        if self._engine_down is None:
            return
        if time.monotonic() - self._engine_down_at >= self.ENGINE_RETRY_S:
            self._start_engine()
        down = self._engine_down
        if down is not None:
            raise HypervisorUnavailable(
                f"cannot {operation}: {down.message}",
                hint=down.hint or "start the hypervisor (or fix [DEFAULT] compute_driver's "
                "connection settings) and retry; `virtkit list` and `show` still read the "
                "stored records",
            )

    # -- finding -----------------------------------------------------------------------------

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

    # -- one operation -----------------------------------------------------------------------

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
        try:
            record = self.store.update_instance(
                record.uuid,
                expected_task_state=None,
                expected_vm_state=tuple(allowed),
                task_state=task_state,
            )
        except InvalidState:  # taken meanwhile: by a recovery, say so
            self._refuse_recovering(self.get(record.uuid), operation)
            raise
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
        if power is not None:
            values["power_state"] = power
            values["vm_state"] = vm_state_for(power, record.vm_state)
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
        """The instance `ref`, if the driver can do `operation`, no recovery holds it, its
        vm_state allows it and the engine can be reached."""
        if capability is not None and not self.driver.supports(capability):
            raise UnsupportedOperation(self.driver.name, operation)
        record = self.get_owned(ref, operation)
        self.require_engine(operation)
        self._refuse_recovering(record, operation)
        if record.vm_state not in allowed:
            raise InvalidState(
                f"cannot {operation} instance {record.name}: it is {record.vm_state}",
                hint=f"{operation} needs it {' or '.join(str(s) for s in allowed)}",
            )
        return record

    def _refuse_recovering(self, record: InstanceRecord, operation: str) -> None:
        """InvalidState naming the recovering host if virtkit-recover holds the instance."""
        if record.task_state != TaskState.RECOVERING:
            return
        from virt.recovery.journal import recovering_host  # only when refusing

        host = recovering_host(self.store, record.uuid)
        by = f"host {host}" if host else "a virtkit-recover run that did not finish"
        raise InvalidState(
            f"cannot {operation} instance {record.name}: it is being recovered by {by}",
            hint="wait for the recovery to finish, then retry; if that run died, run "
            f"virtkit-recover again{f' on {host}' if host else ''} to resume it, or clear it "
            "with `virtkit reset-state`",
        )

    # -- outcomes ----------------------------------------------------------------------------

    def _record_failure(
        self,
        record: InstanceRecord,
        operation: str,
        exc: BaseException,
        *,
        vm_state: str | None = None,
    ) -> None:
        reason = failure_reason(exc)
        LOG.info("%s of %s (%s) failed: %s", operation, record.name, record.uuid, reason)
        values: dict[str, Any] = {"task_state": None, "fault": fault_text(operation, reason)}
        power = self._power_state(record.to_instance())
        if power is not None:
            values["power_state"] = power
            if vm_state is None:
                vm_state = vm_state_for(power, record.vm_state)
        if vm_state is not None:
            values["vm_state"] = vm_state
        try:
            self.store.update_instance(record.uuid, **values)
            self.store.add_event(record.uuid, f"{operation.replace(' ', '_')}_failed",
                                 host=self.host, detail=reason)
        except VirtError as store_exc:  # the original error matters more
            LOG.error("could not record the failure of %s on %s: %s", operation, record.uuid,
                      store_exc)

    def _fail_spawn(self, record: InstanceRecord, instance: Instance,
                    exc: BaseException) -> None:
        """Record a failed spawn as ERROR with its reason. The driver's spawn cleaned up
        after itself (`virt.lifecycle`); this only notes it if it left the guest behind."""
        reason = failure_reason(exc)
        # The caller gets the exception; a warning here would say the same thing twice.
        LOG.info("spawn of %s (%s) failed: %s", record.name, record.uuid, reason)
        try:
            left = spawn_leftover(self.driver, instance)
        except BaseException:  # a second Ctrl-C must not skip the record
            left = "interrupted while checking for a left-behind guest"
        if left:
            reason += f"; {left}"
        try:
            self.store.update_instance(
                record.uuid,
                vm_state=VmState.ERROR,
                task_state=None,
                power_state=PowerState.NOSTATE,
                fault=fault_text("spawn", reason),
            )
            self.store.add_event(record.uuid, "spawn_failed", host=self.host, detail=reason)
        except VirtError as store_exc:  # the spawn error matters more
            LOG.error("could not record the failed spawn of %s: %s", record.uuid, store_exc)

    def _power_state(self, instance: Instance) -> PowerState | None:
        """What the engine says now (`virt.lifecycle.engine_power_state`): None when it
        cannot be reached, without asking it again while it is known to be down."""
        if self._engine_down is not None:
            return None
        return engine_power_state(self.driver, instance, unreachable=self._engine_lost)

    def _on_event(self, event: LifecycleEvent) -> None:
        """Driver lifecycle event → power state (and vm_state of an idle instance) + history."""
        power = POWER_STATE_AFTER.get(event.transition)
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
                if record.task_state is None and record.vm_state in SETTLED:
                    values["vm_state"] = vm_state_for(power, record.vm_state)
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
