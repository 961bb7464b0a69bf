"""The fake driver's own semantics: persistence, locking, secrets, faults, state machine.

The interface contracts it shares with every driver are proven by the conformance suite
(tests/unit/test_conformance_fake.py runs it); these tests cover what is fake-specific.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from drivers.fake.driver import FakeDriver
from virt.driver import Capability, load_driver
from virt.errors import (
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    InvalidState,
    SpawnError,
    VolumeAuthError,
    VolumeError,
    VolumeNotFound,
)
from virt.events import Transition
from virt.model import (
    BlockDevice,
    Flavor,
    ImageRef,
    Instance,
    PowerState,
    VolumeConnection,
    new_uuid,
)

FLAVOR = Flavor(name="m1.tiny", vcpus=1, memory_mb=512, root_gb=1)
IMAGE = ImageRef(ref="cirros")
SECRET = "s3cr3t-Chap-Pass"


def make_instance(name: str = "vm", image: ImageRef = IMAGE) -> Instance:
    return Instance(uuid=new_uuid(), name=name, flavor=FLAVOR, image=image)


def chap_volume(mountpoint: str = "/dev/vdb", volume_id: str = "vol-1") -> BlockDevice:
    info = {
        "driver_volume_type": "iscsi",
        "serial": volume_id,
        "data": {
            "target_portal": "127.0.0.1:3260",
            "target_iqn": "iqn.2010-10.org.example:vol",
            "target_lun": 1,
            "auth_method": "CHAP",
            "auth_username": "user",
            "auth_password": SECRET,
        },
    }
    return BlockDevice(VolumeConnection.from_connection_info(info), mountpoint)


@pytest.fixture
def driver(conf):
    drv = load_driver("fake", conf)
    drv.init_host(host="test-host")
    return drv


def state_dir(conf) -> str:
    return os.path.join(conf.instances_path, "fake-hypervisor-test-host")


def state_path(conf, inst: Instance) -> str:
    """The file holding one instance's record."""
    return os.path.join(state_dir(conf), f"{inst.uuid}.json")


def instance_files(conf) -> list[str]:
    return sorted(n for n in os.listdir(state_dir(conf))
                  if not n.startswith((".", "_")))


def test_declares_every_capability():
    assert FakeDriver.capabilities == frozenset(Capability)


