"""The guest end of a virtio-serial port: one JSON object per line, each way.

Request line: `{"id": "<uuid>", "name": ..., "value": ..., ["v": 2]}`; reply line:
`{"id": "<uuid>", "returncode": ..., "message": ...}`. On start the agent announces itself
with `{"event": "hello", "boot_id": ..., "version": ...}` so the host can tell a reboot from
a slow answer. The port is `/dev/virtio-ports/org.virtkit.agent.0` in a libvirt/KVM guest
(or a Unix socket, for tests).
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import stat
import threading
import uuid

from guest_agent import __version__
from guest_agent.commands import CommandHandler
from guest_agent.protocol import ErrorKind, Reply

LOG = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return str(uuid.uuid4())


class VirtioSerialTransport:
    """Serve line-framed requests from a virtio-serial port (character device or socket)."""

    def __init__(self, path: str, *, boot: str | None = None, poll_interval: float = 1.0) -> None:
        self.path = path
        self.boot_id = boot or boot_id()
        self.poll_interval = poll_interval
        self._fd: int | None = None
        self._sock: socket.socket | None = None

    def _open(self) -> None:
        if stat.S_ISSOCK(os.stat(self.path).st_mode):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(self.path)
        else:
            self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        self._send({"event": "hello", "boot_id": self.boot_id, "version": __version__})

    def _fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else int(self._fd or 0)

    def _send(self, body: dict[str, object]) -> None:
        line = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        if self._sock is not None:
            self._sock.sendall(line)
        else:
            view = memoryview(line)
            while view:
                view = view[os.write(int(self._fd or 0), view) :]

    def _recv(self) -> bytes:
        if self._sock is not None:
            return self._sock.recv(4096)
        return os.read(int(self._fd or 0), 4096)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def serve(self, handler: CommandHandler, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                if self._sock is None and self._fd is None:
                    self._open()
                    backoff = 0.5
                self._pump(handler, stop)
            except OSError as exc:
                LOG.warning(
                    "virtio-serial port unavailable (%s); retrying in %.1fs", exc.strerror, backoff
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                self.close()

    def _pump(self, handler: CommandHandler, stop: threading.Event) -> None:
        buffer = b""
        discarding = False
        while not stop.is_set():
            ready, _, _ = select.select([self._fileno()], [], [], self.poll_interval)
            if not ready:
                continue
            chunk = self._recv()
            if not chunk:
                raise OSError(0, "the port was closed")
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if discarding:
                    discarding = False
                    continue
                if line.strip():
                    self._send(self.answer(handler, line))
            if len(buffer) > MAX_LINE:
                LOG.warning("request line longer than %d bytes discarded", MAX_LINE)
                self._send(
                    {"id": None, **_failure("the request line is too long", ErrorKind.TOO_LARGE)}
                )
                buffer, discarding = b"", True

    @staticmethod
    def answer(handler: CommandHandler, line: bytes) -> dict[str, object]:
        """The reply object (with its id) for one request line."""
        try:
            body = json.loads(line)
        except ValueError:
            return {"id": None, **_failure("the request is not JSON", ErrorKind.BAD_REQUEST)}
        request_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(request_id, str):
            return {"id": None, **_failure("the request has no id", ErrorKind.BAD_REQUEST)}
        request = {k: v for k, v in body.items() if k != "id"}
        reply = json.loads(
            handler.handle(
                request_id, json.dumps(request, separators=(",", ":")), max_bytes=MAX_LINE
            )
        )
        return {"id": request_id, **reply}


def _failure(message: str, kind: ErrorKind) -> dict[str, object]:
    return json.loads(Reply.failure(kind, message, version=2).to_json())
