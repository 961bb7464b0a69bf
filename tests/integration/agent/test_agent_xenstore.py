"""End to end: the host AgentClient and the real guest service through the test xenstore."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import threading
import uuid

import pytest

from guest_agent import protocol as p
from tests.xenstore import TEST_DOMID as DOMID
from tests.xenstore.checks import assert_crypt_matches
from tests.xenstore.checks import shadow_hash as _shadow_hash
from virt.agent import AgentClient, Channel, XenstoreChannel
from virt.errors import (
    AgentAbsent,
    AgentDecryptionFailed,
    AgentError,
    AgentGuestRebooted,
    AgentNotReady,
    AgentUnsupportedCommand,
    InvalidRequest,
)

BASE = f"/local/domain/{DOMID}"


def _empty_exchange(dom0) -> None:
    for kind in ("host", "guest"):
        path = f"{BASE}/data/{kind}"
        assert not dom0.exists(path) or dom0.directory(path) == []


def test_v2_password_end_to_end(guest_agent, host_client, agent_config, dom0):
    assert host_client.wait_ready() == "0.1.0"
    assert host_client.supports_v2()
    password = 'Pässwörd with spaces & "quotes" €'
    assert host_client.set_admin_password(password) == "v2"
    assert_crypt_matches(_shadow_hash(agent_config), password)
    assert _shadow_hash(agent_config, "root") == "*"  # other accounts untouched
    _empty_exchange(dom0)


def test_legacy_password_end_to_end(old_guest_agent, dom0, agent_config):
    client = AgentClient(
        XenstoreChannel(dom0, DOMID, poll_interval=0.2), timeout=5, allow_legacy=True
    )
    features = client.features()  # negotiated: the guest runs with offer_v2 = false
    assert {"keyinit", "password"} <= features and "v2" not in features
    assert client.set_admin_password("hunter2") == "legacy"
    assert_crypt_matches(_shadow_hash(agent_config), "hunter2")
    _empty_exchange(dom0)


def test_legacy_refused_unless_allowed(old_guest_agent, host_client, agent_config):
    before = _shadow_hash(agent_config)
    with pytest.raises(AgentUnsupportedCommand) as err:
        host_client.set_admin_password("hunter2")
    assert "allow_legacy" in str(err.value)
    assert not host_client.supports_v2()
    assert _shadow_hash(agent_config) == before


def test_inject_file_legacy(old_guest_agent, host_client, dom0, guest_root):
    assert not host_client.supports_v2()
    host_client.inject_file(str(guest_root / "root" / ".ssh" / "sub" / "note"), b"a,b,c")
    assert (guest_root / "root" / ".ssh" / "sub" / "note").read_bytes() == b"a,b,c"
    with pytest.raises(InvalidRequest):  # the legacy value cannot carry a comma in the path
        host_client.inject_file(str(guest_root / "root" / ".ssh" / "a,b"), b"x")
    with pytest.raises(AgentError) as err:
        host_client.inject_file(str(guest_root / "etc" / "passwd"), b"x")
    assert "forbidden" in str(err.value)
    _empty_exchange(dom0)


def test_inject_file_v2(guest_agent, host_client, dom0, guest_root):
    target = guest_root / "root" / ".ssh" / "authorized_keys"
    host_client.inject_file(str(target), b"ssh-ed25519 AAAA test\n")
    assert host_client.supports_v2()
    assert target.read_bytes() == b"ssh-ed25519 AAAA test\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    for outside in (
        str(guest_root / "etc" / "passwd"),
        str(guest_root / "root" / ".ssh" / ".." / "x"),
    ):
        with pytest.raises(AgentError) as err:
            host_client.inject_file(outside, b"x")
        assert "forbidden" in str(err.value)
    os.symlink(guest_root / "etc", guest_root / "root" / ".ssh" / "link")
    with pytest.raises(AgentError):
        host_client.inject_file(str(guest_root / "root" / ".ssh" / "link" / "shadow"), b"x")
    assert (guest_root / "etc" / "shadow").read_text().startswith("root:*")
    with pytest.raises(InvalidRequest):
        host_client.inject_file(str(target), b"k" * 3000)  # over the xenstore value quota
    _empty_exchange(dom0)


def test_reset_network_from_vm_data(guest_agent, host_client, dom0, agent_config):
    net = {
        "label": "public", "mac": "fa:16:3e:00:00:01", "broadcast": "10.0.0.255", "gateway": "10.0.0.1",
        "ips": [{"ip": "10.0.0.5", "netmask": "255.255.255.0", "gateway": "10.0.0.1", "enabled": "1"}],
        "ip6s": [{"ip": "2001:db8::5", "netmask": 64, "gateway": "2001:db8::1", "enabled": "1"}],
        "routes": [{"route": "10.1.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.254"}],
        "dns": ["192.0.2.53"],
    }  # fmt: skip
    dom0.write(f"{BASE}/vm-data/networking/fa163e000001", json.dumps(net))
    dom0.write(f"{BASE}/vm-data/hostname", "web-1.example.org")
    host_client.reset_network()
    text = open(agent_config.network_config_path).read()
    for line in (
        "iface eth0 inet static", "    address 10.0.0.5", "    netmask 255.255.255.0",
        "    gateway 10.0.0.1", "    dns-nameservers 192.0.2.53",
        "    up ip route add 10.1.0.0/255.255.0.0 via 10.0.0.254 dev eth0",
        "iface eth0 inet6 static", "    address 2001:db8::5", "    netmask 64",
    ):  # fmt: skip
        assert line in text.splitlines()
    assert open(agent_config.hostname_path).read() == "web-1.example.org\n"
    dom0.write(
        f"{BASE}/vm-data/networking/fa163e000001",
        json.dumps({**net, "dns": ["8.8.8.8\nup rm -rf /"]}),
    )
    with pytest.raises(AgentError) as err:
        host_client.reset_network()
    assert "bad-request" in str(err.value)
    assert "rm -rf" not in open(agent_config.network_config_path).read()


def _raw(dom0, request_id: str, body: str | bytes) -> dict:
    """Write a raw request as a host would and wait for the guest's reply."""
    channel = XenstoreChannel(dom0, DOMID, poll_interval=0.2)
    dom0.write(f"{BASE}/data/host/{request_id}", body)
    try:
        reply = channel.receive(request_id, 5)
    finally:
        channel.finish(request_id)
    assert reply is not None, "the agent did not answer"
    return json.loads(reply)


