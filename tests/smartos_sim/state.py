"""The simulator's state root: paths, the lock, atomic JSON files, the host and the faults."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT_ENV = "VIRTKIT_SMARTOS_SIM_ROOT"
POOL = "zones"
GiB = 1 << 30
HANG_LIMIT = 900.0  # seconds: a hung command left behind (over ssh) ends at last

DEFAULT_HOST: dict[str, Any] = {
    "hostname": "sim-gz",
    "memory_mib": 16384,
    "cores": 8,
    "sockets": 1,
    "cpu_type": "Simulated CPU @ 2.00GHz",
    "zpool_size": 100 * GiB,
    "nic_tags": ["admin", "external"],
    "datacenter": "sim-dc",
    "live_image": "20240101T000000Z",
}


class SimError(Exception):
    """A tool's failure: the message goes to stderr, the exit code to the shell."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or `default` when the file is missing."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class State:
    """One simulated global zone, rooted at a directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    @classmethod
    def from_env(cls) -> State:
        """The state root the wrapper baked into the environment."""
        root = os.environ.get(ROOT_ENV)
        if not root:
            raise SimError(f"smartos simulator: {ROOT_ENV} is not set", 2)
        return cls(root)

    # -- paths --------------------------------------------------------------------------------

    @property
    def vms_dir(self) -> Path:
        return self.root / "vms"

    def vm_path(self, uuid: str) -> Path:
        return self.vms_dir / f"{uuid}.json"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def mountpoint(self, dataset: str) -> Path:
        """Where a filesystem dataset's tree lives (`zones/<uuid>` -> <root>/zones/<uuid>)."""
        return self.root / dataset

    def snapshot_dir(self, snapshot: str) -> Path:
        dataset, _, snap = snapshot.partition("@")
        return self.root / ".snapshots" / dataset / snap

    def zvol_dir(self, dataset: str) -> Path:
        return self.root / ".zvol" / dataset

    # -- set-up, lock, host -------------------------------------------------------------------

    def init(self) -> None:
        """Create the layout and the host description (kept when present)."""
        for sub in ("vms", "images", POOL, ".snapshots", ".zvol"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not (self.root / "host.json").exists():
            host = dict(DEFAULT_HOST, uuid=str(uuidlib.uuid4()), boot_time=int(time.time()))
            write_json(self.root / "host.json", host)
        if not (self.root / "zfs.json").exists():
            now = int(time.time())
            write_json(self.root / "zfs.json", {POOL: {"type": "filesystem", "origin": None,
                                                       "props": {}, "creation": now}})

    @contextlib.contextmanager
    def locked(self) -> Iterator[State]:
        """Hold the state root's lock (one command at a time changes or reads the state)."""
        if not (self.root / "host.json").exists():
            raise SimError(f"smartos simulator: {self.root} is not a state root "
                           "(python -m tests.smartos_sim.install BIN_DIR STATE_ROOT)", 1)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def host(self) -> dict[str, Any]:
        return dict(DEFAULT_HOST, **(read_json(self.root / "host.json", {}) or {}))

    def next_counter(self, name: str) -> int:
        """A monotonically increasing number (zone ids, pids, guids); call under the lock."""
        path = self.root / "counters.json"
        counters = read_json(path, {}) or {}
        value = int(counters.get(name, 0)) + 1
        counters[name] = value
        write_json(path, counters)
        return value

    def log(self, argv: list[str]) -> None:
        """One line per command: tool and arguments (stdin, where secrets go, never)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n"
        with contextlib.suppress(OSError), open(self.root / "log", "a", encoding="utf-8") as fh:
            fh.write(line)

    # -- faults -------------------------------------------------------------------------------

    def faults(self) -> dict[str, Any]:
        try:
            data = read_json(self.root / "faults.json", {})
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def set_faults(self, faults: dict[str, Any]) -> None:
        """Replace the injected faults (tests call this; {} clears them)."""
        if faults:
            write_json(self.root / "faults.json", faults)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / "faults.json")

    def take_provision_fault(self) -> str | None:
        """The provisioning fault for this create, if any (a one-shot one is consumed)."""
        faults = self.faults()
        value = faults.get("provision")
        if not value:
            return None
        if value != "fail-always":
            faults.pop("provision")
            self.set_faults(faults)
        return "zoneinit failed (injected provisioning fault)"

    def hang_if_asked(self, words: list[str]) -> None:
        """Block while a `hang` fault names this command (no lock is held meanwhile)."""
        if not _matching(self.faults().get("hang"), words):
            return
        deadline = time.monotonic() + HANG_LIMIT
        while _matching(self.faults().get("hang"), words) and time.monotonic() < deadline:
            time.sleep(0.2)
        raise SimError(f"{words[0]}: interrupted (the hang fault was removed)", 1)

    def fail_if_asked(self, words: list[str]) -> None:
        """Raise the injected error of a `fail` (or `zfs`) fault that names this command."""
        faults = self.faults()
        failing = faults.get("fail")
        if isinstance(failing, dict):
            for prefix, message in failing.items():
                if _matching(prefix, words):
                    raise SimError(str(message), 1)
        zfs = faults.get("zfs")
        if words and words[0] == "zfs" and zfs:
            if isinstance(zfs, str):
                raise SimError(zfs, 1)
            if isinstance(zfs, dict) and len(words) > 1 and words[1] in zfs:
                raise SimError(str(zfs[words[1]]), 1)


def _matching(spec: Any, words: list[str]) -> bool:
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, list):
        return False
    for item in spec:
        prefix = str(item).split()
        if prefix and words[: len(prefix)] == prefix:
            return True
    return False


def run_tool(name: str, main: Any, argv: list[str]) -> int:
    """Run one tool's main under the fault checks, turning SimError into stderr and a code."""
    try:
        state = State.from_env()
        words = [name, *argv]
        state.hang_if_asked(words)
        state.fail_if_asked(words)
        state.log(words)
        return int(main(state, argv) or 0)
    except SimError as exc:
        if exc.message:
            sys.stderr.write(exc.message.rstrip("\n") + "\n")
        return exc.code
    except BrokenPipeError:
        return 1
