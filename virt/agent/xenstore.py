"""The Xen channel: requests at `data/host/<id>` of a domain, replies at `data/guest/<id>`."""

from __future__ import annotations

import logging
import queue
import threading
import time

from guest_agent import protocol as p
from guest_agent.wire import WatchEvent, XenstoreClient, XenstoreError
from virt.agent.channel import Channel
from virt.errors import AgentError, AgentGuestRebooted

LOG = logging.getLogger(__name__)

#: How long the host keeps sweeping the late reply of a request it gave up on, and how many
#: such request ids it remembers per domain (legacy agents answer whenever they are done).
ABANDONED_TTL = 3600.0
ABANDONED_MAX = 1024

_abandoned_lock = threading.Lock()
#: (xenstore path, domid) -> request id -> monotonic expiry; shared by every channel of this
#: process, so a new channel object for the same domain sweeps what an earlier one abandoned.
_abandoned: dict[tuple[str, int], dict[str, float]] = {}


class XenstoreChannel(Channel):
    """`/local/domain/<domid>/data/host/<id>` → `.../data/guest/<id>`; watch plus polling.

    Each wait registers its watches under a token of its own and takes their events from a
    private queue of the (possibly shared) client, then unwatches: no event is left behind on
    the client and none can wake another request's wait.

    Late replies: when a request ends without its reply (timeout, reboot, error), `finish`
    removes both nodes, but a guest still working may write `data/guest/<id>` afterwards
    (deployed legacy agents never check). Such ids are remembered (for `ABANDONED_TTL`), and
    every later `send` to the domain removes the replies that have appeared for them.
    """

    def __init__(self, client: XenstoreClient, domid: int, *, poll_interval: float = 0.5) -> None:
        self.client = client
        self.domid = domid
        self.base = f"/local/domain/{domid}"
        self.poll_interval = poll_interval
        self._sent: set[str] = set()
        self._answered: set[str] = set()

    def _request_path(self, request_id: str) -> str:
        return f"{self.base}/{p.XS_REQUESTS}/{request_id}"

    def _reply_path(self, request_id: str) -> str:
        return f"{self.base}/{p.XS_REPLIES}/{request_id}"

    def _guest_present(self) -> bool:
        return self.client.exists(f"{self.base}/name")

    def _rebooted(self) -> AgentGuestRebooted:
        return AgentGuestRebooted(
            f"domain {self.domid} is gone (rebooted or destroyed) while an agent request was pending",
            hint="look up the guest's new domain id and retry",
        )

    @property
    def _domain_key(self) -> tuple[str, int]:
        return (self.client.path, self.domid)

    def abandoned(self) -> list[str]:
        """Request ids given up on whose late reply is still swept (for tests and debugging)."""
        now = time.monotonic()
        with _abandoned_lock:
            ids = _abandoned.get(self._domain_key)
            if ids is None:
                return []
            for rid in [rid for rid, expiry in ids.items() if expiry <= now]:
                del ids[rid]
            if not ids:
                del _abandoned[self._domain_key]
            return list(ids)

    def _abandon(self, request_id: str) -> None:
        with _abandoned_lock:
            ids = _abandoned.setdefault(self._domain_key, {})
            ids.pop(request_id, None)
            ids[request_id] = time.monotonic() + ABANDONED_TTL
            while len(ids) > ABANDONED_MAX:
                del ids[next(iter(ids))]

    def sweep_late_replies(self) -> int:
        """Remove `data/guest/<id>` for the request ids this process abandoned; returns how many."""
        pending = set(self.abandoned())
        if not pending:
            return 0
        try:
            present = set(self.client.directory(f"{self.base}/{p.XS_REPLIES}")) & pending
        except XenstoreError:
            return 0
        swept = 0
        for request_id in sorted(present):
            try:
                self.client.rm(self._reply_path(request_id))
            except XenstoreError as exc:
                LOG.warning(
                    "could not remove the late reply %s of domain %d: %s",
                    request_id,
                    self.domid,
                    exc.name,
                )
                continue
            swept += 1
            LOG.info("removed the late agent reply %s of domain %d", request_id, self.domid)
            with _abandoned_lock:
                _abandoned.get(self._domain_key, {}).pop(request_id, None)
        return swept

    def send(self, request_id: str, request: str) -> None:
        try:
            if not self._guest_present():
                raise self._rebooted()
            self.sweep_late_replies()
            self._sent.add(request_id)
            self.client.write(self._request_path(request_id), request)
        except XenstoreError as exc:
            raise AgentError(f"cannot write the agent request to xenstore: {exc}") from None

    def receive(self, request_id: str, timeout: float) -> str | None:
        reply_path = self._reply_path(request_id)
        token = f"virtkit-host/{request_id}"
        events = self.client.subscribe(token)
        watched: list[str] = []
        try:
            for path in (reply_path, f"{self.base}/name"):
                self.client.watch(path, token)
                watched.append(path)
            return self._wait_reply(request_id, events, time.monotonic() + timeout)
        except XenstoreError as exc:
            raise AgentError(f"xenstore failed while waiting for the agent: {exc}") from None
        finally:
            for path in watched:
                try:
                    self.client.unwatch(path, token)
                except XenstoreError:
                    pass
            self.client.unsubscribe(token)  # events still in flight for the token are dropped

    def _wait_reply(
        self, request_id: str, events: queue.Queue[WatchEvent], deadline: float
    ) -> str | None:
        """Read the reply after each watch event (or poll interval) until it is there."""
        reply_path = self._reply_path(request_id)
        while True:
            while True:  # what fired before this read is answered by it
                try:
                    events.get_nowait()
                except queue.Empty:
                    break
            text = self.client.read_text(reply_path)
            if text is not None:
                self._answered.add(request_id)
                return text
            if not self._guest_present():
                raise self._rebooted()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                events.get(timeout=min(self.poll_interval, remaining))
            except queue.Empty:
                pass

    def finish(self, request_id: str) -> None:
        if request_id in self._sent and request_id not in self._answered:
            self._abandon(request_id)  # the guest may still answer: swept on a later send
        self._sent.discard(request_id)
        self._answered.discard(request_id)
        for kind, path in (
            (p.XS_REQUESTS, self._request_path(request_id)),
            (p.XS_REPLIES, self._reply_path(request_id)),
        ):
            try:
                self.client.rm(path)
            except XenstoreError as exc:
                LOG.warning(
                    "could not remove %s/%s of domain %d: %s",
                    kind,
                    request_id,
                    self.domid,
                    exc,
                )
