"""Atomic file writes and path confinement for what the host asks the agent to write."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
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


#: openat-style writes need dir_fd support (Linux, the BSDs; not Windows).
_DIR_FD = os.open in os.supports_dir_fd and os.replace in os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def confined_write(
    path: str, data: bytes, allowed: tuple[str, ...], *, default_mode: int = 0o600
) -> None:
    """Write `data` at `path` under one of the `allowed` directories, safe against symlinks
    swapped in at any time.

    The allowed directory is opened (an administrator's setting: it may be a symlink); every
    component below it is then opened relative to its parent with O_NOFOLLOW (created 0700
    when missing), the data goes to a temp file created O_EXCL in the final directory, and
    `os.replace` with dir_fd puts it in place (a rename replaces a symlink, never follows
    it). So no symlink below the allowed directory is ever followed, whatever the directory
    permissions and whenever it appears. The path must name the file lexically under the
    allowed directory (as configured, or its resolved form). An existing file keeps its mode.
    """
    if not _DIR_FD:  # Windows: no dir_fd; resolve, check, write (best effort)
        target = confined_path(path, allowed)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        try:
            mode = os.lstat(target).st_mode & 0o777
        except FileNotFoundError:
            mode = default_mode
        atomic_write(target, data, mode=mode)
        return
    root, parts = _split_under(path, allowed)
    os.makedirs(root, mode=0o700, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            parent, fd = fd, _open_subdir(fd, name)
            os.close(parent)
        _replace_at(fd, parts[-1], data, default_mode)
    finally:
        os.close(fd)


def _split_under(path: str, allowed: tuple[str, ...]) -> tuple[str, list[str]]:
    if not path or "\0" in path or not path.startswith("/"):
        raise ProtocolError(ErrorKind.FORBIDDEN, "the file path must be absolute")
    if ".." in path.split("/"):
        raise ProtocolError(ErrorKind.FORBIDDEN, "the file path must not contain '..'")
    normal = os.path.normpath(path)
    for root in allowed:
        for form in dict.fromkeys((os.path.normpath(root), os.path.realpath(root))):
            prefix = form.rstrip("/") + "/"
            if normal.startswith(prefix) and len(normal) > len(prefix):
                return form, normal[len(prefix) :].split("/")
    raise ProtocolError(ErrorKind.FORBIDDEN, "the file path is outside the allowed directories")


def _refuse_link(exc: OSError) -> ProtocolError | OSError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return ProtocolError(
            ErrorKind.FORBIDDEN,
            "a directory of the file path is a symbolic link or not a directory",
        )
    return exc


def _open_subdir(parent: int, name: str) -> int:
    flags = _DIR_FLAGS | _NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _refuse_link(exc) from None
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        raise _refuse_link(exc) from None


def _replace_at(directory: int, name: str, data: bytes, default_mode: int) -> None:
    try:
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        mode = default_mode
    else:
        if stat.S_ISLNK(info.st_mode):
            raise ProtocolError(ErrorKind.FORBIDDEN, "the file path is a symbolic link")
        if not stat.S_ISREG(info.st_mode):
            raise ProtocolError(ErrorKind.FORBIDDEN, "the file path is not a regular file")
        mode = info.st_mode & 0o777
    temp = f".virtkit-agent.{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temp, flags, 0o600, dir_fd=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=directory)
        raise
    with contextlib.suppress(OSError):
        os.fsync(directory)
