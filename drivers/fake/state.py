"""The fake hypervisor's state: one JSON file per host, shared safely between processes.

Every change is a transaction: a thread lock and an exclusive `fcntl` lock on a side file,
mutate, write a temp file and rename it over the old one (a killed process leaves the old
file or the new one, never half of one). Readers take a shared lock.

The parsed state is cached between calls. It is reused only when the side file still holds
the random token this process last saw *and* the state file's inode/mtime/size are the same:
every writer puts a fresh token in the side file (before it renames, so a writer killed in
between only costs the others a re-read), and the stat check catches anyone who edits the
file by hand. A transaction on one instance re-serialises only that instance's record and
skips the write when nothing changed, so an operation costs O(1) encoding, not O(instances).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virt.errors import HypervisorUnavailable

FORMAT_VERSION = 1
_TOKEN_BYTES = 32


def empty_state(host: str) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "host": host, "instances": {}, "images": {}}


def _encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class _Snapshot:
    """The state as last read or written, and what proves it is still current."""

    token: str
    stat: tuple[int, int, int] | None
    state: dict[str, Any]
    head: str | None = None  # everything but "instances", encoded
    parts: dict[str, str] = field(default_factory=dict)  # uuid -> encoded record
    encoded: bool = False  # head/parts are filled in


class StateFile:
    """JSON state of one fake host at `path`, with cross-process locking."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host
        self._lock_path = path.with_name(path.name + ".lock")
        self._thread_lock = threading.RLock()
        self._cache: _Snapshot | None = None

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[int]:
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
            yield fd
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HypervisorUnavailable(
                f"fake hypervisor state {self.path} is unreadable: {exc.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _current(self, fd: int) -> _Snapshot:
        """The state under the held lock: the cache if still valid, else the file."""
        token = os.pread(fd, _TOKEN_BYTES, 0).decode("ascii", "replace")
        stat = self._stat()
        cache = self._cache
        if cache is not None and token and cache.token == token and cache.stat == stat:
            return cache
        self._cache = _Snapshot(token, stat, self._parse())
        return self._cache

    def _parse(self) -> dict[str, Any]:
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

    def view(self) -> dict[str, Any]:
        """The current state, shared: callers must not modify it (use `read` for a copy)."""
        with self._thread_lock, self._flock(fcntl.LOCK_SH) as fd:
            return self._current(fd).state

    def read(self) -> dict[str, Any]:
        """The current state (a fresh copy the caller may keep)."""
        return copy.deepcopy(self.view())

    def instance(self, uuid: str) -> dict[str, Any] | None:
        """One instance's record (a copy), or None."""
        record = self.view()["instances"].get(uuid)
        return None if record is None else copy.deepcopy(record)

    @contextlib.contextmanager
    def transaction(self, instance: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield the state for changes; write it atomically unless the block raises.

        With `instance`, the block promises to change at most that instance's record and the
        non-instance keys (images): only those are copied and re-encoded.
        """
        with self._thread_lock, self._flock(fcntl.LOCK_EX) as fd:
            current = self._current(fd)
            work = self._working_copy(current.state, instance)
            yield work
            self._commit(fd, current, work, instance)

    @staticmethod
    def _working_copy(state: dict[str, Any], instance: str | None) -> dict[str, Any]:
        if instance is None:
            return copy.deepcopy(state)
        work = {k: copy.deepcopy(v) for k, v in state.items() if k != "instances"}
        work["instances"] = dict(state["instances"])
        if instance in work["instances"]:
            work["instances"][instance] = copy.deepcopy(work["instances"][instance])
        return work

    def _commit(self, fd: int, current: _Snapshot, work: dict[str, Any],
                instance: str | None) -> None:
        """Encode what changed; write the file only if something did."""
        old_keys, new_keys = current.state["instances"].keys(), work["instances"].keys()
        if instance is None or (old_keys ^ new_keys) - {instance}:
            self._write(fd, work, _encode_all(work))
            return
        if not current.encoded:
            current.head, current.parts, current.encoded = _encode_all(current.state)
        head = _encode({k: v for k, v in work.items() if k != "instances"})
        parts = current.parts
        record = work["instances"].get(instance)
        part = None if record is None else _encode(record)
        if head == current.head and part == parts.get(instance):
            return  # nothing changed: no write, the cache stays valid
        parts = dict(parts)
        if part is None:
            parts.pop(instance, None)
        else:
            parts[instance] = part
        self._write(fd, work, (head, parts, True))

    def _write(self, fd: int, state: dict[str, Any],
               encoded: tuple[str, dict[str, str], bool]) -> None:
        head, parts, _ = encoded
        self._cache = None  # until the new file is in place
        # Fixed length, overwritten in place: truncating would make ext4 flush the file.
        token = os.urandom(_TOKEN_BYTES // 2).hex()
        os.pwrite(fd, token.encode("ascii"), 0)
        body = ",\n".join(f"{json.dumps(uuid)}:{part}" for uuid, part in sorted(parts.items()))
        rest = "," + head[1:] if head != "{}" else "}"
        text = '{"instances":{\n' + body + "\n}" + rest + "\n"
        tmp_fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(tmp_fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._cache = _Snapshot(token, self._stat(), state, head, parts, True)


def _encode_all(state: dict[str, Any]) -> tuple[str, dict[str, str], bool]:
    head = _encode({k: v for k, v in state.items() if k != "instances"})
    return head, {uuid: _encode(r) for uuid, r in state["instances"].items()}, True
