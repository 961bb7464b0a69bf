"""The smartos driver against the SmartOS simulator, through the local and the SSH executor."""

from __future__ import annotations

import logging
import secrets
import time
import uuid

import pytest

from drivers.smartos import spec
from tests.smartos_sim import guest as sim_guest
from virt.errors import (
    HypervisorUnavailable,
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    SpawnError,
    UnsupportedOperation,
)
from virt.events import Transition
from virt.model import BlockDevice, Flavor, ImageRef, Instance, PowerState, Vif, VolumeConnection


def _vm(driver, instance):
    return driver.tools.vm_get(instance.uuid)


def test_spawn_installs_the_image_and_runs_a_marked_clone(driver, sim, spawn):
    vif = Vif(id="v1", address="52:54:00:aa:bb:01")
    instance = spawn(vifs=[vif])
    vm = _vm(driver, instance)
    assert vm["state"] == "running" and vm["brand"] == "joyent"
    assert vm["internal_metadata"][spec.MARK_MANAGED] == "true"
    assert vm["internal_metadata"][spec.MARK_HOST] == driver._host
    assert vm["max_physical_memory"] == 128 and vm["quota"] == 1 and vm["cpu_cap"] == 100
    assert [n["mac"] for n in vm["nics"]] == [vif.address]
    assert vm["nics"][0]["nic_tag"] == "admin"
    origin = driver.tools.zfs_get("origin", vm["zfs_filesystem"])
    assert origin == f"zones/{sim.image}@final"
    assert (sim.zone_root(instance.uuid) / "etc" / "virtkit-test-image").is_file()
    info = driver.get_info(instance=instance)
    assert info.state is PowerState.RUNNING and info.num_cpu == 1
    assert info.max_mem_kb == 128 * 1024
    assert instance.uuid in driver.list_instance_uuids()
    assert instance.name in driver.list_instances()
    assert driver.instance_exists(instance=instance)


def test_a_second_instance_of_an_image_is_a_cheap_clone(driver, spawn):
    first, second = spawn(), spawn()
    used = int(driver.tools.zfs_get("used", f"zones/{second.uuid}"))
    refer = int(driver.tools.zfs_get("referenced", f"zones/{second.uuid}"))
    assert used < refer or used < 64 * 1024, (used, refer)
    assert first.uuid != second.uuid


def test_destroy_is_idempotent_and_leaves_nothing(driver, sim, spawn):
    instance = spawn()
    driver.destroy(instance=instance)
    driver.destroy(instance=instance)
    assert _vm(driver, instance) is None
    assert not driver.tools.zfs_exists(f"zones/{instance.uuid}")
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=instance)
    assert instance.uuid not in driver.list_instance_uuids()


def test_power_off_on_and_reboot(driver, spawn):
    instance = spawn()
    result = driver.power_off(instance=instance, timeout=20)
    assert result.clean and not result.forced
    assert driver.get_info(instance=instance).state is PowerState.SHUTDOWN
    assert driver.power_off(instance=instance).already_off
    driver.power_on(instance=instance)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    boots = _vm(driver, instance)["boot_timestamp"]
    driver.power_on(instance=instance)  # running: a no-op
    assert _vm(driver, instance)["boot_timestamp"] == boots
    for hard in (False, True):
        time.sleep(1.1)  # boot timestamps have a resolution of a second or more
        driver.reboot(instance=instance, hard=hard)
        vm = _vm(driver, instance)
        assert vm["state"] == "running" and vm["boot_timestamp"] != boots
        boots = vm["boot_timestamp"]


def test_power_off_forces_a_stop_that_hangs_and_says_so(driver, sim, spawn, caplog):
    instance = spawn()
    sim.faults({"hang": f"vmadm stop {instance.uuid}"})
    caplog.set_level(logging.INFO)
    began = time.monotonic()
    with pytest.raises(HypervisorUnavailable, match="did not finish"):
        # the forced stop hangs too: bounded by command_timeout, never forever
        driver.tools.executor.timeout = 3
        try:
            driver.power_off(instance=instance, timeout=1)
        finally:
            driver.tools.executor.timeout = 30
    assert time.monotonic() - began < 20
    sim.faults(None)
    result = driver.power_off(instance=instance, timeout=0)
    assert result.forced and not result.clean
    assert "forced off (vmadm stop -F)" in caplog.text


