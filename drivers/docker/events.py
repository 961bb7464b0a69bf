"""A thread turning dockerd's event stream into lifecycle events, across daemon restarts.

The stream is read in windows (`since`/`until`), so it always ends on its own; its opening
is bounded by socket timeouts and a watchdog closes a window that overstays (a daemon that
hangs). A window that ends early, or a
failed connection, means the daemon went away: the watcher backs off until it answers,
then lists the containers and emits what changed meanwhile (resync).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import docker.utils
from docker.types.daemon import CancellableStream

from drivers.docker import spec, states
from drivers.docker.connection import Engine
from virt.driver.transitions import PowerStateTracker
from virt.events import LifecycleEvent
from virt.model import PowerState

LOG = logging.getLogger(__name__)

ACTIONS = ("start", "die", "oom", "pause", "unpause", "destroy")
MAX_BACKOFF = 5.0

StateLister = Callable[[], dict[str, PowerState]]
Emit = Callable[[LifecycleEvent], None]
#: (container id, exit code, OOM event seen) -> the PowerState of a container that died.
ExitStater = Callable[[str, int, bool], PowerState]


def _exit_state_from_event(_container_id: str, exit_code: int, oom: bool) -> PowerState:
    return states.exit_state(exit_code, oom)


class EventWatcher:
    """Watches the containers of one host and emits their lifecycle events."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        list_states: StateLister,
        emit: Emit,
        window: float = 5.0,
        resync_interval: float = 60.0,
        exit_state: ExitStater = _exit_state_from_event,
        removed: Callable[[str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._filters = {"type": ["container"], "label": spec.host_filters(host),
                         "event": list(ACTIONS)}
        self._list_states = list_states
        self._emit = emit
        self._exit_state = exit_state
        self._removed = removed
        self._window = window
        self._resync_interval = resync_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._tracker = PowerStateTracker()
        self._oom: set[str] = set()
        self._seen: collections.deque[tuple[str, int, str]] = collections.deque(maxlen=512)
        #: Set each time the watcher (re)synchronised with the daemon; for tests and health.
        self.synced = threading.Event()
        self.resyncs = 0

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; returns within about `timeout` seconds."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            _close_quietly(stream)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.25
        need_resync, baseline = True, True
        since = time.time()
        last_resync = 0.0
        while not self._stop.is_set():
            try:
                if need_resync or time.monotonic() - last_resync > self._resync_interval:
                    since = time.time() - 1.0
                    self._resync(emit=not baseline)
                    need_resync, baseline = False, False
                    last_resync = time.monotonic()
                    backoff = 0.25
                until = time.time() + self._window
                if not self._read_window(since, until):
                    need_resync = True
                since = until - 1.0  # overlap; duplicates are dropped by key
            except Exception as exc:  # the daemon is away or answered nonsense: back off
                if self._stop.is_set():
                    break
                LOG.debug("docker event watcher: %s; retrying in %.2fs", exc, backoff)
                need_resync = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _read_window(self, since: float, until: float) -> bool:
        """Read events in [since, until]; False if the stream ended early (daemon gone)."""
        stream = open_stream(
            self._engine.api, since=since, until=until, filters=self._filters,
            timeout=(self._engine.timeout, self._window + self._engine.timeout),
        )
        self._stream = stream
        cut = threading.Event()

        def watchdog_fired() -> None:
            cut.set()
            _close_quietly(stream)

        grace = self._engine.timeout
        watchdog = threading.Timer(max(until - time.time(), 0) + grace, watchdog_fired)
        watchdog.daemon = True
        watchdog.start()
        try:
            for event in stream:
                self.handle(event)
                if self._stop.is_set():
                    return True
        finally:
            watchdog.cancel()
            self._stream = None
            _close_quietly(stream)
        if self._stop.is_set():
            return True
        if cut.is_set():
            LOG.warning("docker event stream hung past its window; reconnecting")
            return False
        return time.time() >= until - min(0.5, self._window / 2)

    def _resync(self, *, emit: bool) -> None:
        current = self._list_states()
        for event in self._tracker.resync(current, emit=emit):
            LOG.info("docker resync: instance %s %s", event.instance_uuid, event.transition.value)
            self._emit(event)
        self._oom &= set(current)
        self.resyncs += 1
        self.synced.set()

    # -- one event -------------------------------------------------------------------------

    def handle(self, event: Mapping[str, Any]) -> None:
        """Apply one decoded daemon event to the tracked states and emit its transition."""
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        uuid = attributes.get(spec.LABEL_UUID)
        action = str(event.get("Action") or event.get("status") or "")
        if not uuid or action not in ACTIONS:
            return
        key = (str(actor.get("ID", "")), int(event.get("timeNano") or 0), action)
        if key in self._seen:
            return
        self._seen.append(key)
        if action == "oom":
            self._oom.add(uuid)
            return
        new = self._state_after(uuid, str(actor.get("ID", "")), action, attributes)
        if new is None:
            self._oom.discard(uuid)
        change = self._tracker.observe(uuid, new)
        if change is None:
            return
        stamp = int(event.get("timeNano") or 0) / 1e9 or time.time()
        self._emit(LifecycleEvent(uuid, change, timestamp=stamp))

    def _state_after(
        self, uuid: str, container_id: str, action: str, attributes: Mapping[str, Any]
    ) -> PowerState | None:
        if action in ("start", "unpause"):
            self._oom.discard(uuid)
            return PowerState.RUNNING
        if action == "pause":
            return PowerState.PAUSED
        if action == "die":
            try:
                code = int(attributes.get("exitCode", 0))
            except ValueError:
                code = -1
            try:
                return self._exit_state(container_id, code, uuid in self._oom)
            except Exception as exc:  # the daemon went away meanwhile: read the event alone
                LOG.debug("docker event watcher: exit state of %s: %s", container_id, exc)
                return states.exit_state(code, uuid in self._oom)
        if self._removed is not None:  # destroy
            self._removed(container_id)
        return None


def open_stream(
    api: Any, *, since: float, until: float, filters: Mapping[str, Any],
    timeout: tuple[float, float],
) -> CancellableStream:
    """GET /events like docker-py's events(), but with a (connect, read) socket timeout.

    docker-py opens the stream with no timeout at all, so a daemon that accepts the
    connection and never answers would hold the watcher (and its stop()) forever; the
    watchdog can only cut a stream that has opened. The read timeout outlasts a window
    without events, in which dockerd sends nothing until it ends the stream at `until`.
    """
    params = {
        "since": f"{since:.6f}",
        "until": f"{until:.6f}",
        "filters": docker.utils.convert_filters(dict(filters)),
    }
    # docker-py's private helpers, as its events() uses them: events() takes no timeout.
    response = api._get(api._url("/events"), params=params, stream=True, timeout=timeout)
    api._raise_for_status(response)
    return CancellableStream(api._stream_helper(response, decode=True), response)


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception:  # closing a dead stream may fail in many ways; it is closed either way
        LOG.debug("closing the docker event stream failed", exc_info=True)
