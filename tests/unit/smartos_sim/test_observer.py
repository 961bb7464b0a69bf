"""The SmartOS simulator's conformance observer: each probe against what the tools did."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.smartos_sim.observer import SmartOSSimObserver
from virt.conformance.observers import NotObserved
from virt.model import Flavor, Instance, PowerState


def observer_for(sim) -> SmartOSSimObserver:
    settings = SimpleNamespace(conf=SimpleNamespace(smartos=SimpleNamespace(bin_dir=str(sim.bin))))
    return SmartOSSimObserver(settings)


def instance(uuid: str) -> Instance:
    return Instance(uuid=uuid, name="probe", flavor=Flavor("small", 1, 256))


@pytest.fixture
def obs(zone_sim):
    return zone_sim, observer_for(zone_sim)


def test_state_root_from_bin_dir_or_env(zone_sim, monkeypatch):
    assert observer_for(zone_sim).state.root == zone_sim.root.resolve()
    monkeypatch.setenv("VIRTKIT_TEST_SMARTOS_ROOT", str(zone_sim.root))
    bare = SmartOSSimObserver(SimpleNamespace(conf=SimpleNamespace()))
    assert bare.state.root == zone_sim.root.resolve()
    monkeypatch.delenv("VIRTKIT_TEST_SMARTOS_ROOT")
    with pytest.raises(NotObserved):
        SmartOSSimObserver(SimpleNamespace(conf=SimpleNamespace())).exists(instance(
            "3f0b3a0e-1111-4222-8333-444455556666"))


def test_exists_power_state_and_boot_id(obs):
    sim, o = obs
    inst = instance(sim.create())
    assert o.exists(inst) and o.power_state(inst) is PowerState.RUNNING
    boot = o.boot_id(inst)
    sim.ok("vmadm", "update", inst.uuid, "alias=x")
    assert o.boot_id(inst) == boot  # no boot, same id
    sim.ok("vmadm", "stop", inst.uuid)
    assert o.power_state(inst) is PowerState.SHUTDOWN
    sim.ok("vmadm", "start", inst.uuid)
    assert o.boot_id(inst) != boot
    boot = o.boot_id(inst)
    sim.ok("vmadm", "reboot", inst.uuid)
    assert o.boot_id(inst) != boot
    sim.ok("vmadm", "delete", inst.uuid)
    assert not o.exists(inst)
    with pytest.raises(NotObserved):
        o.power_state(inst)


def test_failed_is_crashed(obs):
    sim, o = obs
    sim.state.set_faults({"provision": "fail"})
    sim.run("vmadm", "create", stdin=json.dumps({"image_uuid": sim.image}))
    uuid = sim.ok("vmadm", "lookup", "state=failed").stdout.strip()
    assert o.power_state(instance(uuid)) is PowerState.CRASHED


def test_leftovers(obs):
    sim, o = obs
    inst = instance(sim.create())
    sim.ok("vmadm", "create-snapshot", inst.uuid, "s")
    left = o.leftovers(inst)
    assert f"zone {inst.uuid}" in left and f"dataset zones/{inst.uuid}" in left
    sim.ok("vmadm", "delete", inst.uuid)
    assert o.leftovers(inst) == []
    sim.ok("zfs", "create", f"zones/{inst.uuid}-stray")  # anything of the uuid counts
    assert o.leftovers(inst) == [f"dataset zones/{inst.uuid}-stray",
                                 f"directory {sim.root.resolve()}/zones/{inst.uuid}-stray"]


def test_has_file_and_password_works(obs):
    sim, o = obs
    inst = instance(sim.create())
    sim.ok("zlogin", inst.uuid, "/usr/bin/tee", "/root/f", stdin="contents")
    assert o.has_file(inst, "/root/f", b"contents")
    assert not o.has_file(inst, "/root/f", b"other")
    assert not o.has_file(inst, "/root/missing", b"")
    assert not o.password_works(inst, "pw1")
    sim.ok("zlogin", inst.uuid, "/usr/sbin/chpasswd", stdin="root:pw1\n")
    assert o.password_works(inst, "pw1") and not o.password_works(inst, "pw2")


def test_disk_mark_survives_on_the_zone_and_not_on_the_image(obs):
    sim, o = obs
    inst = instance(sim.create())
    other = instance(sim.create())
    sim.ok("vmadm", "stop", inst.uuid)
    token = o.mark_disk(inst)
    assert o.disk_has_mark(inst, token)
    assert not o.disk_has_mark(other, token)
    assert not o.disk_has_mark(inst, "nottoken")


def test_booted_image_is_the_origin(obs):
    sim, o = obs
    inst = instance(sim.create())
    assert o.booted_image(inst) == sim.image
    uuid = sim.ok("vmadm", "create", stdin=json.dumps({"brand": "kvm"})).stderr.split()[-1]
    with pytest.raises(NotObserved):
        o.booted_image(instance(uuid))


def test_vifs(obs):
    sim, o = obs
    inst = instance(sim.create(nics=[{"nic_tag": "admin", "mac": "90:b8:d0:11:22:33"}]))
    assert o.vifs(inst) == ["90:b8:d0:11:22:33"]


def test_foreign_instance_is_an_unmarked_running_zone(obs):
    sim, o = obs
    with o.foreign_instance() as foreign:
        vm = sim.get(foreign.uuid)
        assert vm["state"] == "running"
        assert "virtkit:managed" not in vm["internal_metadata"]
        assert o.exists(foreign)
    assert not o.exists(foreign)
    assert o.leftovers(foreign) == []
