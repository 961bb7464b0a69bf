"""Real iSCSI targets on the test bed's tgtd: create file-backed LUNs, tear them down.

    def test_x(iscsi_targets):
        lun = iscsi_targets.create(size_mb=64, chap=True)
        lun.connection_info()   # Nova-style {"driver_volume_type": "iscsi", "data": {...}}

tgtadm takes the CHAP password on its argv: that is the test target's own admin interface,
acceptable here only (virtkit itself never puts a secret on a command line).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import require

TGTADM_TIMEOUT_S = 15
_LOCK = "/tmp/virtkit-tgtadm.lock"
_TID_BASE = 1000


def tgtd_available() -> bool:
    if shutil.which("tgtadm") is None:
        return False
    return _tgtadm("--mode", "target", "--op", "show", check=False).returncode == 0


def _tgtadm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["tgtadm", "--lld", "iscsi", *args], capture_output=True, text=True,
                          timeout=TGTADM_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"tgtadm {args[:4]} failed: {done.stderr.strip()}")
    return done


@dataclass
class TestLun:
    """One tgtd target with one file-backed LUN (LUN 1)."""

    __test__ = False  # not a pytest test class

    tid: int
    iqn: str
    backing: Path
    size_bytes: int
    marker: str
    portal: str
    lun: int = 1
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    volume_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def connection_info(self, **overrides: Any) -> dict[str, Any]:
        """Nova-style connection_info for this LUN; `overrides` replace data keys."""
        data: dict[str, Any] = {
            "target_portal": self.portal,
            "target_iqn": self.iqn,
            "target_lun": self.lun,
            "target_discovered": False,
            "volume_id": self.volume_id,
        }
        if self.username:
            data.update(auth_method="CHAP", auth_username=self.username,
                        auth_password=self.password)
        data.update(overrides)
        return {"driver_volume_type": "iscsi", "data": data, "serial": self.volume_id}

    def read_marker(self) -> str:
        """The marker as it now is at the start of the backing file."""
        with open(self.backing, "rb") as handle:
            return handle.read(len(self.marker)).decode(errors="replace")


class TargetFactory:
    """Creates targets on tgtd and removes every one of them at teardown."""

    def __init__(self, workdir: Path, portal: str) -> None:
        self.workdir = workdir
        self.portal = portal
        self.created: list[TestLun] = []

    def create(self, *, size_mb: int = 64, chap: bool = False, marker: str | None = None,
               initiators: Sequence[str] = ()) -> TestLun:
        """A new target + LUN 1 backed by a sparse file whose first bytes are `marker`.

        With `initiators`, only those initiator names may log in (else any initiator).
        """
        token = uuid.uuid4().hex[:10]
        marker = marker or f"VIRTKIT-LUN-{token}"
        backing = self.workdir / f"lun-{token}.img"
        with open(backing, "wb") as handle:
            handle.write(marker.encode() + b"\n")
            handle.truncate(size_mb * 1024 * 1024)
        iqn = f"iqn.2024-01.org.virtkit.test:{token}"
        with open(_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tid = _free_tid()
            _tgtadm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        lun = TestLun(tid=tid, iqn=iqn, backing=backing, size_bytes=size_mb * 1024 * 1024,
                      marker=marker, portal=self.portal)
        self.created.append(lun)
        _tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1",
                "-b", str(backing))
        _bind_initiators(tid, initiators)
        if chap:
            lun.username = f"vk{token}"
            lun.password = secrets.token_hex(8)
            _tgtadm("--op", "new", "--mode", "account", "--user", lun.username,
                    "--password", lun.password)
            _tgtadm("--op", "bind", "--mode", "account", "--tid", str(tid),
                    "--user", lun.username)
        return lun

    def delete(self, lun: TestLun) -> None:
        """Remove the target, its account and its backing file (idempotent)."""
        _tgtadm("--op", "delete", "--mode", "target", "--tid", str(lun.tid), "--force",
                check=False)
        if lun.username:
            _tgtadm("--op", "delete", "--mode", "account", "--user", lun.username, check=False)
        lun.backing.unlink(missing_ok=True)
        if lun in self.created:
            self.created.remove(lun)

    def cleanup(self) -> None:
        for lun in list(self.created):
            self.delete(lun)


def _bind_initiators(tid: int, initiators: Sequence[str]) -> None:
    """Allow these initiator names on the target, or every initiator when there are none."""
    if not initiators:
        _tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
    for name in initiators:
        # tgtd's ACL: a name binding alone, without an address binding, admits only that name.
        _tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "--initiator-name", name)


def _free_tid() -> int:
    shown = _tgtadm("--mode", "target", "--op", "show").stdout
    used = {int(line.split(":")[0].split()[-1]) for line in shown.splitlines()
            if line.startswith("Target ")}
    tid = _TID_BASE + os.getpid() % 1000
    while tid in used:
        tid += 1
    return tid


@pytest.fixture
def iscsi_targets(tmp_path: Path) -> Iterator[TargetFactory]:
    """A factory of real tgtd targets, all torn down after the test."""
    require(tgtd_available(), "tgtd (iSCSI target)")
    portal = os.environ.get("VIRTKIT_TEST_ISCSI_PORTAL", "127.0.0.1:3260")
    workdir = tmp_path / "luns"
    workdir.mkdir()
    factory = TargetFactory(workdir, portal)
    try:
        yield factory
    finally:
        factory.cleanup()