def test_bad_input_gets_typed_replies_and_the_loop_survives(guest_agent, host_client, dom0):
    rid = lambda: str(uuid.uuid4())  # noqa: E731
    assert _raw(dom0, rid(), "{not json")["error"] == "bad-request"
    assert _raw(dom0, rid(), b"\xff\xfe\x00garbage")["error"] == "bad-request"
    unknown = _raw(dom0, rid(), '{"name": "rm-rf", "value": ""}')
    assert (unknown["returncode"], unknown["error"]) == ("404", "unsupported")
    assert (
        _raw(dom0, rid(), json.dumps({"name": "version", "value": "x" * 2100}))["error"]
        == "too-large"
    )
    assert _raw(dom0, "not-a-uuid", '{"name": "version", "value": ""}')["error"] == "bad-request"
    assert (
        _raw(dom0, rid(), '{"name": "password", "value": "AAAA", "v": 9}')["error"] == "bad-request"
    )
    assert (
        _raw(dom0, rid(), '{"name": "agentupdate", "value": "http://x/a.tgz,00"}')["error"]
        == "forbidden"
    )
    with pytest.raises(AgentUnsupportedCommand):
        host_client.call("kmsactivate", "")
    assert host_client.version() == "0.1.0"  # still serving
    _empty_exchange(dom0)


@pytest.mark.parametrize("public", ["0", "1", str(p.LEGACY_P - 1)])
def test_degenerate_legacy_public_values_rejected(guest_agent, host_client, public):
    with pytest.raises(AgentError) as err:
        host_client.call(p.KEYINIT, public, success=(p.RC_KEYINIT_OK,))
    assert "bad-request" in str(err.value)


def _v2_session(client: AgentClient):
    pair, session = p.V2KeyPair(), str(uuid.uuid4())
    reply = client.call(
        p.KEYINIT, p.v2_keyinit_value(pair), version=2, request_id=session, success=("D0",)
    )
    key = pair.session_key(reply.message, session_id=session, host_public=pair.public,
                           guest_public=base64.b64decode(reply.message))  # fmt: skip
    return session, key


def test_tampered_v2_ciphertext_is_a_decryption_failure(guest_agent, host_client, agent_config):
    before = _shadow_hash(agent_config)
    session, key = _v2_session(host_client)
    rid = str(uuid.uuid4())
    sealed = p.v2_seal(key, request_id=rid, command=p.PASSWORD, plaintext=b"hunter2")
    raw = bytearray(base64.b64decode(sealed["ct"]))
    raw[-1] ^= 0x01
    sealed["ct"] = base64.b64encode(raw).decode()
    with pytest.raises(AgentDecryptionFailed):
        host_client.call(p.PASSWORD, {"session": session, **sealed}, version=2, request_id=rid)
    assert _shadow_hash(agent_config) == before


