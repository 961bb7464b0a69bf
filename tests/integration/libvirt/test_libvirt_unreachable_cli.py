"""`virtkit` on libvirt when libvirtd cannot be reached (nothing listens on port 1 of
loopback): list and show print the stored records, operations exit 1 with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.libvirt_helpers import qcow2_base

VIRTKIT = Path(sys.executable).with_name("virtkit")
UNREACHABLE = "qemu+tcp://127.0.0.1:1/system"


class LibvirtCli:
    """virtkit on the libvirt driver with a temp config whose connection_uri can change."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.config = tmp_path / "virtkit.conf"
        self.env = dict(os.environ, VIRTKIT_CONFIG=str(self.config))

    def point_at(self, uri: str) -> None:
        self.config.write_text(
            f"[DEFAULT]\ncompute_driver = libvirt\nstate_path = {self.tmp / 'state'}\n"
            f"host = cli-host\n[libvirt]\nconnection_uri = {uri}\ncall_timeout = 5\n")

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(VIRTKIT), *args], capture_output=True, text=True,
                              env=self.env, timeout=120, cwd=self.tmp)
        assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        return proc


@pytest.fixture
def cli(tmp_path):
    return LibvirtCli(tmp_path)


def test_list_and_show_read_the_records_and_operations_exit_1(cli, tmp_path):
    base = qcow2_base(tmp_path / "base.qcow2")
    cli.point_at("test:///default")  # its domains live as long as the process: records stay
    booted = json.loads(cli.run("boot", "web", "--image", base.ref, "--vcpus", "1",
                                "--memory-mb", "128", "--format", "json").stdout)
    assert (booted["vm_state"], booted["power_state"]) == ("active", "running")

    cli.point_at(UNREACHABLE)
    started = time.monotonic()
    listed = cli.run("list", "--format", "json")
    assert [(i["name"], i["power_state"]) for i in json.loads(listed.stdout)] == \
        [("web", "unknown")]
    warning = listed.stderr.strip()
    assert warning.startswith("virtkit: warning: the hypervisor cannot be reached (")
    assert "127.0.0.1:1" in warning and "\n" not in warning
    shown = cli.run("show", "web", "--format", "json")
    data = json.loads(shown.stdout)
    assert (data["uuid"], data["live_power_state"], data["power_state"]) == (
        booted["uuid"], "unknown", "running")
    assert shown.stderr.strip() == warning
    table = cli.run("show", "web").stdout
    assert "unknown (the hypervisor cannot be reached)" in table

    for args in (("stop", "web"), ("start", "web"), ("reboot", "web"), ("delete", "web"),
                 ("boot", "db", "--image", base.ref, "--vcpus", "1", "--memory-mb", "128")):
        failed = cli.run(*args, expect=1)
        assert failed.stderr.startswith("virtkit: error: cannot "), failed.stderr
        assert "127.0.0.1:1" in failed.stderr and failed.stderr.count("\n") == 1
    # connection refused is quick: no command waited for call_timeout over and over
    assert time.monotonic() - started < 60
    after = json.loads(cli.run("list", "--format", "json").stdout)
    assert [(i["name"], i["vm_state"], i["task_state"], i["fault"]) for i in after] == \
        [("web", "active", None, None)]
