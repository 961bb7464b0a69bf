"""Recovery on libvirt's test driver (test:///default): root disks on shared instance storage."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from drivers.libvirt.driver import LibvirtDriver
from tests.recovery_helpers import record_instances, recover
from virt.errors import InvalidRequest
from virt.model import ImageRef
from virt.recovery import Outcome
from virt.recovery_source import StoreSource
from virt.store import Store


@pytest.fixture
def libvirt_conf(conf):
    """Both 'hosts' share conf's instances_path, as hosts on shared instance storage do."""
    LibvirtDriver.register_opts(conf)
    conf.set_override("compute_driver", "libvirt")
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    return conf


@pytest.fixture
def store(libvirt_conf):
    with Store(libvirt_conf.state_connection) as s:
        yield s


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True,
                   timeout=60)
    return ImageRef(str(path))


def driver_on(conf, host):
    driver = LibvirtDriver(conf)
    driver.init_host(host=host)
    return driver


def test_missing_root_disk_is_named_and_left_unclaimed(libvirt_conf, store, image):
    conf = libvirt_conf
    kept, lost = record_instances(store, "host-a", 2, image=image, prefix="vkr")
    host_a = driver_on(conf, "host-a")
    for uuid in (kept, lost):  # host A ran both; then it failed
        instance = StoreSource(store).get(uuid).instance("host-a")
        host_a.spawn(instance=instance, image=image)
        host_a.destroy(instance=instance, destroy_disks=False)
    disk = host_a.instance_disk_path(instance=StoreSource(store).get(kept).instance("host-a"))
    inode = os.stat(disk).st_ino
    shutil.rmtree(os.path.dirname(disk.replace(kept, lost)))  # not on the shared storage
    options = dict(failed_host="host-a", confirm_fenced=True, require_instance_disk=True)

    report = recover(conf, store, "host-b", **options)
    by_uuid = {i.uuid: i for i in report.instances}
    assert by_uuid[kept].outcome == Outcome.RECOVERED and by_uuid[kept].disk == f"present {disk}"
    assert os.stat(disk).st_ino == inode  # booted from the disk it had, not a new one
    missing = by_uuid[lost]
    assert missing.outcome == Outcome.RELEASED and report.exit_code == 1
    assert f"its root disk {disk.replace(kept, lost)} is missing" in missing.error
    assert "--rebuild-missing-disks" in missing.error
    assert store.get_instance(lost).host == "host-a"  # untouched

    rebuilt = recover(conf, store, "host-b", rebuild_missing_disks=True, **options)
    (item,) = rebuilt.instances
    assert item.outcome == Outcome.RECOVERED and item.disk.startswith("rebuilt ")
    assert os.path.exists(disk.replace(kept, lost))
    for uuid in (kept, lost):
        driver_on(conf, "host-b").destroy(instance=StoreSource(store).get(uuid).instance("b"))


def test_require_instance_disk_needs_a_driver_that_can_tell(conf):
    with Store(conf.state_connection) as store, pytest.raises(
            InvalidRequest, match="the fake driver cannot say where"):
        recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                require_instance_disk=True)
