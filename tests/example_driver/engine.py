"""The example driver's "engine": a tiny hypervisor kept in a directory, and its client.

It stands for what a real backend talks to (a daemon and its SDK): the driver never touches
the directory itself, only `EngineClient`. Guests are JSON files in `<root>/guests/`; every
call takes the engine's lock (a file lock, bounded by the client's timeout), so several
clients and processes share one engine. The engine speaks its own vocabulary (states
"halted", "running", "frozen"; errors as `EngineError` codes) that the driver translates.

It reports the changes made through a client to that client's watchers, the way an SDK
delivers event callbacks; changes made by other clients are not reported (a driver finds
them by listing, as it does after a reconnect).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

VERSION = 3_001_000
HALTED, RUNNING, FROZEN = "halted", "running", "frozen"

#: (guest uuid, its new state, or None once it is undefined)
Watcher = Callable[[str, "str | None"], None]


class EngineError(Exception):
    """An error the engine reports: `code` says which (the SDK's error codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EngineClient:
    """A connection to the engine in `root`; every call waits at most `timeout` seconds for
    the engine's lock. `memory_mb` is the engine's capacity for running guests."""

    def __init__(self, root: str | os.PathLike[str], *, timeout: float, memory_mb: int) -> None:
        self.root = Path(root)
        self.timeout = timeout
        self.memory_mb = memory_mb
        self._watchers: list[Watcher] = []
        self._guests = self.root / "guests"
        self._guests.mkdir(parents=True, exist_ok=True)  # OSError: the engine is not there
        if not os.access(self._guests, os.W_OK):
            raise PermissionError(13, "Permission denied", str(self._guests))

    # -- the SDK's surface ----------------------------------------------------------------

    def version(self) -> int:
        with self._locked():
            return VERSION

    def watch(self, watcher: Watcher) -> None:
        """Call `watcher(uuid, state)` after each change made through this client."""
        self._watchers.append(watcher)

    def guests(self) -> list[dict[str, Any]]:
        with self._locked():
            return [self._read(path.stem) for path in sorted(self._guests.glob("*.json"))]

    def guest(self, uuid: str) -> dict[str, Any]:
        with self._locked():
            return self._read(uuid)

    def define(self, spec: dict[str, Any]) -> None:
        """Create a halted guest from `spec` (uuid, name, labels, memory_mb, vcpus, disk)."""
        with self._locked():
            if self._path(spec["uuid"]).exists():
                raise EngineError("guest-exists", f"a guest {spec['uuid']} is defined")
            self._write({**spec, "state": HALTED, "acpi": spec.get("acpi", True)})
        self._notify(spec["uuid"], HALTED)

    def undefine(self, uuid: str) -> None:
        with self._locked():
            if self._read(uuid)["state"] != HALTED:
                raise EngineError("bad-state", f"guest {uuid} must be halted to undefine it")
            self._path(uuid).unlink()
        self._notify(uuid, None)

    def start(self, uuid: str) -> None:
        def change(guest: dict[str, Any]) -> None:
            self._need(guest, HALTED, "start")
            if not Path(guest["disk"]).is_file():
                raise EngineError("no-disk", f"disk {guest['disk']} of guest {uuid} is gone")
            busy = sum(g["memory_mb"] for g in self._all() if g["state"] != HALTED)
            if busy + guest["memory_mb"] > self.memory_mb:
                raise EngineError("out-of-memory", f"{guest['memory_mb']} MiB asked, "
                                  f"{self.memory_mb - busy} MiB free")
            guest["state"] = RUNNING
            guest["boots"] = guest.get("boots", 0) + 1
            guest["ran_s"], guest["running_since"] = 0.0, time.time()

        self._change(uuid, change)

    def shutdown(self, uuid: str) -> None:
        """Press the guest's ACPI power button: a running guest with acpi on halts; any
        other guest does not react."""
        def change(guest: dict[str, Any]) -> None:
            if guest["state"] == RUNNING and guest["acpi"]:
                guest["state"], guest["running_since"] = HALTED, None

        self._change(uuid, change)

    def poweroff(self, uuid: str) -> bool:
        """Pull the plug; False if the guest was halted already."""
        was: list[str] = []

        def change(guest: dict[str, Any]) -> None:
            was.append(guest["state"])
            guest["state"], guest["running_since"] = HALTED, None

        self._change(uuid, change)
        return was[0] != HALTED

    def freeze(self, uuid: str) -> None:
        self._change(uuid, self._move(RUNNING, FROZEN, "freeze"))

    def thaw(self, uuid: str) -> None:
        self._change(uuid, self._move(FROZEN, RUNNING, "thaw"))

    def uptime(self, uuid: str) -> float:
        """Seconds the guest has run in this boot (a frozen guest's time stands still)."""
        guest = self.guest(uuid)
        since = guest.get("running_since")
        return guest.get("ran_s", 0.0) + (time.time() - since if since else 0.0)

    # -- inside the engine ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        with open(self.root / ".lock", "a") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise EngineError("busy", f"no answer within {self.timeout:g}s") from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _change(self, uuid: str, change: Callable[[dict[str, Any]], object]) -> None:
        with self._locked():
            guest = self._read(uuid)
            before = guest["state"]
            change(guest)
            self._write(guest)
        if guest["state"] != before:
            self._notify(uuid, guest["state"])

    def _notify(self, uuid: str, state: str | None) -> None:
        for watcher in list(self._watchers):
            watcher(uuid, state)

    def _move(self, old: str, new: str, what: str) -> Callable[[dict[str, Any]], None]:
        def change(guest: dict[str, Any]) -> None:
            self._need(guest, old, what)
            guest["state"] = new
            if new == RUNNING:
                guest["running_since"] = time.time()
            elif guest.get("running_since"):
                guest["ran_s"] = guest.get("ran_s", 0.0) + time.time() - guest["running_since"]
                guest["running_since"] = None

        return change

    def _need(self, guest: dict[str, Any], state: str, what: str) -> None:
        if guest["state"] != state:
            raise EngineError("bad-state", f"cannot {what} guest {guest['uuid']}: it is "
                              f"{guest['state']}")

    def _path(self, uuid: str) -> Path:
        return self._guests / f"{uuid}.json"

    def _all(self) -> list[dict[str, Any]]:
        return [self._read(path.stem) for path in self._guests.glob("*.json")]

    def _read(self, uuid: str) -> dict[str, Any]:
        try:
            guest: dict[str, Any] = json.loads(self._path(uuid).read_text())
        except FileNotFoundError:
            raise EngineError("no-such-guest", f"no guest {uuid}") from None
        return guest

    def _write(self, guest: dict[str, Any]) -> None:
        temp = self._path(guest["uuid"]).with_suffix(".tmp")
        temp.write_text(json.dumps(guest))
        os.replace(temp, self._path(guest["uuid"]))

