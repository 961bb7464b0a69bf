"""The recovery engine on the fake driver and a SQLite store."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest
import sqlalchemy as sa

from tests.recovery_helpers import iscsi_info, record_instances, recover
from virt.driver import load_driver
from virt.errors import HypervisorUnavailable, InvalidRequest, NotFenced
from virt.model import PowerState
from virt.recovery.journal import Claim, ClaimLost, ClaimState, Holder, RecoveryJournal
from virt.recovery.report import Outcome
from virt.recovery.sources import StoreSource
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
    driver.spawn(instance=instance, power_on=False)  # a stale leftover
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


@pytest.fixture
def destroys(monkeypatch):
    """Every destroy_disks value the fake driver's destroy is called with."""
    from drivers.fake.driver import FakeDriver

    calls: list[bool] = []
    real = FakeDriver.destroy

    def spy(self, *, instance, block_devices=(), destroy_disks=True):
        calls.append(destroy_disks)
        real(self, instance=instance, block_devices=block_devices, destroy_disks=destroy_disks)

    monkeypatch.setattr(FakeDriver, "destroy", spy)
    return calls


def test_undo_of_a_half_done_spawn_keeps_the_disks(conf, store, destroys):
    (uuid,) = record_instances(store, "host-a", 1, volumes=1)
    driver = fake_driver(conf, "host-b")
    instance = source_instance(store, uuid)
    driver.spawn(instance=instance)  # then the recoverer was killed
    journal = RecoveryJournal(store, host="host-b")
    claim = journal.claim(uuid, "host-a")
    for step in ("volumes", "rehome", "remove-stale"):
        journal.note(claim, step, "done")
    journal.record(claim, "spawn", "started")
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    (item,) = report.instances
    assert item.outcome == Outcome.RECOVERED and item.resumed
    assert destroys == [False]  # the half-spawned domain went, its disks stayed
    assert driver.list_instance_uuids() == [uuid]


def test_stale_domain_is_removed_keeping_its_disks(conf, store, destroys):
    (uuid,) = record_instances(store, "host-a", 1)
    instance = source_instance(store, uuid)
    fake_driver(conf, "host-b").spawn(instance=instance, power_on=False)
    assert recover(conf, store, "host-b", failed_host="host-a",
                   confirm_fenced=True).exit_code == 0
    assert destroys == [False]


def test_resume_local_powers_on_the_existing_domain_with_its_volumes(conf, store, destroys):
    """After a reboot the domain is still defined, shut off: it is started as it is (never
    destroyed and rebuilt), each volume in its definition exactly once."""
    (uuid,) = record_instances(store, "host-b", 1, volumes=2)
    driver = fake_driver(conf, "host-b")
    instance = source_instance(store, uuid)
    vdb = store.list_block_devices(uuid)[0]
    driver.spawn(instance=instance, power_on=False,
                 block_devices=[vdb.to_block_device()])  # its definition lacks vdc
    report = recover(conf, store, "host-b", resume_local=True)
    (item,) = report.instances
    assert item.outcome == Outcome.RECOVERED, item.error
    assert destroys == []
    assert "power on its existing domain (disks kept)" in item.steps
    assert driver.get_info(instance=instance).state == PowerState.RUNNING
    record = fake_record(conf, "host-b", uuid)
    assert sorted(record["block_devices"]) == ["/dev/vdb", "/dev/vdc"]
    assert store.get_instance(uuid).power_state == PowerState.RUNNING


def test_resume_local_leaves_a_paused_domain_alone(conf, store, destroys):
    (uuid,) = record_instances(store, "host-b", 1)
    driver = fake_driver(conf, "host-b")
    instance = source_instance(store, uuid)
    driver.spawn(instance=instance)
    driver.pause(instance=instance)
    (item,) = recover(conf, store, "host-b", resume_local=True).instances
    assert item.outcome == Outcome.RELEASED and "its domain here is paused" in item.error
    assert destroys == [] and driver.get_info(instance=instance).state == PowerState.PAUSED


