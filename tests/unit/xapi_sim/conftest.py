"""A simulator per test, reached through the real XenAPI SDK on the real wire."""

from __future__ import annotations

import pytest

from tests.unit.xapi_sim.helpers import PASSWORD, XenAPI
from tests.xapi_sim import XapiSimulator


@pytest.fixture
def sim():
    with XapiSimulator(password=PASSWORD) as server:
        yield server


@pytest.fixture
def session(sim):
    s = XenAPI.Session(sim.url)
    s.login_with_password("root", PASSWORD, "1.0", "virtkit-tests")
    yield s
    if s.handle:
        try:
            s.xenapi.session.logout()
        except Exception:
            pass


@pytest.fixture
def x(session):
    return session.xenapi

