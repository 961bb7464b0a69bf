"""The driver's connection to the engine: opened lazily, reopened after a loss, and every
call's engine errors turned into virtkit's by the kit's `EngineErrors`."""

from __future__ import annotations

import getpass
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.example_driver.engine import EngineClient, EngineError
from virt.driver.errors import EngineErrors, EngineFault, FaultKind

LOG = logging.getLogger(__name__)
T = TypeVar("T")

#: The engine's error codes, as the kit's kinds of failure.
FAULTS = {
    "no-such-guest": FaultKind.NOT_FOUND,
    "guest-exists": FaultKind.EXISTS,
    "bad-state": FaultKind.INVALID_STATE,
    "busy": FaultKind.UNAVAILABLE,
}


def classify(exc: BaseException) -> EngineFault | None:
    """What an exception of the engine (or of reaching it) means; None: not the engine's."""
    if isinstance(exc, EngineError):
        return EngineFault(FAULTS.get(exc.code, FaultKind.FAILED), exc.message)
    if isinstance(exc, PermissionError):
        user = getpass.getuser()
        return EngineFault(
            FaultKind.ACCESS_DENIED, f"{exc.filename}: permission denied for user {user}",
            hint=f"let {user} write {exc.filename}, or set [example] engine_path to a "
            "directory it owns")
    if isinstance(exc, OSError):
        return EngineFault(FaultKind.UNAVAILABLE, f"{exc.filename}: {exc.strerror}",
                           hint="check [example] engine_path")
    return None


ERRORS = EngineErrors("example engine", classify)


class Connection:
    """One client of the engine at `root`. `on_connect(client, again)` runs after each
    successful connect (`again`: not the first one, so what happened meanwhile is news)."""

    def __init__(self, root: str, *, timeout: float, memory_mb: int,
                 on_connect: Callable[[EngineClient, bool], None]) -> None:
        self.root = Path(root)
        self._timeout = timeout
        self._memory_mb = memory_mb
        self._on_connect = on_connect
        self._client: EngineClient | None = None
        self._connected_before = False
        self._lock = threading.Lock()

    def call(self, what: str, call: Callable[[EngineClient], T], *,
             instance: str | None = None) -> T:
        """`call(client)`, its engine errors as virtkit errors; `what` reads after 'could not'."""
        with ERRORS.translate(what, instance=instance):
            client = self.client()
            try:
                return call(client)
            except Exception as exc:
                fault = classify(exc)
                if fault is not None and fault.kind is FaultKind.UNAVAILABLE:
                    self.close()  # the next call connects again, and resyncs
                raise

    def client(self) -> EngineClient:
        """The open client; connects (or reconnects) first if there is none."""
        with self._lock:
            if self._client is None:
                with ERRORS.translate("connect"):
                    client = EngineClient(self.root, timeout=self._timeout,
                                          memory_mb=self._memory_mb)
                    client.version()
                self._client, again = client, self._connected_before
                self._connected_before = True
                if again:
                    LOG.info("example engine at %s: connected again", self.root)
                self._on_connect(client, again)
            return self._client

    def close(self) -> None:
        """Forget the client; the next call connects again."""
        with self._lock:
            self._client = None
