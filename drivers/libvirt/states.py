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


#: Seconds the dispatcher waits after an event for the ones that follow it (its latency bound).
BATCH_WINDOW = 0.05
_TRANSITION_EVENTS = frozenset({
    libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED, libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED,
})
# UNDEFINED has no transition but drops the driver's kept handle of the domain.
_USED_EVENTS = _TRANSITION_EVENTS | {libvirt.VIR_DOMAIN_EVENT_UNDEFINED}
_Item = tuple["str | libvirt.virDomain", int, int, "libvirt.virConnect | None"]
#: (connection, domain UUID, domain handle, libvirt event): sees every used event first.
Observer = Callable[[libvirt.virConnect, str, libvirt.virDomain, int], None]


class EventDispatcher:
    """Turns raw libvirt events into LifecycleEvents on its own thread.

    A STOPPED event is held for `stopped_delay` seconds and dropped if any other event of
    the domain arrives meanwhile, so a reboot (stop + start) is not reported as a shutdown.
    Held events wait in a dict with their deadlines: no thread or timer per event. Events
    are handled in bursts of up to `batch_window` seconds, in the order they came.
    """

    def __init__(self, emit: Callable[[LifecycleEvent], None], stopped_delay: float,
                 batch_window: float = BATCH_WINDOW, observe: Observer | None = None) -> None:
        self._emit = emit
        self._delay = stopped_delay
        self._window = batch_window
        self._observe = observe
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._pending: dict[str, tuple[float, LifecycleEvent]] = {}
        self._thread = threading.Thread(target=self._run, name="libvirt-dispatch", daemon=True)
        self._thread.start()

    def push(self, domain: str | libvirt.virDomain, event: int, detail: int,
             conn: libvirt.virConnect | None = None) -> None:
        """Called on libvirt's event thread: only enqueue, and only what is used.

        `domain` is the event's domain handle (or its UUID). Events nobody uses (DEFINED,
        ...) are dropped here, so they do not wake the dispatcher thread.
        """
        if event in _USED_EVENTS:
            self._queue.put((domain, event, detail, conn))

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
            # Gather the rest of the burst before handling it: one wake-up of this thread
            # per burst instead of one per event, which otherwise contends for the GIL with
            # the threads making libvirt calls (a spawn loop emits an event per call).
            time.sleep(self._window)
            batch = [item]
            while not self._queue.empty():
                batch.append(self._queue.get())
            for next_item in batch:
                if next_item is None:
                    return
                self._take(*next_item)
            self._fire_due()

    def _take(self, domain: str | libvirt.virDomain, event: int, detail: int,
              conn: libvirt.virConnect | None) -> None:
        uuid = domain if isinstance(domain, str) else domain.UUIDString()
        if self._observe is not None and conn is not None and not isinstance(domain, str):
            self._observe(conn, uuid, domain, event)
        self._handle(uuid, event, detail)

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
