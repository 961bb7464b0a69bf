"""Fixtures of the docker driver's unit tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def daemon_socket() -> Iterator[str]:
    """A path for a stand-in dockerd's Unix socket, short enough for AF_UNIX (108 bytes)."""
    directory = tempfile.mkdtemp(prefix="vk-dockerd-")
    yield f"{directory}/docker.sock"
    shutil.rmtree(directory, ignore_errors=True)
