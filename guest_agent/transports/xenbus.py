"""The guest end of the Xen store exchange: watch data/host, reply at data/guest.

Requests are `data/host/<id>`; for each one the agent writes `data/guest/<id>` and removes
the request in one xenstore transaction that first checks the request is still there. A
request the host withdrew (it timed out and removed it) gets no reply, so no orphaned reply
is left behind; a command already run is kept in the reply cache. A watch wakes the loop at
once; `poll_interval` is only the safety net for a missed event.

One request can never block the others: a request that cannot be read, or whose reply
cannot be stored (EACCES, E2BIG, ...), is dropped (removed, logged by id and error name
only), and a request that keeps failing (the link dies while it is handled) is dropped
after `MAX_ATTEMPTS`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from guest_agent.commands import CommandHandler, VmData
from guest_agent.protocol import XS_REPLIES, XS_REQUESTS, ErrorKind, Reply
from guest_agent.wire import XenstoreClient, XenstoreError

LOG = logging.getLogger(__name__)

TOKEN = "virtkit-agent"

#: Passes over one request before it is dropped (each pass may end in a lost connection).
MAX_ATTEMPTS = 3
#: Commit attempts of the reply transaction before falling back to check-then-write.
TX_RETRIES = 5
#: Request ids that were dropped but could not be removed (skipped until they disappear).
MAX_SKIPPED = 1024

#: Errors of the link rather than of one request: reconnect instead of dropping the request.
_LINK_ERRORS = frozenset({"EPIPE", "ETIMEDOUT"})
#: Errors of a reply too big for the store: replaced by a short too-large reply.
_SIZE_ERRORS = frozenset({"ENOSPC", "E2BIG"})


def _safe(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text)[:40])


class XenbusTransport:
    """Serve requests from the Xen store (the domU's xenbus device or a xenstored socket)."""

    def __init__(
        self, connect: Callable[[], XenstoreClient], *, poll_interval: float = 1.0
    ) -> None:
        self._connect = connect
        self.poll_interval = poll_interval
        self.client: XenstoreClient | None = None
        self._attempts: dict[str, int] = {}
        self._skipped: OrderedDict[str, None] = OrderedDict()

    def _open(self) -> XenstoreClient:
        client = self._connect()
        client.mkdir(XS_REQUESTS)
        client.mkdir(XS_REPLIES)
        client.watch(XS_REQUESTS, TOKEN)
        return client

    def serve(self, handler: CommandHandler, stop: threading.Event) -> None:
        """Answer requests until `stop` is set; a lost connection is re-opened with backoff."""
        backoff = 0.5
        while not stop.is_set():
            try:
                if self.client is None or self.client.closed:
                    self.client = self._open()
                self.process_pending(handler)
                backoff = 0.5
                if self.client.wait_event(self.poll_interval) is not None:
                    while self.client.wait_event(0) is not None:  # coalesce a burst
                        pass
            except Exception as exc:  # XenstoreError, or a bug: never let the loop die
                name = exc.name if isinstance(exc, XenstoreError) else type(exc).__name__
                LOG.warning("xenstore unavailable (%s); retrying in %.1fs", name, backoff)
                if self.client is not None:
                    self.client.close()
                    self.client = None
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def process_pending(self, handler: CommandHandler) -> int:
        """Answer every request present now; returns how many were answered."""
        client = self.client if self.client is not None else self._open()
        self.client = client
        names = client.directory(XS_REQUESTS)
        present = set(names)
        for stale in [rid for rid in self._attempts if rid not in present]:
            del self._attempts[stale]
        for gone in [rid for rid in self._skipped if rid not in present]:
            del self._skipped[gone]
        answered = 0
        for request_id in names:
            if request_id in self._skipped:
                continue
            attempt = self._attempts.get(request_id, 0) + 1
            self._attempts[request_id] = attempt
            if attempt > MAX_ATTEMPTS:
                self._drop(client, request_id, f"it failed {MAX_ATTEMPTS} times")
                continue
            if self._answer(client, handler, request_id):
                answered += 1
            self._attempts.pop(request_id, None)
        return answered

    def _answer(self, client: XenstoreClient, handler: CommandHandler, request_id: str) -> bool:
        """Handle one request; False when it was withdrawn or dropped."""
        try:
            raw = client.read(f"{XS_REQUESTS}/{request_id}")
        except XenstoreError as exc:
            if self._link_error(client, exc):
                raise
            if exc.name != "ENOENT":  # the host gave up and removed it: nothing to do
                self._drop(client, request_id, f"the request cannot be read ({exc.name})")
            return False
        reply = handler.handle(request_id, raw, vm_data=self.vm_data)
        try:
            return self._store(client, request_id, reply)
        except XenstoreError as exc:
            if self._link_error(client, exc):
                raise
            if exc.name not in _SIZE_ERRORS:
                self._drop(client, request_id, f"its reply cannot be written ({exc.name})")
                return False
        too_big = Reply.failure(ErrorKind.TOO_LARGE, "the reply exceeds the xenstore value quota")
        try:
            return self._store(client, request_id, too_big.to_json())
        except XenstoreError as exc:
            if self._link_error(client, exc):
                raise
            self._drop(client, request_id, f"its reply cannot be written ({exc.name})")
            return False

    def _store(self, client: XenstoreClient, request_id: str, reply: str) -> bool:
        """Write the reply and remove the request, atomically and only if the request is still
        there; False (nothing written) when the host withdrew it."""
        request_path, reply_path = f"{XS_REQUESTS}/{request_id}", f"{XS_REPLIES}/{request_id}"
        for _ in range(TX_RETRIES):
            try:
                tx = client.transaction_start()
            except XenstoreError as exc:
                if self._link_error(client, exc):
                    raise
                break  # no transactions here (quota, old xenstored): check, then write
            removable = True
            try:
                if not client.exists(request_path, tx=tx):
                    client.transaction_end(tx, commit=False)
                    return self._withdrawn(request_id)
                client.write(reply_path, reply, tx=tx)
                try:
                    client.rm(request_path, tx=tx)
                except XenstoreError as exc:
                    if self._link_error(client, exc):
                        raise
                    removable = False
            except XenstoreError as exc:
                if not self._link_error(client, exc):
                    try:
                        client.transaction_end(tx, commit=False)
                    except XenstoreError:
                        pass
                raise
            try:
                client.transaction_end(tx, commit=True)
            except XenstoreError as exc:
                if exc.name == "EAGAIN":  # something we read changed (the host's rm?): redo
                    continue
                raise
            if not removable:
                self._skip(request_id, "the request cannot be removed")
            return True
        if not client.exists(request_path):
            return self._withdrawn(request_id)
        client.write(reply_path, reply)
        try:
            client.rm(request_path)
        except XenstoreError as exc:
            if self._link_error(client, exc):
                raise
            self._skip(request_id, f"the request cannot be removed ({exc.name})")
        return True

    @staticmethod
    def _withdrawn(request_id: str) -> bool:
        LOG.info("request %s was withdrawn by the host; no reply written", _safe(request_id))
        return False

    def _drop(self, client: XenstoreClient, request_id: str, why: str) -> None:
        """Give up on a request: remove it (or, if that fails, skip it from now on)."""
        LOG.warning("request %s dropped: %s", _safe(request_id), why)
        self._attempts.pop(request_id, None)
        self._skipped[request_id] = None  # until the rm succeeded
        try:
            client.rm(f"{XS_REQUESTS}/{request_id}")
        except XenstoreError as exc:
            if self._link_error(client, exc):
                raise
            self._skip(request_id, f"the request cannot be removed ({exc.name})")
            return
        del self._skipped[request_id]

    def _skip(self, request_id: str, why: str) -> None:
        LOG.warning("request %s left in place and skipped: %s", _safe(request_id), why)
        self._skipped[request_id] = None
        self._skipped.move_to_end(request_id)
        while len(self._skipped) > MAX_SKIPPED:
            self._skipped.popitem(last=False)

    @staticmethod
    def _link_error(client: XenstoreClient, exc: XenstoreError) -> bool:
        return client.closed or exc.name in _LINK_ERRORS

    def vm_data(self) -> VmData:
        """vm-data/networking/* and vm-data/hostname, as the host published them."""
        client = self.client
        assert client is not None
        networks = []
        try:
            names = client.directory("vm-data/networking")
        except XenstoreError:
            names = []
        for name in sorted(names):
            text = client.read_text(f"vm-data/networking/{name}")
            try:
                value = json.loads(text or "")
            except ValueError:
                LOG.warning("vm-data/networking/%s is not JSON; skipped", name[:32])
                continue
            if isinstance(value, dict):
                networks.append(value)
        return VmData(networks=networks, hostname=client.read_text("vm-data/hostname"))
