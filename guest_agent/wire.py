"""A xenstore client speaking the real wire protocol (xs_wire.h).

Every message is a `struct xsd_sockmsg` header (type, req_id, tx_id, len; native little-endian
u32) followed by `len` bytes of NUL-separated payload. It works over the xenbus character
device of a domU (`/dev/xen/xenbus`) or the Unix socket of a xenstored (`XENSTORED_PATH`).
Replies are matched to requests by req_id; watch events arrive on a queue. Every call is
bounded by a timeout. Pure protocol, shared by both ends: the guest's xenbus transport and
the host's xenstore channel (`virt.agent`) import this one client.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
import queue
import select
import socket
import stat
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

HEADER = struct.Struct("<IIII")
PAYLOAD_MAX = 4096
#: Watch events are hints (the reader re-reads state); a queue nobody drains drops the oldest.
EVENT_QUEUE_MAX = 1024
ROUTE_QUEUE_MAX = 64
RETIRED_TOKENS = 4096
XENBUS_DEVICE = "/dev/xen/xenbus"


class XsType(enum.IntEnum):
    """Message types of enum xsd_sockmsg_type."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


#: The error strings of xsd_errors[], as they travel in an XS_ERROR payload.
ERROR_NAMES = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)  # fmt: skip


class XenstoreError(Exception):
    """xenstored answered with an error (`name` is e.g. "ENOENT") or the link failed."""

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"xenstore error {name}")
        self.name = name
        self.errno = getattr(errno, name, errno.EIO)


class XenstoreTimeout(XenstoreError):
    def __init__(self, what: str, timeout: float) -> None:
        super().__init__("ETIMEDOUT", f"xenstore did not answer {what} within {timeout:g}s")


class XenstoreClosed(XenstoreError):
    def __init__(self) -> None:
        super().__init__("EPIPE", "the xenstore connection is closed")


@dataclass(frozen=True)
class WatchEvent:
    path: str
    token: str


class _Pending:
    __slots__ = ("done", "kind", "payload")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.kind = -1
        self.payload = b""


