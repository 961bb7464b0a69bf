"""The virtio-serial transport end to end, and the virtkit-agent command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from guest_agent.service import AgentService
from tests.xenstore import TEST_DOMID as DOMID
from tests.xenstore.checks import assert_crypt_matches
from tests.xenstore.checks import shadow_hash as _shadow_hash
from virt.agent import AgentClient, VirtioSerialChannel
from virt.errors import AgentGuestRebooted


class ChardevRelay:
    """What QEMU does with a virtio-serial port: the host connects to one Unix socket,
    the guest's port is the other end; bytes are relayed both ways."""

    def __init__(self, directory) -> None:
        self.host_path, self.guest_path = (
            str(directory / "host.sock"),
            str(directory / "guest.sock"),
        )
        self._listeners = []
        self._ends: dict[str, socket.socket] = {}
        self._ready = threading.Event()
        for path in (self.host_path, self.guest_path):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(1)
            self._listeners.append(listener)
            threading.Thread(target=self._accept, args=(listener, path), daemon=True).start()

    def _accept(self, listener, path) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self._ends[path] = conn
            if len(self._ends) == 2 and not self._ready.is_set():
                self._ready.set()
                host, guest = self._ends[self.host_path], self._ends[self.guest_path]
                threading.Thread(target=self._pipe, args=(host, guest), daemon=True).start()
                threading.Thread(target=self._pipe, args=(guest, host), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        for sock in [*self._listeners, *self._ends.values()]:
            sock.close()


@pytest.fixture
def relay(tmp_path):
    relay = ChardevRelay(tmp_path)
    yield relay
    relay.close()


def test_virtio_serial_end_to_end(relay, agent_config, guest_root):
    config = agent_config.with_overrides(transport="virtio-serial", virtio_port=relay.guest_path)
    channel = VirtioSerialChannel(relay.host_path)
    service = AgentService(config)
    thread = service.start()
    try:
        client = AgentClient(channel, timeout=5)
        assert client.wait_ready(budget=10) == "0.1.0"
        assert client.set_admin_password("virtio-pw") == "v2"
        assert_crypt_matches(_shadow_hash(config), "virtio-pw")
        networks = [
            {
                "mac": "52:54:00:12:34:56",
                "ips": [{"ip": "192.0.2.10", "netmask": "24", "enabled": "1"}],
            }
        ]
        client.reset_network(networks=networks, hostname="kvm-guest")
        assert "    address 192.0.2.10" in open(config.network_config_path).read().splitlines()
        key = guest_root / "root" / ".ssh" / "authorized_keys"
        client.inject_file(str(key), b"k" * 5000)  # virtio-serial has no 2 KiB value quota
        assert key.read_bytes() == b"k" * 5000
        # Garbage on the line gets a typed error and the agent keeps serving.
        channel._sock.sendall(b"this is not json\n")
        assert client.version() == "0.1.0"
    finally:
        service.stop()
        thread.join(5)
        channel.close()


def test_virtio_guest_restart_is_reported(relay, agent_config):
    channel = VirtioSerialChannel(relay.host_path)
    guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    guest.connect(relay.guest_path)
    try:
        guest.sendall(b'{"event":"hello","boot_id":"old"}\n')
        client = AgentClient(channel, timeout=30)
        threading.Timer(0.3, guest.sendall, args=(b'{"event":"hello","boot_id":"new"}\n',)).start()
        with pytest.raises(AgentGuestRebooted):
            client.version()
    finally:
        guest.close()
        channel.close()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guest_agent.service", *args],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_cli_once_answers_pending_requests(xenstore, dom0, tmp_path, guest_root):
    conf = tmp_path / "agent.conf"
    conf.write_text(
        f"[agent]\nxenstore_path = {xenstore.domain_socket(DOMID)}\npassword_method = shadow\n"
        f"shadow_path = {guest_root / 'etc' / 'shadow'}\nuser = admin\n"
    )
    dom0.mkdir(f"/local/domain/{DOMID}/data/host")
    request_id = str(uuid.uuid4())
    dom0.write(
        f"/local/domain/{DOMID}/data/host/{request_id}", '{"name": "version", "value": "agent"}'
    )
    result = _cli("--config", str(conf), "--once")
    assert result.returncode == 0, result.stderr
    reply = json.loads(dom0.read(f"/local/domain/{DOMID}/data/guest/{request_id}"))
    assert reply == {"returncode": "0", "message": "0.1.0"}
    assert not dom0.exists(f"/local/domain/{DOMID}/data/host/{request_id}")


def test_cli_errors_are_clean(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[agent]\nno_such_option = 1\n")
    result = _cli("--config", str(bad))
    assert result.returncode == 2 and "unknown option [agent] no_such_option" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("--config", str(tmp_path / "missing.conf"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = _cli("--once", env={"XENSTORED_PATH": str(tmp_path / "nothing.sock")})
    assert result.returncode == 1 and "cannot use the transport" in result.stderr
    assert "Traceback" not in result.stderr
