"""Fixtures on the test bed's nested Xen: dom0's real store and the PV guest running the agent."""

from __future__ import annotations

import os
import time

import pytest
from xentb import AGENT_GUEST, GuestProbe, store, wait_domid

from tests.testbed import env, require

#: From a fresh `scripts/testbed up xen` to the guest's agent answering (TESTBED.md: ~30 s
#: calm, twice that when the machine's CPU is shared).
GUEST_BUDGET = 180.0


@pytest.fixture(scope="session")
def xen_store():
    if os.environ.get("VIRTKIT_TESTBED_XEN") == "0":
        # Left out of the test bed on purpose (VIRTKIT_TESTBED_XEN=0): a skip, even under make test.
        pytest.skip("the nested Xen is left out of the test bed (VIRTKIT_TESTBED_XEN=0)")
    path = env("VIRTKIT_TEST_XENSTORED_PATH")
    env("VIRTKIT_TEST_XEN_DOM0")
    require(os.path.exists(path), f"the nested Xen's xenstored socket {path}")
    client = store()
    try:
        client.read_text("/local/domain/0/name")
    except Exception as exc:  # the socket is there but dom0 does not answer
        client.close()
        require(False, f"the nested Xen's xenstored ({type(exc).__name__})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def agent_domid(xen_store) -> int:
    """The agent guest's domain id, once its agent answers `version`."""
    from virt.agent import AgentClient, XenstoreChannel

    started = time.monotonic()
    domid = wait_domid(xen_store, AGENT_GUEST, GUEST_BUDGET)
    remaining = max(10.0, GUEST_BUDGET - (time.monotonic() - started))
    AgentClient(XenstoreChannel(xen_store, domid), timeout=10).wait_ready(remaining)
    return domid


@pytest.fixture(scope="session")
def probe(xen_store, agent_domid) -> GuestProbe:
    guest = GuestProbe(xen_store, agent_domid)
    deadline = time.monotonic() + 60
    while not guest.ready():
        assert time.monotonic() < deadline, "the guest's probe is not up"
        time.sleep(0.5)
    return guest


@pytest.fixture
def agent(xen_store, agent_domid):
    """A host AgentClient (v2 only, as configured by default) on the agent guest."""
    from virt.agent import AgentClient, XenstoreChannel

    return AgentClient(XenstoreChannel(xen_store, agent_domid, poll_interval=0.5), timeout=30)


@pytest.fixture
def legacy_agent(xen_store, agent_domid):
    """A host AgentClient that accepts the legacy exchange."""
    from virt.agent import AgentClient, XenstoreChannel

    return AgentClient(
        XenstoreChannel(xen_store, agent_domid, poll_interval=0.5), timeout=30, allow_legacy=True
    )