def test_state_survives_a_new_driver_object(conf, driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    driver.pause(instance=inst)
    again = load_driver("fake", conf)  # what the next CLI process does
    assert again.list_instance_uuids() == [inst.uuid]
    assert again.get_info(instance=inst).state is PowerState.PAUSED


def test_concurrent_processes_lose_no_update(conf, tmp_path):
    script = (
        "import sys\n"
        "from virt.config import build_conf\n"
        "from virt.driver import load_driver\n"
        "from virt.model import Flavor, ImageRef, Instance, new_uuid\n"
        "conf = build_conf(overrides={'state_path': sys.argv[1], 'host': 'test-host'})\n"
        "drv = load_driver('fake', conf)\n"
        "for i in range(10):\n"
        "    drv.spawn(instance=Instance(uuid=new_uuid(), name=f'p{sys.argv[2]}-{i}',\n"
        "              flavor=Flavor('t', 1, 64), image=ImageRef('cirros')))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, conf.state_path, str(n)])
        for n in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert len(load_driver("fake", conf).list_instances()) == 40


def test_concurrent_threads_spawn_each_uuid_once(driver):
    inst = make_instance()
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            driver.spawn(instance=inst)
            outcomes.append("ok")
        except InstanceExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["exists"] * 7 + ["ok"]


def test_secrets_never_reach_the_state_file(conf, driver):
    inst = make_instance()
    driver.spawn(instance=inst, admin_password="Adm1n-Pw",
                 block_devices=[chap_volume("/dev/vdc", "vol-0")])
    driver.attach_volume(instance=inst, block_device=chap_volume())
    driver.set_admin_password(instance=inst, password="N3w-Pw")
    snap = driver.snapshot(instance=inst, name="s")
    files = [os.path.join(top, name) for top, _, names in os.walk(conf.instances_path)
             for name in names]
    assert os.path.join(conf.instances_path, "fake-disks", inst.uuid) in files
    for path in files:
        text = open(path, encoding="utf-8").read()
        for secret in (SECRET, "Adm1n-Pw", "N3w-Pw"):
            assert secret not in text
    assert snap.ref in open(os.path.join(state_dir(conf), "_host.json")).read()
    record = json.loads(open(state_path(conf, inst), encoding="utf-8").read())
    bdm = record["block_devices"]["/dev/vdb"]
    assert bdm["connection_info"]["data"]["auth_password"] == "***"
    assert bdm["connection_info"]["data"]["auth_username"] == "user"


def test_state_file_is_private(conf, driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    for path in (state_dir(conf), state_path(conf, inst),
                 os.path.join(state_dir(conf), "_host.json")):
        assert os.stat(path).st_mode & 0o077 == 0, path


def test_fault_injection_fails_spawn_and_leaves_nothing(conf, driver):
    conf.set_override("fail_spawn_on_name_prefix", "doomed-", group="fake")
    events = []
    driver.register_event_listener(events.append)
    inst = make_instance("doomed-1")
    with pytest.raises(SpawnError, match="fail_spawn_on_name_prefix"):
        driver.spawn(instance=inst, block_devices=[chap_volume()])
    assert driver.list_instance_uuids() == []
    assert events == []
    assert driver.get_available_resource().vcpus_used == 0


def test_missing_image_path_and_unknown_snapshot(driver):
    with pytest.raises(ImageNotFound, match="/nonexistent/disk.qcow2"):
        driver.spawn(instance=make_instance(image=ImageRef("/nonexistent/disk.qcow2")))
    with pytest.raises(ImageNotFound, match="snapshot"):
        driver.spawn(instance=make_instance(image=ImageRef("fake-snapshot:nope")))
    assert driver.list_instances() == []


def test_latency_options_are_applied(conf, driver):
    conf.set_override("spawn_latency_ms", 30, group="fake")
    conf.set_override("volume_latency_ms", 20, group="fake")
    inst = make_instance()
    began = time.monotonic()
    driver.spawn(instance=inst)
    driver.attach_volume(instance=inst, block_device=chap_volume())
    driver.detach_volume(instance=inst, block_device=chap_volume())
    assert time.monotonic() - began >= 0.07


def test_state_machine_errors(driver):
    inst = make_instance()
    driver.spawn(instance=inst, power_on=False)
    assert driver.get_info(instance=inst).state is PowerState.SHUTDOWN
    with pytest.raises(InvalidState, match="pause needs it running"):
        driver.pause(instance=inst)
    with pytest.raises(InvalidState):
        driver.suspend(instance=inst)
    with pytest.raises(InvalidState, match="soft reboot"):
        driver.reboot(instance=inst)
    with pytest.raises(InstanceNotRunning):
        driver.set_admin_password(instance=inst, password="x")
    driver.reboot(instance=inst, hard=True)
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    driver.suspend(instance=inst)
    driver.resume(instance=inst)
    driver.resume(instance=inst)  # running: no-op
    assert driver.get_info(instance=inst).state is PowerState.RUNNING


def test_power_off_reports_how(driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    forced = driver.power_off(instance=inst, timeout=0)
    assert (forced.clean, forced.forced, forced.already_off) == (False, True, False)
    again = driver.power_off(instance=inst)
    assert again.already_off and not again.forced
    with pytest.raises(InvalidRequest):
        driver.power_off(instance=inst, timeout=-1)


def test_events_for_a_whole_lifecycle(driver):
    events = []
    driver.register_event_listener(events.append)
    inst = make_instance()
    driver.spawn(instance=inst)
    driver.pause(instance=inst)
    driver.unpause(instance=inst)
    driver.suspend(instance=inst)
    driver.resume(instance=inst)
    driver.reboot(instance=inst, hard=True)
    driver.rescue(instance=inst, image=IMAGE)
    driver.unrescue(instance=inst)
    driver.unrescue(instance=inst)  # not rescued: no-op
    driver.destroy(instance=inst)
    T = Transition
    assert [e.transition for e in events] == [
        T.STARTED, T.PAUSED, T.RESUMED, T.SUSPENDED, T.RESUMED, T.STOPPED, T.STARTED,
        T.STOPPED, T.STARTED, T.STOPPED, T.STARTED, T.STOPPED,
    ]
    assert all(e.instance_uuid == inst.uuid for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_volumes(driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    driver.attach_volume(instance=inst, block_device=chap_volume())
    with pytest.raises(VolumeError, match="already has a volume at /dev/vdb"):
        driver.attach_volume(instance=inst, block_device=chap_volume(volume_id="vol-2"))
    with pytest.raises(VolumeError, match="already attached"):
        driver.attach_volume(instance=inst, block_device=chap_volume("/dev/vdc"))
    with pytest.raises(VolumeNotFound):
        driver.detach_volume(instance=inst, block_device=chap_volume("/dev/vdd", "vol-9"))
    driver.detach_volume(instance=inst, block_device=chap_volume())
    with pytest.raises(VolumeNotFound):
        driver.detach_volume(instance=inst, block_device=chap_volume())
    bad = BlockDevice(VolumeConnection("iscsi", {"target_portal": "p", "target_iqn": "i",
                                                 "auth_method": "CHAP"}), "/dev/vde")
    with pytest.raises(VolumeAuthError, match="CHAP"):
        driver.attach_volume(instance=inst, block_device=bad)


def test_snapshot_is_bootable_and_console_records_it(driver):
    inst = make_instance(image=ImageRef("cirros", disk_format="qcow2"))
    driver.spawn(instance=inst)
    image = driver.snapshot(instance=inst, name="backup")
    assert image.disk_format == "qcow2" and image.properties["name"] == "backup"
    clone = make_instance("clone", image=image)
    driver.spawn(instance=clone)
    console = driver.get_console_output(instance=inst)
    assert "snapshot 'backup'" in console
    assert len(driver.get_console_output(instance=inst, max_bytes=10).encode()) <= 10
    assert driver.get_console_output(instance=inst, max_bytes=0) == ""


def test_inject_file_and_bad_input(driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    driver.inject_file(instance=inst, path="/etc/motd", contents=b"hello")
    assert "/etc/motd (5 bytes)" in driver.get_console_output(instance=inst)
    with pytest.raises(InvalidRequest, match="absolute"):
        driver.inject_file(instance=inst, path="etc/motd", contents=b"x")
    with pytest.raises(InvalidRequest, match="Instance"):
        driver.get_info(instance="not-an-instance")
    with pytest.raises(InstanceNotFound):
        driver.attach_volume(instance=make_instance(), block_device=chap_volume())


def test_resources_account_for_instances(driver):
    before = driver.get_available_resource()
    big = Instance(uuid=new_uuid(), name="big", flavor=Flavor("m1.big", 4, 4096, 40, 10),
                   image=IMAGE)
    driver.spawn(instance=big, power_on=False)
    after = driver.get_available_resource()
    assert after.vcpus_used - before.vcpus_used == 4
    assert after.memory_mb_used - before.memory_mb_used == 4096
    assert after.local_gb_used - before.local_gb_used == 50
    assert after.disk_available_least == after.local_gb - after.local_gb_used


def test_corrupt_state_file_is_a_clear_error(conf, driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    with open(state_path(conf, inst), "w") as handle:
        handle.write("{not json")
    from virt.errors import HypervisorUnavailable

    with pytest.raises(HypervisorUnavailable, match=f"{inst.uuid}.json is unreadable"):
        driver.list_instances()
    with pytest.raises(HypervisorUnavailable, match="unreadable"):
        driver.get_info(instance=inst)


def test_two_drivers_on_one_host_see_each_others_changes(conf, driver):
    other = load_driver("fake", conf)
    other.init_host(host="test-host")
    inst = make_instance()
    assert not other.instance_exists(instance=inst)
    driver.spawn(instance=inst)
    assert other.instance_exists(instance=inst)
    other.attach_volume(instance=inst, block_device=chap_volume())
    other.destroy(instance=inst)
    assert not driver.instance_exists(instance=inst)
    assert driver.list_instances() == other.list_instances() == []


def test_state_file_edited_by_hand_is_noticed(conf, driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    record = json.loads(open(state_path(conf, inst), encoding="utf-8").read())
    record["name"] = "renamed-by-hand"
    with open(state_path(conf, inst), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    assert driver.list_instances() == ["renamed-by-hand"]


def test_changes_by_others_between_operations_are_seen(conf, driver):
    # The driver remembers what it wrote last; another writer's bytes must win all the same.
    inst = make_instance()
    driver.spawn(instance=inst)
    driver.attach_volume(instance=inst, block_device=chap_volume())
    other = load_driver("fake", conf)
    other.init_host(host="test-host")
    other.detach_volume(instance=inst, block_device=chap_volume())
    driver.attach_volume(instance=inst, block_device=chap_volume())
    record = json.loads(open(state_path(conf, inst), encoding="utf-8").read())
    record["block_devices"] = {}
    record["state"] = "paused"
    with open(state_path(conf, inst), "w", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True, separators=(",", ":"))
    with pytest.raises(VolumeNotFound):
        driver.detach_volume(instance=inst, block_device=chap_volume())
    driver.unpause(instance=inst)
    record = json.loads(open(state_path(conf, inst), encoding="utf-8").read())
    assert record["state"] == "running" and record["block_devices"] == {}


def test_unchanged_transaction_does_not_rewrite_the_file(conf, driver):
    inst = make_instance()
    driver.spawn(instance=inst)
    before = os.stat(state_path(conf, inst)), os.stat(state_dir(conf))
    driver.destroy(instance=make_instance())  # unknown: a no-op
    driver.power_on(instance=inst)  # already running: a no-op
    after = os.stat(state_path(conf, inst)), os.stat(state_dir(conf))
    assert [(s.st_ino, s.st_mtime_ns) for s in before] == [
        (s.st_ino, s.st_mtime_ns) for s in after]


def test_one_small_file_per_instance_and_others_untouched(conf, driver):
    insts = [make_instance(f"vm{i}") for i in range(3)]
    for inst in insts:
        driver.spawn(instance=inst)
    others = [os.stat(state_path(conf, i)) for i in (insts[0], insts[2])]
    driver.pause(instance=insts[1])
    driver.destroy(instance=insts[1])
    # An operation on one instance rewrites only that instance's file.
    assert [(s.st_ino, s.st_mtime_ns) for s in others] == [
        (s.st_ino, s.st_mtime_ns) for s in (os.stat(state_path(conf, i))
                                             for i in (insts[0], insts[2]))]
    assert instance_files(conf) == sorted(f"{i.uuid}.json" for i in (insts[0], insts[2]))
    assert sorted(os.listdir(os.path.join(conf.instances_path, "fake-disks"))) == sorted(
        i.uuid for i in (insts[0], insts[2]))
    record = json.loads(open(state_path(conf, insts[0]), encoding="utf-8").read())
    assert record["uuid"] == insts[0].uuid and record["name"] == "vm0"
    host = json.loads(open(os.path.join(state_dir(conf), "_host.json")).read())
    assert host == {"host": "test-host", "version": 2, "images": {}}
    assert driver.list_instances() == ["vm0", "vm2"]


def test_old_single_file_state_is_migrated(conf):
    """A host written by the previous version (one JSON file) keeps its instances."""
    uuid = new_uuid()
    snap = "fake-snapshot:11111111-2222-3333-4444-555555555555"
    record = {"uuid": uuid, "name": "old-vm", "host": "test-host", "state": "paused",
              "flavor": {"name": "t", "vcpus": 1, "memory_mb": 64, "root_gb": 1,
                         "ephemeral_gb": 0, "swap_mb": 0},
              "image": {"ref": "cirros", "disk_format": None, "kernel": None,
                        "ramdisk": None, "kernel_cmdline": None},
              "created_at": 1.0, "cpu_time_ns": 0, "running_since": None,
              "block_devices": {}, "vifs": [], "files": {}, "rescued": False,
              "admin_password_changed_at": None, "console": []}
    images = {snap: {"ref": snap, "name": "s", "disk_format": None, "kernel": None,
                     "ramdisk": None, "kernel_cmdline": None}}
    os.makedirs(conf.instances_path, exist_ok=True)
    legacy = os.path.join(conf.instances_path, "fake-hypervisor-test-host.json")
    with open(legacy, "w", encoding="utf-8") as handle:
        json.dump({"version": 1, "host": "test-host", "instances": {uuid: record},
                   "images": images}, handle)
    open(legacy + ".lock", "w").close()
    drv = load_driver("fake", conf)
    drv.init_host(host="test-host")
    assert drv.list_instances() == ["old-vm"]
    inst = Instance(uuid=uuid, name="old-vm", flavor=FLAVOR)
    assert drv.get_info(instance=inst).state is PowerState.PAUSED
    assert not os.path.exists(legacy) and not os.path.exists(legacy + ".lock")
    again = make_instance("from-snap", image=ImageRef(snap))
    drv.spawn(instance=again)  # the snapshot came along
    assert load_driver("fake", conf).list_instances() == ["from-snap", "old-vm"]


def test_unknown_old_format_is_a_clear_error(conf):
    os.makedirs(conf.instances_path, exist_ok=True)
    legacy = os.path.join(conf.instances_path, "fake-hypervisor-test-host.json")
    with open(legacy, "w", encoding="utf-8") as handle:
        json.dump({"version": 99}, handle)
    from virt.errors import HypervisorUnavailable

    drv = load_driver("fake", conf)
    with pytest.raises(HypervisorUnavailable, match="unknown format"):
        drv.init_host(host="test-host")
    assert os.path.exists(legacy)  # left for the operator
