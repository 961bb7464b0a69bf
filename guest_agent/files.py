"""Atomic file writes and path confinement for what the host asks the agent to write."""

from __future__ import annotations

import contextlib
import os
import tempfile

from guest_agent.protocol import ErrorKind, ProtocolError


def atomic_write(path: str, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temp file in the same directory and a rename."""
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".virtkit-agent.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def confined_path(path: str, allowed: tuple[str, ...]) -> str:
    """`path` if it lies inside one of the `allowed` directories once symlinks are resolved.

    Refuses relative paths, '..' components and NUL outright, then resolves the nearest
    existing ancestor (so a symlinked directory cannot lead outside).
    """
    if not path or "\0" in path or not path.startswith("/"):
        raise ProtocolError(ErrorKind.FORBIDDEN, "the file path must be absolute")
    if ".." in path.split("/"):
        raise ProtocolError(ErrorKind.FORBIDDEN, "the file path must not contain '..'")
    normal = os.path.normpath(path)
    if os.path.islink(normal):
        raise ProtocolError(ErrorKind.FORBIDDEN, "the file path is a symbolic link")
    existing = os.path.dirname(normal)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    resolved = os.path.join(os.path.realpath(existing), os.path.relpath(normal, existing))
    for root in allowed:
        real_root = os.path.realpath(root)
        if resolved == real_root or resolved.startswith(real_root.rstrip("/") + "/"):
            if resolved == real_root:
                break
            return resolved
    raise ProtocolError(ErrorKind.FORBIDDEN, "the file path is outside the allowed directories")
