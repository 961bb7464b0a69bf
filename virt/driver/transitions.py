"""Power states to lifecycle events: the diff, the reboot debounce, the resync.

Engines report state in two ways: as events (libvirt, dockerd's stream) or as states read
now and then (a poll, a listing after a reconnect). `transition`/`diff` turn two states into
the events between them; `PowerStateTracker` remembers what was last reported so a resync
after a reconnect emits what changed meanwhile; `LifecycleDispatcher` delivers events on its
own thread and holds a STOPPED back so that a reboot (stop + start) is not a shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from virt.events import LifecycleEvent, Transition
from virt.model import PowerState

LOG = logging.getLogger(__name__)
T = TypeVar("T")

#: States in which a guest is "on" (leaving them is a stop).
ON_STATES = frozenset({PowerState.RUNNING, PowerState.PAUSED})

#: The power state a guest is in after each transition (the inverse of `transition`).
POWER_STATE_AFTER: dict[Transition, PowerState] = {
    Transition.STARTED: PowerState.RUNNING,
    Transition.RESUMED: PowerState.RUNNING,
    Transition.PAUSED: PowerState.PAUSED,
    Transition.STOPPED: PowerState.SHUTDOWN,
    Transition.SUSPENDED: PowerState.SUSPENDED,
    Transition.CRASHED: PowerState.CRASHED,
}


def transition(old: PowerState | None, new: PowerState | None) -> Transition | None:
    """The lifecycle event for a change from `old` to `new` (None: absent), if any."""
    if old == new or new is PowerState.UNKNOWN or old is PowerState.UNKNOWN:
        return None  # an unknown state is no news: the guest did not change
    if new is PowerState.RUNNING:
        return Transition.RESUMED if old in (PowerState.PAUSED, PowerState.SUSPENDED) \
            else Transition.STARTED
    if new is PowerState.PAUSED:
        return Transition.PAUSED
    if new is PowerState.CRASHED:
        return Transition.CRASHED
    if new is PowerState.SUSPENDED:
        return Transition.SUSPENDED
    if old in ON_STATES:
        return Transition.STOPPED
    return None


def diff(old: Mapping[str, PowerState],
         new: Mapping[str, PowerState]) -> list[tuple[str, Transition]]:
    """Transitions that turn the state map `old` into `new`, keyed by instance uuid."""
    changes = []
    for uuid in sorted(set(old) | set(new)):
        change = transition(old.get(uuid), new.get(uuid))
        if change is not None:
            changes.append((uuid, change))
    return changes


class PowerStateTracker:
    """The last power state reported per instance; thread-safe."""

    def __init__(self) -> None:
        self._known: dict[str, PowerState] = {}
        self._lock = threading.Lock()

    def observe(self, uuid: str, state: PowerState | None) -> Transition | None:
        """Record `state` (None: the instance is gone); the transition it makes, if any."""
        with self._lock:
            old = self._known.get(uuid)
            if state is None:
                self._known.pop(uuid, None)
            elif state is not PowerState.UNKNOWN:
                self._known[uuid] = state
        return transition(old, state)

    def resync(self, current: Mapping[str, PowerState], *,
               emit: bool = True) -> list[LifecycleEvent]:
        """Replace what is known with `current` (a fresh listing, e.g. after a reconnect)
        and return the events for what changed meanwhile (none if not `emit`: a baseline)."""
        with self._lock:
            old, self._known = self._known, dict(current)
        if not emit:
            return []
        return [LifecycleEvent(uuid, change) for uuid, change in diff(old, current)]

    def known(self) -> dict[str, PowerState]:
        with self._lock:
            return dict(self._known)


#: Seconds the dispatcher waits after an event for the ones that follow it (its latency bound).
BATCH_WINDOW = 0.05


class LifecycleDispatcher(Generic[T]):
    """Turns raw engine events into LifecycleEvents and delivers them on its own thread.

    `translate` runs on that thread for every pushed item and returns the event (or None to
    drop it). A STOPPED event is held for `stopped_delay` seconds and dropped if any other
    event of the instance arrives meanwhile, so a reboot is not reported as a shutdown. Held
    events wait in a dict with their deadlines (no thread or timer per event); items are
    handled in bursts of up to `batch_window` seconds, in the order they came.
    """

    def __init__(self, emit: Callable[[LifecycleEvent], None], *, stopped_delay: float,
                 translate: Callable[[T], LifecycleEvent | None] | None = None,
                 batch_window: float = BATCH_WINDOW, name: str = "lifecycle") -> None:
        self._emit = emit
        self._delay = stopped_delay
        self._translate = translate
        self._window = batch_window
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[str, tuple[float, LifecycleEvent]] = {}
        self._thread = threading.Thread(target=self._run, name=f"{name}-events", daemon=True)
        self._thread.start()

    def push(self, item: T) -> None:
        """Queue one raw event (a LifecycleEvent when there is no `translate`); any thread."""
        self._queue.put(item)

    def stop(self) -> None:
        self._queue.put(_STOP)

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
            if item is _STOP:
                return
            # Gather the rest of the burst first: one wake-up of this thread per burst, not
            # per event, so it does not contend for the GIL with the threads making calls.
            time.sleep(self._window)
            batch = [item]
            while not self._queue.empty():
                batch.append(self._queue.get())
            for next_item in batch:
                if next_item is _STOP:
                    return
                self._take(next_item)
            self._fire_due()

    def _take(self, item: Any) -> None:
        try:
            event = self._translate(item) if self._translate is not None else item
        except Exception:  # one bad event must not stop the delivery of the others
            LOG.exception("could not translate engine event %r", item)
            return
        if event is None:
            return
        self._pending.pop(event.instance_uuid, None)
        if event.transition is Transition.STOPPED and self._delay > 0:
            self._pending[event.instance_uuid] = (time.monotonic() + self._delay, event)
            return
        self._emit(event)

    def _fire_due(self) -> None:
        now = time.monotonic()
        for uuid, (deadline, event) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[uuid]
                self._emit(event)


_STOP = object()
