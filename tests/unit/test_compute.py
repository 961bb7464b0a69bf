"""ComputeService record keeping on the fake driver and a real SQLite store."""

from __future__ import annotations

import pytest

from drivers.fake.driver import FakeDriver
from tests.volumes import CHAP_CONNECTION_INFO as CONNECTION_INFO
from tests.volumes import CHAP_SECRET
from virt.compute import ComputeService
from virt.driver import Capability
from virt.driver.rollback import SpawnRollback
from virt.errors import (
    HypervisorUnavailable,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InvalidRequest,
    InvalidState,
    SpawnError,
    UnsupportedOperation,
    VolumeNotFound,
)
from virt.model import ImageRef, PowerState

IMAGE = ImageRef("cirros")


@pytest.fixture
def service(conf):
    with ComputeService(conf) as svc:
        yield svc


def boot(service, name="vm1", **kwargs):
    return service.boot(name, image=IMAGE, flavor=service.flavor("m1.tiny"), **kwargs)


def events(service, ref):
    return [e.event for e in service.events(ref)]


def test_boot_records_active_with_the_driver_power_state(service):
    record = boot(service)
    assert (record.vm_state, record.task_state, record.power_state) == (
        "active", None, PowerState.RUNNING)
    assert record.host == "test-host" and record.launched_at is not None
    assert record.uuid in service.driver.list_instance_uuids()
    assert events(service, "vm1") == ["spawning", "started", "spawned"]
    assert service.store.get_host("test-host").driver == "fake"


def test_boot_stopped_and_duplicate_name(service):
    record = boot(service, power_on=False)
    assert (record.vm_state, record.power_state) == ("stopped", PowerState.SHUTDOWN)
    with pytest.raises(InstanceExists, match="instance vm1 already exists") as err:
        boot(service)
    assert err.value.exit_code == 1 and "choose another name" in str(err.value)
    assert len(service.list_instances()) == 1


def test_failed_spawn_is_error_with_reason_and_nothing_on_the_hypervisor(conf):
    with ComputeService(conf) as service:
        conf.set_override("fail_spawn_on_name_prefix", "bad", group="fake")
        with pytest.raises(SpawnError):
            boot(service, "bad-vm")
        record = service.get("bad-vm")
        assert record.vm_state == "error" and record.task_state is None
        assert "fault injected" in record.fault
        assert service.driver.list_instance_uuids() == []
        assert events(service, "bad-vm") == ["spawning", "spawn_failed"]


class RollbackDriver(FakeDriver):
    """Defines the guest, then fails; its spawn undoes what it made with the kit's rollback
    stack, the one owner of a failed spawn's clean-up."""

    def __init__(self, conf):
        super().__init__(conf)
        self.destroys = 0

    def spawn(self, *, instance, **kwargs):
        with SpawnRollback(f"{instance.name} ({instance.uuid})") as rollback:
            super().spawn(instance=instance, **kwargs)
            rollback.push("its guest", lambda: self.destroy(instance=instance))
            raise RuntimeError("engine exploded after defining the guest")

    def destroy(self, **kwargs):
        self.destroys += 1
        super().destroy(**kwargs)


def test_failed_spawn_is_cleaned_up_by_the_drivers_rollback_alone(conf):
    with ComputeService(conf, driver=RollbackDriver(conf)) as service:
        with pytest.raises(RuntimeError):
            boot(service, "rolled-back")
        record = service.get("rolled-back")
        assert record.vm_state == "error" and record.task_state is None
        assert record.fault == "spawn: RuntimeError: engine exploded after defining the guest"
        assert service.driver.list_instance_uuids() == []
        assert service.driver.destroys == 1  # the rollback's; the service destroys nothing


class LeakyDriver(FakeDriver):
    """Leaves its guest behind when spawn fails (what a buggy third-party driver does)."""

    def spawn(self, *, instance, **kwargs):
        super().spawn(instance=instance, **kwargs)
        raise RuntimeError("engine exploded after defining the guest")


def test_failed_spawn_of_a_leaky_driver_is_recorded_as_left_behind(conf):
    """The service is no second clean-up owner: it says what the driver left, and where."""
    with ComputeService(conf, driver=LeakyDriver(conf)) as service:
        with pytest.raises(RuntimeError):
            boot(service, "leaky")
        record = service.get("leaky")
        assert record.vm_state == "error" and record.task_state is None
        assert record.fault.startswith(
            "spawn: RuntimeError: engine exploded after defining the guest; the fake driver "
            "left the guest on the hypervisor: remove it by hand")
        assert service.driver.list_instance_uuids() == [record.uuid]