def test_replayed_request_id_returns_cached_reply_applied_once(
    guest_agent, host_client, agent_config
):
    session, key = _v2_session(host_client)
    rid = str(uuid.uuid4())
    value = {
        "session": session,
        **p.v2_seal(key, request_id=rid, command=p.PASSWORD, plaintext=b"once-only"),
    }
    host_client.call(p.PASSWORD, value, version=2, request_id=rid)
    first = os.stat(agent_config.shadow_path)
    assert_crypt_matches(_shadow_hash(agent_config), "once-only")
    again = host_client.call(p.PASSWORD, value, version=2, request_id=rid)  # the session is spent
    assert again.ok
    second = os.stat(agent_config.shadow_path)
    assert (second.st_ino, second.st_mtime_ns) == (
        first.st_ino,
        first.st_mtime_ns,
    )  # not re-applied
    with pytest.raises(AgentError) as err:  # same id, other content
        host_client.call(p.VERSION, "agent", version=2, request_id=rid)
    assert "conflict" in str(err.value)


def test_absent_agent_and_request_timeout(dom0):
    client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.1), timeout=0.3)
    with pytest.raises(AgentAbsent):
        client.wait_ready(budget=0.8)
    with pytest.raises(AgentNotReady):
        client.version()
    _empty_exchange(dom0)  # timed-out requests are removed too


def test_guest_reboot_during_request_is_reported(xenstore, dom0):
    client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=5), timeout=30)
    threading.Timer(0.3, xenstore.release_domain, args=(DOMID,)).start()
    with pytest.raises(AgentGuestRebooted):
        client.version()  # no agent: without reboot detection this would wait 30 s


class RecordingChannel(Channel):
    """Delegates to a real channel and keeps every text that crossed it."""

    def __init__(self, inner: Channel) -> None:
        self.inner, self.texts = inner, []

    def send(self, request_id, request):
        self.texts.append(request)
        self.inner.send(request_id, request)

    def receive(self, request_id, timeout):
        reply = self.inner.receive(request_id, timeout)
        self.texts.append(reply or "")
        return reply

    def finish(self, request_id):
        self.inner.finish(request_id)


def _secret_strings(texts: list[str]) -> set[str]:
    found: set[str] = set()
    for text in texts:
        body = json.loads(text)
        value = body.get("value")
        if body.get("name") in (p.KEYINIT, p.PASSWORD):
            items = (
                [v for k, v in value.items() if k != "session"]
                if isinstance(value, dict)
                else [value]
            )
            found |= {v for v in items if isinstance(v, str)}
        if body.get("returncode") == "D0":
            found.add(body["message"])
    return {s for s in found if len(s) >= 8 and s not in (p.V2_KEX, p.V2_AEAD)}


@pytest.mark.parametrize("offer_v2", [True, False], ids=["v2", "legacy"])
def test_nothing_secret_in_logs(start_agent, dom0, caplog, agent_config, offer_v2):
    caplog.set_level(logging.DEBUG)
    start_agent(offer_v2=offer_v2)
    password = "Correct-Horse-Battery-Staple-42"
    channel = RecordingChannel(XenstoreChannel(dom0, DOMID, poll_interval=0.2))
    client = AgentClient(channel, timeout=5, allow_legacy=True)
    assert client.set_admin_password(password) == ("v2" if offer_v2 else "legacy")
    secrets = _secret_strings(channel.texts)
    assert len(secrets) >= 3  # host public, guest public, ciphertext
    for secret in [*secrets, password]:
        assert secret not in caplog.text
    assert "keyinit" in caplog.text  # the exchange itself was logged
    assert_crypt_matches(_shadow_hash(agent_config), password)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_agentupdate_only_with_configured_sha256(xenstore, dom0, agent_config, tmp_path):
    import hashlib

    from guest_agent.service import AgentService

    package = tmp_path / "agent-update.tgz"
    package.write_bytes(b"new agent build")
    config = agent_config.with_overrides(
        update_sha256=hashlib.sha256(b"new agent build").hexdigest(),
        update_dir=str(tmp_path / "updates"),
    )
    service = AgentService(config)
    thread = service.start()
    try:
        client = AgentClient(XenstoreChannel(dom0, DOMID, poll_interval=0.2), timeout=5)
        assert "agentupdate" in client.features()
        client.call(p.AGENTUPDATE, f"file://{package},d41d8cd98f00b204e9800998ecf8427e")
        staged = list((tmp_path / "updates").iterdir())
        assert [f.read_bytes() for f in staged] == [b"new agent build"]
        package.write_bytes(b"tampered build")
        with pytest.raises(AgentError) as err:
            client.call(p.AGENTUPDATE, {"url": f"file://{package}"}, version=2)
        assert "SHA-256" in str(err.value)
    finally:
        service.stop()
        thread.join(5)
