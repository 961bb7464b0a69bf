"""End to end on qemu:///system: host A's guest with two tgtd LUNs (one CHAP) comes back on B."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import libvirt_helpers as guest
from tests.iscsi_target import TargetFactory, tgtd_available
from tests.recovery_helpers import driver_for
from tests.testbed import require
from virt.config import build_conf
from virt.model import Flavor, ImageRef, Instance, VmState, new_uuid
from virt.store import Store

pytestmark = [pytest.mark.slow]


def write_conf(workdir: Path, host: str) -> Path:
    """One config per 'host': its own instances_path, the shared state store."""
    path = workdir / f"{host}.conf"
    path.write_text("\n".join([
        "[DEFAULT]", "compute_driver = libvirt", f"host = {host}",
        f"state_path = {workdir / host}",
        f"state_connection = sqlite:///{workdir / 'store.sqlite'}",
        "[libvirt]", f"connection_uri = {guest.URI}",
        f"virt_type = {os.environ.get('VIRTKIT_TEST_VIRT_TYPE', 'auto')}",
        f"images_path = {workdir / 'images'}",
    ]) + "\n")
    return path


def wait_console(driver, instance, pattern: str) -> str:
    """The console's last 64 KiB (the driver's default), up to 120 s."""
    return guest.wait_console(driver, instance, pattern, timeout=120, max_bytes=64 * 1024)


@dataclass
class Bed:
    """One run's working directory on /var/tmp (the QEMU user must reach it) and its LUNs."""

    image: ImageRef
    workdir: Path
    luns: TargetFactory


@pytest.fixture
def bed() -> Iterator[Bed]:
    require(guest.libvirt_up(), "libvirtd with qemu:///system")
    require(tgtd_available(), "tgtd (iSCSI target)")
    with guest.qemu_workdir("virtkit-recover-") as workdir, \
            guest.lun_factory(workdir) as luns:
        yield Bed(guest.tiny_guest_image(), workdir, luns)


def recover_cli(config: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virt.cli.recover", "--config", str(config), "--format", "json",
         *args], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})})


