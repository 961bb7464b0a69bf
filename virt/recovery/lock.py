"""One `virtkit-recover` run per target host at a time.

A run resumes its own host's unfinished claims at once (that is how a killed run is
resumed), so the claims cannot keep two runs of the same host apart: this lock does. It is
an `fcntl` lock on `<state_path>/recover-<host>.lock`, held for the whole run and released
by the kernel when the process ends, however it ends (no stale lock after a kill). The file
holds the pid of the run that has it, for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from virt.errors import EXIT_USAGE, RecoveryError


class RecoveryBusy(RecoveryError):
    """Another recovery run for the same target host is in progress."""

    exit_code = EXIT_USAGE


def lock_path(state_path: str | os.PathLike[str], host: str) -> Path:
    safe = host.replace(os.sep, "_") or "_"
    return Path(state_path) / f"recover-{safe}.lock"


@contextlib.contextmanager
def run_lock(state_path: str | os.PathLike[str], host: str) -> Iterator[Path]:
    """Hold the run lock of `host`, or raise RecoveryBusy at once if another run has it."""
    path = lock_path(state_path, host)
    try:
        # The default mode, not 0700: instances_path usually lives under state_path and
        # the hypervisor (e.g. qemu's own user) must reach the disks there.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise RecoveryError(f"cannot create the run lock {path}: {exc.strerror}",
                            hint="check [DEFAULT] state_path and its permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RecoveryBusy(
                f"another virtkit-recover run for host {host} is in progress (pid {holder}, "
                f"lock {path})", hint="wait for it to finish; run one per host") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield path
    finally:
        os.close(fd)  # releases the lock
