"""Recovery on libvirt's test driver (test:///default): root disks on shared instance storage."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from drivers.libvirt.driver import LibvirtDriver
from tests.libvirt_helpers import qcow2_base
from tests.recovery_helpers import record_instances, recover
from virt.driver import load_driver
from virt.recovery.report import Outcome
from virt.recovery.sources import StoreSource
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
    return qcow2_base(tmp_path / "base.qcow2")


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
        host_a.spawn(instance=instance)
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


def test_require_instance_disk_with_the_fake_on_shared_instances_path(conf):
    """The fake keeps root disks where every host of one instances_path finds them."""
    with Store(conf.state_connection) as store:
        kept, lost = record_instances(store, "host-a", 2, prefix="vkf")
        host_a = load_driver("fake", conf)
        host_a.init_host(host="host-a")
        for uuid in (kept, lost):  # host A ran both; then it failed
            instance = StoreSource(store).get(uuid).instance("host-a")
            host_a.spawn(instance=instance)
            host_a.destroy(instance=instance, destroy_disks=False)
        os.remove(host_a.instance_disk_path(instance=StoreSource(store).get(lost).instance("a")))
        report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                         require_instance_disk=True)
    by_uuid = {i.uuid: i for i in report.instances}
    assert by_uuid[kept].outcome == Outcome.RECOVERED
    assert by_uuid[kept].disk.startswith("present ")
    assert by_uuid[lost].outcome == Outcome.RELEASED and "is missing" in by_uuid[lost].error


NOVA_DDL = [
    """CREATE TABLE instances (id INTEGER PRIMARY KEY, uuid VARCHAR(36) NOT NULL UNIQUE,
       display_name VARCHAR(255), host VARCHAR(255), node VARCHAR(255),
       vm_state VARCHAR(255), power_state INTEGER, vcpus INTEGER, memory_mb INTEGER,
       root_gb INTEGER, ephemeral_gb INTEGER, image_ref VARCHAR(255), deleted INTEGER DEFAULT 0)""",
    """CREATE TABLE block_device_mapping (id INTEGER PRIMARY KEY, instance_uuid VARCHAR(36),
       device_name VARCHAR(255), volume_id VARCHAR(36), source_type VARCHAR(255),
       destination_type VARCHAR(255), boot_index INTEGER, connection_info TEXT,
       disk_bus VARCHAR(255), deleted INTEGER DEFAULT 0)""",
]
GLANCE = {"cached": "0b9e3c41-1111-4000-8000-000000000001",
          "absent": "0b9e3c41-2222-4000-8000-000000000002"}


def test_nova_image_ids_resolve_through_nova_base(libvirt_conf, store, tmp_path):
    """Nova's image_ref is a Glance id: spawned from Nova's _base/<sha1(id)>; an id not there
    and a boot-from-volume instance are each named in the report and left untouched."""
    import json

    import sqlalchemy as sa

    from tests.recovery_helpers import iscsi_info
    from virt.recovery.sources import NovaSource, nova_cache_name

    base = tmp_path / "nova-instances" / "_base"
    base.mkdir(parents=True)
    cached = base / nova_cache_name(GLANCE["cached"])  # Nova caches images raw
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(cached), "16M"], check=True,
                   timeout=60)
    url = f"sqlite:///{tmp_path / 'nova.sqlite'}"
    uuids = [f"5e1f0000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3)]
    nova = sa.create_engine(url)
    with nova.begin() as conn:
        for ddl in NOVA_DDL:
            conn.exec_driver_sql(ddl)
        for n, (uuid, ref) in enumerate(zip(uuids, (GLANCE["cached"], GLANCE["absent"], ""),
                                            strict=True), start=1):
            conn.execute(sa.text(
                "INSERT INTO instances (id, uuid, host, node, vm_state, vcpus, memory_mb, root_gb,"
                " ephemeral_gb, image_ref) VALUES (:id, :u, 'nova-a', 'nova-a', 'active', 1, 64,"
                " 1, 0, :ref)"), {"id": n, "u": uuid, "ref": ref})
        conn.execute(sa.text(
            "INSERT INTO block_device_mapping (instance_uuid, device_name, volume_id,"
            " source_type, destination_type, boot_index, connection_info)"
            " VALUES (:u, '/dev/vda', 'root-vol', 'volume', 'volume', 0, :info)"),
            {"u": uuids[2], "info": json.dumps(iscsi_info(1))})
    source = NovaSource(url, image_dir=str(base))
    report = recover(libvirt_conf, store, "nova-b", source=source, failed_host="nova-a",
                     confirm_fenced=True)
    by_uuid = {i.uuid: i for i in report.instances}
    assert by_uuid[uuids[0]].outcome == Outcome.RECOVERED, by_uuid[uuids[0]].error
    absent, bfv = by_uuid[uuids[1]], by_uuid[uuids[2]]
    assert absent.outcome == bfv.outcome == Outcome.RELEASED
    assert f"its image {GLANCE['absent']} is not in nova_image_dir {base}" in absent.error
    assert nova_cache_name(GLANCE["absent"]) in absent.error
    assert "boots from volume root-vol at /dev/vda" in bfv.error
    with nova.begin() as conn:
        hosts = [r[0] for r in conn.execute(sa.text("SELECT host FROM instances ORDER BY id"))]
    assert hosts == ["nova-b", "nova-a", "nova-a"]
    nova.dispose()
    driver = driver_on(libvirt_conf, "nova-b")
    instance = source.get(uuids[0]).instance("nova-b")
    try:
        from drivers.libvirt import qcow2

        disk = qcow2.read_header(driver.instance_disk_path(instance=instance))
        assert disk.backing_file and disk.backing_file.startswith(libvirt_conf.state_path)
    finally:
        driver.destroy(instance=instance)


def test_nova_image_path_takes_ids_not_paths(tmp_path):
    from virt.recovery.sources import nova_image_path

    assert nova_image_path(str(tmp_path), "../etc") is None
    (tmp_path / "plain-id").write_bytes(b"x")
    assert nova_image_path(str(tmp_path), "plain-id") == str(tmp_path / "plain-id")