class XenstoreClient:
    """One connection to xenstored; thread-safe; `timeout` bounds every request."""

    def __init__(self, path: str | None = None, *, timeout: float = 10.0) -> None:
        self.path = path or os.environ.get("XENSTORED_PATH") or XENBUS_DEVICE
        self.timeout = timeout
        self.events: queue.Queue[WatchEvent] = queue.Queue(EVENT_QUEUE_MAX)
        self._routes: dict[str, queue.Queue[WatchEvent]] = {}
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        self._open()
        self._reader = threading.Thread(target=self._read_loop, name="xenstore-reader", daemon=True)
        self._reader.start()

    def _open(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
            if stat.S_ISSOCK(mode):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                sock.settimeout(None)
                self._sock = sock
            else:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise XenstoreError(
                "ENOENT", f"cannot open xenstore at {self.path}: {exc.strerror}"
            ) from None

    # -- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._fd is not None:
            os.close(self._fd)
        self._fail_pending()

    def __enter__(self) -> XenstoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _fail_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for item in pending.values():
            item.done.set()

    def _recv_exact(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            if self._sock is not None:
                chunk = self._sock.recv(left)
            else:
                assert self._fd is not None
                ready, _, _ = select.select([self._fd], [], [], 0.5)
                if not ready:
                    if self._closed.is_set():
                        return b""
                    continue
                chunk = os.read(self._fd, left)
            if not chunk:
                return b""
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read_loop(self) -> None:
        try:
            while not self._closed.is_set():
                header = self._recv_exact(HEADER.size)
                if len(header) < HEADER.size:
                    break
                kind, req_id, _tx, length = HEADER.unpack(header)
                payload = self._recv_exact(length) if length else b""
                if len(payload) < length:
                    break
                if kind == XsType.WATCH_EVENT:
                    parts = payload.split(b"\0")
                    if len(parts) >= 2:
                        self._route(WatchEvent(_text(parts[0]), _text(parts[1])))
                    continue
                with self._lock:
                    item = self._pending.pop(req_id, None)
                if item is not None:  # a reply to a request that timed out is dropped
                    item.kind, item.payload = kind, payload
                    item.done.set()
        except (OSError, ValueError):
            pass
        finally:
            self._closed.set()
            self._fail_pending()

    def _route(self, event: WatchEvent) -> None:
        """Deliver an event to its token's subscriber, else to `events`; never blocks."""
        with self._lock:
            target = self._routes.get(event.token)
            if target is None and event.token in self._retired:
                return  # a straggler for a finished subscription: nobody waits for it
        target = self.events if target is None else target
        while True:
            try:
                target.put_nowait(event)
                return
            except queue.Full:
                try:
                    target.get_nowait()  # drop the oldest hint
                except queue.Empty:
                    pass

    def request(
        self, kind: XsType, payload: bytes, *, tx: int = 0, timeout: float | None = None
    ) -> bytes:
        """Send one message and wait for its reply payload; XS_ERROR raises XenstoreError."""
        if len(payload) > PAYLOAD_MAX:
            raise XenstoreError(
                "E2BIG", f"xenstore payload of {len(payload)} bytes exceeds {PAYLOAD_MAX}"
            )
        if self._closed.is_set():
            raise XenstoreClosed()
        req_id = next(self._ids) & 0xFFFFFFFF
        item = _Pending()
        with self._lock:
            self._pending[req_id] = item
        message = HEADER.pack(int(kind), req_id, tx, len(payload)) + payload
        try:
            with self._send_lock:
                if self._sock is not None:
                    self._sock.sendall(message)
                else:
                    assert self._fd is not None
                    os.write(self._fd, message)
        except OSError:
            self.close()
            raise XenstoreClosed() from None
        limit = self.timeout if timeout is None else timeout
        if not item.done.wait(limit):
            with self._lock:
                self._pending.pop(req_id, None)
            raise XenstoreTimeout(kind.name, limit)
        if item.kind == -1:
            raise XenstoreClosed()
        if item.kind == XsType.ERROR:
            raise XenstoreError(_text(item.payload.rstrip(b"\0")) or "EINVAL")
        return item.payload

    # -- operations --------------------------------------------------------------------------

    def read(self, path: str, *, tx: int = 0) -> bytes:
        return self.request(XsType.READ, _arg(path), tx=tx)

    def read_text(self, path: str, *, tx: int = 0) -> str | None:
        """The value as text, or None when the node does not exist."""
        try:
            return self.read(path, tx=tx).decode("utf-8", "replace")
        except XenstoreError as exc:
            if exc.name == "ENOENT":
                return None
            raise

    def write(self, path: str, value: bytes | str, *, tx: int = 0) -> None:
        data = value.encode("utf-8") if isinstance(value, str) else value
        self.request(XsType.WRITE, _arg(path) + data, tx=tx)

    def mkdir(self, path: str, *, tx: int = 0) -> None:
        self.request(XsType.MKDIR, _arg(path), tx=tx)

    def rm(self, path: str, *, tx: int = 0, missing_ok: bool = True) -> None:
        try:
            self.request(XsType.RM, _arg(path), tx=tx)
        except XenstoreError as exc:
            if not (missing_ok and exc.name == "ENOENT"):
                raise

    def directory(self, path: str, *, tx: int = 0) -> list[str]:
        payload = self.request(XsType.DIRECTORY, _arg(path), tx=tx)
        return [_text(name) for name in payload.split(b"\0") if name]

    def exists(self, path: str, *, tx: int = 0) -> bool:
        try:
            self.read(path, tx=tx)
        except XenstoreError as exc:
            if exc.name == "ENOENT":
                return False
            raise
        return True

    def get_perms(self, path: str, *, tx: int = 0) -> list[str]:
        payload = self.request(XsType.GET_PERMS, _arg(path), tx=tx)
        return [_text(p) for p in payload.split(b"\0") if p]

    def set_perms(self, path: str, perms: list[str], *, tx: int = 0) -> None:
        self.request(XsType.SET_PERMS, _arg(path) + b"".join(_arg(p) for p in perms), tx=tx)

    def watch(self, path: str, token: str) -> None:
        """Register a watch; xenstored fires it once at once, then on every change under path."""
        self.request(XsType.WATCH, _arg(path) + _arg(token))

    def unwatch(self, path: str, token: str) -> None:
        self.request(XsType.UNWATCH, _arg(path) + _arg(token))

    def subscribe(self, token: str) -> queue.Queue[WatchEvent]:
        """A private queue for the events of `token` (they no longer reach `events`).

        Use a token unique to the subscription; after `unsubscribe` late events carrying it
        are dropped, so they can never wake anybody else's wait.
        """
        routed: queue.Queue[WatchEvent] = queue.Queue(ROUTE_QUEUE_MAX)
        with self._lock:
            self._routes[token] = routed
            self._retired.pop(token, None)
        return routed

    def unsubscribe(self, token: str) -> None:
        with self._lock:
            self._routes.pop(token, None)
            self._retired[token] = None
            while len(self._retired) > RETIRED_TOKENS:
                self._retired.popitem(last=False)

    def wait_event(self, timeout: float) -> WatchEvent | None:
        try:
            return self.events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def transaction_start(self) -> int:
        return int(self.request(XsType.TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, *, commit: bool = True) -> None:
        """Commit (or abort); a conflicting commit raises XenstoreError("EAGAIN")."""
        self.request(XsType.TRANSACTION_END, b"T\0" if commit else b"F\0", tx=tx)

    def get_domain_path(self, domid: int) -> str:
        return _text(self.request(XsType.GET_DOMAIN_PATH, _arg(str(domid))).rstrip(b"\0"))


def _arg(text: str) -> bytes:
    return text.encode("utf-8") + b"\0"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
