"""Shared fixtures: a throwaway config for every test that needs one."""

from __future__ import annotations

import pytest

from virt.config import build_conf


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def conf(state_dir):
    """A ConfigOpts on the fake driver with its state under a temporary directory."""
    return build_conf(overrides={"state_path": str(state_dir), "host": "test-host"})
