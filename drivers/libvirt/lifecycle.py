"""libvirt domain states and events mapped to virtkit's, and the delayed-STOPPED dispatcher."""

from __future__ import annotations

import queue
import threading
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
    """

    def __init__(self, emit: Callable[[LifecycleEvent], None], stopped_delay: float) -> None:
        self._emit = emit
        self._delay = stopped_delay
        self._queue: queue.SimpleQueue[tuple[str, int, int] | None] = queue.SimpleQueue()
        self._pending: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="libvirt-dispatch", daemon=True)
        self._thread.start()

    def push(self, uuid: str, event: int, detail: int) -> None:
        """Called on libvirt's event thread: only enqueue."""
        self._queue.put((uuid, event, detail))

    def stop(self) -> None:
        self._queue.put(None)
        with self._lock:
            for timer in self._pending.values():
                timer.cancel()
            self._pending.clear()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            uuid, event, detail = item
            kind = transition(event, detail)
            if kind is None:
                continue
            with self._lock:
                pending = self._pending.pop(uuid, None)
                if pending is not None:
                    pending.cancel()
                if kind is Transition.STOPPED and self._delay > 0:
                    timer = threading.Timer(self._delay, self._fire, (uuid, LifecycleEvent(uuid, kind)))
                    timer.daemon = True
                    self._pending[uuid] = timer
                    timer.start()
                    continue
            self._emit(LifecycleEvent(uuid, kind))

    def _fire(self, uuid: str, event: LifecycleEvent) -> None:
        with self._lock:
            timer = self._pending.get(uuid)
            if timer is None or timer is not threading.current_thread():
                return
            del self._pending[uuid]
        self._emit(event)