def test_resume_local_crashed_after_spawn_finishes_the_attaches(conf, store):
    """A resume-local run killed between spawn and attach: the next one attaches, although
    the domain now runs."""
    (uuid,) = record_instances(store, "host-b", 1, volumes=1)
    driver = fake_driver(conf, "host-b")
    instance = source_instance(store, uuid)
    driver.spawn(instance=instance)
    journal = RecoveryJournal(store, host="host-b")
    claim = journal.claim(uuid, "host-b")
    journal.note(claim, "volumes", "done")
    journal.note(claim, "remove-stale", "done")
    journal.record(claim, "spawn", "started")
    journal.note(claim, "spawn", "done")
    journal.record(claim, "attach:vdb", "started")
    (item,) = recover(conf, store, "host-b", resume_local=True).instances
    assert item.outcome == Outcome.RECOVERED and item.resumed
    assert list(fake_record(conf, "host-b", uuid)["block_devices"]) == ["/dev/vdb"]


def fake_record(conf, host, uuid):
    import json
    from pathlib import Path

    return json.loads(Path(conf.instances_path, f"fake-hypervisor-{host}", f"{uuid}.json")
                      .read_text())


def test_usage_errors(conf, store):
    with pytest.raises(InvalidRequest, match="this host"):
        recover(conf, store, "host-b", failed_host="host-b")
    with pytest.raises(InvalidRequest, match="either"):
        recover(conf, store, "host-b")
    with pytest.raises(InvalidRequest, match="not on host"):
        recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                instances=("00000000-0000-0000-0000-000000000001",))


def test_stale_claim_of_another_recoverer_is_taken_over_and_journaled(conf, store):
    (uuid,) = record_instances(store, "host-a", 1, volumes=1)
    dead = RecoveryJournal(store, host="host-x")
    old = dead.claim(uuid, "host-a")
    dead.record(old, "volumes", "started")  # then it died: no heartbeat, no spawn
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                     claim_lease=0.2)
    (item,) = report.instances
    assert item.outcome == Outcome.RECOVERED
    assert any("took the claim over from host-x" in s for s in item.steps)
    takeovers = [e for e in RecoveryJournal(store, host="x").entries(uuid)
                 if e["step"] == "takeover"]
    assert {e["claim_id"] for e in takeovers} == {old.claim_id, item_claim(store, uuid)}
    assert all("from host-x" in e["detail"] and e["actor"].startswith("host-b/")
               for e in takeovers)
    assert fake_driver(conf, "host-b").list_instance_uuids() == [uuid]


def item_claim(store, uuid):
    from virt.recovery.journal import claims

    with store.transaction() as conn:
        return conn.execute(claims.select().where(claims.c.instance_uuid == uuid)).one().claim_id


def test_takeover_after_a_spawn_needs_the_dead_recoverers_host_fenced(conf, store):
    (uuid,) = record_instances(store, "host-a", 1)
    dead = RecoveryJournal(store, host="host-x")
    claim = dead.claim(uuid, "host-a")
    dead.record(claim, "spawn", "started")
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                     claim_lease=0.2)
    (item,) = report.instances
    assert item.outcome == Outcome.RELEASED and "host-x is not known to be fenced" in item.error
    assert report.exit_code != 0
    fenced = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                     claim_lease=0.2, fence_command="true")
    assert [i.outcome for i in fenced.instances] == [Outcome.RECOVERED]


def test_live_claim_is_waited_for_not_taken_over(conf, store):
    (uuid,) = record_instances(store, "host-a", 1)
    live = RecoveryJournal(store, host="host-x")
    claim = live.claim(uuid, "host-a")
    stop = threading.Event()

    def owner() -> None:  # heartbeats, then finishes its claim
        for _ in range(10):
            if stop.wait(0.05):
                return
            live.heartbeat()
        live.finish(claim, ClaimState.DONE)

    thread = threading.Thread(target=owner)
    thread.start()
    try:
        report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True,
                         claim_lease=0.2)
    finally:
        stop.set()
        thread.join()
    (item,) = report.instances
    assert item.outcome == Outcome.SKIPPED and "recovered by host-x" in item.error
    assert not any(e["step"] == "takeover" for e in live.entries(uuid))
    assert fake_driver(conf, "host-b").list_instance_uuids() == []


