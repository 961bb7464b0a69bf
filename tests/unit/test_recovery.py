"""The recovery engine on the fake driver and a SQLite store."""

from __future__ import annotations

import pytest

from tests.recovery_helpers import iscsi_info, record_instances, recover
from virt.driver import load_driver
from virt.errors import InvalidRequest, NotFenced
from virt.model import PowerState
from virt.recovery import Outcome
from virt.recovery_journal import RecoveryJournal
from virt.recovery_source import StoreSource
from virt.store import Store


@pytest.fixture
def store(conf):
    with Store(conf.state_connection) as s:
        yield s


def fake_driver(conf, host):
    driver = load_driver("fake", conf)
    driver.init_host(host=host)
    return driver


def test_refuses_unless_fenced(conf, store):
    record_instances(store, "host-a", 1)
    with pytest.raises(NotFenced, match="host-a is not known to be fenced"):
        recover(conf, store, "host-b", failed_host="host-a")
    assert store.list_instances(host="host-a")


def test_fence_command_decides(conf, store, tmp_path):
    record_instances(store, "host-a", 1)
    with pytest.raises(NotFenced, match="exited 1"):
        recover(conf, store, "host-b", failed_host="host-a", fence_command="false")
    report = recover(conf, store, "host-b", failed_host="host-a", fence_command="true")
    assert report.fenced.startswith("fence check true says fenced")
    assert report.exit_code == 0


def test_recovers_running_and_stopped(conf, store):
    uuids = record_instances(store, "host-a", 3, volumes=2, stopped=[1])
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                     parallel=2)
    assert [i.outcome for i in report.instances] == [Outcome.RECOVERED] * 3
    assert report.exit_code == 0
    driver = fake_driver(conf, "host-b")
    for n, uuid in enumerate(uuids):
        record = store.get_instance(uuid)
        assert record.host == "host-b"
        want = PowerState.SHUTDOWN if n == 1 else PowerState.RUNNING
        assert record.power_state == want and record.vm_state == ("stopped" if n == 1 else "active")
        instance = source_instance(store, uuid)
        assert driver.get_info(instance=instance).state == want
    steps = [e["step"] for e in RecoveryJournal(store, host="x").entries(uuids[0])
             if e["status"] == "done"]
    assert steps == ["volumes", "rehome", "remove-stale", "spawn", "attach:vdb", "attach:vdc",
                     "power", "recovered"]


def source_instance(store, uuid):
    return StoreSource(store).get(uuid).instance("host-b")


def test_second_run_is_a_no_op(conf, store):
    record_instances(store, "host-a", 2, volumes=1)
    first = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    assert first.counts() == {"recovered": 2}
    again = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    assert again.instances == [] and again.exit_code == 0
    assert len(fake_driver(conf, "host-b").list_instances()) == 2


def test_dry_run_changes_nothing(conf, store):
    uuids = record_instances(store, "host-a", 2, volumes=1)
    report = recover(conf, store, "host-b", failed_host="host-a", dry_run=True)
    assert "NOT FENCED" in report.fenced
    assert all(i.outcome == Outcome.PLANNED for i in report.instances)
    assert report.instances[0].steps[:3] == [
        "claim inst-0000 from host-a", "refresh 1 volume connection(s)", "re-home to host-b"]
    assert all(store.get_instance(u).host == "host-a" for u in uuids)
    assert fake_driver(conf, "host-b").list_instances() == []
    assert RecoveryJournal(store, host="x").entries(uuids[0]) == []


def test_stale_domain_is_replaced(conf, store):
    (uuid,) = record_instances(store, "host-a", 1)
    driver = fake_driver(conf, "host-b")
    instance = source_instance(store, uuid)
    driver.spawn(instance=instance, image=instance.image, power_on=False)  # a stale leftover
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    assert report.instances[0].outcome == Outcome.RECOVERED
    assert driver.list_instance_uuids() == [uuid]
    assert driver.get_info(instance=instance).state == PowerState.RUNNING


def test_bad_volume_is_released_untouched(conf, store):
    uuids = record_instances(store, "host-a", 2, volumes=1)
    store.update_block_device(store.list_block_devices(uuids[0])[0].id,
                              connection_info=iscsi_info(1, target_iqn="bogus"))
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    outcomes = {i.uuid: i for i in report.instances}
    assert outcomes[uuids[0]].outcome == Outcome.RELEASED
    assert "target_iqn" in outcomes[uuids[0]].error
    assert outcomes[uuids[1]].outcome == Outcome.RECOVERED
    assert store.get_instance(uuids[0]).host == "host-a"
    assert report.exit_code == 1
    allowed = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                      allow_missing_volumes=True)
    assert allowed.instances[0].outcome == Outcome.RECOVERED
    assert allowed.instances[0].volumes[0].status == "missing"


def test_spawn_failure_is_reported_and_run_continues(conf, store):
    load_driver("fake", conf)  # registers [fake]
    conf.set_override("fail_spawn_on_name_prefix", "inst-0001", group="fake")
    uuids = record_instances(store, "host-a", 3)
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    by_uuid = {i.uuid: i for i in report.instances}
    assert by_uuid[uuids[1]].outcome == Outcome.FAILED
    assert "fault injected" in by_uuid[uuids[1]].error
    assert by_uuid[uuids[0]].outcome == by_uuid[uuids[2]].outcome == Outcome.RECOVERED
    assert store.get_instance(uuids[1]).fault.startswith("recovery failed")
    conf.clear_override("fail_spawn_on_name_prefix", group="fake")
    retry = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    assert [(i.uuid, i.outcome) for i in retry.instances] == [(uuids[1], Outcome.RECOVERED)]
    assert store.get_instance(uuids[1]).vm_state == "active"


def test_resume_local_restarts_what_should_run(conf, store):
    uuids = record_instances(store, "host-b", 2, stopped=[1])
    report = recover(conf, store, "host-b", resume_local=True)
    assert [i.outcome for i in report.instances] == [Outcome.RECOVERED] * 2
    driver = fake_driver(conf, "host-b")
    assert driver.get_info(instance=source_instance(store, uuids[0])).state == PowerState.RUNNING
    assert driver.get_info(instance=source_instance(store, uuids[1])).state == PowerState.SHUTDOWN
    again = recover(conf, store, "host-b", resume_local=True)
    assert all("nothing to do" in i.steps[0] for i in again.instances)


def test_usage_errors(conf, store):
    with pytest.raises(InvalidRequest, match="this host"):
        recover(conf, store, "host-b", failed_host="host-b")
    with pytest.raises(InvalidRequest, match="either"):
        recover(conf, store, "host-b")
    with pytest.raises(InvalidRequest, match="not on host"):
        recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                instances=("00000000-0000-0000-0000-000000000001",))
