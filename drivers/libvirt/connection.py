"""The libvirt connection manager: event loop, lazy connect, reconnect, callback replay.

libvirt's event implementation is process-wide: it is registered once, before the first
connection is opened (otherwise remote connections have no keepalive and events only arrive
during other API calls), and run on one daemon thread. Each `Host` owns one connection; when
libvirtd goes away (close callback, keepalive, or a failed call) it is dropped and reopened
in the background, and the lifecycle callback is registered again on the new connection.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from virt.errors import HypervisorUnavailable

LOG = logging.getLogger(__name__)
T = TypeVar("T")

#: (domain handle, libvirt event, libvirt detail, connection) for each lifecycle event.
#: Called on libvirt's event thread, which it must not hold up.
LifecycleCallback = Callable[[libvirt.virDomain, int, int, libvirt.virConnect], None]


class _EventLoop:
    """libvirt's default event implementation, run on one daemon thread per process."""

    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _stop = threading.Event()

    @classmethod
    def ensure_running(cls) -> None:
        with cls._lock:
            if cls._thread is not None:
                return
            # libvirt prints every error to stderr unless a handler is set; we raise them.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            libvirt.virEventRegisterDefaultImpl()
            # A periodic timer makes the loop wake up, so it can notice a stop request.
            libvirt.virEventAddTimeout(500, lambda _timer, _opaque: None, None)
            cls._thread = threading.Thread(target=cls._run, name="libvirt-events", daemon=True)
            cls._thread.start()
            atexit.register(cls.stop)

    @classmethod
    def _run(cls) -> None:
        while not cls._stop.is_set():
            if libvirt.virEventRunDefaultImpl() < 0:
                cls._stop.wait(0.1)

    @classmethod
    def stop(cls) -> None:
        cls._stop.set()
        if cls._thread is not None:
            cls._thread.join(timeout=2)


def is_connection_error(exc: libvirt.libvirtError, conn: libvirt.virConnect | None) -> bool:
    """Did this error come from a lost connection rather than from the operation?"""
    if exc.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                                libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN):
        return True
    if "client socket is closed" in str(exc):
        return True
    if conn is None:
        return False
    try:
        return conn.isAlive() != 1
    except libvirt.libvirtError:
        return True


