"""The libvirt/KVM channel: JSON lines on the host end of a virtio-serial port."""

from __future__ import annotations

import json
import socket
import threading
import time

from guest_agent import protocol as p
from virt.agent.channel import Channel
from virt.errors import AgentError, AgentGuestRebooted


class VirtioSerialChannel(Channel):
    """JSON lines over the host end of a virtio-serial port (a Unix socket of the chardev)."""

    max_request_bytes = p.MAX_LINE

    def __init__(self, path: str, *, connect_timeout: float = 10.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(connect_timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise AgentError(f"cannot connect to the agent port {path}: {exc.strerror}") from None
        self._sock.settimeout(None)
        self._cond = threading.Condition()
        self._replies: dict[str, str] = {}
        self._boot_id: str | None = None
        self._reboots = 0
        self._closed = False
        self._sent_at: dict[str, int] = {}
        threading.Thread(target=self._read, name="virtio-agent-reader", daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._deliver(line)
        except OSError:
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _deliver(self, line: bytes) -> None:
        try:
            body = json.loads(line)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        with self._cond:
            if body.get("event") == p.EVENT_HELLO:
                # The first hello is the agent coming up; a new boot id after it is a reboot.
                boot_id = str(body.get("boot_id"))
                if self._boot_id is not None and boot_id != self._boot_id:
                    self._reboots += 1
                self._boot_id = boot_id
            elif isinstance(body.get("id"), str):
                request_id = body.pop("id")
                if request_id in self._sent_at:
                    self._replies[request_id] = json.dumps(body)
            self._cond.notify_all()

    def send(self, request_id: str, request: str) -> None:
        line = p.request_line(request_id, request)
        with self._cond:
            self._sent_at[request_id] = self._reboots
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise AgentError(
                f"cannot write to the agent port {self.path}: {exc.strerror}"
            ) from None

    def receive(self, request_id: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if request_id in self._replies:
                    return self._replies.pop(request_id)
                if self._reboots != self._sent_at.get(request_id, self._reboots):
                    raise AgentGuestRebooted(
                        "the guest rebooted (new boot id) while an agent request was pending"
                    )
                if self._closed:
                    raise AgentError(f"the agent port {self.path} was closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def finish(self, request_id: str) -> None:
        with self._cond:
            self._replies.pop(request_id, None)
            self._sent_at.pop(request_id, None)

    def close(self) -> None:
        """Close the port's socket (the reader thread ends with it)."""
        self._sock.close()
