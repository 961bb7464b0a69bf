"""Fixtures of the smartos driver's unit tests: the test bed's sshd as a "global zone"."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed import require

REPO = Path(__file__).resolve().parents[3]
SSH_DIR = REPO / ".testbed" / "ssh"


@dataclass(frozen=True)
class SSHBed:
    url: str
    key: str
    known_hosts: str
    log: Path


@pytest.fixture(scope="session")
def ssh_bed() -> SSHBed:
    """The test bed's sshd: from the smartos service's env, else the ssh service's files."""
    url = os.environ.get("VIRTKIT_TEST_SMARTOS_SSH") or "ssh://root@127.0.0.1:2222"
    key = os.environ.get("VIRTKIT_TEST_SMARTOS_SSH_KEY") or str(SSH_DIR / "client_ed25519")
    known = os.environ.get("VIRTKIT_TEST_SMARTOS_KNOWN_HOSTS") or str(SSH_DIR / "known_hosts")
    require(Path(key).is_file() and Path(known).is_file()
            and (SSH_DIR / "sshd.pid").is_file(), "the ssh service (sshd on 127.0.0.1:2222)")
    return SSHBed(url, key, known, REPO / ".testbed" / "log" / "sshd.log")
