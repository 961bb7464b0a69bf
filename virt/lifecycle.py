"""The lifecycle rules the compute service and recovery share.

- The vm_state an idle instance has for the power state its engine reports
  (`vm_state_for`); the power state a lifecycle event implies is the driver kit's
  `virt.driver.transitions.POWER_STATE_AFTER`.
- The text a failure leaves in an instance's fault (`failure_reason`, `fault_text`).
- Who cleans up after a failed spawn: the driver's spawn, and nobody else. A spawn that
  fails leaves nothing on the engine (the driver kit's rollback stack, `virt.driver.rollback`,
  undoes what it created). The callers only keep the record: `spawn_leftover` says whether a
  driver broke that contract, so the fault can name it; they never destroy the guest again.
- An unreachable engine: every driver call raises HypervisorUnavailable, `get_info`
  included (PowerState.UNKNOWN is only a guest whose state the engine itself cannot tell).
  What that means for a record is `engine_power_state`: None, the stored power state stays
  as it was. The compute service reads the stored records without the engine and refuses
  what needs it before claiming anything (`ComputeService.require_engine`); recovery lets
  the step fail, journaled, so a later run resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from virt.driver import ComputeDriver
from virt.errors import HypervisorUnavailable, InstanceNotFound, VirtError
from virt.masking import scrub
from virt.model import Instance, PowerState, VmState

LOG = logging.getLogger(__name__)

#: The vm_state an idle instance has when the engine reports this power state.
POWER_VM_STATE = {
    PowerState.RUNNING: VmState.ACTIVE,
    PowerState.PAUSED: VmState.PAUSED,
    PowerState.SUSPENDED: VmState.SUSPENDED,
    PowerState.SHUTDOWN: VmState.STOPPED,
    PowerState.CRASHED: VmState.ERROR,
}

#: The vm_states an idle instance settles in (the power state decides between them).
SETTLED = (VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED)


def vm_state_for(power: PowerState, fallback: str) -> str:
    """The vm_state that follows from `power`; `fallback` when it says nothing (NOSTATE,
    UNKNOWN)."""
    return POWER_VM_STATE.get(power, fallback)


def failure_reason(exc: BaseException) -> str:
    """One line saying what failed: the virtkit message, or the type and first line of
    anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, VirtError):
        return str(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def fault_text(operation: str, reason: BaseException | str) -> str:
    """The fault recorded on an instance when `operation` failed."""
    why = reason if isinstance(reason, str) else failure_reason(reason)
    return scrub(f"{operation}: {why}")


def spawn_leftover(driver: ComputeDriver, instance: Instance) -> str | None:
    """After a failed spawn: a note for the fault if the driver left the guest behind
    (it broke its contract; an operator must remove it), else None. Never cleans up."""
    try:
        if driver.instance_exists(instance=instance):
            LOG.error("the %s driver's failed spawn left %s (%s) on the hypervisor",
                      driver.name, instance.name, instance.uuid)
            return (f"the {driver.name} driver left the guest on the hypervisor: remove it "
                    "by hand (a failed spawn must leave nothing)")
    except Exception as exc:  # the spawn's error matters more
        return f"cannot tell whether the guest was left behind: {failure_reason(exc)}"
    return None


def engine_power_state(
    driver: ComputeDriver,
    instance: Instance,
    *,
    unreachable: Callable[[HypervisorUnavailable], None] | None = None,
) -> PowerState | None:
    """The guest's power state as its engine reports it now: NOSTATE if the engine has no
    such guest, None if the engine cannot be reached (record nothing then). `unreachable`
    gets the error; without it, it is logged as a warning."""
    try:
        return driver.get_info(instance=instance).state
    except InstanceNotFound:
        return PowerState.NOSTATE
    except HypervisorUnavailable as exc:
        if unreachable is None:
            LOG.warning("cannot read the power state of %s: %s", instance.uuid, exc)
        else:
            unreachable(exc)
        return None
