"""Guest-agent replies, generated: the host's AgentClient reads malformed replies from a
guest on the test xenstore (the real wire protocol). Each is a typed AgentError, or a reply
it may take, never another exception, and never a wait beyond the client's timeout."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guest_agent import protocol as p
from guest_agent.wire import XenstoreClient
from tests.unit.fuzz.helpers import bounded
from tests.xenstore import TEST_DOMID
from tests.xenstore.legacy_guest import LegacyGuest, OldAgent
from tests.xenstore.server import XenstoreServer
from virt.agent import AgentClient, XenstoreChannel
from virt.errors import AgentError, AgentNotReady

TIMEOUT = 1.5
SLACK = 1.5  # the poll interval, the guest's watch and a loaded machine


class Guest:
    """A deployed-style guest whose replies to one command are set per example."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.target = p.VERSION
        self.reply = ""
        self.delay = 0.0
        self.old = OldAgent({"returncode": "0", "message": ""})

    def set(self, target: str, reply: str, delay: float = 0.0) -> None:
        with self.lock:
            self.target, self.reply, self.delay = target, reply, delay
            self.old = OldAgent({"returncode": "0", "message": ""})

    def __call__(self, rid: str, body: dict) -> tuple[str, float]:
        with self.lock:
            if body.get("name") == self.target:
                return self.reply, self.delay
            return self.old(rid, body)  # a well-behaved legacy agent for everything else


@pytest.fixture(scope="module")
def agent():
    server = XenstoreServer().start()
    server.introduce_domain(TEST_DOMID, "guest-fuzz")
    guest = Guest()
    legacy = LegacyGuest(server.domain_socket(TEST_DOMID), guest)
    dom0 = XenstoreClient(server.path, timeout=5)
    yield guest, dom0
    legacy.close()
    dom0.close()
    server.stop()


def _client(dom0: XenstoreClient) -> AgentClient:
    return AgentClient(XenstoreChannel(dom0, TEST_DOMID, poll_interval=0.05), timeout=TIMEOUT,
                       allow_legacy=True)


OPERATIONS = {
    p.VERSION: lambda c: c.version(),
    p.FEATURES: lambda c: c.features(),
    p.KEYINIT: lambda c: c.set_admin_password("fuzz-pass"),
    p.PASSWORD: lambda c: c.set_admin_password("fuzz-pass"),
    p.INJECTFILE: lambda c: c.inject_file("/root/.ssh/authorized_keys", b"ssh-ed25519 AAAA\n"),
    p.RESETNETWORK: lambda c: c.reset_network(),
}

scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                          max_leaves=6)
#: Replies shaped like an agent's, with wrong types or values in them.
wrong_replies = st.one_of(
    st.fixed_dictionaries({"returncode": json_value}, optional={"message": json_value}),
    st.fixed_dictionaries({"returncode": st.sampled_from(["0", "D0", "1", "404", "500"]),
                           "message": json_value},
                          optional={"error": json_value, "v": json_value}),
    st.dictionaries(st.text(max_size=8), json_value, max_size=4),
    json_value,
).map(json.dumps)
random_replies = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    st.integers(min_value=1, max_value=2000).map(lambda n: "[" * n),  # nesting, within quota
    st.integers(min_value=1, max_value=1500).map(lambda n: '{"returncode": ' + "[" * n),
)


@bounded(60, deadline_s=TIMEOUT + SLACK + 2)
@given(target=st.sampled_from(sorted(OPERATIONS)), reply=wrong_replies | random_replies)
def test_malformed_replies_are_typed_errors(agent, tally, target, reply):
    guest, dom0 = agent
    guest.set(target, reply)
    with tally.check("agent-replies"):
        started = time.monotonic()
        try:
            OPERATIONS[target](_client(dom0))
        except AgentError as exc:
            assert str(exc).strip()
        elapsed = time.monotonic() - started
        # Each exchange waits at most the timeout; an operation makes at most three.
        assert elapsed < 3 * TIMEOUT + SLACK, elapsed


@bounded(4, deadline_s=TIMEOUT + SLACK + 2)
@given(target=st.sampled_from([p.VERSION, p.FEATURES]))
def test_a_late_reply_is_agent_not_ready_within_the_timeout(agent, tally, target):
    guest, dom0 = agent
    guest.set(target, json.dumps({"returncode": "0", "message": "late"}), delay=TIMEOUT + 0.3)
    with tally.check("agent-replies"):
        started = time.monotonic()
        with pytest.raises(AgentNotReady):
            OPERATIONS[target](_client(dom0))
        assert time.monotonic() - started < TIMEOUT + SLACK
    time.sleep(0.5)  # let the guest write its late reply before the next example


@bounded(30)
@given(depth=st.integers(min_value=1, max_value=60_000),
       head=st.sampled_from(["", '{"returncode": ', '{"returncode": "0", "message": ']))
def test_deeply_nested_reply_is_a_protocol_error(tally, depth, head):
    """Up to a virtio-serial line (64 KiB): json.loads raises RecursionError, no ValueError."""
    with tally.check("agent-replies"):
        with pytest.raises(p.ProtocolError):
            p.Reply.parse(head + "[" * depth)
