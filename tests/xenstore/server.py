"""A xenstore server for tests: the real wire protocol on Unix sockets, never shipped.

It follows the C xenstored's documented rules closely enough for the real `xenstore-*` tools
and for our agent: NUL-separated payloads, errors as XS_ERROR with the errno name, paths
relative to /local/domain/<domid>, per-domain permissions (owner first, then ACL entries;
unprivileged domains own what they create), watches that fire on registration and on any
change at or below their path (and on removal of an ancestor), snapshot transactions that
fail with EAGAIN when something they touched changed, a 2048-byte per-value quota for
guests, and connections that act as a given domain (`domain_socket`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import tempfile
import threading
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)

HEADER = struct.Struct("<IIII")
PAYLOAD_MAX = 4096
ABS_PATH_MAX = 3072
GUEST_VALUE_QUOTA = 2048

# enum xsd_sockmsg_type (xs_wire.h), written out here so the server does not borrow the client.
DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END = 1, 2, 3, 4, 5, 6, 7
INTRODUCE, RELEASE, GET_DOMAIN_PATH, WRITE, MKDIR, RM, SET_PERMS = 8, 9, 10, 11, 12, 13, 14
WATCH_EVENT, ERROR, IS_DOMAIN_INTRODUCED, RESET_WATCHES = 15, 16, 17, 21

_VALID_PATH = re.compile(r"^[A-Za-z0-9/_@-]+$")


class XsErr(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass
class Node:
    value: bytes = b""
    perms: list[tuple[int, str]] = field(default_factory=lambda: [(0, "n")])
    children: set[str] = field(default_factory=set)

    def copy(self) -> Node:
        return Node(self.value, list(self.perms), set(self.children))


@dataclass(frozen=True)
class Event:
    path: str
    node: Node
    removed: bool = False


@dataclass
class Watch:
    conn: Connection
    path: str  # absolute (or @special)
    token: str
    relative_to: str | None  # domain path the watcher used a relative path from


@dataclass
class Transaction:
    tx_id: int
    start_gen: int
    nodes: dict[str, Node]
    touched: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    changes: list[Event] = field(default_factory=list)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _under(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top + "/")


class Connection:
    def __init__(self, server: XenstoreServer, sock: socket.socket, domid: int) -> None:
        self.server, self.sock, self.domid = server, sock, domid
        self.send_lock = threading.Lock()
        self.transactions: dict[int, Transaction] = {}

    @property
    def domain_path(self) -> str:
        return f"/local/domain/{self.domid}"

    def send(self, kind: int, req_id: int, tx_id: int, payload: bytes) -> None:
        try:
            with self.send_lock:
                self.sock.sendall(HEADER.pack(kind, req_id, tx_id, len(payload)) + payload)
        except OSError:
            pass

    def serve(self) -> None:
        try:
            while True:
                header = self._recv(HEADER.size)
                if header is None:
                    return
                kind, req_id, tx_id, length = HEADER.unpack(header)
                if length > PAYLOAD_MAX:  # xenstored drops such a client
                    return
                payload = self._recv(length) if length else b""
                if payload is None:
                    return
                self.server.dispatch(self, kind, req_id, tx_id, payload)
        finally:
            self.server.drop(self)

    def _recv(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = self.sock.recv(size - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return data


class XenstoreServer:
    """Serve a store on `path` (dom0); `domain_socket(domid)` adds a socket acting as a domU."""

    def __init__(self, path: str | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="xs-")
        self.path = path or os.path.join(self._dir, "xenstored.sock")
        self.nodes: dict[str, Node] = {
            "/": Node(children={"local", "tool"}),
            "/local": Node(children={"domain"}),
            "/local/domain": Node(),
            "/tool": Node(),
        }
        self.lock = threading.RLock()
        self.gen = 0
        self.modified: dict[str, int] = {}
        self.watches: list[Watch] = []
        self.domains: set[int] = {0}
        self.connections: set[Connection] = set()
        self._listeners: list[socket.socket] = []
        self._next_tx = 1
        self.requests = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> XenstoreServer:
        self._listen(self.path, 0)
        return self

    def domain_socket(self, domid: int) -> str:
        """A Unix socket whose connections act as domain `domid` (its /dev/xen/xenbus)."""
        path = os.path.join(self._dir, f"domain-{domid}.sock")
        if not os.path.exists(path):
            self._listen(path, domid)
        return path

    def _listen(self, path: str, domid: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(16)
        self._listeners.append(sock)
        threading.Thread(target=self._accept, args=(sock, domid), daemon=True).start()

    def _accept(self, listener: socket.socket, domid: int) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            conn = Connection(self, sock, domid)
            with self.lock:
                self.connections.add(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        for conn in list(self.connections):
            self._close(conn)
        for name in os.listdir(self._dir):
            os.unlink(os.path.join(self._dir, name))
        os.rmdir(self._dir)

    def _close(self, conn: Connection) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.sock.close()

    def drop(self, conn: Connection) -> None:
        with self.lock:
            self.connections.discard(conn)
            self.watches = [w for w in self.watches if w.conn is not conn]
        self._close(conn)

    # -- domains (what the toolstack does) ---------------------------------------------------

    def introduce_domain(self, domid: int, name: str = "guest") -> str:
        """Create /local/domain/<domid> as a toolstack would; returns the domain path."""
        base = f"/local/domain/{domid}"
        guest_ro = [(0, "n"), (domid, "r")]
        with self.lock:
            self.domains.add(domid)
            events: list[Event] = []
            self._set(self.nodes, base, b"", guest_ro, events)
            self._set(self.nodes, f"{base}/name", name.encode(), guest_ro, events)
            self._set(self.nodes, f"{base}/domid", str(domid).encode(), guest_ro, events)
            self._set(self.nodes, f"{base}/vm-data", b"", guest_ro, events)
            self._set(self.nodes, f"{base}/data", b"", [(domid, "n")], events)
            events.append(Event("@introduceDomain", Node()))
        self._fire(events)
        return base

    def release_domain(self, domid: int) -> None:
        """The domain is gone (destroyed or rebooting): its tree and connections vanish."""
        events: list[Event] = []
        with self.lock:
            self.domains.discard(domid)
            self._remove(self.nodes, f"/local/domain/{domid}", events)
            events.append(Event("@releaseDomain", Node()))
            gone = [c for c in self.connections if c.domid == domid]
        self._fire(events)
        for conn in gone:
            self._close(conn)

    # -- store primitives (on the live store or a transaction's snapshot) ---------------------

    def _touch(self, path: str) -> None:
        self.gen += 1
        self.modified[path] = self.gen

    def _set(self, nodes: dict[str, Node], path: str, value: bytes, perms: list[tuple[int, str]] | None,
             events: list[Event], owner: int = 0, tx: Transaction | None = None) -> None:  # fmt: skip
        """Create or overwrite `path` (and missing ancestors, which inherit permissions)."""
        missing = []
        cursor = path
        while cursor not in nodes:
            missing.append(cursor)
            cursor = _parent(cursor)
        for new in reversed(missing):
            parent = nodes[_parent(new)]
            inherited = list(parent.perms)
            if owner != 0:  # unprivileged domains own what they create
                inherited[0] = (owner, inherited[0][1])
            nodes[new] = Node(perms=inherited)
            parent.children.add(_name(new))
            self._mark(_parent(new), tx)
            self._mark(new, tx)
        node = nodes[path]
        node.value = value
        if perms is not None:
            node.perms = list(perms)
        self._mark(path, tx)
        events.append(Event(path, node))

    def _remove(self, nodes: dict[str, Node], path: str, events: list[Event],
                tx: Transaction | None = None) -> None:  # fmt: skip
        node = nodes.pop(path)
        self._mark(path, tx)
        for child in node.children:
            self._remove(nodes, f"{path}/{child}".replace("//", "/"), [], tx)
        parent = nodes.get(_parent(path))
        if parent is not None:
            parent.children.discard(_name(path))
            self._mark(_parent(path), tx)
        events.append(Event(path, node, removed=True))

    def _mark(self, path: str, tx: Transaction | None) -> None:
        if tx is None:
            self._touch(path)
        else:
            tx.dirty.add(path)
            tx.touched.add(path)

    # -- permissions -------------------------------------------------------------------------

    @staticmethod
    def allowed(domid: int, node: Node, need: str) -> bool:
        if domid == 0:
            return True
        owner, default = node.perms[0]
        if owner == domid:
            return True
        perm = next((p for d, p in node.perms[1:] if d == domid), default)
        return perm == "b" or perm == need

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(
        self, conn: Connection, kind: int, req_id: int, tx_id: int, payload: bytes
    ) -> None:
        events: list[Event] = []
        self.requests += 1
        try:
            with self.lock:
                reply = self._handle(conn, kind, tx_id, payload, events)
        except XsErr as err:
            LOG.debug("xenstore type %d from dom%d: %s", kind, conn.domid, err.name)
            conn.send(ERROR, req_id, tx_id, err.name.encode() + b"\0")
            return
        conn.send(kind, req_id, tx_id, reply)
        if kind == WATCH:
            path, token = self._args(payload, 2)
            conn.send(WATCH_EVENT, 0, 0, path.encode() + b"\0" + token.encode() + b"\0")
        self._fire(events)

    def _args(self, payload: bytes, count: int) -> list[str]:
        parts = payload.split(b"\0")
        if len(parts) < count:
            raise XsErr("EINVAL")
        try:
            return [p.decode("utf-8") for p in parts[:count]]
        except UnicodeDecodeError:
            raise XsErr("EINVAL") from None

    def _path(self, conn: Connection, raw: str) -> str:
        path = raw if raw.startswith("/") else f"{conn.domain_path}/{raw}"
        if path != "/":
            if path.endswith("/") or "//" in path or not _VALID_PATH.match(path):
                raise XsErr("EINVAL")
        if len(path) > ABS_PATH_MAX:
            raise XsErr("EINVAL")
        return path

    def _view(self, conn: Connection, tx_id: int) -> tuple[dict[str, Node], Transaction | None]:
        if tx_id == 0:
            return self.nodes, None
        tx = conn.transactions.get(tx_id)
        if tx is None:
            raise XsErr("ENOENT")
        return tx.nodes, tx

    def _get(self, conn: Connection, nodes: dict[str, Node], path: str, need: str,
             tx: Transaction | None) -> Node:  # fmt: skip
        if tx is not None:
            tx.touched.add(path)
        node = nodes.get(path)
        if node is None:
            raise XsErr("ENOENT")
        if not self.allowed(conn.domid, node, need):
            raise XsErr("EACCES")
        return node

    def _handle(self, conn: Connection, kind: int, tx_id: int, payload: bytes,
                events: list[Event]) -> bytes:  # fmt: skip
        if kind == READ:
            nodes, tx = self._view(conn, tx_id)
            return self._get(
                conn, nodes, self._path(conn, self._args(payload, 1)[0]), "r", tx
            ).value
        if kind == DIRECTORY:
            nodes, tx = self._view(conn, tx_id)
            node = self._get(conn, nodes, self._path(conn, self._args(payload, 1)[0]), "r", tx)
            return b"".join(name.encode() + b"\0" for name in sorted(node.children))
        if kind == GET_PERMS:
            nodes, tx = self._view(conn, tx_id)
            node = self._get(conn, nodes, self._path(conn, self._args(payload, 1)[0]), "r", tx)
            return b"".join(f"{p}{d}".encode() + b"\0" for d, p in node.perms)
        if kind in (WRITE, MKDIR):
            return self._write(conn, kind, tx_id, payload, events)
        if kind == RM:
            return self._rm(conn, tx_id, payload, events)
        if kind == SET_PERMS:
            return self._set_perms(conn, tx_id, payload, events)
        if kind == WATCH:
            return self._watch(conn, payload)
        if kind == UNWATCH:
            raw, token = self._args(payload, 2)
            path = raw if raw.startswith("@") else self._path(conn, raw)
            for watch in self.watches:
                if watch.conn is conn and watch.path == path and watch.token == token:
                    self.watches.remove(watch)
                    return b"OK\0"
            raise XsErr("ENOENT")
        if kind == RESET_WATCHES:
            self.watches = [w for w in self.watches if w.conn is not conn]
            return b"OK\0"
        if kind == TX_START:
            if tx_id:
                raise XsErr("EBUSY")
            tx = Transaction(self._next_tx, self.gen, {p: n.copy() for p, n in self.nodes.items()})
            self._next_tx += 1
            conn.transactions[tx.tx_id] = tx
            return f"{tx.tx_id}".encode() + b"\0"
        if kind == TX_END:
            return self._tx_end(conn, tx_id, self._args(payload, 1)[0], events)
        if kind == GET_DOMAIN_PATH:
            domid = self._args(payload, 1)[0]
            if not domid.isdigit():
                raise XsErr("EINVAL")
            return f"/local/domain/{int(domid)}".encode() + b"\0"
        if kind == IS_DOMAIN_INTRODUCED:
            domid = self._args(payload, 1)[0]
            return (b"T" if domid.isdigit() and int(domid) in self.domains else b"F") + b"\0"
        if kind in (INTRODUCE, RELEASE):
            raise XsErr("EACCES" if conn.domid else "ENOSYS")
        raise XsErr("EINVAL")

    def _write(self, conn: Connection, kind: int, tx_id: int, payload: bytes,
               events: list[Event]) -> bytes:  # fmt: skip
        nodes, tx = self._view(conn, tx_id)
        raw, _, value = payload.partition(b"\0")
        if kind == MKDIR:
            value = b""
        try:
            path = self._path(conn, raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise XsErr("EINVAL") from None
        if path == "/" and kind == WRITE:
            raise XsErr("EINVAL")
        if conn.domid and len(value) > GUEST_VALUE_QUOTA:
            raise XsErr("ENOSPC")
        existing = nodes.get(path)
        if tx is not None:
            tx.touched.add(path)
        if existing is not None:
            if not self.allowed(conn.domid, existing, "w"):
                raise XsErr("EACCES")
            if kind == MKDIR:
                return b"OK\0"
        else:
            ancestor = path
            while ancestor not in nodes:
                ancestor = _parent(ancestor)
            if not self.allowed(conn.domid, nodes[ancestor], "w"):
                raise XsErr("EACCES")
        change: list[Event] = []
        self._set(nodes, path, value, None, change, owner=conn.domid, tx=tx)
        self._record(change, events, tx)
        return b"OK\0"

    def _rm(self, conn: Connection, tx_id: int, payload: bytes, events: list[Event]) -> bytes:
        nodes, tx = self._view(conn, tx_id)
        path = self._path(conn, self._args(payload, 1)[0])
        if path == "/":
            raise XsErr("EINVAL")
        if tx is not None:
            tx.touched.add(path)
        node = nodes.get(path)
        if node is None:  # already gone: fine if the parent exists
            if _parent(path) in nodes:
                return b"OK\0"
            raise XsErr("ENOENT")
        if not self.allowed(conn.domid, node, "w"):
            raise XsErr("EACCES")
        change: list[Event] = []
        self._remove(nodes, path, change, tx)
        self._record(change, events, tx)
        return b"OK\0"

    def _set_perms(self, conn: Connection, tx_id: int, payload: bytes,
                   events: list[Event]) -> bytes:  # fmt: skip
        nodes, tx = self._view(conn, tx_id)
        parts = [p.decode("utf-8", "replace") for p in payload.split(b"\0")]
        if parts and parts[-1] == "":
            parts.pop()
        if len(parts) < 2:
            raise XsErr("EINVAL")
        path = self._path(conn, parts[0])
        node = self._get(conn, nodes, path, "w", tx)
        if conn.domid and node.perms[0][0] != conn.domid:
            raise XsErr("EACCES")
        perms = []
        for spec in parts[1:]:
            if len(spec) < 2 or spec[0] not in "rwbn" or not spec[1:].isdigit():
                raise XsErr("EINVAL")
            perms.append((int(spec[1:]), spec[0]))
        node.perms = perms
        self._mark(path, tx)
        self._record([Event(path, node)], events, tx)
        return b"OK\0"

    def _record(self, change: list[Event], events: list[Event],
                tx: Transaction | None) -> None:  # fmt: skip
        if tx is None:
            events.extend(change)
        else:
            tx.changes.extend(change)

    def _tx_end(self, conn: Connection, tx_id: int, verdict: str, events: list[Event]) -> bytes:
        tx = conn.transactions.pop(tx_id, None)
        if tx is None:
            raise XsErr("ENOENT")
        if verdict != "T":
            return b"OK\0"
        if any(self.modified.get(path, 0) > tx.start_gen for path in tx.touched):
            raise XsErr("EAGAIN")
        for path in tx.dirty:
            if path in tx.nodes:
                self.nodes[path] = tx.nodes[path].copy()
            else:
                self.nodes.pop(path, None)
            self._touch(path)
        events.extend(tx.changes)
        return b"OK\0"

    def _watch(self, conn: Connection, payload: bytes) -> bytes:
        raw, token = self._args(payload, 2)
        if raw.startswith("@"):
            path, relative = raw, None
        else:
            path = self._path(conn, raw)
            relative = None if raw.startswith("/") else conn.domain_path
        if any(w.conn is conn and w.path == path and w.token == token for w in self.watches):
            raise XsErr("EEXIST")
        self.watches.append(Watch(conn, path, token, relative))
        return b"OK\0"

    def _fire(self, events: list[Event]) -> None:
        if not events:
            return
        with self.lock:
            watches = list(self.watches)
        for event in events:
            path = event.path
            for watch in watches:
                if path.startswith("@") or watch.path.startswith("@"):
                    hit = watch.path == path
                else:  # a change at or below the watch, or the removal of an ancestor
                    hit = _under(path, watch.path) or (event.removed and _under(watch.path, path))
                if not hit or not self.allowed(watch.conn.domid, event.node, "r"):
                    continue
                shown = path
                if watch.relative_to and path.startswith(watch.relative_to + "/"):
                    shown = path[len(watch.relative_to) + 1 :]
                watch.conn.send(
                    WATCH_EVENT, 0, 0, shown.encode() + b"\0" + watch.token.encode() + b"\0"
                )
