"""The driver against libvirt's embedded test driver (test:///default): fast, always available."""

from __future__ import annotations

import subprocess
import threading
import uuid

import libvirt
import pytest

from drivers.libvirt.driver import LibvirtDriver
from virt.config import build_conf
from virt.errors import (
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    SpawnError,
)
from virt.events import Transition
from virt.model import BlockDevice, Flavor, ImageRef, Instance, PowerState, VolumeConnection


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True,
                   timeout=60)
    return ImageRef(str(path))


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
            conn = drv.host.connection()
            dom = conn.lookupByName(name)
            drv.destroy(instance=_instance(name, dom.UUIDString()))
    drv.cleanup_host(host="test-host")


def _instance(name: str | None = None, uid: str | None = None, **meta: str) -> Instance:
    uid = uid or str(uuid.uuid4())
    return Instance(uuid=uid, name=name or f"vkt-{uid[:8]}", flavor=Flavor("t", 1, 128, 1, 1, 8),
                    metadata=meta)


def test_full_lifecycle(driver, base, tmp_path):
    events: list = []
    seen = threading.Event()

    def listener(event):
        events.append((event.instance_uuid, event.transition))
        seen.set()

    driver.register_event_listener(listener)
    inst = _instance(note="<b>&'\"")
    driver.spawn(instance=inst, image=base)
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
    again = _instance()
    driver.spawn(instance=again, image=snap, power_on=False)
    assert driver.get_info(instance=again).state is PowerState.SHUTDOWN
    seen.wait(2)
    kinds = [t for u, t in events if u == inst.uuid]
    for expected in (Transition.STARTED, Transition.PAUSED, Transition.RESUMED,
                     Transition.SUSPENDED):
        assert expected in kinds


def test_definition_carries_metadata_and_validates(driver, base, tmp_path):
    inst = _instance(role="web", hostile="</metadata><x/>")
    driver.spawn(instance=inst, image=base, power_on=False)
    text = driver.host.connection().lookupByUUIDString(inst.uuid).XMLDesc(0)
    assert "</metadata><x/>" not in text and "&lt;/metadata&gt;&lt;x/&gt;" in text
    path = tmp_path / "defined.xml"
    path.write_text(text)
    subprocess.run(["virt-xml-validate", str(path), "domain"], check=True, timeout=60,
                   capture_output=True)


def test_spawn_failures_leave_nothing(driver, base, tmp_path):
    before = set(driver.list_instance_uuids())
    inst = _instance()
    with pytest.raises(ImageNotFound):
        driver.spawn(instance=inst, image=ImageRef(str(tmp_path / "missing.qcow2")))
    bad_volume = BlockDevice(
        VolumeConnection("iscsi", {"target_portal": "127.0.0.1:3260", "target_lun": 1}),
        "/dev/vdb")
    with pytest.raises(InvalidRequest, match="target_iqn"):
        driver.spawn(instance=inst, image=base, block_devices=[bad_volume])
    # A name clash is only found by libvirt: the overlay made before it is rolled back.
    first = _instance()
    driver.spawn(instance=first, image=base)
    clash = Instance(uuid=str(uuid.uuid4()), name=first.name, flavor=first.flavor)
    with pytest.raises(SpawnError, match="already"):
        driver.spawn(instance=clash, image=base)
    with pytest.raises(InstanceExists):
        driver.spawn(instance=first, image=base)
    assert set(driver.list_instance_uuids()) - before == {first.uuid}
    assert not (tmp_path / "state" / "instances" / inst.uuid).exists()
    assert not (tmp_path / "state" / "instances" / clash.uuid).exists()


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
    conn = driver.host.connection()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(conn, name)

    for _ in range(3):
        driver.spawn(instance=_instance(), image=base, power_on=False)
    monkeypatch.setattr(driver.host, "_conn", Spy())
    names = driver.list_instances()
    assert len(names) >= 3 and calls == ["listAllDomains"]


def test_host_resources_and_connector(driver):
    res = driver.get_available_resource()
    assert res.vcpus > 0 and res.memory_mb > 0 and res.local_gb > 0
    assert res.hypervisor_type == "TEST"
    connector = driver.get_volume_connector()
    assert connector.initiator and connector.initiator.startswith(("iqn.", "eui."))
    assert driver.get_volume_connector().initiator == connector.initiator  # stable


def test_undefine_falls_back_and_remembers(driver, base):
    inst = _instance()
    driver.spawn(instance=inst, image=base)
    driver.destroy(instance=inst)
    # The test driver refuses NVRAM and CHECKPOINTS_METADATA; the driver learned that.
    assert not driver._undefine_flags & libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    assert driver._undefine_flags & libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE


def test_destroy_keeps_disks_when_asked(driver, base, tmp_path):
    inst = _instance()
    driver.spawn(instance=inst, image=base)
    driver.destroy(instance=inst, destroy_disks=False)
    assert (tmp_path / "state" / "instances" / inst.uuid / "disk").exists()
