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
from guest_agent.protocol import MAX_LINE, ErrorKind, Reply, encode_line, hello_line

LOG = logging.getLogger(__name__)


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
        self._write(hello_line(self.boot_id, __version__))

    def _fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else int(self._fd or 0)

    def _send(self, body: dict[str, object]) -> None:
        self._write(encode_line(body))

    def _write(self, line: bytes) -> None:
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
        """Answer requests until `stop` is set. Nothing a peer sends can end this loop: bad
        lines get a typed error reply, and an unexpected failure re-opens the port."""
        backoff = 0.5
        while not stop.is_set():
            try:
                if self._sock is None and self._fd is None:
                    self._open()
                    backoff = 0.5
                self._pump(handler, stop)
            except OSError as exc:
                LOG.warning(
                    "virtio-serial port unavailable (%s); retrying in %.1fs",
                    exc.strerror or type(exc).__name__,
                    backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:  # a bug must not stop the agent: log, re-open, go on
                LOG.error(
                    "virtio-serial loop failed (%s); re-opening in %.1fs",
                    type(exc).__name__,
                    backoff,
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
                if discarding:  # the tail of a line already refused as too long
                    discarding = False
                    continue
                if line.strip():
                    self._send(self.answer(handler, line))
            if len(buffer) > MAX_LINE:
                LOG.warning("request line longer than %d bytes discarded", MAX_LINE)
                self._send(_failure_line(None, "the request line is too long", ErrorKind.TOO_LARGE))
                buffer, discarding = b"", True

    @staticmethod
    def answer(handler: CommandHandler, line: bytes) -> dict[str, object]:
        """The reply object (with its id) for one request line. Never raises: a line that
        cannot be parsed or handled gets a typed error reply."""
        if len(line) > MAX_LINE:
            return _failure_line(None, "the request line is too long", ErrorKind.TOO_LARGE)
        request_id: str | None = None
        try:
            body = json.loads(line)
            request_id = body.get("id") if isinstance(body, dict) else None
            if not isinstance(request_id, str):
                return _failure_line(None, "the request has no id", ErrorKind.BAD_REQUEST)
            request = {k: v for k, v in body.items() if k != "id"}
            text = handler.handle(
                request_id, json.dumps(request, separators=(",", ":")), max_bytes=MAX_LINE
            )
            reply = json.loads(text)
            if not isinstance(reply, dict):
                raise TypeError("the handler's reply is not an object")
            return {"id": request_id, **reply}
        except RecursionError:
            return _failure_line(
                request_id, "the request is nested too deeply", ErrorKind.BAD_REQUEST
            )
        except ValueError:  # not JSON, not UTF-8
            return _failure_line(request_id, "the request is not JSON", ErrorKind.BAD_REQUEST)
        except Exception as exc:  # the loop must survive anything a line can trigger
            LOG.error("virtio-serial request could not be handled (%s)", type(exc).__name__)
            return _failure_line(
                request_id, "the request could not be handled: internal error", ErrorKind.OS_ERROR
            )


def _failure_line(request_id: str | None, message: str, kind: ErrorKind) -> dict[str, object]:
    return {"id": request_id, **_failure(message, kind)}


def _failure(message: str, kind: ErrorKind) -> dict[str, object]:
    return json.loads(Reply.failure(kind, message, version=2).to_json())