def test_a_recoverer_whose_claim_was_taken_over_stops(conf, store):
    (uuid,) = record_instances(store, "host-a", 1)
    first = RecoveryJournal(store, host="host-x")
    claim = first.claim(uuid, "host-a")
    second = RecoveryJournal(store, host="host-y")
    holder = Holder.of(second.holder(uuid))
    assert isinstance(second.claim(uuid, "host-a", take_over=holder), Claim)
    first.note(claim, "remove-stale", "done")
    with pytest.raises(ClaimLost, match="host-y"):
        first.record(claim, "spawn", "started")
    # What it did is still journaled, under its own name; the spawn never was.
    steps = [(e["step"], e["actor"][:6]) for e in first.entries(uuid)]
    assert ("remove-stale", "host-x") in steps and ("spawn", "host-x") not in steps


def test_journal_batches_entries_into_few_transactions(conf, store):
    uuids = record_instances(store, "host-a", 1, volumes=2)
    commits: list[str] = []

    def on_commit(_conn: object) -> None:
        commits.append("commit")

    sa.event.listen(store.engine, "commit", on_commit)
    try:
        report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    finally:
        sa.event.remove(store.engine, "commit", on_commit)
    assert [i.outcome for i in report.instances] == [Outcome.RECOVERED]
    entries = RecoveryJournal(store, host="x").entries(uuids[0])
    assert [e["step"] for e in entries if e["status"] == "done"] == [
        "volumes", "rehome", "remove-stale", "spawn", "attach:vdb", "attach:vdc", "power",
        "recovered"]
    assert len(entries) == 15
    # Two reads (candidates, unfinished claims), the claim, then the journal's writes:
    # before the spawn, after it, at the end, whatever the number of volumes.
    assert len(commits) == 6
    spawn = [i for i, e in enumerate(entries) if e["step"] == "spawn"]
    assert len({entries[i]["timestamp"] for i in spawn}) == 2  # each entry keeps its time


def test_run_lock_refuses_a_second_run_of_the_same_host(tmp_path):
    from virt.errors import EXIT_USAGE
    from virt.recovery.lock import RecoveryBusy, run_lock

    with run_lock(tmp_path, "host-b") as path:
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(RecoveryBusy, match=f"host host-b is in progress \\(pid {os.getpid()}"
                           ) as refused:
            with run_lock(tmp_path, "host-b"):
                pass
        assert refused.value.exit_code == EXIT_USAGE
        with run_lock(tmp_path, "host-c"):  # another target host is another lock
            pass
    with run_lock(tmp_path, "host-b"):  # released with the first
        pass


# -- the `recovering` task state: ComputeService refuses what a claim holds ------------------


def host_b_service(conf, store):
    from virt.compute import ComputeService

    conf.set_override("host", "host-b")
    return ComputeService(conf, store=store)


def test_stop_is_refused_while_the_recovery_holds_the_claim_and_allowed_after(
        conf, store, monkeypatch):
    from drivers.fake.driver import FakeDriver
    from virt.errors import InvalidState

    (uuid,) = record_instances(store, "host-a", 1)
    seen: list[tuple[str | None, str]] = []
    real = FakeDriver.spawn
    with host_b_service(conf, store) as service:
        def spawn(self, **kwargs):  # a `virtkit stop` on host-b, mid-recovery
            real(self, **kwargs)
            try:
                service.stop(uuid, timeout=0)
                seen.append((store.get_instance(uuid).task_state, "stop went through"))
            except InvalidState as exc:
                seen.append((store.get_instance(uuid).task_state, str(exc)))

        monkeypatch.setattr(FakeDriver, "spawn", spawn)
        report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
        assert report.exit_code == 0, report.instances[0].error
        ((task, refusal),) = seen
        assert task == "recovering"
        assert refusal.startswith("cannot stop instance inst-0000: it is being recovered by "
                                  "host host-b (wait for the recovery to finish")
        record = store.get_instance(uuid)
        assert (record.task_state, record.vm_state) == (None, "active")
        stopped, _ = service.stop(uuid, timeout=0)  # the claim ended: allowed
        assert (stopped.vm_state, stopped.task_state) == ("stopped", None)


