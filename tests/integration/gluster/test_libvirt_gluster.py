"""GlusterFS volumes on real libvirtd + QEMU: native gluster disks and the FUSE fallback.

One tiny guest for the module. Its console lists every disk the guest sees with its size
(the tiny guest's own loop), so "the guest sees the disk" is read inside the guest.
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.gluster_helpers import gluster_device, libvirtd_namespace_pidfile, volume_files
from tests.libvirt_helpers import (
    libvirt_driver,
    libvirt_up,
    qemu_workdir,
    tiny_guest_image,
    virsh,
    wait_console,
)
from tests.testbed import require
from virt.errors import InvalidRequest, VolumeError, VolumeNotFound, VolumeUnreachable
from virt.model import BlockDevice, Flavor, Instance, VolumeConnection

pytestmark = [pytest.mark.libvirt_qemu, pytest.mark.slow]


@pytest.fixture(scope="module")
def workdir():
    require(libvirt_up(), "libvirtd with qemu:///system")
    with qemu_workdir("virtkit-gluster-") as path:
        yield path


@pytest.fixture(scope="module")
def files():
    with volume_files() as made:
        yield made


@pytest.fixture(scope="module")
def driver(workdir):
    with libvirt_driver(workdir, "gluster-native") as drv:
        yield drv


@pytest.fixture(scope="module")
def fuse_driver(workdir):
    """The same host with gluster_native = false: FUSE mounts under its instances path."""
    with libvirt_driver(workdir, "gluster-fuse", gluster_native=False,
                        gluster_mount_namespace_pidfile=libvirtd_namespace_pidfile()) as drv:
        yield drv


@pytest.fixture(scope="module")
def guest(driver, files):
    """The guest, spawned with a 64 MiB raw GlusterFS volume at /dev/vdb (native)."""
    name = files.create(64)
    uid = str(uuid.uuid4())
    inst = Instance(uuid=uid, name=f"vk-gluster-{uid[:6]}", flavor=Flavor("tiny", 1, 128, 1),
                    image=tiny_guest_image())
    driver.spawn(instance=inst, block_devices=[gluster_device(name, "/dev/vdb")])
    yield inst, name
    driver.destroy(instance=inst)
    assert uid not in virsh("list", "--all", "--uuid")


def mounts_under(driver) -> set[str]:
    return driver._volumes.gluster.mounts.mounted()


def has_disk(inst: Instance, dev: str, *extra: str) -> bool:
    return bool(re.search(rf"^\s*{dev}\s", virsh("domblklist", inst.uuid, *extra), re.M))


def test_spawn_attaches_the_volume_natively_and_the_guest_sees_it(driver, guest):
    inst, name = guest
    out = wait_console(driver, inst, r"name=vdb sectors=\d+")
    assert f"name=vdb sectors={64 * 2048}" in out
    dumped = virsh("dumpxml", inst.uuid)
    assert "protocol='gluster'" in dumped and f"virtkit-test/{name}" in dumped
    assert "<host name='127.0.0.1' port='24007'/>" in dumped
    assert mounts_under(driver) == set()  # no FUSE mount in the data path


def test_hot_attach_and_detach_of_a_qcow2_volume(driver, guest, files):
    inst, _ = guest
    wait_console(driver, inst, r"VIRTKIT-DISKS-END")
    bdm = gluster_device(files.create(32, fmt="qcow2"), "/dev/vdc", fmt="qcow2")
    driver.attach_volume(instance=inst, block_device=bdm)
    wait_console(driver, inst, rf"name=vdc sectors={32 * 2048}")
    assert "type='qcow2'" in virsh("dumpxml", inst.uuid)
    driver.detach_volume(instance=inst, block_device=bdm)
    assert not has_disk(inst, "vdc") and not has_disk(inst, "vdc", "--inactive")


def test_fuse_fallback_mounts_each_export_once_and_unmounts_after_its_last_user(
        fuse_driver, guest, files):
    inst, _ = guest
    wait_console(fuse_driver, inst, r"VIRTKIT-DISKS-END")
    first = gluster_device(files.create(16), "/dev/vdd")
    second = gluster_device(files.create(24), "/dev/vde")
    fuse_driver.attach_volume(instance=inst, block_device=first)
    fuse_driver.attach_volume(instance=inst, block_device=second)
    mounts = mounts_under(fuse_driver)
    assert len(mounts) == 1  # one mount for the export, two users
    (point,) = mounts
    assert f"{point}/{first.connection.data['name']}" in virsh("dumpxml", inst.uuid)
    # The guest names disks in the order it finds them, not by libvirt's target names.
    wait_console(fuse_driver, inst, rf"name=vd\w sectors={16 * 2048}(?!\d)")
    wait_console(fuse_driver, inst, rf"name=vd\w sectors={24 * 2048}(?!\d)")
    fuse_driver.detach_volume(instance=inst, block_device=first)
    assert mounts_under(fuse_driver) == {point}  # the second volume still uses it
    fuse_driver.detach_volume(instance=inst, block_device=second)
    assert mounts_under(fuse_driver) == set()
    assert not has_disk(inst, "vdd") and not has_disk(inst, "vde")


def test_typed_errors_before_anything_is_attached(driver, guest):
    inst, _ = guest

    def attach(**data: object) -> None:
        info = {"driver_volume_type": "glusterfs",
                "data": {"export": "127.0.0.1:/virtkit-test", "name": "absent.raw", **data}}
        driver.attach_volume(instance=inst, block_device=BlockDevice(
            VolumeConnection.from_connection_info(info), "/dev/vdf"))

    with pytest.raises(VolumeNotFound, match="has no file 'absent.raw'"):
        attach()
    with pytest.raises(VolumeNotFound, match="no started volume 'nosuchvol'"):
        attach(export="127.0.0.1:/nosuchvol")
    with pytest.raises(VolumeUnreachable):
        attach(export="127.0.0.1:1:/virtkit-test")
    with pytest.raises(InvalidRequest, match="'export'"):
        attach(export="127.0.0.1/virtkit-test")
    with pytest.raises(InvalidRequest, match="cannot attach driver_volume_type 'nfs'"):
        driver.attach_volume(instance=inst, block_device=BlockDevice(
            VolumeConnection.from_connection_info({"driver_volume_type": "nfs", "data": {}}),
            "/dev/vdf"))
    assert not has_disk(inst, "vdf")
    assert issubclass(VolumeNotFound, VolumeError)
