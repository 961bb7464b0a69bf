"""Lifecycle events by polling: `vmadm list -p` of virtkit's VMs every `poll_interval`
seconds, diffed by the kit's PowerStateTracker (declared as polling: a change between two
polls that undoes itself is not seen; vminfod's `vmadm events` is not used)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from virt.driver.transitions import PowerStateTracker
from virt.events import LifecycleEvent
from virt.model import PowerState

LOG = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class StatePoller:
    """A thread that lists the power states of virtkit's VMs and emits what changed."""

    def __init__(self, list_states: Callable[[], dict[str, PowerState]],
                 emit: Callable[[LifecycleEvent], None], *, interval: float) -> None:
        self._list_states = list_states
        self._emit = emit
        self._interval = interval
        self._tracker = PowerStateTracker()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set after each successful poll; polls counts them (for tests and health).
        self.polled = threading.Event()
        self.polls = 0

    def start(self) -> None:
        """Take the baseline now (what changes after start is an event, however soon), then
        poll in a thread; a baseline that fails here is taken by the thread."""
        if self._thread is not None:
            return
        try:
            self.poll(emit=False)
            baseline = False
        except Exception as exc:  # the thread retries
            LOG.warning("smartos: the first poll of the VM states failed: %s", exc)
            baseline = True
        self._thread = threading.Thread(target=self._run, args=(baseline,),
                                        name="smartos-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def poll(self, *, emit: bool = True) -> None:
        """One poll: list, diff against the last one, emit the transitions."""
        for event in self._tracker.resync(self._list_states(), emit=emit):
            LOG.debug("smartos: instance %s %s", event.instance_uuid, event.transition.value)
            self._emit(event)
        self.polls += 1
        self.polled.set()

    def _run(self, baseline: bool) -> None:
        backoff = self._interval
        if not baseline:
            self._stop.wait(self._interval)
        while not self._stop.is_set():
            try:
                self.poll(emit=not baseline)
                baseline, backoff = False, self._interval
            except Exception as exc:  # the global zone is away: keep the last states, retry
                LOG.warning("smartos: polling the VM states failed: %s; retrying in %.1fs",
                            exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self._stop.wait(self._interval)
