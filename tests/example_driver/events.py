"""The engine's change callbacks as lifecycle events, through the kit's transitions.

`PowerStateTracker` turns each new state into the transition it makes (or none), and
resyncs from a listing after a reconnect; `LifecycleDispatcher` delivers the events on its
own thread and holds a STOPPED back for `stopped_event_delay`, so that a reboot (halted,
then running) is not reported as a shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tests.example_driver.states import power_state
from virt.driver.transitions import LifecycleDispatcher, PowerStateTracker
from virt.events import LifecycleEvent
from virt.model import PowerState

#: One engine callback: (guest uuid, its new engine state or None once undefined).
Change = tuple[str, "str | None"]


class EventFeed:
    """Lifecycle events of the guests of one host, emitted with `emit`."""

    def __init__(self, emit: Callable[[LifecycleEvent], None], *,
                 stopped_delay: float) -> None:
        self._tracker = PowerStateTracker()
        self._dispatcher: LifecycleDispatcher[Change | LifecycleEvent] = LifecycleDispatcher(
            emit, stopped_delay=stopped_delay, translate=self._translate, name="example")

    def changed(self, uuid: str, state: str | None) -> None:
        """The engine's callback: guest `uuid` is now in `state` (None: it is gone)."""
        self._dispatcher.push((uuid, state))

    def resync(self, current: Mapping[str, PowerState], *, emit: bool) -> None:
        """Take `current` (every guest's state now) as known; with `emit`, deliver the
        events of what changed since the last known states (a reconnect)."""
        for event in self._tracker.resync(current, emit=emit):
            self._dispatcher.push(event)

    def stop(self) -> None:
        self._dispatcher.stop()

    def _translate(self, item: Change | LifecycleEvent) -> LifecycleEvent | None:
        if isinstance(item, LifecycleEvent):
            return item  # from a resync: already a transition
        uuid, state = item
        change = self._tracker.observe(uuid, None if state is None else power_state(state))
        return LifecycleEvent(uuid, change) if change is not None else None
