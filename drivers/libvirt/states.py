"""libvirt domain states and lifecycle events in virtkit's terms (PowerState, Transition)."""

from __future__ import annotations

import libvirt

from virt.events import Transition
from virt.model import PowerState

POWER_STATES: dict[int, PowerState] = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}


def power_state(state: int, has_managed_save: bool = False) -> PowerState:
    """PowerState of a libvirt state; a shut-off domain with a managed save is SUSPENDED."""
    mapped = POWER_STATES.get(state, PowerState.UNKNOWN)
    if mapped is PowerState.SHUTDOWN and has_managed_save:
        return PowerState.SUSPENDED
    return mapped


def domain_power_state(dom: libvirt.virDomain) -> PowerState:
    """The PowerState of a domain now (two calls when it is shut off: its managed save)."""
    state = dom.state()[0]
    saved = state == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0) == 1
    return power_state(state, saved)


def transition(event: int, detail: int) -> Transition | None:
    """The virtkit transition of a libvirt lifecycle event, or None to ignore it."""
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
        if detail == libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED:
            return Transition.RESUMED
        return Transition.STARTED
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED:
            return Transition.SUSPENDED
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED:
            return Transition.CRASHED
        return Transition.STOPPED
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        return Transition.PAUSED
    if event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
        return Transition.RESUMED
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return Transition.CRASHED
    if event == libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED:
        return Transition.SUSPENDED
    return None
