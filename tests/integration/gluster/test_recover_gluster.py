"""Evacuation on real QEMU with the instances on shared GlusterFS storage.

Hosts A and B are two configs on the test bed's libvirtd sharing one store and one
instances_path on the Gluster FUSE mount (the test bed mounts it in libvirtd's namespace too,
so QEMU opens the same files). Host A's guest has a GlusterFS volume; host A fails (its domain
destroyed, its disks kept); virtkit-recover on B boots it from the same root disk and attaches
the volume again natively. Markers written to the root disk and the volume are read inside the
guest. With the mount missing on B the instance is left unclaimed and named; an instance whose
export no server answers is left unclaimed at the probe.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest

from tests import libvirt_helpers as guest
from tests.gluster_helpers import (
    gluster_device,
    gluster_mount,
    in_qemu_namespace,
    volume_files,
)
from tests.recovery_helpers import driver_for
from tests.testbed import require
from virt.config import build_conf
from virt.model import BlockDevice, Flavor, Instance, VmState, VolumeConnection, new_uuid
from virt.store import Store

pytestmark = [pytest.mark.libvirt_qemu, pytest.mark.slow]


def write_conf(workdir: Path, host: str, instances_path: Path, label: str = "") -> Path:
    """One config per host (`label`: another one of it): its own state, the shared store,
    `instances_path`."""
    label = label or host
    path = workdir / f"{label}.conf"
    path.write_text("\n".join([
        "[DEFAULT]", "compute_driver = libvirt", f"host = {host}",
        f"state_path = {workdir / label}", f"instances_path = {instances_path}",
        f"state_connection = sqlite:///{workdir / 'store.sqlite'}",
        "[libvirt]", f"connection_uri = {guest.URI}",
        f"virt_type = {os.environ.get('VIRTKIT_TEST_VIRT_TYPE', 'auto')}",
        f"images_path = {workdir / 'images'}",
        "[recovery]", "require_instance_disk = true",
    ]) + "\n")
    return path


def recover(config: Path, *args: str) -> tuple[int, dict[str, dict]]:
    """virtkit-recover on host-a's instances: its exit code and report items by uuid."""
    done = subprocess.run(
        [sys.executable, "-m", "virt.cli.recover", "--config", str(config), "--format", "json",
         "--failed-host", "host-a", "--confirm-fenced", *args],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout, done.stderr
    return done.returncode, {i["uuid"]: i for i in json.loads(done.stdout)["instances"]}


def write_root_marker(disk: str, workdir: Path, marker: str) -> None:
    """Put `marker` at the start of the (stopped) guest's root disk, through its qcow2 and
    through the mount host A's QEMU used."""
    pattern = workdir / "marker.bin"
    pattern.write_bytes(marker.encode() + b"\n" + bytes(511 - len(marker)))
    argv = ["qemu-io", "-f", "qcow2", "-c", f"write -q -s {pattern} 0 512", disk]
    done = subprocess.run(in_qemu_namespace(argv), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def shared(tmp_path_factory):
    """The shared instances_path on the Gluster mount, and a local work directory."""
    require(guest.libvirt_up(), "libvirtd with qemu:///system")
    mount = gluster_mount()
    root = mount / f"vk-evac-{uuidlib.uuid4().hex[:8]}"
    root.mkdir(mode=0o711)
    with guest.qemu_workdir("virtkit-gluster-evac-") as workdir:
        try:
            yield workdir, root / "instances"
        finally:
            subprocess.run(["rm", "-rf", str(root)], check=False, timeout=120)


def test_evacuation_boots_the_same_root_disk_on_gluster_and_reattaches_the_volume(shared):
    workdir, instances = shared
    config_a = write_conf(workdir, "host-a", instances)
    config_b = write_conf(workdir, "host-b", instances)
    # Host B with nothing mounted at its mount point: the same tree, not there.
    config_missing = write_conf(workdir, "host-b", workdir / "mnt" / instances.parent.name /
                                "instances", label="host-b-unmounted")
    uid = new_uuid()
    instance = Instance(uuid=uid, name=f"vk-evac-{uid[:6]}", flavor=Flavor("tiny", 1, 128, 1),
                        image=guest.tiny_guest_image(), host="host-a")
    lost = Instance(uuid=new_uuid(), name="vk-evac-unreachable", flavor=instance.flavor,
                    image=instance.image, host="host-a")
    root_marker, vol_marker = f"EVAC-{uid[:8]}", f"GLVOL-{uid[:8]}"
    drivers = []
    with volume_files() as files:
        try:
            name = files.create(32)
            with open(files.mount / name, "r+b") as handle:
                handle.write(vol_marker.encode() + b"\n")
            bdm = gluster_device(name, "/dev/vdb")
            unreachable = BlockDevice(VolumeConnection.from_connection_info(
                {"driver_volume_type": "glusterfs",
                 "data": {"export": "127.0.0.1:1:/virtkit-test", "name": name}}), "/dev/vdb")
            drivers.append(driver_a := driver_for(config_a, "host-a"))
            driver_a.spawn(instance=instance, block_devices=[bdm])
            guest.wait_console(driver_a, instance, rf"name=vdb sectors=\d+ marker={vol_marker}")
            with Store(build_conf(str(config_a)).state_connection) as store:
                store.create_instance(instance, vm_state=VmState.ACTIVE)
                store.add_block_device(uid, bdm)
                store.create_instance(lost, vm_state=VmState.ACTIVE)
                store.add_block_device(lost.uuid, unreachable)
            # Host A fails: its domain is gone, its disks stay on the shared storage.
            guest.virsh("destroy", uid)
            guest.virsh("undefine", uid)
            disk = driver_a.instance_disk_path(instance=instance)
            assert disk.startswith(str(gluster_mount()))
            write_root_marker(disk, workdir, root_marker)
            inode = os.stat(disk).st_ino
            # The other one's root disk is there too (an empty one): only its export is not.
            os.makedirs(os.path.dirname(lost_disk := disk.replace(uid, lost.uuid)))
            guest.qcow2_base(Path(lost_disk))

            code, items = recover(config_missing)
            assert code == 1
            missing = items[uid]
            assert missing["outcome"] == "released", missing
            assert "is missing (is the shared instance storage mounted here?)" in missing["error"]
            assert instance.name in missing["name"] and missing["disk"].startswith("missing ")
            assert uid not in guest.virsh("list", "--all", "--uuid")

            code, items = recover(config_b)
            assert code == 1  # the unreachable one is left for the operator
            assert items[lost.uuid]["outcome"] == "released"
            assert "127.0.0.1:1" in items[lost.uuid]["error"]
            item = items[uid]
            assert item["outcome"] == "recovered" and item["power_state"] == "running", item
            assert item["disk"] == f"present {disk}"
            assert [(v["mountpoint"], v["size_bytes"]) for v in item["volumes"]] == [
                ("/dev/vdb", 32 << 20)]
            drivers.append(driver_b := driver_for(config_b, "host-b"))
            # The console log is on the shared storage too: host A's boot is in it, first.
            booted = rf"name=vda sectors=\d+ marker={root_marker}"
            guest.wait_console(driver_b, instance, rf"{booted}[\s\S]*name=vdb sectors="
                               rf"{32 * 2048} marker={vol_marker}")
            assert os.stat(disk).st_ino == inode  # the same file: nothing copied
            dumped = guest.virsh("dumpxml", uid)
            assert "protocol='gluster'" in dumped and f"virtkit-test/{name}" in dumped
            with Store(build_conf(str(config_b)).state_connection) as store:
                assert store.get_instance(uid).host == "host-b"
                assert store.get_instance(lost.uuid).host == "host-a"

            _, again = recover(config_b)
            assert uid not in again  # a second run leaves it alone
            assert guest.virsh("list", "--all", "--uuid").split().count(uid) == 1
            assert len(re.findall(r"^\s*vdb\s", guest.virsh("domblklist", uid), re.M)) == 1
        finally:
            for drv in drivers:
                drv.destroy(instance=instance)