def test_a_claim_left_by_a_killed_run_refuses_stop_until_resumed(conf, store):
    from virt.errors import InvalidState

    (uuid,) = record_instances(store, "host-b", 1)
    instance = source_instance(store, uuid)
    fake_driver(conf, "host-b").spawn(instance=instance)
    journal = RecoveryJournal(store, host="host-b")
    claim = journal.claim(uuid, "host-b", effect=lambda conn: StoreSource(store).begin_recovery(
        uuid, host="host-b", conn=conn))  # what the engine's claim does; then it was killed
    assert isinstance(claim, Claim)
    with host_b_service(conf, store) as service:
        with pytest.raises(InvalidState, match="being recovered by host host-b") as refused:
            service.stop(uuid, timeout=0)
        assert "run virtkit-recover again on host-b to resume it" in str(refused.value)
        (item,) = recover(conf, store, "host-b", resume_local=True).instances
        assert item.outcome == Outcome.RECOVERED and item.resumed  # running: nothing to do
        assert store.get_instance(uuid).task_state is None
        assert service.stop(uuid, timeout=0)[0].vm_state == "stopped"


def test_a_released_or_failed_recovery_clears_the_mark(conf, store):
    load_driver("fake", conf)  # registers [fake]
    paused, failing = record_instances(store, "host-b", 2)
    driver = fake_driver(conf, "host-b")
    instance = source_instance(store, paused)
    driver.spawn(instance=instance)
    driver.pause(instance=instance)  # resume-local leaves a paused domain alone: released
    conf.set_override("fail_spawn_on_name_prefix", "inst-0001", group="fake")
    report = recover(conf, store, "host-b", resume_local=True)
    assert [i.outcome for i in report.instances] == [Outcome.RELEASED, Outcome.FAILED]
    assert store.get_instance(paused).task_state is None
    failed = store.get_instance(failing)
    assert failed.task_state is None and failed.fault.startswith("recovery failed: ")


def test_an_engine_lost_after_spawn_fails_the_instance_and_a_rerun_resumes(
        conf, store, monkeypatch):
    """get_info raising HypervisorUnavailable (every driver call does, on an unreachable
    engine) fails the step, journaled; UNKNOWN is what the engine says, and is recorded."""
    from drivers.fake.driver import FakeDriver

    real = FakeDriver.get_info
    (uuid,) = record_instances(store, "host-a", 1)

    def cut_off(self, *, instance):
        raise HypervisorUnavailable("the fake engine went away")

    monkeypatch.setattr(FakeDriver, "get_info", cut_off)
    report = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    (item,) = report.instances
    assert item.outcome == Outcome.FAILED and "went away" in item.error
    assert store.get_instance(uuid).fault.startswith("recovery failed")
    failed = [e["step"] for e in RecoveryJournal(store, host="x").entries(uuid)
              if e["status"] == "failed"]
    assert failed == ["power"]

    def cannot_tell(self, *, instance):
        return dataclasses.replace(real(self, instance=instance), state=PowerState.UNKNOWN)

    monkeypatch.setattr(FakeDriver, "get_info", cannot_tell)
    again = recover(conf, store, "host-b", failed_host="host-a", confirm_fenced=True)
    (item,) = again.instances
    assert item.outcome == Outcome.RECOVERED and item.power_state == "unknown"
    assert "spawn (running) with 0 volume(s) at boot (done in an earlier run)" in item.steps
    assert store.get_instance(uuid).power_state is PowerState.UNKNOWN
