"""The fake hypervisor's state: one small JSON file per instance, shared safely between processes.

Layout, under `<instances_path>/fake-hypervisor-<host>/`:

    <uuid>.json     one instance's record (uuids are canonical, so safe file names)
    _host.json      {"version": 2, "host": ..., "images": {...}}: the snapshots this host took
    .lock           fcntl lock: exclusive for a change, shared for a read of several files

A change is a transaction on one instance (and, if it touches them, the images): the
exclusive lock, read that one record, mutate it, write a temp file and rename it over the old
one (a killed process leaves the old file or the new one, never half of one), skip the write
when nothing changed. So an operation costs O(1) whatever the number of instances, and
listing is one directory scan. Every read sees the files as they are now, hand edits
included: all that is kept in memory is each record last written with its bytes, used only
while the file still holds exactly those bytes (to skip decoding them). An instance's root disk is `<instances_path>/fake-disks/<uuid>`, beside the hosts'
directories, as instance storage shared by the hosts is: {"image": REF, "files": {PATH:
{"size", "sha256"}}}, kept by a destroy that keeps disks and reused by the next spawn of that
uuid, on this host or another. The old single-file
format (`fake-hypervisor-<host>.json`, version 1) is migrated on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virt.errors import HypervisorUnavailable

FORMAT_VERSION = 2
LEGACY_VERSION = 1
HOST_FILE = "_host.json"
LOCK_FILE = ".lock"
_SUFFIX = ".json"
_READ_SIZE = 1 << 16  # more than a record holds: one read
_MEMO_SIZE = 128  # records remembered per process: more than the instances changed at once

# Built once, not per call. Records are trees (no cycles to look for).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)


def _encode(value: Any) -> bytes:
    return (_ENCODER.encode(value) + "\n").encode("utf-8")


def _unusable(path: str | Path, exc: OSError) -> HypervisorUnavailable:
    return HypervisorUnavailable(
        f"fake hypervisor state {path} is not usable: {exc.strerror or exc}",
        hint="check [DEFAULT] instances_path and its permissions")


class Change:
    """What a transaction works on: one instance's record (None: absent), its root disk and
    the images.

    Set `record` to create, replace or (None) remove the instance, `disk` likewise for its
    root disk. `images` and `disk` are read on first use only (most operations never look
    at them).
    """

    def __init__(self, state: HostState, uuid: str, record: dict[str, Any] | None) -> None:
        self.record = record
        self._state = state
        self._uuid = uuid
        self._images: dict[str, Any] | None = None
        self._images_text: bytes | None = None
        self._disk: dict[str, Any] | None = None
        self._disk_text: bytes | None = None
        self._disk_read = False

    @property
    def disk(self) -> dict[str, Any] | None:
        if not self._disk_read:
            self._disk_text = self._state._read(self._state.disk_path(self._uuid))
            try:
                self._disk = json.loads(self._disk_text) if self._disk_text else None
            except ValueError:
                self._disk = None  # not a disk this engine can use: a spawn makes a new one
            self._disk_read = True
        return self._disk

    @disk.setter
    def disk(self, value: dict[str, Any] | None) -> None:
        _ = self.disk  # read first: the commit compares with what was there
        self._disk = value

    def disk_changed(self) -> bool:
        if not self._disk_read:
            return False
        now = None if self._disk is None else _encode(self._disk)
        return now != self._disk_text

    @property
    def images(self) -> dict[str, Any]:
        if self._images is None:
            host = self._state.read_host()
            self._images_text = _encode(host["images"])
            self._images = host["images"]
        return self._images

    def images_changed(self) -> bool:
        return self._images is not None and _encode(self._images) != self._images_text


class _LockFile:
    """An open descriptor of the lock file, closed when dropped (with its thread)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        stat = os.fstat(fd)
        self.ident = (stat.st_dev, stat.st_ino)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class HostState:
    """The state of one fake host in `directory`, with cross-process locking."""

    def __init__(self, directory: Path, host: str, *, legacy: Path | None = None) -> None:
        self.directory = directory
        self.host = host
        self.legacy = legacy
        self._lock_path = directory / LOCK_FILE
        self._host_path = directory / HOST_FILE
        self._ready = False
        self._disks_ready = False
        self._ready_lock = threading.Lock()
        self._local = threading.local()
        self._lock_str = str(self._lock_path)
        self._dir_str = str(directory)
        self._disks_str = str(directory.parent / "fake-disks")
        # The records this process last wrote, with their bytes: the next transaction on one
        # that reads back just those bytes takes it instead of decoding them. The bytes read
        # decide, so a change by another process or by hand is seen all the same.
        self._written: dict[str, tuple[bytes, dict[str, Any]]] = {}

    # -- locking and set-up -----------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        """The host lock. A descriptor of its own per thread, so threads exclude each other
        too (flock locks belong to the open file description); kept open between calls
        (opening it costs more than the lock), reopened if the lock file was replaced."""
        self._prepare()
        fd = self._lock_fd()
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_fd(self) -> int:
        held: _LockFile | None = getattr(self._local, "lock", None)
        try:
            current = os.stat(self._lock_str)
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise _unusable(self.directory, exc) from None
        if held is None or current is None or (current.st_dev, current.st_ino) != held.ident:
            try:
                held = _LockFile(os.open(self._lock_str, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                raise _unusable(self.directory, exc) from None
            self._local.lock = held
        return held.fd

    def _prepare(self) -> None:
        """Create the directory and the host file, migrating the old format, once."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise _unusable(self.directory, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self.legacy is not None and self.legacy.exists():
                    self._migrate(self.legacy)
                elif not self._host_path.exists():
                    self._write(self._host_path, self._host_record({}))
            finally:
                os.close(fd)
            self._ready = True

    def check(self) -> None:
        """Fail now (HypervisorUnavailable) if the state is not usable."""
        self.read_host()

    def _host_record(self, images: dict[str, Any]) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "host": self.host, "images": images}

    def _migrate(self, legacy: Path) -> None:
        """Split a version-1 single file into per-instance files, then remove it.

        Runs under the exclusive lock before anything else reads the new layout; the old
        file goes last, so a migration killed half-way is simply done again.
        """
        data = self._parse(legacy, "remove the file to start from an empty host")
        if not isinstance(data, dict) or data.get("version") != LEGACY_VERSION:
            raise HypervisorUnavailable(
                f"fake hypervisor state {legacy} has an unknown format",
                hint="remove the file to start from an empty host")
        for uuid, record in data.get("instances", {}).items():
            self._write(self._instance_path(uuid), record)
        self._write(self._host_path, self._host_record(data.get("images", {})))
        legacy.unlink()
        with contextlib.suppress(OSError):
            legacy.with_name(legacy.name + ".lock").unlink()

    # -- files ------------------------------------------------------------------------------

    def disk_path(self, uuid: str) -> str:
        """Where instance `uuid`'s root disk file is (or would be)."""
        return f"{self._disks_str}/{uuid}"

    def _make_disks_dir(self) -> None:
        if self._disks_ready:  # once per process: a removed directory is not expected
            return
        try:
            os.makedirs(self._disks_str, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _unusable(self.directory, exc) from None
        self._disks_ready = True

    def _instance_path(self, uuid: str) -> str:
        return f"{self._dir_str}/{uuid}{_SUFFIX}"  # a string: cheaper than a Path

    @staticmethod
    def _read(path: str | Path) -> bytes | None:
        """The bytes in `path`; None if it does not exist."""
        try:
            # os.read, not open(): a file object costs five more syscalls (fstat, ioctl, lseek).
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = chunk = os.read(fd, _READ_SIZE)
                while len(chunk) == _READ_SIZE:  # a regular file reads short only at its end
                    chunk = os.read(fd, _READ_SIZE)
                    data += chunk
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HypervisorUnavailable(
                f"fake hypervisor state {path} is unreadable: {exc.strerror}") from None
        return data

    @staticmethod
    def _decode(path: str | Path, data: bytes, hint: str) -> Any:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise HypervisorUnavailable(
                f"fake hypervisor state {path} is unreadable: {exc}", hint=hint) from None

    def _parse(self, path: str | Path, hint: str) -> Any:
        data = self._read(path)
        return None if data is None else self._decode(path, data, hint)

    def _read_record(
        self, uuid: str, known: tuple[bytes, dict[str, Any]] | None = None
    ) -> tuple[dict[str, Any] | None, bytes | None]:
        """One instance's record and the bytes it was read from. `known` is bytes and the
        record they encode, taken instead of decoding the file if it holds just those bytes."""
        path = self._instance_path(uuid)
        data = self._read(path)
        if data is None:
            return None, None
        if known is not None and known[0] == data:
            record: Any = known[1]
        else:
            record = self._decode(path, data, "remove the file to forget that instance")
        if not (isinstance(record, dict) and record.get("uuid") == uuid):
            raise HypervisorUnavailable(
                f"fake hypervisor state {path} is not the record of instance {uuid}",
                hint="remove the file to forget that instance")
        return record, data

    def _write(self, path: str | Path, value: Any) -> None:
        """Write atomically: a temp file renamed over the old one. The exclusive lock is
        held, so one fixed temp name per file is enough."""
        head, sep, name = os.fspath(path).rpartition("/")
        tmp = f"{head}{sep}.{name}.tmp"
        data = value if isinstance(value, bytes) else _encode(value)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)  # a few kB: one write
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _unusable(path, exc) from None

    def _remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _unusable(path, exc) from None

    def _remember(self, uuid: str, data: bytes, record: dict[str, Any]) -> None:
        """Keep `record` and its bytes for the next transaction on it (under the lock)."""
        written = self._written
        written[uuid] = (data, record)
        if len(written) > _MEMO_SIZE:
            del written[next(iter(written))]  # the oldest

    # -- reading ----------------------------------------------------------------------------

    def read_host(self) -> dict[str, Any]:
        """The host file: format version, host name, images."""
        self._prepare()
        data = self._parse(self._host_path, "remove the directory to start from an empty host")
        if data is None:
            return self._host_record({})  # removed by hand: no images
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise HypervisorUnavailable(
                f"fake hypervisor state {self._host_path} has an unknown format",
                hint="remove the directory to start from an empty host")
        data.setdefault("images", {})
        return data

    def record(self, uuid: str) -> dict[str, Any] | None:
        """One instance's record (a fresh copy), or None. One small file, read whole: its
        rename-based writes make a lock unnecessary."""
        self._prepare()
        return self._read_record(uuid)[0]

    def exists(self, uuid: str) -> bool:
        self._prepare()
        try:
            os.stat(self._instance_path(uuid))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _unusable(self.directory, exc) from None
        return True

    def uuids(self) -> list[str]:
        """Every instance's uuid: one directory scan."""
        with self._flock(fcntl.LOCK_SH):
            return self._scan()

    def _scan(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            raise _unusable(self.directory, exc) from None
        # Skip the host file, the lock and temp files (a killed writer may leave one).
        return [n[: -len(_SUFFIX)] for n in names
                if n.endswith(_SUFFIX) and not n.startswith((".", "_"))]

    def records(self) -> list[dict[str, Any]]:
        """Every instance's record, as one consistent view (under the shared lock)."""
        with self._flock(fcntl.LOCK_SH):
            found = (self._read_record(uuid)[0] for uuid in self._scan())
            return [r for r in found if r is not None]

    # -- changing ---------------------------------------------------------------------------

    def transaction(self, uuid: str) -> Transaction:
        """A context for changes to instance `uuid`'s record: it yields a `Change` and writes
        what changed unless the block raises. The record is kept for the next transaction:
        do not change it after the block."""
        return Transaction(self, uuid)

    def _begin(self, uuid: str) -> tuple[Change, bytes | None]:
        """Under the exclusive lock: the record to change and the bytes it was read from."""
        # Taken out of the memo: the record is the block's to change, back once written.
        record, data = self._read_record(uuid, self._written.pop(uuid, None))
        return Change(self, uuid, record), data

    def _commit(self, uuid: str, change: Change, before: bytes | None) -> None:
        """Under the exclusive lock: write what `change` changed."""
        if change.record is None:
            if before is not None:
                self._remove(self._instance_path(uuid))
        else:
            # Compared with the bytes read: files are written in this same encoding, so an
            # unchanged record is not rewritten (a hand-edited one may be, once).
            data = _encode(change.record)
            if data != before:
                self._write(self._instance_path(uuid), data)
            self._remember(uuid, data, change.record)
        if change.disk_changed():
            disk = change.disk
            if disk is None:
                self._remove(self.disk_path(uuid))
            else:
                self._make_disks_dir()
                self._write(self.disk_path(uuid), disk)
        if change.images_changed():
            self._write(self._host_path, self._host_record(change.images))


class Transaction:
    """`HostState.transaction`: a class rather than a generator context, as every
    operation goes through it."""

    def __init__(self, state: HostState, uuid: str) -> None:
        self._state = state
        self._uuid = uuid

    def __enter__(self) -> Change:
        state = self._state
        state._prepare()
        self._fd = fd = state._lock_fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            self._change, self._before = state._begin(self._uuid)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise
        return self._change

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        try:
            if exc_type is None:
                self._state._commit(self._uuid, self._change, self._before)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
