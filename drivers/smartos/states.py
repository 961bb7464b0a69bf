"""vmadm states -> PowerState (research/smartos.md §4). No commands."""

from __future__ import annotations

from virt.model import PowerState

#: `state` of `vmadm get`/`list` -> what virtkit reads. `provisioning` is the first boot
#: after create (a guest coming up: NOSTATE, not yet RUNNING); `failed` is a provisioning
#: that failed for good (CRASHED: destroy and recreate it); `stopping` and the transient
#: zone states on the way down read SHUTDOWN; `receiving` (a vmadm migration) and anything
#: this table does not know read UNKNOWN, never a guess.
POWER_STATE: dict[str, PowerState] = {
    "running": PowerState.RUNNING,
    "stopped": PowerState.SHUTDOWN,
    "installed": PowerState.SHUTDOWN,
    "stopping": PowerState.SHUTDOWN,
    "shutting_down": PowerState.SHUTDOWN,
    "down": PowerState.SHUTDOWN,
    "provisioning": PowerState.NOSTATE,
    "configured": PowerState.NOSTATE,
    "incomplete": PowerState.NOSTATE,
    "ready": PowerState.NOSTATE,
    "failed": PowerState.CRASHED,
    "receiving": PowerState.UNKNOWN,
}

#: States vmadm create may end in (or pass through) that are not a finished spawn.
PROVISIONING = frozenset({"provisioning", "configured", "incomplete", "ready"})


def power_state(state: str) -> PowerState:
    """The PowerState of a vmadm `state`; UNKNOWN for one this driver does not know."""
    return POWER_STATE.get(state, PowerState.UNKNOWN)
