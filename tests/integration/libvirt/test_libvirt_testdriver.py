"""The driver against libvirt's embedded test driver (test:///default): fast, always available."""

from __future__ import annotations

import dataclasses
import subprocess
import uuid

import libvirt
import pytest

from drivers.libvirt import xml
from drivers.libvirt.driver import LibvirtDriver
from tests.libvirt_helpers import qcow2_base, validate_domain_xml
from virt.config import build_conf
from virt.conformance.fixtures import wait_for
from virt.driver import Capability
from virt.errors import (
    HypervisorUnavailable,
    ImageError,
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    SpawnError,
    UnsupportedOperation,
)
from virt.events import Transition
from virt.model import BlockDevice, Flavor, ImageRef, Instance, PowerState, VolumeConnection


@pytest.fixture
def base(tmp_path):
    return qcow2_base(tmp_path / "base.qcow2")


@pytest.fixture
def driver(tmp_path):
    conf = build_conf(overrides={"state_path": str(tmp_path / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    conf.set_override("stopped_event_delay", 0.2, group="libvirt")
    drv = LibvirtDriver(conf)
    drv.init_host(host="test-host")
    yield drv
    for name in drv.list_instances():
        if name.startswith("vkt-"):
            conn = drv.connection.connection()
            dom = conn.lookupByName(name)
            drv.destroy(instance=_instance(name, dom.UUIDString()))
    drv.cleanup_host(host="test-host")


def _instance(name: str | None = None, uid: str | None = None, *,
              image: ImageRef | None = None, **meta: str) -> Instance:
    uid = uid or str(uuid.uuid4())
    return Instance(uuid=uid, name=name or f"vkt-{uid[:8]}", flavor=Flavor("t", 1, 128, 1, 1, 8),
                    image=image, metadata=meta)


def test_full_lifecycle(driver, base, tmp_path):
    events: list = []

    def listener(event):
        events.append((event.instance_uuid, event.transition))

    driver.register_event_listener(listener)
    inst = _instance(note="<b>&'\"", image=base)
    driver.spawn(instance=inst)
    assert driver.instance_exists(instance=inst)
    assert inst.name in driver.list_instances()
    assert inst.uuid in driver.list_instance_uuids()
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    driver.pause(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.PAUSED
    driver.unpause(instance=inst)
    driver.unpause(instance=inst)  # no-op when running
    driver.suspend(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.SUSPENDED
    driver.resume(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    driver.reboot(instance=inst, hard=True)
    result = driver.power_off(instance=inst, timeout=5, retry_interval=1)
    assert result.clean and not result.forced
    assert driver.power_off(instance=inst).already_off
    assert driver.get_info(instance=inst).state is PowerState.SHUTDOWN
    with pytest.raises(InvalidState):
        driver.pause(instance=inst)
    driver.power_on(instance=inst)
    driver.power_on(instance=inst)  # no-op
    snap = driver.snapshot(instance=inst, name="snap-a")
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    driver.destroy(instance=inst)
    driver.destroy(instance=inst)  # idempotent
    assert not driver.instance_exists(instance=inst)
    assert not (tmp_path / "state" / "instances" / inst.uuid).exists()
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=inst)
    # The snapshot boots a new instance.
    again = _instance(image=snap)
    driver.spawn(instance=again, power_on=False)
    assert driver.get_info(instance=again).state is PowerState.SHUTDOWN
    # Events arrive on libvirt's event thread, possibly well after the calls returned.
    expected = {Transition.STARTED, Transition.PAUSED, Transition.RESUMED, Transition.SUSPENDED}
    assert wait_for(lambda: expected <= {t for u, t in events if u == inst.uuid}), events


def test_definition_carries_metadata_and_validates(driver, base, tmp_path):
    inst = _instance(role="web", hostile="</metadata><x/>", image=base)
    driver.spawn(instance=inst, power_on=False)
    text = driver.connection.connection().lookupByUUIDString(inst.uuid).XMLDesc(0)
    assert "</metadata><x/>" not in text and "&lt;/metadata&gt;&lt;x/&gt;" in text
    validate_domain_xml(tmp_path, text)


def test_hostile_metadata_reaches_libvirt_as_data(driver, base, tmp_path):
    hostile = "]]><devices/>&amp; & '\"<![CDATA[x]]> </metadata>"
    with pytest.raises(InvalidRequest, match="instance name"):
        _instance(name="vkt-\"q\" <b>&]]>")  # names never get as far as the driver
    inst = _instance(image=base, note=hostile, **{"k\"<&]]>": hostile})
    driver.spawn(instance=inst, power_on=False)
    text = driver.connection.connection().lookupByUUIDString(inst.uuid).XMLDesc(0)
    defined = xml.Domain.from_xml(text)
    assert defined.metadata is not None
    assert defined.metadata.properties == {"note": hostile, "k\"<&]]>": hostile}
    assert len(defined.disks) == 3  # root, ephemeral, swap: nothing injected
    validate_domain_xml(tmp_path, text)


def test_spawn_failures_leave_nothing(driver, base, tmp_path):
    before = set(driver.list_instance_uuids())
    inst = _instance(image=ImageRef(str(tmp_path / "missing.qcow2")))
    with pytest.raises(ImageNotFound):
        driver.spawn(instance=inst)
    bad_volume = BlockDevice(
        VolumeConnection("iscsi", {"target_portal": "127.0.0.1:3260", "target_lun": 1}),
        "/dev/vdb")
    with pytest.raises(InvalidRequest, match="target_iqn"):
        driver.spawn(instance=dataclasses.replace(inst, image=base),
                     block_devices=[bad_volume])
    with pytest.raises(InvalidRequest, match=f"instance {inst.uuid} has no image"):
        driver.spawn(instance=dataclasses.replace(inst, image=None))
    # A name clash is only found by libvirt: the overlay made before it is rolled back.
    first = _instance(image=base)
    driver.spawn(instance=first)
    clash = Instance(uuid=str(uuid.uuid4()), name=first.name, flavor=first.flavor, image=base)
    with pytest.raises(SpawnError, match="already"):
        driver.spawn(instance=clash)
    with pytest.raises(InstanceExists):
        driver.spawn(instance=first)
    assert set(driver.list_instance_uuids()) - before == {first.uuid}
    assert not (tmp_path / "state" / "instances" / inst.uuid).exists()
    assert not (tmp_path / "state" / "instances" / clash.uuid).exists()


def test_volumes_are_unsupported_before_any_probe(driver, base, tmp_path):
    """The test driver cannot attach devices or hold secrets: UnsupportedOperation, never a
    VolumeError, and nothing probed (the portal is closed: a probe would be unreachable)."""
    volume = BlockDevice(VolumeConnection("iscsi", {
        "target_portal": "127.0.0.1:9", "target_iqn": "iqn.2024-01.org.virtkit.test:none",
        "target_lun": 1, "auth_method": "CHAP", "auth_username": "u",
        "auth_password": "never-used-pw"}), "/dev/vdb")
    inst = _instance(image=base)
    with pytest.raises(UnsupportedOperation, match="attach_volume") as caught:
        driver.spawn(instance=inst, block_devices=[volume])
    assert "never-used-pw" not in str(caught.value)
    assert not driver.instance_exists(instance=inst)
    assert not (tmp_path / "state" / "instances" / inst.uuid).exists()
    driver.spawn(instance=inst)
    with pytest.raises(UnsupportedOperation, match="attach_volume"):
        driver.attach_volume(instance=inst, block_device=volume)
    with pytest.raises(UnsupportedOperation, match="detach_volume"):
        driver.detach_volume(instance=inst, block_device=volume)


def test_unknown_instance(driver):
    ghost = _instance()
    driver.destroy(instance=ghost)
    assert not driver.instance_exists(instance=ghost)
    for call in (driver.get_info, driver.pause, driver.suspend, driver.power_on,
                 driver.get_console_output):
        with pytest.raises(InstanceNotFound):
            call(instance=ghost)


def test_list_instances_is_one_call(driver, base, monkeypatch):
    calls: list[str] = []
    conn = driver.connection.connection()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(conn, name)

    for _ in range(3):
        driver.spawn(instance=_instance(image=base), power_on=False)
    monkeypatch.setattr(driver.connection, "_conn", Spy())
    names = driver.list_instances()
    assert len(names) >= 3 and calls == ["listAllDomains"]


def test_host_resources_and_connector(driver):
    res = driver.get_available_resource()
    assert res.vcpus > 0 and res.memory_mb > 0 and res.local_gb > 0
    assert res.hypervisor_type == "TEST"
    # The test driver cannot attach volumes: init_host narrowed the capability away, and
    # the connector (part of volume_attach) is refused like the rest of it.
    assert Capability.VOLUME_ATTACH in LibvirtDriver.capabilities
    assert not driver.supports(Capability.VOLUME_ATTACH)
    assert not driver.supports(Capability.VOLUME_ISCSI_CHAP)
    with pytest.raises(UnsupportedOperation):
        driver.get_volume_connector()
    initiator = driver._volumes.initiator
    assert initiator and initiator.startswith(("iqn.", "eui."))
    assert driver._volumes.initiator == initiator  # stable


def test_undefine_falls_back_and_remembers(driver, base):
    inst = _instance(image=base)
    driver.spawn(instance=inst)
    driver.destroy(instance=inst)
    # The test driver refuses NVRAM and CHECKPOINTS_METADATA; the driver learned that.
    assert not driver._undefiner.flags & libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    assert driver._undefiner.flags & libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE


def test_destroy_keeps_disks_when_asked(driver, base, tmp_path):
    inst = _instance(image=base)
    driver.spawn(instance=inst)
    driver.destroy(instance=inst, destroy_disks=False)
    assert (tmp_path / "state" / "instances" / inst.uuid / "disk").exists()


def _disk_identity(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def test_spawn_reuses_existing_disks_on_shared_storage(driver, base, tmp_path, caplog):
    """A recovered instance's disks already exist under instances_path: spawn uses them."""
    inst = _instance(image=base)
    driver.spawn(instance=inst)
    driver.destroy(instance=inst, destroy_disks=False)
    disk = tmp_path / "state" / "instances" / inst.uuid / "disk"
    before = _disk_identity(disk)
    with caplog.at_level("INFO", logger="drivers.libvirt.images"):
        driver.spawn(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    assert _disk_identity(disk) == before, "the existing root disk was rewritten"
    assert any("reusing its existing root disk" in r.getMessage() for r in caplog.records)
    defined = driver.connection.connection().lookupByUUIDString(inst.uuid).XMLDesc(0)
    assert str(disk) in defined


def test_failed_spawn_leaves_existing_disks_intact(driver, base, tmp_path):
    inst = _instance(image=base)
    driver.spawn(instance=inst)
    driver.destroy(instance=inst, destroy_disks=False)
    directory = tmp_path / "state" / "instances" / inst.uuid
    disk = directory / "disk"
    before = _disk_identity(disk)
    # Another domain now holds the name: libvirt refuses the define, spawn rolls back.
    other = _instance(name=inst.name, image=base)
    driver.spawn(instance=other)
    with pytest.raises(SpawnError, match="already"):
        driver.spawn(instance=inst)
    assert not driver.instance_exists(instance=inst)
    assert _disk_identity(disk) == before and directory.is_dir()
    # A disk whose backing file is gone is reported, not replaced.
    driver.destroy(instance=other)
    broken = _instance(image=base)
    broken_dir = tmp_path / "state" / "instances" / broken.uuid
    broken_dir.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b",
                    str(tmp_path / "gone.qcow2"), str(broken_dir / "disk"), "16M"],
                   check=True, timeout=60)
    broken_before = _disk_identity(broken_dir / "disk")
    with pytest.raises(ImageError, match="not reachable"):
        driver.spawn(instance=broken)
    assert _disk_identity(broken_dir / "disk") == broken_before
    assert not driver.instance_exists(instance=broken)


def test_unreachable_libvirtd_raises_on_every_call(tmp_path):
    """No libvirtd behind the URI: every call raises, get_info included (never UNKNOWN)."""
    conf = build_conf(overrides={"state_path": str(tmp_path / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", f"qemu+unix:///system?socket={tmp_path}/none.sock",
                      group="libvirt")
    conf.set_override("virt_type", "qemu", group="libvirt")
    drv = LibvirtDriver(conf)
    try:
        inst = _instance()
        with pytest.raises(HypervisorUnavailable):
            drv.get_info(instance=inst)
        for call in (drv.list_instances, drv.list_instance_uuids):
            with pytest.raises(HypervisorUnavailable):
                call()
        with pytest.raises(HypervisorUnavailable):
            drv.instance_exists(instance=inst)
        with pytest.raises(HypervisorUnavailable):
            drv.power_on(instance=inst)
    finally:
        drv.cleanup_host(host="test-host")


def test_kept_domain_handles_follow_changes_made_elsewhere(driver, base):
    """get_info keeps domain handles; changes by another client still read correctly."""
    inst = _instance(image=base)
    driver.spawn(instance=inst)
    assert driver.get_info(instance=inst).state is PowerState.RUNNING
    other = libvirt.open("test:///default")
    try:
        dom = other.lookupByUUIDString(inst.uuid)
        dom.destroy()
        info = driver.get_info(instance=inst)
        assert info.state is PowerState.SHUTDOWN and info.internal_id == "-1"
        dom.create()
        info = driver.get_info(instance=inst)
        assert info.state is PowerState.RUNNING
        assert info.internal_id == str(other.lookupByUUIDString(inst.uuid).ID())
        dom.destroy()
        dom.undefine()
        with pytest.raises(InstanceNotFound):
            driver.get_info(instance=inst)
        assert not driver.instance_exists(instance=inst)
    finally:
        other.close()


def test_lifecycle_events_are_subscribed_once_listened_to(driver, base):
    # Without a listener the driver does not pay libvirt-python's per-event delivery.
    quiet = _instance(image=base)
    driver.spawn(instance=quiet)
    driver.destroy(instance=quiet)
    assert driver.connection._event_ids == {}
    events: list = []
    driver.register_event_listener(events.append)
    driver.register_event_listener(events.append)  # once only, on the connection too
    assert len(driver.connection._event_ids) == 1
    heard = _instance(image=base)
    driver.spawn(instance=heard)
    assert wait_for(lambda: any(e.instance_uuid == heard.uuid for e in events)), events
    assert all(e.instance_uuid != quiet.uuid for e in events)