class Host:
    """One libvirt connection, kept open and re-opened; every engine call goes through `call`."""

    def __init__(
        self,
        uri: str,
        *,
        on_lifecycle: LifecycleCallback | None = None,
        keepalive_interval: int = 5,
        keepalive_count: int = 3,
        connect_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        self.uri = uri
        self._on_lifecycle = on_lifecycle
        self._keepalive = (keepalive_interval, keepalive_count)
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.RLock()  # connect, reconnect and callback registration
        self._closed = False
        self._lost = threading.Event()
        self._watcher: threading.Thread | None = None
        self.reconnects = 0
        # Domain handles by UUID, valid for `_handles_conn` only (see `lookup`).
        self._handles: dict[str, libvirt.virDomain] = {}
        self._handles_conn: libvirt.virConnect | None = None
        self._event_ids: dict[libvirt.virConnect, int] = {}
        self._watching = False  # lifecycle events subscribed (see watch_lifecycle)
        self._dead: list[libvirt.virConnect] = []  # lost connections not yet released

    # -- connection ------------------------------------------------------------------------

    def connection(self) -> libvirt.virConnect:
        """The open connection, opening it first if needed; HypervisorUnavailable if it can't."""
        conn = self._conn
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise HypervisorUnavailable(f"the libvirt connection to {self.uri} was closed")
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def _open(self) -> libvirt.virConnect:
        _EventLoop.ensure_running()
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["conn"] = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                result["error"] = exc

        # libvirt.open has no timeout of its own (an ssh URI can hang): bound it here.
        opener = threading.Thread(target=target, name="libvirt-open", daemon=True)
        opener.start()
        opener.join(self._connect_timeout)
        if opener.is_alive():
            raise HypervisorUnavailable(
                f"libvirt at {self.uri} did not answer within {self._connect_timeout:.0f}s")
        if "error" in result:
            raise HypervisorUnavailable(
                f"cannot connect to libvirt at {self.uri}: {result['error']}",
                hint="start libvirtd (scripts/testbed up libvirt) or fix [libvirt] connection_uri",
            )
        conn: libvirt.virConnect = result["conn"]
        if conn.getType() != "TEST":  # the embedded test driver has neither keepalive nor close
            try:
                conn.setKeepAlive(*self._keepalive)
            except libvirt.libvirtError as exc:
                LOG.debug("keepalive not available on %s: %s", self.uri, exc)
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError as exc:
            LOG.debug("close callback not available on %s: %s", self.uri, exc)
        if self._watching:
            self._subscribe(conn)
        self._lost.clear()
        self._ensure_watcher()
        LOG.info("connected to libvirt at %s", self.uri)
        return conn

    def watch_lifecycle(self) -> None:
        """Deliver lifecycle events to `on_lifecycle` from now on, on this connection and on
        every one reopened after it.

        Not done before it is asked for: libvirt-python delivers every event of every domain
        on its event thread, which slows each call of the connection (~17 us per event).
        """
        with self._lock:
            if self._watching:
                return
            self._watching = True
            if self._conn is not None:
                self._subscribe(self._conn)

    def _subscribe(self, conn: libvirt.virConnect) -> None:
        if self._on_lifecycle is None or conn in self._event_ids:
            return
        try:
            self._event_ids[conn] = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb, None)
        except libvirt.libvirtError as exc:
            # A connection lost meanwhile: the reconnect subscribes again on the new one.
            LOG.warning("cannot subscribe to lifecycle events on %s: %s", self.uri, exc)

    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque: Any) -> None:
        # Runs on the event-loop thread: no libvirt calls here, only hand over.
        if conn is self._conn or self._conn is None:
            self._conn = None
            self._handles, self._handles_conn = {}, None
            self._dead.append(conn)  # released by the watcher thread
            self._lost.set()

    def _drop(self, conn: libvirt.virConnect) -> None:
        with self._lock:
            current = self._conn is conn
            if not current:
                return
            self._conn = None
            self._handles, self._handles_conn = {}, None
            self._lost.set()
        self._release(conn)

    def _release(self, conn: libvirt.virConnect) -> None:
        """Deregister our callbacks from `conn` and close it.

        Each callback holds a reference on the connection: without this, close() leaves it
        open and its callbacks keep firing (and costing) for every later domain event.
        """
        event_id = self._event_ids.pop(conn, None)
        steps: list[Callable[[], object]] = [conn.unregisterCloseCallback, conn.close]
        if event_id is not None:
            steps.insert(0, lambda: conn.domainEventDeregisterAny(event_id))
        for step in steps:
            try:
                step()
            except libvirt.libvirtError:
                pass  # a dead connection refuses; closing it still frees it

    def _ensure_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch, name="libvirt-reconnect",
                                             daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        """Reopen a lost connection in the background, so events flow again without a call."""
        while not self._closed:
            self._lost.wait()
            if self._closed:
                return
            for dead in self._take_dead():
                self._release(dead)
            with self._lock:
                if self._conn is not None:
                    self._lost.clear()
                    continue
                try:
                    self._conn = self._open()
                    self.reconnects += 1
                    LOG.warning("reconnected to libvirt at %s", self.uri)
                    continue
                except HypervisorUnavailable:
                    pass
            threading.Event().wait(self._reconnect_interval)

    def _lifecycle_cb(self, conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        # No libvirt call here (not even dom.UUIDString()): each one releases and re-takes
        # the GIL on this thread, contending with the threads making the driver's calls.
        if self._on_lifecycle is not None:
            self._on_lifecycle(dom, event, detail, conn)

    def observe(self, conn: libvirt.virConnect, uuid: str, dom: libvirt.virDomain,
                event: int) -> None:
        """Keep the handle cache in step with a lifecycle event (off the event thread)."""
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self._handles.pop(uuid, None)
        elif conn is self._handles_conn and uuid in self._handles:
            # The event's handle carries the domain's current ID: keep it instead of ours.
            self._handles[uuid] = dom

    def close(self) -> None:
        """Close the connection and stop reconnecting; the Host may not be used afterwards."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            self._handles, self._handles_conn = {}, None
            self._lost.set()
        for dead in self._take_dead():
            self._release(dead)
        if conn is not None:
            self._release(conn)

    def _take_dead(self) -> list[libvirt.virConnect]:
        dead, self._dead = self._dead, []
        return dead

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # -- domain handles --------------------------------------------------------------------

    def lookup(self, conn: libvirt.virConnect, uuid: str, *, fresh: bool = False
               ) -> libvirt.virDomain | None:
        """The domain with this UUID on `conn`, or None if there is none.

        Handles are kept: libvirt resolves every call on a handle by UUID on the server,
        so a kept handle saves a lookup round trip per call. A call on the handle of a
        domain that is gone fails with VIR_ERR_NO_DOMAIN; the caller then `forget`s it.
        `fresh` asks libvirt even when a handle is kept (existence checks).
        """
        handles = self._handles_for(conn)
        dom = None if fresh else handles.get(uuid)
        if dom is None:
            try:
                dom = conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                handles.pop(uuid, None)
                return None
            handles[uuid] = dom
        return dom

    def remember(self, conn: libvirt.virConnect, uuid: str, dom: libvirt.virDomain) -> None:
        """Keep the handle libvirt returned when the domain was defined."""
        self._handles_for(conn)[uuid] = dom

    def _handles_for(self, conn: libvirt.virConnect) -> dict[str, libvirt.virDomain]:
        if self._handles_conn is not conn:  # a new connection: the old handles are dead
            self._handles, self._handles_conn = {}, conn
        return self._handles

    def forget(self, uuid: str) -> None:
        """Drop the kept handle of a domain that was undefined or found gone."""
        self._handles.pop(uuid, None)

    # -- calls -----------------------------------------------------------------------------

    def call(self, fn: Callable[[libvirt.virConnect], T], *, idempotent: bool = True) -> T:
        """Run `fn(conn)`; on a lost connection reconnect and retry once if `idempotent`.

        Errors that are not about the connection propagate unchanged.
        """
        conn = self.connection()
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            if not is_connection_error(exc, conn):
                raise
            self._drop(conn)
            if not idempotent:
                raise self._unavailable(exc) from None
        try:
            conn = self.connection()
            return fn(conn)
        except libvirt.libvirtError as exc:
            if is_connection_error(exc, conn):
                self._drop(conn)
                raise self._unavailable(exc) from None
            raise

    def _unavailable(self, exc: libvirt.libvirtError) -> HypervisorUnavailable:
        return HypervisorUnavailable(
            f"lost the connection to libvirt at {self.uri}: {exc.get_error_message()}",
            hint="check that libvirtd is running; virtkit reconnects by itself",
        )
