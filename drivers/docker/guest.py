"""Inside the container: run a command fed on stdin, set the admin password, write a file,
read the console."""

from __future__ import annotations

import io
import logging
import posixpath
import socket
import struct
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from drivers.docker import spec
from drivers.docker.connection import Engine
from virt.errors import InvalidRequest, UnsupportedOperation, VirtError
from virt.model import Instance

LOG = logging.getLogger(__name__)

#: Exit codes with which the runtime says the command does not exist / cannot run.
COMMAND_MISSING_CODES = frozenset({126, 127})
#: Output of an exec kept at most; the rest is read and dropped.
MAX_OUTPUT = 64 * 1024
_FRAME_HEADER = struct.Struct(">BxxxL")


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


def exec_with_stdin(
    api: Any, container: str, cmd: list[str], stdin: bytes, *, user: str, timeout: float
) -> ExecResult:
    """Run `cmd` in the container with `stdin` written to its standard input.

    The data travels on the attached exec socket only, never on a command line. A command
    that has not ended its output within `timeout` raises TimeoutError (it keeps running:
    docker cannot kill an exec).
    """
    exec_id = api.exec_create(
        container, cmd, stdin=True, stdout=True, stderr=True, tty=False, user=user
    )["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw: socket.socket = getattr(sock, "_sock", sock)
    deadline = time.monotonic() + timeout
    try:
        raw.settimeout(timeout)
        raw.sendall(stdin)
        raw.shutdown(socket.SHUT_WR)  # EOF on the command's stdin
        received = _read_to_eof(raw, deadline)
    except TimeoutError:
        raise TimeoutError(f"{cmd[0]} did not finish within {timeout:g}s") from None
    finally:
        sock.close()
    output = b"".join(data for _stream, data in demux(received))
    exit_code = _exec_exit_code(api, exec_id, timeout)
    return ExecResult(exit_code, output.decode("utf-8", "replace").strip())


def _read_to_eof(raw: socket.socket, deadline: float) -> bytes:
    """Everything the exec socket sends until EOF (its first MAX_OUTPUT bytes), by `deadline`.

    recv() under a socket timeout, not docker-py's frames_iter: that polls the socket with
    no timeout first, so a command that never ends would hold the caller forever.
    """
    received = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        raw.settimeout(remaining)
        chunk = raw.recv(65536)
        if not chunk:
            return bytes(received)
        if len(received) < MAX_OUTPUT:
            received += chunk[: MAX_OUTPUT - len(received)]


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """(stream, payload) of each frame of docker's multiplexed stdout/stderr encoding
    (8-byte header: stream, 3 zero bytes, big-endian payload size); a cut last frame
    keeps what arrived."""
    frames = []
    offset = 0
    while offset + _FRAME_HEADER.size <= len(data):
        stream, size = _FRAME_HEADER.unpack_from(data, offset)
        offset += _FRAME_HEADER.size
        frames.append((stream, data[offset : offset + size]))
        offset += size
    return frames


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


def check_password(password: str) -> None:
    """InvalidRequest unless `password` can be fed to chpasswd."""
    if not isinstance(password, str) or not password:
        raise InvalidRequest("the admin password must be a non-empty string")
    if any(ch in password for ch in "\n\r\0"):
        raise InvalidRequest("the admin password must not contain line breaks or NUL characters")


def admin_user(instance: Instance) -> str:
    """The user whose password set_admin_password changes (image property, else root)."""
    user = "root"
    if instance.image is not None:
        user = instance.image.properties.get(spec.ADMIN_USER_PROPERTY) or "root"
    if not user or any(ch in user for ch in ":\n\r\0"):
        raise InvalidRequest(f"admin user {user!r} is not a valid user name")
    return user


def set_password(engine: Engine, container_id: str, *, ident: str, user: str,
                 password: str) -> None:
    """Run chpasswd in the container with `user:password` on its stdin (never on a
    command line, never in an error)."""
    timeout = engine.timeout
    with engine.translate("run chpasswd", instance=ident):
        try:
            result = exec_with_stdin(engine.api, container_id, ["chpasswd"],
                                     f"{user}:{password}\n".encode(), user="root",
                                     timeout=timeout)
        except TimeoutError:  # the exec socket's timeout: the command hangs
            raise VirtError(
                f"chpasswd in {ident} did not finish within {timeout:g}s; the admin "
                f"password of user {user} may or may not have changed",
                hint="check the guest (a hung PAM or /etc/shadow lock?) and set it again",
            ) from None
    output = result.output.replace(password, "***") if password else result.output
    if result.exit_code in COMMAND_MISSING_CODES:
        raise UnsupportedOperation("docker", "set_admin_password",
                                   reason=f"the image of {ident} has no chpasswd command")
    if result.exit_code != 0:
        raise VirtError(f"chpasswd failed in {ident} (exit code {result.exit_code}): "
                        f"{output or 'no output'}")
    LOG.info("docker: admin password of %s (user %s) changed", ident, user)
