"""Robustness over the real transports: bad input, poisoned requests, watch events, late
replies, readiness of agents that answer differently."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid

import pytest

from guest_agent.config import AgentConfig
from guest_agent.service import AgentService
from guest_agent.transports.virtio_serial import MAX_LINE
from guest_agent.wire import XenstoreError
from tests.xenstore import TEST_DOMID as DOMID
from virt.agent import AgentClient, XenstoreChannel
from virt.conformance.fixtures import wait_for
from virt.errors import AgentError, AgentNotReady

BASE = f"/local/domain/{DOMID}"


# -- virtio-serial: the loop never dies on input ---------------------------------------------


@pytest.fixture
def virtio_port(tmp_path):
    """The agent's port as a Unix socket (the agent connects); yields the host end."""
    path = str(tmp_path / "port")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    service = AgentService(
        AgentConfig(transport="virtio-serial", virtio_port=path, poll_interval=0.2)
    )
    thread = service.start()
    listener.settimeout(5)
    conn, _ = listener.accept()
    conn.settimeout(5)
    lines = conn.makefile("rb")
    assert json.loads(lines.readline())["event"] == "hello"

    def exchange(raw: bytes) -> dict:
        conn.sendall(raw + b"\n")
        return json.loads(lines.readline())

    yield exchange, thread
    service.stop()
    conn.close()
    listener.close()
    thread.join(5)


def _version_line() -> tuple[str, bytes]:
    rid = str(uuid.uuid4())
    return rid, json.dumps({"id": rid, "name": "version", "value": "agent"}).encode()


def test_virtio_loop_survives_deep_nesting_and_long_lines(virtio_port):
    exchange, thread = virtio_port
    rid, line = _version_line()
    assert exchange(line) == {"id": rid, "returncode": "0", "message": "0.1.0"}
    deep = exchange(b"[" * 30000)  # RecursionError in json.loads, not a ValueError
    assert (deep["id"], deep["error"]) == (None, "bad-request")
    rid2 = str(uuid.uuid4())
    nested = exchange(b'{"id": "' + rid2.encode() + b'", "name": ' + b"[" * 30000 + b"}")
    assert nested["error"] == "bad-request"
    too_long = exchange(b'{"id": "x", "value": "' + b"a" * (MAX_LINE + 10) + b'"}')
    assert (too_long["id"], too_long["error"]) == (None, "too-large")
    for junk in (b"\xff\xfe", b'{"id": 5}', b"[1]", b"null", b'"x"'):
        assert exchange(junk)["error"] == "bad-request"
    assert thread.is_alive()
    rid, line = _version_line()
    assert exchange(line) == {"id": rid, "returncode": "0", "message": "0.1.0"}


def test_virtio_request_id_with_trailing_newline_is_refused(virtio_port):
    exchange, _ = virtio_port
    rid = str(uuid.uuid4()) + "\n"
    reply = exchange(json.dumps({"id": rid, "name": "version", "value": "agent"}).encode())
    assert (reply["id"], reply["error"]) == (rid, "bad-request")


# -- xenstore, guest side: a request whose reply cannot be stored is dropped ------------------


def test_unwritable_reply_is_dropped_and_others_are_served(guest_agent, dom0, caplog):
    caplog.set_level(logging.INFO)
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    # A reply node the guest may not write (EACCES), then the request it answers.
    dom0.write(f"{BASE}/data/guest/{bad}", "x")
    dom0.set_perms(f"{BASE}/data/guest/{bad}", ["n0", f"r{DOMID}"])
    secret_value = "do-not-log-this-value"
    dom0.write(f"{BASE}/data/host/{bad}", json.dumps({"name": "version", "value": secret_value}))
    dom0.write(f"{BASE}/data/host/{good}", '{"name": "version", "value": "agent"}')
    reply = wait_for(lambda: dom0.read_text(f"{BASE}/data/guest/{good}"))
    assert reply and json.loads(str(reply))["message"] == "0.1.0"
    assert wait_for(lambda: not dom0.exists(f"{BASE}/data/host/{bad}"))
    assert f"request {bad} dropped: its reply cannot be written (EACCES)" in caplog.text
    assert secret_value not in caplog.text
    # Later requests are answered at once, not after a reconnect backoff.
    later = str(uuid.uuid4())
    dom0.write(f"{BASE}/data/host/{later}", '{"name": "version", "value": "agent"}')
    assert wait_for(lambda: dom0.exists(f"{BASE}/data/guest/{later}"), timeout=2)
    assert "xenstore unavailable" not in caplog.text


def test_unreadable_request_is_skipped_and_others_are_served(guest_agent, dom0, caplog):
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    for _ in range(20):  # one transaction: the guest never sees it readable
        tx = dom0.transaction_start()
        dom0.write(f"{BASE}/data/host/{bad}", '{"name": "version", "value": "agent"}', tx=tx)
        dom0.set_perms(f"{BASE}/data/host/{bad}", ["n0"], tx=tx)  # not readable, not removable
        try:
            dom0.transaction_end(tx)
            break
        except XenstoreError as exc:  # the starting agent created data/host meanwhile
            assert exc.name == "EAGAIN"
    dom0.write(f"{BASE}/data/host/{good}", '{"name": "version", "value": "agent"}')
    assert wait_for(lambda: dom0.exists(f"{BASE}/data/guest/{good}"))
    assert "cannot be read (EACCES)" in caplog.text
    assert "xenstore unavailable" not in caplog.text
    assert not dom0.exists(f"{BASE}/data/guest/{bad}")


