"""Deployed-style guest agents on the test xenstore, for the host's compatibility tests.

`LegacyGuest` is the transport loop of the agents in the wild: read a request, work, write
the reply (without checking the request is still there), then remove the request.
`OldAgent` answers like one of them: the legacy key exchange and password, `injectfile`,
`resetnetwork`, and one fixed reply to every other command (`features` included), as the
Mirantis agent ("1", message null) or the unix agent ("404") do.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from guest_agent import protocol as p
from guest_agent.wire import XenstoreClient, XenstoreError

Answer = Callable[[str, dict], tuple[str, float]]


class LegacyGuest:
    """Serve `data/host` on a guest's socket with `answer(request_id, body) -> (reply, delay)`."""

    def __init__(self, path: str, answer: Answer) -> None:
        self.client = XenstoreClient(path, timeout=5)
        self.answer = answer
        self.written: list[str] = []
        self.stop = threading.Event()
        self.client.mkdir("data/host")
        self.client.mkdir("data/guest")
        self.client.watch("data/host", "legacy")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seen: set[str] = set()
        while not self.stop.is_set():
            try:
                for rid in self.client.directory("data/host"):
                    if rid in seen:
                        continue
                    seen.add(rid)
                    body = json.loads(self.client.read(f"data/host/{rid}"))
                    reply, delay = self.answer(rid, body)
                    time.sleep(delay)
                    self.client.write(f"data/guest/{rid}", reply)
                    self.written.append(rid)
                    self.client.rm(f"data/host/{rid}")
            except (XenstoreError, ValueError):
                if self.client.closed:
                    return
            self.client.wait_event(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.close()


class OldAgent:
    """The command semantics of an agent without v2 and without `features`."""

    def __init__(self, unknown: dict[str, Any]) -> None:
        self.unknown = json.dumps(unknown)
        self.names: list[str] = []
        self.passwords: list[str] = []  # the plaintexts as decrypted, "\n" included
        self.files: list[bytes] = []
        self.networks = 0
        self._shared: int | None = None

    def __call__(self, rid: str, body: dict) -> tuple[str, float]:
        name, value = body.get("name"), body.get("value")
        self.names.append(str(name))
        handler = {
            p.KEYINIT: self._keyinit,
            p.PASSWORD: self._password,
            p.INJECTFILE: self._injectfile,
            p.RESETNETWORK: self._resetnetwork,
        }.get(str(name))
        return (self.unknown if handler is None else handler(value)), 0.0

    @staticmethod
    def _reply(code: str, message: str = "") -> str:
        return json.dumps({"returncode": code, "message": message})

    def _keyinit(self, value: Any) -> str:
        private = p.legacy_private_key()
        self._shared = p.legacy_shared(private, p.legacy_parse_public(value))
        return self._reply("D0", str(p.legacy_public(private)))

    def _password(self, value: Any) -> str:
        if self._shared is None:
            return self._reply("500", "Password without key exchange")
        shared, self._shared = self._shared, None
        self.passwords.append(p.legacy_decrypt(shared, value))
        return self._reply("0")

    def _injectfile(self, value: Any) -> str:
        self.files.append(base64.b64decode(value))
        return self._reply("0")

    def _resetnetwork(self, value: Any) -> str:
        self.networks += 1
        return self._reply("0")