def test_lifecycle_keeps_states_and_events(service):
    boot(service)
    record, result = service.stop("vm1", timeout=5)
    assert (record.vm_state, record.power_state) == ("stopped", PowerState.SHUTDOWN)
    assert not result.forced
    assert service.start("vm1").vm_state == "active"
    assert service.pause("vm1").vm_state == "paused"
    assert service.unpause("vm1").vm_state == "active"
    assert service.suspend("vm1").vm_state == "suspended"
    assert service.resume("vm1").vm_state == "active"
    assert service.reboot("vm1").vm_state == "active"
    assert service.reboot("vm1", hard=True).power_state is PowerState.RUNNING
    _, image = service.snapshot("vm1", "snap1")
    assert image.ref
    assert service.console("vm1").strip()
    history = events(service, "vm1")
    for name in ("stopped", "stop", "start", "paused", "pause", "resumed", "unpause",
                 "suspended", "suspend", "resume", "reboot", "snapshot"):
        assert name in history
    # The snapshot boots.
    clone = service.boot("clone", image=image, flavor=service.flavor("m1.tiny"))
    assert clone.vm_state == "active"


def test_wrong_state_and_busy_instance_are_refused(service):
    record = boot(service, power_on=False)
    with pytest.raises(InvalidState, match="cannot pause instance vm1: it is stopped"):
        service.pause("vm1")
    service.store.update_instance(record.uuid, task_state="powering-on")
    with pytest.raises(InvalidState, match="busy"):
        service.start("vm1")
    # Delete works whatever is in progress: a crashed operation must not pin the instance.
    service.delete("vm1")
    with pytest.raises(InstanceNotFound):
        service.get("vm1")


def test_driver_failure_is_recorded_as_fault_and_raised(service):
    boot(service)
    service.driver.power_off(instance=service.get("vm1").to_instance(), timeout=0)
    with pytest.raises(InvalidState):
        service.driver.pause(instance=service.get("vm1").to_instance())
    # The out-of-band stop arrived as an event: the record already says stopped.
    assert service.get("vm1").vm_state == "stopped"
    service.store.update_instance(service.get("vm1").uuid, vm_state="active")
    with pytest.raises(InvalidState):
        service.pause("vm1")
    record = service.get("vm1")
    assert record.fault.startswith("pause: ") and record.task_state is None
    assert record.vm_state == "stopped"  # re-read from the engine
    assert "pause_failed" in events(service, "vm1")


def test_volume_attach_detach_keeps_connection_info(service):
    record = boot(service)
    bdm = service.attach_volume("vm1", CONNECTION_INFO, "vdb")
    assert bdm.mountpoint == "/dev/vdb" and bdm.volume_id == "vol-1"
    stored = service.block_devices("vm1")
    assert [b.connection_info for b in stored] == [CONNECTION_INFO]
    with pytest.raises(InvalidRequest, match="already has a volume"):
        service.attach_volume("vm1", CONNECTION_INFO, "/dev/vdb")
    service.detach_volume("vm1", "vol-1")
    assert service.block_devices("vm1") == []
    with pytest.raises(VolumeNotFound):
        service.detach_volume("vm1", "vdb")
    assert CHAP_SECRET not in repr(service.store.list_events(record.uuid))


def test_failed_attach_leaves_no_record(service):
    boot(service)
    bad = {"driver_volume_type": "iscsi", "data": {"target_portal": "127.0.0.1:3260"}}
    with pytest.raises(InvalidRequest, match="target_iqn"):
        service.attach_volume("vm1", bad, "vdc")
    assert service.block_devices("vm1") == []
    assert service.get("vm1").fault.startswith("volume attach: ")


class NoPauseDriver(FakeDriver):
    capabilities = frozenset(Capability) - {Capability.PAUSE, Capability.VOLUME_ISCSI_CHAP}

    def pause(self, *, instance):
        raise self._unsupported("pause")


def test_undeclared_capability_is_refused_before_anything_changes(conf):
    with ComputeService(conf, driver=NoPauseDriver(conf)) as service:
        boot(service)
        with pytest.raises(UnsupportedOperation) as err:
            service.pause("vm1")
        assert err.value.exit_code == 4
        with pytest.raises(UnsupportedOperation, match="CHAP"):
            service.attach_volume("vm1", CONNECTION_INFO, "vdb")
        record = service.get("vm1")
        assert record.task_state is None and record.fault is None


def test_delete_removes_guest_and_volumes(service):
    record = boot(service)
    service.attach_volume("vm1", CONNECTION_INFO, "vdb")
    deleted = service.delete("vm1")
    assert deleted.vm_state == "deleted" and deleted.deleted_at is not None
    assert record.uuid not in service.driver.list_instance_uuids()
    assert service.store.list_block_devices(record.uuid) == []
    with pytest.raises(InstanceNotFound):
        service.get(record.uuid)
    assert service.store.list_events(record.uuid)[-1].event == "deleted"


