"""The libvirt connection manager: event loop, lazy connect, reconnect, callback replay.

libvirt's event implementation is process-wide: it is registered once, before the first
connection is opened (otherwise remote connections have no keepalive and events only arrive
during other API calls), and run on one daemon thread. Each `Connection` owns one; when
libvirtd goes away (close callback, keepalive, or a failed call) it is dropped and reopened
in the background, the lifecycle callback is registered again on the new connection, and
`on_reconnect` is told (the driver resyncs power states from it).

`classify` says what kind of failure a libvirtError is, for the kit's `EngineErrors`: a lost
connection (HypervisorUnavailable, reconnected) and a permission problem (AccessDenied, the
engine is there and QEMU's user cannot reach a file) are kept apart.
"""

from __future__ import annotations

import atexit
import errno
import logging
import pwd
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from virt.driver.errors import EngineFault, FaultKind
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


_CONNECTION_CODES = frozenset({libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                               libvirt.VIR_ERR_INVALID_CONN})
# Errors of these origins are about the connection itself (a socket, the remote daemon).
_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
# "Cannot access storage file '/p' (as uid:64055, gid:64055): Permission denied"
_AS_UID = re.compile(r"'(?P<path>/[^']*)' \(as uid:(?P<uid>\d+), gid:(?P<gid>\d+)\)")


def is_permission_error(exc: libvirt.libvirtError) -> bool:
    """Did libvirt (or QEMU as its user) find a file it may not read or write?"""
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_ACCESS_DENIED:
        return True
    if code == libvirt.VIR_ERR_SYSTEM_ERROR and exc.get_int1() in _PERMISSION_ERRNOS:
        return True
    return "Permission denied" in (exc.get_error_message() or "")


def is_connection_error(exc: libvirt.libvirtError, conn: libvirt.virConnect | None) -> bool:
    """Did this error come from a lost connection rather than from the operation?

    A system error counts only when it comes from the RPC layer (a socket): one from the
    storage or QEMU driver (a file QEMU cannot open) is the operation's, never a reason
    to reconnect.
    """
    if is_permission_error(exc):
        return False
    code = exc.get_error_code()
    if code in _CONNECTION_CODES:
        return True
    if code == libvirt.VIR_ERR_SYSTEM_ERROR and exc.get_error_domain() in _CONNECTION_DOMAINS:
        return True
    if "client socket is closed" in str(exc):
        return True
    if conn is None:
        return False
    try:
        return conn.isAlive() != 1
    except libvirt.libvirtError:
        return True


def classify(exc: BaseException) -> EngineFault | None:
    """What a libvirtError means (for virt.driver.errors.EngineErrors); None for others."""
    if not isinstance(exc, libvirt.libvirtError):
        return None
    code = exc.get_error_code()
    detail = exc.get_error_message() or str(exc)
    if is_permission_error(exc):
        return EngineFault(FaultKind.ACCESS_DENIED, detail, hint=permission_hint(detail))
    if code in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT):
        return EngineFault(FaultKind.NOT_FOUND, detail)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return EngineFault(FaultKind.INVALID_STATE, detail)
    if code == libvirt.VIR_ERR_NO_SUPPORT:
        return EngineFault(FaultKind.UNSUPPORTED, detail)
    if code == libvirt.VIR_ERR_DOM_EXIST:
        return EngineFault(FaultKind.EXISTS, detail)
    if code in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_XML_ERROR,
                libvirt.VIR_ERR_CONFIG_UNSUPPORTED):
        return EngineFault(FaultKind.INVALID_REQUEST, detail)
    if is_connection_error(exc, None):
        return EngineFault(FaultKind.UNAVAILABLE, detail, hint=UNAVAILABLE_HINT)
    return EngineFault(FaultKind.FAILED, detail)


#: Where images_path and instances_path can go so that QEMU's user reaches them.
READABLE_DIRECTORY_HINT = ("set [libvirt] images_path and [DEFAULT] instances_path to a "
                           "directory QEMU's user can traverse, such as /var/lib/virtkit")
UNAVAILABLE_HINT = ("check that libvirtd is running (systemctl start libvirtd); virtkit "
                    "reconnects by itself")


def user_name(uid: int) -> str:
    """`name (uid N)`, or `uid N` for a uid without an account."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def permission_hint(detail: str) -> str:
    """The fix for a permission error: who cannot read what, and the options to set."""
    found = _AS_UID.search(detail)
    if found is None:
        return ("QEMU's user cannot read a file the guest needs: " + READABLE_DIRECTORY_HINT
                + ", or fix the file's permissions")
    return (f"QEMU runs as {user_name(int(found['uid']))}, which cannot read "
            f"{found['path']} (every directory above it needs o+x or that user's group): "
            + READABLE_DIRECTORY_HINT)


class Connection:
    """One libvirt connection, kept open and re-opened; every engine call goes through `call`."""

    def __init__(
        self,
        uri: str,
        *,
        on_lifecycle: LifecycleCallback | None = None,
        keepalive_interval: int = 5,
        keepalive_count: int = 3,
        call_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.uri = uri
        self._on_lifecycle = on_lifecycle
        self._on_reconnect = on_reconnect
        self._opened = False  # once opened, every later open is a reconnect
        self._keepalive = (keepalive_interval, keepalive_count)
        self._call_timeout = call_timeout
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
            if self._conn is not None:
                return self._conn
            self._conn = conn = self._open()
            reopened = self._count_open()
        if reopened:
            self._reconnected()
        return conn

    def _count_open(self) -> bool:
        """Record an open; True if it re-opened a connection that was lost."""
        reopened, self._opened = self._opened, True
        if reopened:
            self.reconnects += 1
            LOG.warning("reconnected to libvirt at %s", self.uri)
        return reopened

    def _reconnected(self) -> None:
        if self._on_reconnect is not None:
            try:
                self._on_reconnect()
            except Exception:  # the connection is fine; only the resync failed
                LOG.exception("after reconnecting to %s", self.uri)

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
        opener.join(self._call_timeout)
        if opener.is_alive():
            raise HypervisorUnavailable(
                f"libvirt at {self.uri} did not answer within {self._call_timeout:.0f}s")
        if "error" in result:
            raise HypervisorUnavailable(
                f"cannot connect to libvirt at {self.uri}: {result['error']}",
                hint="start libvirtd (systemctl start libvirtd) or fix [libvirt] connection_uri",
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
                    reopened = self._count_open()
                except HypervisorUnavailable:
                    reopened = None
            if reopened is None:
                threading.Event().wait(self._reconnect_interval)
            elif reopened:
                self._reconnected()

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
        """Close the connection and stop reconnecting; it may not be used afterwards."""
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
            hint=UNAVAILABLE_HINT)