def test_failed_host_instance_comes_back_with_both_luns(bed):
    image, workdir, luns = bed.image, bed.workdir, bed.luns
    config_a, config_b = write_conf(workdir, "host-a"), write_conf(workdir, "host-b")
    uuid = new_uuid()
    instance = Instance(uuid=uuid, name=f"vk-recover-{uuid[:6]}",
                        flavor=Flavor("tiny", 1, 128, 1), image=image, host="host-a")
    driver_b = None
    try:
        plain, chap = luns.create(size_mb=32), luns.create(size_mb=48, chap=True)
        bdms = [guest.lun_device(lun, dev)
                for lun, dev in ((plain, "/dev/vdb"), (chap, "/dev/vdc"))]
        # Host A runs the guest, and the store says so.
        driver_a = driver_for(config_a, "host-a")
        driver_a.spawn(instance=instance, block_devices=bdms)
        wait_console(driver_a, instance, r"name=vdc sectors=")
        with Store(build_conf(str(config_a)).state_connection) as store:
            store.create_instance(instance, vm_state=VmState.ACTIVE)
            for bdm in bdms:
                store.add_block_device(uuid, bdm)
        # Host A fails: its domain is gone, its record still says host-a.
        guest.virsh("destroy", uuid)
        guest.virsh("undefine", uuid)
        assert uuid not in guest.virsh("list", "--all", "--uuid")

        done = subprocess.run(
            [sys.executable, "-m", "virt.cli.recover", "--config", str(config_b),
             "--failed-host", "host-a", "--confirm-fenced", "--format", "json"],
            capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert chap.password not in done.stdout + done.stderr
        (item,) = json.loads(done.stdout)["instances"]
        assert item["outcome"] == "recovered" and item["power_state"] == "running"
        assert sorted((v["mountpoint"], v["size_bytes"]) for v in item["volumes"]) == [
            ("/dev/vdb", 32 << 20), ("/dev/vdc", 48 << 20)]

        driver_b = driver_for(config_b, "host-b")
        out = wait_console(driver_b, instance, r"name=vdc sectors=")
        out = wait_console(driver_b, instance,
                           rf"name=vdb sectors={plain.size_bytes // 512} marker={plain.marker}")
        assert re.search(rf"name=vdc sectors={chap.size_bytes // 512} marker={chap.marker}", out)
        assert guest.virsh("list", "--all", "--uuid").split().count(uuid) == 1
        assert plain.read_marker() == plain.marker and chap.read_marker() == chap.marker
        with Store(build_conf(str(config_b)).state_connection) as store:
            record = store.get_instance(uuid)
            assert (record.host, record.vm_state, record.power_state.value) == (
                "host-b", "active", "running")
        # Running it again changes nothing: no second domain, no second attachment.
        again = subprocess.run(
            [sys.executable, "-m", "virt.cli.recover", "--config", str(config_b),
             "--failed-host", "host-a", "--confirm-fenced", "--format", "json"],
            capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode == 0 and json.loads(again.stdout)["instances"] == []
        assert guest.virsh("list", "--all", "--uuid").split().count(uuid) == 1
        assert len(re.findall(r"^\s*vd[bc]\s", guest.virsh("domblklist", uuid), re.M)) == 2
    finally:
        for drv in (driver_b, driver_for(config_a, "host-a")):
            if drv is not None:
                drv.destroy(instance=instance)


def qemu_io(disk: str, command: str, *, read_only: bool = False) -> str:
    """Run one qemu-io command on a qcow2 file (-U: the running guest holds its lock)."""
    argv = ["qemu-io", "-f", "qcow2", *(["-r", "-U"] if read_only else []), "-c", command, disk]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_resume_local_starts_the_shut_off_domain_keeping_its_disk(bed):
    """After a reboot libvirt keeps the domain defined, shut off: resume-local must start it
    with its root disk as it was (not rebuilt from the image) and its volume once."""
    config = write_conf(bed.workdir, "host-b")
    uuid = new_uuid()
    instance = Instance(uuid=uuid, name=f"vk-resume-{uuid[:6]}",
                        flavor=Flavor("tiny", 1, 128, 1), image=bed.image, host="host-b")
    lun = bed.luns.create(size_mb=16)
    bdm = guest.lun_device(lun, "/dev/vdb")
    driver = driver_for(config, "host-b")
    try:
        driver.spawn(instance=instance, block_devices=[bdm])
        wait_console(driver, instance, r"name=vdb sectors=")
        with Store(build_conf(str(config)).state_connection) as store:
            store.create_instance(instance, vm_state=VmState.ACTIVE)
            store.add_block_device(uuid, bdm)
        driver.power_off(instance=instance, timeout=0)  # as a host reboot leaves it
        disk = os.path.join(build_conf(str(config)).instances_path, uuid, "disk")
        qemu_io(disk, "write -P 0x5a 8M 64k")  # data that lives only on its root disk
        inode = os.stat(disk).st_ino

        done = recover_cli(config, "--resume-local")
        assert done.returncode == 0, done.stdout + done.stderr
        (item,) = json.loads(done.stdout)["instances"]
        assert item["outcome"] == "recovered" and item["power_state"] == "running"
        assert "power on its existing domain (disks kept)" in item["steps"]
        assert os.stat(disk).st_ino == inode
        assert "Pattern verification failed" not in qemu_io(disk, "read -P 0x5a 8M 64k",
                                                            read_only=True)
        wait_console(driver, instance, rf"name=vdb sectors={lun.size_bytes // 512}")
        assert guest.virsh("list", "--all", "--uuid").split().count(uuid) == 1
        assert len(re.findall(r"^\s*vdb\s", guest.virsh("domblklist", uuid), re.M)) == 1
    finally:
        driver.destroy(instance=instance)


def test_killed_between_spawn_and_attach_resumes_with_one_domain_and_each_lun_once(bed):
    config = write_conf(bed.workdir, "host-b")
    uuid = new_uuid()
    instance = Instance(uuid=uuid, name=f"vk-crash-{uuid[:6]}",
                        flavor=Flavor("tiny", 1, 128, 1), image=bed.image, host="host-a")
    plain, chap = bed.luns.create(size_mb=16), bed.luns.create(size_mb=24, chap=True)
    with Store(build_conf(str(config)).state_connection) as store:  # host A's, now dead
        store.create_instance(instance, vm_state=VmState.ACTIVE)
        for lun, dev in ((plain, "/dev/vdb"), (chap, "/dev/vdc")):
            store.add_block_device(uuid, guest.lun_device(lun, dev))
    args = ("--failed-host", "host-a", "--confirm-fenced")
    try:
        # Killed once the spawn is journaled done and the first attach is about to start.
        crashed = recover_cli(config, *args, env={"VIRTKIT_RECOVER_CRASH_AT": "attach:vdb:started"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
        assert guest.virsh("list", "--all", "--uuid").split().count(uuid) == 1
        assert not re.search(r"^\s*vd[bc]\s", guest.virsh("domblklist", uuid), re.M)

        done = recover_cli(config, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert chap.password not in done.stdout + done.stderr + crashed.stdout + crashed.stderr
        (item,) = json.loads(done.stdout)["instances"]
        assert item["outcome"] == "recovered" and item["resumed"]
        assert "spawn (running) with 0 volume(s) at boot (done in an earlier run)" in item["steps"]
        assert guest.virsh("list", "--all", "--uuid").split().count(uuid) == 1
        disks = re.findall(r"^\s*(vd[a-z])\s", guest.virsh("domblklist", uuid), re.M)
        assert sorted(d for d in disks if d != "vda") == ["vdb", "vdc"]
        driver = driver_for(config, "host-b")
        wait_console(driver, instance, rf"name=vdc sectors={chap.size_bytes // 512}")
    finally:
        driver_for(config, "host-b").destroy(instance=instance)