# -- xenstore, host side: watch events neither pile up nor wake later waits ------------------


def test_host_watch_events_do_not_pile_up(guest_agent, host_client, dom0):
    host_client.wait_ready()
    for _ in range(100):
        host_client.version()
    time.sleep(0.3)  # let stragglers arrive
    assert dom0.events.qsize() == 0
    assert dom0._routes == {}


def test_stale_events_do_not_wake_a_later_wait(xenstore, guest_agent, dom0):
    client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.2), timeout=5)
    for _ in range(30):
        client.version()
    guest_agent.stop()  # nobody answers the next request
    time.sleep(1.5)
    channel = XenstoreChannel(dom0, DOMID, poll_interval=10)  # no safety-net poll in 1 s
    rid = str(uuid.uuid4())
    channel.send(rid, '{"name": "version", "value": "agent"}')
    before = xenstore.requests
    try:
        assert channel.receive(rid, 1.0) is None
    finally:
        channel.finish(rid)
    # watch x2, (read + presence check) x2 to x4 (the watches' own first events may arrive
    # after a re-read), unwatch x2; each of the ~70 stale events the old code left from the
    # calls above woke the wait for another read and check.
    assert xenstore.requests - before <= 16, xenstore.requests - before


# -- late replies ----------------------------------------------------------------------------


def test_host_sweeps_late_replies_of_legacy_guests(legacy_guest, dom0):
    calls: list[str] = []

    def answer(rid: str, body: dict) -> tuple[str, float]:
        calls.append(rid)
        delay = 1.0 if len(calls) == 1 else 0.0  # the first answer comes after the timeout
        return json.dumps({"returncode": "0", "message": "2.1.25"}), delay

    guest = legacy_guest(answer)
    client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.1), timeout=0.4)
    with pytest.raises(AgentNotReady):
        client.version()
    late = calls[0]
    assert wait_for(lambda: late in guest.written)
    assert dom0.exists(f"{BASE}/data/guest/{late}")  # the orphan a legacy guest leaves
    assert late in XenstoreChannel(dom0, DOMID).abandoned()
    # The next request, even through a new channel object, removes it.
    other = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.1), timeout=5)
    assert other.version() == "2.1.25"
    assert dom0.directory(f"{BASE}/data/guest") == []
    assert dom0.directory(f"{BASE}/data/host") == []
    assert XenstoreChannel(dom0, DOMID).abandoned() == []


def test_our_guest_writes_no_reply_for_a_withdrawn_request(xenstore, dom0, agent_config, caplog):
    caplog.set_level(logging.INFO)
    dom0.write(
        f"{BASE}/vm-data/networking/fa163e000001",
        json.dumps({"mac": "fa:16:3e:00:00:01", "ips": [], "label": "public"}),
    )
    # No v2: the request carries no network data, the guest reads vm-data (slowly).
    config = agent_config.with_overrides(network_restart_command="sleep 1", offer_v2=False)
    service = AgentService(config)
    thread = service.start()
    try:
        client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.1), timeout=5)
        assert not client.supports_v2()  # negotiated through features
        client.resetnetwork_timeout = 0.3
        with pytest.raises(AgentNotReady):
            client.reset_network()  # the host gives up and removes data/host/<id>
        assert wait_for(lambda: "was withdrawn by the host" in caplog.text, timeout=5)
        assert dom0.directory(f"{BASE}/data/guest") == []
        assert dom0.directory(f"{BASE}/data/host") == []
    finally:
        service.stop()
        thread.join(5)


# -- readiness --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        {"returncode": "1", "message": None},  # Mirantis: no 'version' command
        {"returncode": "404", "message": "No such agent command 'version'"},
        {"returncode": "500", "message": "internal error"},
    ],
)
def test_wait_ready_counts_any_well_formed_reply(legacy_guest, dom0, reply):
    legacy_guest(lambda rid, body: (json.dumps(reply), 0.0))
    client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.1), timeout=2)
    started = time.monotonic()
    assert client.wait_ready(budget=10) == ""
    assert time.monotonic() - started < 2


def test_wait_ready_still_refuses_a_malformed_reply(legacy_guest, dom0):
    legacy_guest(lambda rid, body: ("not json", 0.0))
    client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.1), timeout=2)
    with pytest.raises(AgentError, match="malformed"):
        client.wait_ready(budget=5)


def test_no_secret_in_drop_logs(guest_agent, dom0, caplog):
    """The drop path logs ids and error names only: not the request body."""
    caplog.set_level(logging.DEBUG)
    rid = str(uuid.uuid4())
    dom0.write(f"{BASE}/data/guest/{rid}", "x")
    dom0.set_perms(f"{BASE}/data/guest/{rid}", ["n0"])
    ciphertext = "c2VjcmV0LWNpcGhlcnRleHQtdmFsdWU="
    dom0.write(f"{BASE}/data/host/{rid}", json.dumps({"name": "password", "value": ciphertext}))
    assert wait_for(lambda: not dom0.exists(f"{BASE}/data/host/{rid}"))
    assert ciphertext not in caplog.text