def test_set_password_and_refresh(service):
    boot(service)
    assert service.set_password("vm1", "n3w-pass").vm_state == "active"
    service.store.update_instance(service.get("vm1").uuid, power_state=PowerState.SHUTDOWN)
    record, live = service.refresh("vm1")
    assert live is PowerState.RUNNING and record.power_state is PowerState.RUNNING


def test_set_password_is_checked_before_a_password_is_asked(service):
    record = boot(service)
    assert service.check_set_password("vm1").uuid == record.uuid
    other = FakeDriver(service.conf)  # another process: its events do not reach `service`
    other.init_host(host=service.host)
    other.power_off(instance=record.to_instance(), timeout=0)
    with pytest.raises(InstanceNotRunning, match="must exist and be running"):
        service.check_set_password("vm1")
    service.stop("vm1", timeout=0)
    with pytest.raises(InvalidState, match="cannot set-password instance vm1: it is stopped"):
        service.check_set_password("vm1")
    with pytest.raises(InstanceNotFound):
        service.check_set_password("ghost")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0])
def test_stop_timeout_must_be_finite_and_not_negative(service, timeout):
    boot(service)
    with pytest.raises(InvalidRequest, match="finite number of seconds"):
        service.stop("vm1", timeout=timeout)
    assert service.get("vm1").vm_state == "active"


def test_a_flavor_bigger_than_the_fake_host_is_refused_and_nothing_runs(service):
    with pytest.raises(InvalidRequest, match="64 vCPUs but this host has 16"):
        service.boot("big", image=IMAGE, flavor=service.flavor(vcpus=64, memory_mb=64))
    assert service.driver.list_instances() == []
    assert service.get("big").vm_state == "error"


def test_flavors(service):
    assert service.flavor("m1.small").memory_mb == 2048
    custom = service.flavor(vcpus=2, memory_mb=256, disk_gb=3)
    assert (custom.vcpus, custom.memory_mb, custom.root_gb) == (2, 256, 3)
    with pytest.raises(InvalidRequest, match="unknown flavor"):
        service.flavor("m9.huge")
    with pytest.raises(InvalidRequest, match="not both"):
        service.flavor("m1.small", vcpus=1)
    with pytest.raises(InvalidRequest, match="a flavor is needed"):
        service.flavor()
    with pytest.raises(InvalidRequest):
        service.flavor(vcpus=0, memory_mb=1)
    with pytest.raises(InvalidRequest, match="memory_mb must be at most 16777216"):
        service.flavor(vcpus=1, memory_mb=99999999999999999999)


# -- hosts sharing one store ----------------------------------------------------------------


def test_another_hosts_instance_is_shown_but_never_operated(conf, tmp_path):
    from virt.config import build_conf

    other_conf = build_conf(overrides={"state_path": str(tmp_path / "other"), "host": "host-b",
                                       "state_connection": conf.state_connection})
    with ComputeService(conf) as host_a, ComputeService(other_conf) as host_b:
        record = boot(host_a)
        for operation in (lambda: host_b.delete("vm1"), lambda: host_b.stop("vm1"),
                          lambda: host_b.start("vm1"), lambda: host_b.reset_state("vm1"),
                          lambda: host_b.attach_volume("vm1", CONNECTION_INFO, "vdb"),
                          lambda: host_b.detach_volume("vm1", "vdb"),
                          lambda: host_b.console("vm1")):
            with pytest.raises(InvalidState, match="on host 'test-host', not this host"):
                operation()
        shown, live = host_b.refresh("vm1")
        assert live is PowerState.UNKNOWN and shown.power_state is PowerState.RUNNING
        assert host_a.get("vm1") == record  # nothing written by host-b
        assert host_b.list_instances() == []
        assert [r.uuid for r in host_b.list_instances(all_hosts=True)] == [record.uuid]
        host_a.delete("vm1")


# -- volumes shared between instances ---------------------------------------------------------


