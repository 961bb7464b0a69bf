"""virtkit-agent in a real PV guest on the nested Xen, driven by the host through the real store.

The host side is virt's AgentClient on dom0's real xenstored (VIRTKIT_TEST_XENSTORED_PATH);
the guest is the test bed's PV domU whose init runs virtkit-agent on /dev/xen/xenbus. Every
effect is checked inside the guest (the test image's probe): the shadow entry is checked with
the password, in the guest, and the injected file is read back there.
"""

from __future__ import annotations

import secrets

import pytest
from xentb import CHECK_PASSWORD, GuestProbe

from guest_agent import protocol as p
from guest_agent.wire import XenstoreClient
from tests.xenstore.legacy_guest import LegacyGuest, OldAgent
from virt.agent import AgentClient, XenstoreChannel
from virt.agent.passwords import set_password_legacy
from virt.errors import AgentError, AgentNotReady

# Inside the guest: touch the store as the guest (its own xenbus connection).
GUEST_STORE = """
import sys
from guest_agent.wire import XenstoreClient, XenstoreError
op, path = sys.argv[1], sys.argv[2]
with XenstoreClient("/dev/xen/xenbus", timeout=10) as client:
    try:
        if op == "read":
            print("ok", client.read_text(path))
        else:
            client.write(path, "from-the-guest")
            print("ok")
    except XenstoreError as exc:
        print(exc.name)
"""


def _password() -> str:
    return "Pw-" + secrets.token_urlsafe(12) + " é"


def _exchange_empty(store: XenstoreClient, domid: int) -> None:
    for kind in ("host", "guest"):
        path = f"/local/domain/{domid}/data/{kind}"
        assert not store.exists(path) or store.directory(path) == []


def test_features_negotiated_over_the_real_store(agent):
    assert agent.version() == "0.1.0"
    features = agent.features()
    assert {"v2", "keyinit", "password", "injectfile", "resetnetwork"} <= features
    assert agent.supports_v2()


def test_v2_password_is_the_one_that_authenticates(agent, probe, xen_store, agent_domid):
    old, new = _password(), _password()
    assert agent.set_admin_password(old) == "v2"
    assert probe.check_password(old) == "match"
    assert agent.set_admin_password(new) == "v2"
    assert probe.check_password(new) == "match"
    assert probe.check_password(old) == "no-match"
    _exchange_empty(xen_store, agent_domid)


def test_legacy_password_is_the_one_that_authenticates(legacy_agent, probe, xen_store, agent_domid):
    old, new = _password(), _password()
    set_password_legacy(legacy_agent, old)  # Nova's exchange, as an old host would run it
    assert probe.check_password(old) == "match"
    set_password_legacy(legacy_agent, new)
    assert probe.check_password(new) == "match"
    assert probe.check_password(old) == "no-match"
    _exchange_empty(xen_store, agent_domid)


def test_inject_file_v2_has_the_bytes(agent, probe):
    contents = b"ssh-ed25519 AAAAC3Nza v2-" + secrets.token_hex(8).encode() + b"\n\x00\xff"
    agent.inject_file("/root/.ssh/authorized_keys", contents)
    assert probe.read_file("/root/.ssh/authorized_keys") == contents
    rc, mode = probe.run(["stat", "-c", "%a", "/root/.ssh/authorized_keys"])
    assert rc == 0 and mode.strip() == b"600"
    with pytest.raises(AgentError) as err:
        agent.inject_file("/etc/passwd", b"x")
    assert "forbidden" in str(err.value)
    assert probe.read_file("/etc/passwd").startswith(b"root:x:0:0:")


def test_inject_file_legacy_has_the_bytes(legacy_agent, probe):
    contents = b"legacy " + secrets.token_hex(8).encode() + b"\n"
    legacy_agent.call(
        p.INJECTFILE, p.injectfile_value("/root/.ssh/legacy-note", contents, version=1)
    )
    assert probe.read_file("/root/.ssh/legacy-note") == contents


def test_guest_cannot_read_or_write_dom0s_keys(probe, xen_store, agent_domid):
    xen_store.write("/local/domain/0/data/virtkit-secret", "dom0-only")
    try:
        for op, path in (("read", "/local/domain/0/data/virtkit-secret"),
                         ("write", "/local/domain/0/data/virtkit-secret"),
                         ("write", "/local/domain/0/data/host/forged")):  # fmt: skip
            rc, out = probe.run(["python3", "-c", GUEST_STORE, op, path])
            assert rc == 0, out
            assert out.split()[0] == b"EACCES", (op, path, out)
        assert xen_store.read_text("/local/domain/0/data/virtkit-secret") == "dom0-only"
        assert not xen_store.exists("/local/domain/0/data/host/forged")
        rc, out = probe.run(["python3", "-c", GUEST_STORE, "write", "data/virtkit-own"])
        assert out.split()[0] == b"ok"  # its own data/ it may write
        own = f"/local/domain/{agent_domid}/data/virtkit-own"
        assert xen_store.read_text(own) == "from-the-guest"
    finally:
        xen_store.rm("/local/domain/0/data/virtkit-secret")


def test_absent_agent_is_a_clean_timeout(xen_store):
    # dom0 runs no agent: the request sits in the real store until the host gives up.
    client = AgentClient(XenstoreChannel(xen_store, 0, poll_interval=0.2), timeout=2)
    with pytest.raises(AgentNotReady) as err:
        client.version()
    assert isinstance(err.value, AgentError)
    _exchange_empty(xen_store, 0)


def test_deployed_agents_wire_format_on_the_real_store(xen_store):
    """A deployed-style agent (tests.xenstore.legacy_guest) answering on the real store."""
    import os

    path = os.environ["VIRTKIT_TEST_XENSTORED_PATH"]
    old = OldAgent({"returncode": "1", "message": None})  # Mirantis: no `features`
    guest = LegacyGuest(path, old)  # serves dom0's own data/host on the real xenstored
    try:
        client = AgentClient(
            XenstoreChannel(xen_store, 0, poll_interval=0.2), timeout=10, allow_legacy=True
        )
        assert client.features() == frozenset()
        assert client.set_admin_password("hunter2 real store") == "legacy"
        assert old.passwords == ["hunter2 real store\n"]
        client.inject_file("/root/.ssh/x", b"abc")
        assert old.files == [b"/root/.ssh/x,abc"]
    finally:
        guest.close()
    _exchange_empty(xen_store, 0)


def test_probe_sees_the_guest_kernel(probe: GuestProbe):
    rc, out = probe.run(["uname", "-r"])
    assert rc == 0 and out.strip().endswith(b"cloud-amd64")
    rc, out = probe.run(["python3", "-W", "ignore", "-c", CHECK_PASSWORD, "nobody"], stdin=b"x")
    assert out.split()[0] == b"no-user"