def test_spawn_with_power_on_false_and_admin_password(driver, sim, spawn, caplog):
    caplog.set_level(logging.DEBUG)
    stopped = spawn(power_on=False)
    assert driver.get_info(instance=stopped).state is PowerState.SHUTDOWN
    password = secrets.token_urlsafe(12)
    with pytest.raises(InvalidRequest):
        spawn(power_on=False, admin_password=password)
    running = spawn(admin_password=password)
    assert sim_guest.password_matches(sim.zone_root(running.uuid), "root", password)
    assert password not in caplog.text


def test_set_admin_password_and_inject_file(driver, sim, spawn, caplog):
    caplog.set_level(logging.DEBUG)
    instance = spawn()
    old, new = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    driver.set_admin_password(instance=instance, password=old)
    driver.set_admin_password(instance=instance, password=new)
    root = sim.zone_root(instance.uuid)
    assert sim_guest.password_matches(root, "root", new)
    assert not sim_guest.password_matches(root, "root", old)
    assert old not in caplog.text and new not in caplog.text
    data = secrets.token_bytes(64)
    driver.inject_file(instance=instance, path="/etc/virtkit/new/dir/file.bin", contents=data)
    assert (root / "etc/virtkit/new/dir/file.bin").read_bytes() == data
    for bad in ("relative", "/etc/../etc/x", "/a b", "/$(x)"):
        with pytest.raises(InvalidRequest):
            driver.inject_file(instance=instance, path=bad, contents=b"x")
    driver.power_off(instance=instance, timeout=0)
    with pytest.raises(InstanceNotRunning):
        driver.set_admin_password(instance=instance, password=new)


def test_snapshot_is_an_image_a_later_spawn_boots(driver, sim, spawn):
    source = spawn()
    token = secrets.token_hex(8)
    (sim.zone_root(source.uuid) / "etc" / "snap-mark").write_text(token)
    ref = driver.snapshot(instance=source, name="web-snap")
    assert ref.ref != sim.image
    manifest = driver.tools.image_get(ref.ref)["manifest"]
    assert manifest["name"] == "web-snap" and manifest["type"] == "zone-dataset"
    assert manifest["tags"][spec.SNAPSHOT_OF] == source.uuid
    assert not [s for s in driver.tools.executor.run("zfs", "list", "-H", "-o", "name", "-t",
                                                      "snapshot").out.split()
                if s.startswith(f"zones/{source.uuid}@")], "the capture snapshot was left"
    child = spawn(image=ImageRef(ref.ref))
    assert (sim.zone_root(child.uuid) / "etc" / "snap-mark").read_text() == token
    assert driver.tools.zfs_get("origin", f"zones/{child.uuid}") == f"zones/{ref.ref}@final"
    driver.destroy(instance=child)
    assert driver.images.delete(ref.ref)


def test_destroy_without_disks_keeps_them_for_the_next_spawn(driver, sim, spawn):
    """destroy(destroy_disks=False) parks the VM (stopped, unlisted, datasets kept); the next
    spawn of the instance takes it back with what its disk held."""
    instance = spawn()
    token = uuid.uuid4().hex
    (sim.zone_root(instance.uuid) / "etc" / "kept-mark").write_text(token)
    driver.destroy(instance=instance, destroy_disks=False)
    assert instance.uuid not in driver.list_instance_uuids()
    assert not driver.instance_exists(instance=instance)
    parked = _vm(driver, instance)
    assert parked["state"] == "stopped"
    assert parked["internal_metadata"][spec.MARK_MANAGED] == spec.PARKED
    driver.destroy(instance=instance, destroy_disks=False)  # parked already: stays so
    driver.spawn(instance=instance)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    assert (sim.zone_root(instance.uuid) / "etc" / "kept-mark").read_text() == token
    driver.destroy(instance=instance)
    assert _vm(driver, instance) is None
    assert not driver.tools.zfs_exists(f"zones/{instance.uuid}")
    driver.destroy(instance=instance, destroy_disks=False)  # unknown: a no-op


def test_destroy_with_disks_removes_a_parked_vm(driver, spawn):
    instance = spawn()
    driver.destroy(instance=instance, destroy_disks=False)
    assert driver.tools.zfs_exists(f"zones/{instance.uuid}")
    driver.destroy(instance=instance)
    assert _vm(driver, instance) is None
    assert not driver.tools.zfs_exists(f"zones/{instance.uuid}")


