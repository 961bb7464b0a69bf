"""Lifecycle events and the listener registry every driver uses to emit them."""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)


class Transition(enum.Enum):
    STARTED = "started"
    STOPPED = "stopped"
    PAUSED = "paused"
    RESUMED = "resumed"
    SUSPENDED = "suspended"
    CRASHED = "crashed"


_sequence = itertools.count(1)


@dataclass(frozen=True)
class LifecycleEvent:
    """A guest changed state. `seq` orders events from one process."""

    instance_uuid: str
    transition: Transition
    timestamp: float = field(default_factory=time.time)
    seq: int = field(default_factory=lambda: next(_sequence))


Listener = Callable[[LifecycleEvent], None]


class EventEmitter:
    """Thread-safe listener registry. A failing listener is logged and never breaks the emitter."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def register(self, listener: Listener) -> None:
        if not callable(listener):
            raise TypeError("event listener must be callable")
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def unregister(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, event: LifecycleEvent) -> None:
        if not isinstance(event, LifecycleEvent):
            raise ValueError(f"not a LifecycleEvent: {event!r}")
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                LOG.exception(
                    "event listener %r failed on %s %s",
                    listener,
                    event.instance_uuid,
                    event.transition.value,
                )
