"""Access to the test bed's real services (started by `scripts/testbed up`).

A test that needs a service calls `require(...)`. Without the service it is skipped, except
under `make test` (VIRTKIT_REQUIRE_TESTBED=1), where a missing service is a failure: CI must
never pass by skipping the real engines.
"""

from __future__ import annotations

import os

import pytest

REQUIRED = os.environ.get("VIRTKIT_REQUIRE_TESTBED") == "1"


def require(condition: bool, what: str) -> None:
    """Skip (or, under make test, fail) when a test-bed service is missing."""
    if condition:
        return
    message = f"test bed: {what} is not available (run scripts/testbed up)"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def env(name: str) -> str:
    """A variable written by scripts/testbed into .testbed/env; skip/fail when unset."""
    value = os.environ.get(name, "")
    require(bool(value), f"{name}")
    return value
