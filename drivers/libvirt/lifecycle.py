"""libvirt domain states and events mapped to virtkit's, and the delayed-STOPPED dispatcher."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import libvirt

from virt.events import LifecycleEvent, Transition
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


class EventDispatcher:
    """Turns raw libvirt events into LifecycleEvents on its own thread.

    A STOPPED event is held for `stopped_delay` seconds and dropped if any other event of
    the domain arrives meanwhile, so a reboot (stop + start) is not reported as a shutdown.
    Held events wait in a dict with their deadlines: no thread or timer per event.
    """

    def __init__(self, emit: Callable[[LifecycleEvent], None], stopped_delay: float) -> None:
        self._emit = emit
        self._delay = stopped_delay
        self._queue: queue.SimpleQueue[tuple[str, int, int] | None] = queue.SimpleQueue()
        self._pending: dict[str, tuple[float, LifecycleEvent]] = {}
        self._thread = threading.Thread(target=self._run, name="libvirt-dispatch", daemon=True)
        self._thread.start()

    def push(self, uuid: str, event: int, detail: int) -> None:
        """Called on libvirt's event thread: only enqueue."""
        self._queue.put((uuid, event, detail))

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            timeout = None
            if self._pending:
                timeout = max(0.0, min(d for d, _ in self._pending.values()) - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._fire_due()
                continue
            if item is None:
                return
            self._handle(*item)
            self._fire_due()

    def _handle(self, uuid: str, event: int, detail: int) -> None:
        kind = transition(event, detail)
        if kind is None:
            return
        self._pending.pop(uuid, None)
        if kind is Transition.STOPPED and self._delay > 0:
            self._pending[uuid] = (time.monotonic() + self._delay, LifecycleEvent(uuid, kind))
            return
        self._emit(LifecycleEvent(uuid, kind))

    def _fire_due(self) -> None:
        now = time.monotonic()
        for uuid, (deadline, event) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[uuid]
                self._emit(event)
