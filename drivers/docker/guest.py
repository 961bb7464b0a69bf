"""Inside the container: run a command fed on stdin, write a file, read the console."""

from __future__ import annotations

import io
import posixpath
import socket
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from docker.utils import socket as docker_socket

from virt.errors import InvalidRequest

#: Exit codes with which the runtime says the command does not exist / cannot run.
COMMAND_MISSING_CODES = frozenset({126, 127})


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


def exec_with_stdin(
    api: Any, container: str, cmd: list[str], stdin: bytes, *, user: str, timeout: float
) -> ExecResult:
    """Run `cmd` in the container with `stdin` written to its standard input.

    The data travels on the attached exec socket only, never on a command line.
    """
    exec_id = api.exec_create(
        container, cmd, stdin=True, stdout=True, stderr=True, tty=False, user=user
    )["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw: socket.socket = getattr(sock, "_sock", sock)
    chunks: list[bytes] = []
    try:
        raw.settimeout(timeout)
        raw.sendall(stdin)
        raw.shutdown(socket.SHUT_WR)  # EOF on the command's stdin
        for _stream, data in docker_socket.frames_iter(sock, tty=False):
            chunks.append(data)
    finally:
        sock.close()
    exit_code = _exec_exit_code(api, exec_id, timeout)
    return ExecResult(exit_code, b"".join(chunks).decode("utf-8", "replace").strip())


def _exec_exit_code(api: Any, exec_id: str, timeout: float) -> int:
    # The exit code can lag the end of the stream by a moment.
    deadline = time.monotonic() + timeout
    while True:
        info = api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() > deadline:
            return -1
        time.sleep(0.02)


def validate_guest_path(path: str) -> str:
    """An absolute, normalised file path inside the container, or InvalidRequest."""
    if not path or not path.startswith("/") or "\0" in path:
        raise InvalidRequest(f"file path {path!r} must be absolute, like /etc/motd")
    normal = posixpath.normpath(path)
    if normal != path.rstrip("/") or ".." in path.split("/") or normal == "/":
        raise InvalidRequest(f"file path {path!r} must name a file, without '..' or '//'")
    return normal


def file_archive(relative: str, contents: bytes, *, mode: int = 0o644) -> bytes:
    """A tar holding `contents` at `relative`, with the directories leading to it."""
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            info = tarfile.TarInfo("/".join(parts[:depth]))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(info)
        info = tarfile.TarInfo(relative)
        info.size, info.mode, info.mtime = len(contents), mode, now
        tar.addfile(info, io.BytesIO(contents))
    return buffer.getvalue()


def ancestors(path: str) -> list[str]:
    """'/a/b/c' -> ['/a/b', '/a', '/']: the directories above a file, deepest first."""
    result = []
    current = posixpath.dirname(path)
    while True:
        result.append(current)
        if current == "/":
            return result
        current = posixpath.dirname(current)


def tail_text(data: bytes, max_bytes: int) -> str:
    """The last `max_bytes` of `data` as text (a cut UTF-8 sequence becomes U+FFFD)."""
    if max_bytes <= 0:
        return ""
    return data[-max_bytes:].decode("utf-8", "replace")
