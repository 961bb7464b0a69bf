"""Agents without a `features` command, through real negotiation over the test xenstore.

Deployed agents answer an unknown command with "1" and a null message (Mirantis, which has
no `features`), "404" (the unix agent), or some other failure. Each means: no features, so
the legacy commands only; the legacy password exchange still needs `allow_legacy`.
"""

from __future__ import annotations

import pytest

from tests.xenstore import TEST_DOMID as DOMID
from tests.xenstore.legacy_guest import OldAgent
from virt.agent import AgentClient, XenstoreChannel
from virt.errors import AgentUnsupportedCommand

BASE = f"/local/domain/{DOMID}"

UNKNOWN_REPLIES = {
    "mirantis-1-null": {"returncode": "1", "message": None},
    "unix-404": {"returncode": "404", "message": "No such agent command 'features'"},
    "typed-unsupported": {"returncode": "404", "message": "no", "error": "unsupported", "v": 2},
    "500": {"returncode": "500", "message": "internal error"},
}


@pytest.fixture(params=list(UNKNOWN_REPLIES), ids=list(UNKNOWN_REPLIES))
def old_agent(request, legacy_guest):
    agent = OldAgent(UNKNOWN_REPLIES[request.param])
    legacy_guest(agent)
    return agent


def _client(dom0, *, allow_legacy: bool) -> AgentClient:
    channel = XenstoreChannel(dom0, DOMID, poll_interval=0.1)
    return AgentClient(channel, timeout=5, allow_legacy=allow_legacy)


def test_legacy_password_when_allowed(old_agent, dom0):
    client = _client(dom0, allow_legacy=True)
    assert client.wait_ready(budget=10) == ""  # no 'version' either: present, version unknown
    assert client.set_admin_password("hunter2") == "legacy"
    assert old_agent.passwords == ["hunter2\n"]  # what every old guest decrypts
    assert old_agent.names.count("features") == 1  # negotiated once, then cached
    assert client.features() == frozenset()
    assert dom0.directory(f"{BASE}/data/host") == []
    assert dom0.directory(f"{BASE}/data/guest") == []


def test_legacy_password_refused_unless_allowed(old_agent, dom0):
    client = _client(dom0, allow_legacy=False)
    with pytest.raises(AgentUnsupportedCommand) as err:
        client.set_admin_password("hunter2")
    assert "only the legacy password exchange" in str(err.value)
    assert "allow_legacy" in str(err.value)
    assert "features" in old_agent.names
    assert "keyinit" not in old_agent.names and old_agent.passwords == []


def test_inject_file_and_reset_network_use_the_legacy_commands(old_agent, dom0):
    client = _client(dom0, allow_legacy=False)  # neither is a key exchange: no opt-in needed
    client.inject_file("/root/.ssh/authorized_keys", b"ssh-ed25519 AAAA, test\n")
    assert old_agent.files == [b"/root/.ssh/authorized_keys,ssh-ed25519 AAAA, test\n"]
    client.reset_network()
    assert old_agent.networks == 1
    assert old_agent.names.count("features") == 1