def test_a_volume_attached_elsewhere_is_refused_at_attach_and_boot(service):
    from virt.model import BlockDevice, VolumeConnection

    boot(service, "vm1")
    boot(service, "vm2")
    service.attach_volume("vm1", CONNECTION_INFO, "vdb")
    with pytest.raises(InvalidRequest, match="volume vol-1 is already attached to vm1"):
        service.attach_volume("vm2", CONNECTION_INFO, "vdb")
    assert service.block_devices("vm2") == []
    assert service.driver.get_info(instance=service.get("vm2").to_instance()).state is \
        PowerState.RUNNING
    bdm = BlockDevice(connection=VolumeConnection.from_connection_info(CONNECTION_INFO),
                      mountpoint="/dev/vdb")
    with pytest.raises(InvalidRequest, match="already attached to vm1"):
        boot(service, "vm3", block_devices=[bdm])
    with pytest.raises(InstanceNotFound):
        service.get("vm3")
    shared = dict(CONNECTION_INFO, serial="vol-m", multiattach=True)
    service.attach_volume("vm1", shared, "vdc")
    assert service.attach_volume("vm2", shared, "vdc").volume_id == "vol-m"
    exclusive = dict(CONNECTION_INFO, serial="vol-m")  # the new one must say multiattach too
    boot(service, "vm4")
    with pytest.raises(InvalidRequest, match="already attached to vm1"):
        service.attach_volume("vm4", exclusive, "vdc")
    service.delete("vm1")  # a deleted instance holds no volume
    service.attach_volume("vm4", CONNECTION_INFO, "vdb")


def test_ctrl_c_during_spawn_records_error_and_leaves_nothing(conf):
    class InterruptedDriver(FakeDriver):
        def spawn(self, *, instance, **kwargs):
            with SpawnRollback(instance.name) as rollback:  # undoes on BaseException too
                super().spawn(instance=instance, **kwargs)
                rollback.push("its guest", lambda: self.destroy(instance=instance))
                raise KeyboardInterrupt  # the operator's Ctrl-C, mid-spawn

    driver = InterruptedDriver(conf)
    with ComputeService(conf, driver=driver) as svc:
        with pytest.raises(KeyboardInterrupt):
            boot(svc, "vm1")
        record = svc.get("vm1")
        assert (record.vm_state, record.task_state) == ("error", None)
        assert record.fault.startswith("spawn: interrupted")
        assert driver.list_instance_uuids() == []
        assert events(svc, "vm1")[-1] == "spawn_failed"


def test_an_unreachable_engine_leaves_the_records_readable_and_refuses_the_rest(conf, tmp_path):
    """init_host's HypervisorUnavailable does not stop the service: the stored records are
    read (power state unknown, the stored one kept); every operation that needs the engine
    raises it before claiming or recording anything; the engine is asked again later."""
    engine, away = tmp_path / "engine", tmp_path / "engine.away"
    conf.set_override("instances_path", str(engine))
    with ComputeService(conf) as service:
        assert service.engine_unavailable is None
        record = boot(service)
        stopped = boot(service, "vm2", power_on=False)
    engine.rename(away)
    engine.write_text("")  # a file where the fake's state directory should be: unusable
    with ComputeService(conf) as service:
        down = service.engine_unavailable
        assert isinstance(down, HypervisorUnavailable) and str(engine) in down.message
        assert [r.uuid for r in service.list_instances()] == [record.uuid, stopped.uuid]
        shown, live = service.refresh("vm1")
        assert live is PowerState.UNKNOWN and shown == record  # nothing written
        operations = {
            "boot": lambda: boot(service, "vm3"), "delete": lambda: service.delete("vm1"),
            "stop": lambda: service.stop("vm1"), "start": lambda: service.start("vm2"),
            "reboot": lambda: service.reboot("vm1", hard=True),
            "snapshot": lambda: service.snapshot("vm1", "snap"),
            "console": lambda: service.console("vm1"),
            "reset-state": lambda: service.reset_state("vm1"),
            "host": service.host_status,
            "volume attach": lambda: service.attach_volume("vm1", CONNECTION_INFO, "vdb"),
        }
        for name, operation in operations.items():
            with pytest.raises(HypervisorUnavailable, match=r"^cannot .*not usable") as err:
                operation()
            assert err.value.exit_code == 1, name
        assert service.get("vm1") == record and service.get("vm2") == stopped
        assert [r.name for r in service.list_instances()] == ["vm1", "vm2"]  # no vm3
        assert events(service, "vm1") == ["spawning", "started", "spawned"]
        # a forced vm_state needs no engine: the power state stays as stored
        forced = service.reset_state("vm2", vm_state="error")
        assert (forced.vm_state, forced.power_state) == ("error", PowerState.SHUTDOWN)

        engine.unlink()
        away.rename(engine)  # the engine is back: asked again once the retry time passed
        with pytest.raises(HypervisorUnavailable):
            service.stop("vm1")
        service.ENGINE_RETRY_S = 0.0
        stopped_now, _result = service.stop("vm1", timeout=5)
        assert service.engine_unavailable is None
        assert (stopped_now.vm_state, stopped_now.power_state) == ("stopped",
                                                                  PowerState.SHUTDOWN)
        assert service.refresh("vm1")[1] is PowerState.SHUTDOWN