def test_a_spawn_onto_a_parked_vm_takes_the_new_flavor(driver, spawn):
    instance = spawn(flavor=Flavor("so.small", 1, 128, 1))
    driver.destroy(instance=instance, destroy_disks=False)
    bigger = Instance(uuid=instance.uuid, name=instance.name, image=instance.image,
                      flavor=Flavor("so.big", 2, 256, 2))
    driver.spawn(instance=bigger)
    vm = _vm(driver, bigger)
    assert vm["max_physical_memory"] == 256 and vm["cpu_cap"] == 200 and vm["quota"] == 2


def test_failed_provisioning_is_a_clear_error_and_leaves_nothing(driver, sim):
    instance = Instance(uuid=str(uuid.uuid4()), name="vk-so-fail",
                        flavor=Flavor("so.small", 1, 128, 1), image=ImageRef(sim.image))
    sim.faults({"provision": "fail"})
    with pytest.raises(SpawnError, match="failed to provision"):
        driver.spawn(instance=instance)
    assert _vm(driver, instance) is None
    assert not driver.tools.zfs_exists(f"zones/{instance.uuid}")


def test_a_failed_password_rolls_the_spawn_back(driver, sim):
    instance = Instance(uuid=str(uuid.uuid4()), name="vk-so-rb",
                        flavor=Flavor("so.small", 1, 128, 1), image=ImageRef(sim.image))
    sim.faults({"fail": {"zlogin": "zlogin: simulated failure"}})
    with pytest.raises(Exception, match="simulated failure"):
        driver.spawn(instance=instance, admin_password="s3cret-pw")
    assert _vm(driver, instance) is None


def test_spawn_refusals(driver, sim, spawn):
    base = dict(name="vk-so-x", flavor=Flavor("so.small", 1, 128, 1))
    with pytest.raises(ImageNotFound):
        driver.spawn(instance=Instance(uuid=str(uuid.uuid4()), image=ImageRef(str(uuid.uuid4())),
                                       **base))
    with pytest.raises(InvalidRequest, match="brand"):
        driver.spawn(instance=Instance(
            uuid=str(uuid.uuid4()), image=ImageRef(sim.image),
            name="vk-so-b", flavor=Flavor("so.hvm", 1, 128, 1,
                                          extra_specs={spec.BRAND_SPEC: "bhyve"})))
    with pytest.raises(InvalidRequest):
        driver.spawn(instance=Instance(uuid=str(uuid.uuid4()), **base))
    bdm = BlockDevice(VolumeConnection("iscsi", {}), "vdb")
    with pytest.raises(UnsupportedOperation):
        driver.spawn(instance=Instance(uuid=str(uuid.uuid4()), image=ImageRef(sim.image),
                                       **base), block_devices=[bdm])
    instance = spawn()
    with pytest.raises(InstanceExists):
        driver.spawn(instance=instance)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING


def test_resources_count_only_virtkits_running_vms(driver, spawn):
    before = driver.get_available_resource()
    assert before.hypervisor_type == "smartos" and before.vcpus > 0 and before.local_gb > 0
    spawn(flavor=Flavor("so.two", 2, 256, 1))
    after = driver.get_available_resource()
    assert after.vcpus_used == before.vcpus_used + 2
    assert after.memory_mb_used == before.memory_mb_used + 256


def test_lifecycle_events_by_polling(driver, spawn):
    events = []
    instance = spawn()
    driver.register_event_listener(events.append)
    poller = driver.event_poller
    poller.polled.clear()
    assert poller.polled.wait(10)
    driver.power_off(instance=instance, timeout=0)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(
            e.instance_uuid == instance.uuid and e.transition is Transition.STOPPED
            for e in events):
        time.sleep(0.2)
    assert any(e.instance_uuid == instance.uuid and e.transition is Transition.STOPPED
               for e in events), events
    driver.unregister_event_listener(events.append)


def test_unsupported_operations(driver, spawn):
    instance = spawn()
    for call in (driver.pause, driver.suspend, driver.get_console_output):
        with pytest.raises(UnsupportedOperation):
            call(instance=instance)
