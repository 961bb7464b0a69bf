"""A test xenstore per test, with one guest domain introduced."""

from __future__ import annotations

import pytest

from guest_agent.wire import XenstoreClient
from tests.xenstore import TEST_DOMID
from tests.xenstore.server import XenstoreServer

DOMID = TEST_DOMID


@pytest.fixture
def xenstore():
    server = XenstoreServer().start()
    server.introduce_domain(DOMID, "guest-7")
    yield server
    server.stop()


@pytest.fixture
def dom0(xenstore):
    with XenstoreClient(xenstore.path, timeout=5) as client:
        yield client


@pytest.fixture
def domu(xenstore):
    with XenstoreClient(xenstore.domain_socket(DOMID), timeout=5) as client:
        yield client


GUEST_SHADOW = "root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n"


@pytest.fixture
def guest_root(tmp_path):
    """A throwaway guest filesystem: shadow file, allowed inject dir, network files."""
    root = tmp_path / "guest"
    (root / "etc" / "network").mkdir(parents=True)
    (root / "root" / ".ssh").mkdir(parents=True)
    shadow = root / "etc" / "shadow"
    shadow.write_text(GUEST_SHADOW)
    shadow.chmod(0o640)
    return root


@pytest.fixture
def agent_config(xenstore, guest_root):
    from guest_agent.config import AgentConfig

    return AgentConfig(
        transport="xenstore",
        xenstore_path=xenstore.domain_socket(DOMID),
        poll_interval=0.5,
        user="admin",
        password_method="shadow",
        shadow_path=str(guest_root / "etc" / "shadow"),
        inject_allowed_paths=(str(guest_root / "root" / ".ssh"),),
        network_config_path=str(guest_root / "etc" / "network" / "interfaces"),
        hostname_path=str(guest_root / "etc" / "hostname"),
    )


@pytest.fixture
def start_agent(agent_config):
    """Start the real guest service for domain 7 with `agent_config` plus overrides."""
    from guest_agent.service import AgentService

    running = []

    def start(**overrides):
        service = AgentService(agent_config.with_overrides(**overrides))
        running.append((service, service.start()))
        return service

    yield start
    for service, thread in running:
        service.stop()
        thread.join(5)


@pytest.fixture
def guest_agent(start_agent):
    """The real guest service, serving domain 7 through the test xenstore."""
    return start_agent()


@pytest.fixture
def old_guest_agent(start_agent):
    """The real guest service configured like an old agent: `offer_v2 = false`."""
    return start_agent(offer_v2=False)


@pytest.fixture
def legacy_guest(xenstore):
    """Start deployed-style agents (tests.xenstore.legacy_guest) on domain 7's socket."""
    from tests.xenstore.legacy_guest import LegacyGuest

    guests = []

    def start(answer):
        guests.append(LegacyGuest(xenstore.domain_socket(DOMID), answer))
        return guests[-1]

    yield start
    for guest in guests:
        guest.close()


@pytest.fixture
def host_client(dom0):
    from virt.agent import AgentClient, XenstoreChannel

    return AgentClient(
        XenstoreChannel(dom0, DOMID, poll_interval=0.2), timeout=5, version_timeout=10
    )
