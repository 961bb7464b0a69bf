"""A test xenstore per test, with one guest domain introduced."""

from __future__ import annotations

import pytest

from guest_agent.transports.xenstore import XenstoreClient
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
