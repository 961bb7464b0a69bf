"""The guest end of the Xen store exchange: watch data/host, reply at data/guest.

Requests are `data/host/<id>`; for each one the agent writes `data/guest/<id>` and then
removes the request (write first: a crash in between leaves the request to be answered from
the reply cache or re-run, never lost). A watch wakes the loop at once; `poll_interval` is
only the safety net for a missed event.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from guest_agent.commands import CommandHandler, VmData
from guest_agent.protocol import ErrorKind, Reply
from guest_agent.transports.xenstore import XenstoreClient, XenstoreError

LOG = logging.getLogger(__name__)

REQUESTS = "data/host"
REPLIES = "data/guest"
TOKEN = "virtkit-agent"


class XenbusTransport:
    """Serve requests from the Xen store (the domU's xenbus device or a xenstored socket)."""

    def __init__(
        self, connect: Callable[[], XenstoreClient], *, poll_interval: float = 1.0
    ) -> None:
        self._connect = connect
        self.poll_interval = poll_interval
        self.client: XenstoreClient | None = None

    def _open(self) -> XenstoreClient:
        client = self._connect()
        client.mkdir(REQUESTS)
        client.mkdir(REPLIES)
        client.watch(REQUESTS, TOKEN)
        return client

    def serve(self, handler: CommandHandler, stop: threading.Event) -> None:
        """Answer requests until `stop` is set; a lost connection is re-opened with backoff."""
        backoff = 0.5
        while not stop.is_set():
            try:
                if self.client is None or self.client.closed:
                    self.client = self._open()
                    backoff = 0.5
                self.process_pending(handler)
                if self.client.wait_event(self.poll_interval) is not None:
                    while self.client.wait_event(0) is not None:  # coalesce a burst
                        pass
            except XenstoreError as exc:
                LOG.warning("xenstore unavailable (%s); retrying in %.1fs", exc.name, backoff)
                if self.client is not None:
                    self.client.close()
                    self.client = None
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def process_pending(self, handler: CommandHandler) -> int:
        """Answer every request present now; returns how many were answered."""
        client = self.client if self.client is not None else self._open()
        self.client = client
        answered = 0
        for request_id in client.directory(REQUESTS):
            try:
                raw = client.read(f"{REQUESTS}/{request_id}")
            except XenstoreError as exc:
                if exc.name == "ENOENT":  # the host gave up and removed it
                    continue
                raise
            reply = handler.handle(request_id, raw, vm_data=self.vm_data)
            try:
                client.write(f"{REPLIES}/{request_id}", reply)
            except XenstoreError as exc:
                if exc.name != "ENOSPC":
                    raise
                too_big = Reply.failure(
                    ErrorKind.TOO_LARGE, "the reply exceeds the xenstore value quota"
                )
                client.write(f"{REPLIES}/{request_id}", too_big.to_json())
            client.rm(f"{REQUESTS}/{request_id}")
            answered += 1
        return answered

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
