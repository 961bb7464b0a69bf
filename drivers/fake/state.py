"""The fake hypervisor's state: one JSON file per host, shared safely between processes.

Every change is a transaction: a thread lock and an exclusive `fcntl` lock on a side file,
re-read the JSON, mutate, write a temp file and rename it over the old one. Readers take a
shared lock. Nothing is cached between calls: another process may have changed the file, and
inode/mtime/size cannot prove it did not (inodes are reused, mtimes are coarse).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virt.errors import HypervisorUnavailable

FORMAT_VERSION = 1


def empty_state(host: str) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "host": host, "instances": {}, "images": {}}


class StateFile:
    """JSON state of one fake host at `path`, with cross-process locking."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host
        self._lock_path = path.with_name(path.name + ".lock")
        self._thread_lock = threading.RLock()

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HypervisorUnavailable(
                f"fake hypervisor state directory {self.path.parent} is not usable: "
                f"{exc.strerror}",
                hint="check [DEFAULT] instances_path and its permissions",
            ) from None
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return empty_state(self.host)
        except OSError as exc:
            raise HypervisorUnavailable(
                f"fake hypervisor state {self.path} is unreadable: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HypervisorUnavailable(
                f"fake hypervisor state {self.path} is unreadable: {exc}",
                hint="remove the file to start from an empty host",
            ) from None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise HypervisorUnavailable(
                f"fake hypervisor state {self.path} has an unknown format",
                hint="remove the file to start from an empty host",
            )
        return data

    def read(self) -> dict[str, Any]:
        """The current state (a fresh copy the caller may keep)."""
        with self._thread_lock, self._flock(fcntl.LOCK_SH):
            return self._read()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Yield the state for changes; write it atomically unless the block raises."""
        with self._thread_lock, self._flock(fcntl.LOCK_EX):
            state = self._read()
            yield state
            self._write(state)

    def _write(self, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
