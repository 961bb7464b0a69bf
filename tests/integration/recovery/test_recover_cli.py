"""virtkit-recover as a real process: two recoverers on PostgreSQL, crash-resume, Nova schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.iscsi_target import iscsi_targets  # noqa: F401  (fixture)
from tests.pg import pg_url  # noqa: F401  (fixture)
from tests.recovery_helpers import record_instances
from virt.config import build_conf
from virt.driver import load_driver
from virt.model import Flavor, ImageRef, Instance
from virt.recovery_journal import RecoveryJournal
from virt.store import Store

RECOVER = [sys.executable, "-m", "virt.cli.recover"]


def write_conf(tmp_path: Path, url: str, **fake: int) -> Path:
    path = tmp_path / "virtkit.conf"
    lines = ["[DEFAULT]", "compute_driver = fake", f"state_path = {tmp_path / 'state'}",
             f"state_connection = {url}", "[fake]"]
    lines += [f"{k} = {v}" for k, v in fake.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_recover(config: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RECOVER, "--config", str(config), "--format", "json", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def fake_domains(config: Path, host: str) -> list[str]:
    conf = build_conf(str(config))
    driver = load_driver("fake", conf)
    driver.init_host(host=host)
    return driver.list_instance_uuids()


def fake_record(conf, host: str, uuid: str) -> dict:
    """One instance's record in the fake hypervisor's state (one file per instance)."""
    return json.loads(Path(conf.instances_path, f"fake-hypervisor-{host}", f"{uuid}.json")
                      .read_text())


def barrier_fence(tmp_path: Path, parties: int) -> Path:
    """A fence check that says "fenced" only once `parties` recoverers are all in it, so
    none of them may claim anything before every one of them can."""
    gate = tmp_path / "gate"
    gate.mkdir()
    script = tmp_path / "barrier-fence.sh"
    script.write_text(f"#!/bin/sh\ntouch {gate}/$PPID\ni=0\n"
                      f"while [ $(ls {gate} | wc -l) -lt {parties} ]; do\n"
                      "  i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.05\ndone\n")
    script.chmod(0o755)
    return script


@pytest.mark.slow
def test_two_recoverers_on_postgres_recover_each_instance_once(tmp_path, pg_url):  # noqa: F811
    config = write_conf(tmp_path, pg_url, spawn_latency_ms=20)
    with config.open("a") as handle:  # both start claiming at the same moment
        handle.write(f"[recovery]\nfence_check_command = {barrier_fence(tmp_path, 2)}\n"
                     "claim_lease_seconds = 8\n")
    with Store(pg_url) as store:
        uuids = record_instances(store, "host-a", 50, volumes=1)
    procs = [subprocess.Popen(
        [*RECOVER, "--config", str(config), "--format", "json", "--failed-host", "host-a",
         "--volume-check", "none", "--parallel", "4", "--host", host],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for host in ("host-b", "host-c")]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    assert all(r["fenced"].startswith("fence check") for r in reports)
    recovered = {h: [i["uuid"] for i in r["instances"] if i["outcome"] == "recovered"]
                 for h, r in zip(("host-b", "host-c"), reports, strict=True)}
    # Contention, not one after the other: each took a share, and nobody took one twice.
    assert recovered["host-b"] and recovered["host-c"], {h: len(u) for h, u in recovered.items()}
    assert sorted(recovered["host-b"] + recovered["host-c"]) == sorted(uuids)
    domains_b, domains_c = fake_domains(config, "host-b"), fake_domains(config, "host-c")
    assert sorted(domains_b + domains_c) == sorted(uuids)  # each spawned exactly once
    with Store(pg_url) as store:
        journal = RecoveryJournal(store, host="x")
        for uuid in uuids:
            host = store.get_instance(uuid).host
            assert uuid in (domains_b if host == "host-b" else domains_c)
            spawns = [e for e in journal.entries(uuid)
                      if e["step"] == "spawn" and e["status"] == "done"]
            assert len(spawns) == 1 and spawns[0]["actor"].startswith(f"{host}/")


def test_crash_between_spawn_and_attach_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    config = write_conf(tmp_path, url)
    with Store(url) as store:
        (uuid,) = record_instances(store, "host-a", 1, volumes=2)
    args = ("--failed-host", "host-a", "--confirm-fenced", "--volume-check", "none",
            "--host", "host-b")
    # Killed once the journal says the spawn is done and the first attach about to start.
    crashed = run_recover(config, *args, env={"VIRTKIT_RECOVER_CRASH_AT": "attach:vdb:started"})
    assert crashed.returncode == -signal.SIGKILL
    assert fake_domains(config, "host-b") == [uuid]
    finished = run_recover(config, *args)
    assert finished.returncode == 0, finished.stderr
    (item,) = json.loads(finished.stdout)["instances"]
    assert item["outcome"] == "recovered" and item["resumed"]
    assert any("done in an earlier run" in s for s in item["steps"])
    conf = build_conf(str(config))
    driver = load_driver("fake", conf)
    driver.init_host(host="host-b")
    assert driver.list_instance_uuids() == [uuid]
    assert sorted(fake_record(conf, "host-b", uuid)["block_devices"]) == ["/dev/vdb", "/dev/vdc"]
    with Store(url) as store:
        entries = RecoveryJournal(store, host="x").entries(uuid)
        spawns = [e for e in entries if e["step"] == "spawn" and e["status"] == "started"]
        assert len(spawns) == 1 and len({e["run_id"] for e in entries}) == 2


def test_crash_during_attach_undoes_and_reattaches(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    config = write_conf(tmp_path, url)
    with Store(url) as store:
        (uuid,) = record_instances(store, "host-a", 1, volumes=1)
    args = ("--failed-host", "host-a", "--confirm-fenced", "--volume-check", "none",
            "--host", "host-b")
    # Killed after the attach happened but before the journal said so.
    crashed = run_recover(config, *args, env={"VIRTKIT_RECOVER_CRASH_AT": "power:started"})
    assert crashed.returncode == -signal.SIGKILL
    assert run_recover(config, *args).returncode == 0
    conf = build_conf(str(config))
    assert list(fake_record(conf, "host-b", uuid)["block_devices"]) == ["/dev/vdb"]


def lose_last_transactions(store: Store, uuid: str, count: int) -> None:
    """What a power cut does to a SQLite store with synchronous=NORMAL: the last `count`
    journal transactions of `uuid` are gone (each ends with a write-ahead `started` of
    spawn or an attach; the re-homing commits with the first one)."""
    from virt.recovery_journal import journal

    entries = RecoveryJournal(store, host="x").entries(uuid)
    ends = [i for i, e in enumerate(entries) if e["status"] == "started"
            and (e["step"] == "spawn" or e["step"].startswith("attach:"))]
    assert len(ends) >= count
    keep = entries[:ends[-count - 1] + 1] if count < len(ends) else []
    with store.transaction() as conn:
        conn.execute(journal.delete().where(journal.c.instance_uuid == uuid,
                                            journal.c.id > (keep[-1]["id"] if keep else 0)))
    if not keep:
        store.update_instance(uuid, host="host-a", node=None)


@pytest.mark.parametrize("lost", [1, 2, 3])
def test_power_cut_losing_committed_entries_still_resumes_cleanly(tmp_path, lost):
    """Killed after both attaches happened; then the last `lost` committed transactions
    vanish, as a power cut may do with synchronous=NORMAL. Steps that happened but have no
    entry must be undone, not repeated on top of themselves."""
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    config = write_conf(tmp_path, url)
    with Store(url) as store:
        (uuid,) = record_instances(store, "host-a", 1, volumes=2)
    args = ("--failed-host", "host-a", "--confirm-fenced", "--volume-check", "none",
            "--host", "host-b")
    crashed = run_recover(config, *args, env={"VIRTKIT_RECOVER_CRASH_AT": "power:started"})
    assert crashed.returncode == -signal.SIGKILL
    with Store(url) as store:
        lose_last_transactions(store, uuid, lost)
    finished = run_recover(config, *args)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    conf = build_conf(str(config))
    assert fake_domains(config, "host-b") == [uuid]
    assert sorted(fake_record(conf, "host-b", uuid)["block_devices"]) == ["/dev/vdb", "/dev/vdc"]
    with Store(url) as store:
        assert store.get_instance(uuid).host == "host-b"


def test_second_run_on_the_same_host_is_refused(tmp_path):
    """Two runs for one target host would both resume its claims: the second must refuse."""
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    config = write_conf(tmp_path, url)
    ready, go = tmp_path / "fence-started", tmp_path / "fence-go"
    fence = tmp_path / "fence.sh"  # holds the first run inside its fence check until told
    fence.write_text(f"#!/bin/sh\ntouch {ready}\ni=0\n"
                     f"while [ ! -e {go} ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done\n")
    fence.chmod(0o755)
    config.write_text(config.read_text() + f"[recovery]\nfence_check_command = {fence}\n")
    with Store(url) as store:
        (uuid,) = record_instances(store, "host-a", 1, volumes=1)
    args = ("--failed-host", "host-a", "--volume-check", "none", "--host", "host-b")
    first = subprocess.Popen([*RECOVER, "--config", str(config), "--format", "json", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # until the first run is in its fence check (lock held)
            if ready.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), first.communicate()
        second = run_recover(config, *args, "--confirm-fenced")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert "another virtkit-recover run for host host-b is in progress" in lines[0]
        assert f"pid {first.pid}" in lines[0]
        assert json.loads(run_recover(config, *args, "--confirm-fenced", "--dry-run").stdout
                          )["instances"][0]["outcome"] == "planned"  # a dry run needs no lock
    finally:
        go.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert [i["outcome"] for i in json.loads(out)["instances"]] == ["recovered"]
    assert fake_domains(config, "host-b") == [uuid]
    again = run_recover(config, *args, "--confirm-fenced")  # the lock went with the process
    assert again.returncode == 0 and json.loads(again.stdout)["instances"] == []


def test_usage_and_fencing_exit_codes(tmp_path):
    config = write_conf(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}")
    done = run_recover(config, "--failed-host", "host-a", "--host", "host-b")
    assert done.returncode == 2 and "not known to be fenced" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_recover(config, "--failed-host", "host-a", "--resume-local")
    assert done.returncode == 2


NOVA_DDL = [
    """CREATE TABLE instances (id INTEGER PRIMARY KEY, uuid VARCHAR(36) NOT NULL UNIQUE,
       display_name VARCHAR(255), hostname VARCHAR(255), host VARCHAR(255), node VARCHAR(255),
       vm_state VARCHAR(255), task_state VARCHAR(255), power_state INTEGER,
       vcpus INTEGER, memory_mb INTEGER, root_gb INTEGER, ephemeral_gb INTEGER,
       image_ref VARCHAR(255), launched_on TEXT, deleted INTEGER DEFAULT 0,
       created_at TIMESTAMP, updated_at TIMESTAMP)""",
    """CREATE TABLE block_device_mapping (id SERIAL PRIMARY KEY,
       instance_uuid VARCHAR(36), device_name VARCHAR(255), volume_id VARCHAR(36),
       source_type VARCHAR(255), destination_type VARCHAR(255), connection_info TEXT,
       disk_bus VARCHAR(255), delete_on_termination BOOLEAN, deleted INTEGER DEFAULT 0)""",
]


def test_nova_schema_with_real_iscsi(tmp_path, pg_url, iscsi_targets):  # noqa: F811
    plain, chap = iscsi_targets.create(size_mb=16), iscsi_targets.create(size_mb=8, chap=True)
    nova = sa.create_engine(pg_url)
    uuids = ["6f2c7d7e-0000-4000-8000-000000000001", "6f2c7d7e-0000-4000-8000-000000000002"]
    with nova.begin() as conn:
        for ddl in NOVA_DDL:
            conn.exec_driver_sql(ddl)
        for n, uuid in enumerate(uuids, start=1):
            conn.execute(sa.text(
                "INSERT INTO instances (id, uuid, display_name, host, node, vm_state, power_state,"
                " vcpus, memory_mb, root_gb, ephemeral_gb, image_ref, launched_on)"
                " VALUES (:id, :uuid, :name, 'nova-a', 'nova-a.example', :vm, 1, 1, 64, 1, 0,"
                " 'c0ffee00-0000-4000-8000-000000000000', 'untouched')"),
                {"id": n, "uuid": uuid, "name": f"web {n}",
                 "vm": "active" if n == 1 else "stopped"})
        for dev, lun in (("/dev/vdb", plain), ("/dev/vdc", chap)):
            conn.execute(sa.text(
                "INSERT INTO block_device_mapping (instance_uuid, device_name, volume_id,"
                " source_type, destination_type, connection_info, deleted)"
                " VALUES (:u, :dev, :vol, 'volume', 'volume', :info, 0)"),
                {"u": uuids[0], "dev": dev, "vol": lun.volume_id,
                 "info": json.dumps(lun.connection_info())})
    config = write_conf(tmp_path, f"sqlite:///{tmp_path / 'virtkit.sqlite'}")
    done = run_recover(config, "--failed-host", "nova-a", "--confirm-fenced", "--nova-db",
                       pg_url, "--host", "nova-b")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert chap.password not in done.stdout + done.stderr
    first = next(i for i in report["instances"] if i["uuid"] == uuids[0])
    assert first["name"] == "instance-00000001" and first["power_state"] == "running"
    assert sorted((v["mountpoint"], v["size_bytes"]) for v in first["volumes"]) == [
        ("/dev/vdb", 16 << 20), ("/dev/vdc", 8 << 20)]
    with nova.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT uuid, host, node, vm_state, power_state, launched_on FROM instances"
            " ORDER BY id")).all()
    assert [tuple(r)[1:] for r in rows] == [("nova-b", "nova-b", "active", 1, "untouched"),
                                            ("nova-b", "nova-b", "stopped", 1, "untouched")]
    nova.dispose()
    conf = build_conf(str(config))
    driver = load_driver("fake", conf)
    driver.init_host(host="nova-b")
    second = Instance(uuid=uuids[1], name="instance-00000002",
                      flavor=Flavor(name="x", vcpus=1, memory_mb=64), image=ImageRef("x"))
    assert driver.get_info(instance=second).state.value == "shutdown"


def test_nova_wrong_chap_leaves_instance_unclaimed(tmp_path, pg_url, iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create(size_mb=8, chap=True)
    nova = sa.create_engine(pg_url)
    uuid = "6f2c7d7e-0000-4000-8000-000000000003"
    with nova.begin() as conn:
        for ddl in NOVA_DDL:
            conn.exec_driver_sql(ddl)
        conn.execute(sa.text(
            "INSERT INTO instances (id, uuid, host, vm_state, power_state, vcpus, memory_mb,"
            " root_gb, ephemeral_gb, image_ref) VALUES (3, :u, 'nova-a', 'active', 1, 1, 64, 1,"
            " 0, 'img')"), {"u": uuid})
        conn.execute(sa.text(
            "INSERT INTO block_device_mapping (instance_uuid, device_name, volume_id,"
            " source_type, destination_type, connection_info, deleted)"
            " VALUES (:u, '/dev/vdb', 'v', 'volume', 'volume', :info, 0)"),
            {"u": uuid, "info": json.dumps(lun.connection_info(auth_password="wrong-pass"))})
    config = write_conf(tmp_path, f"sqlite:///{tmp_path / 'virtkit.sqlite'}")
    done = run_recover(config, "--failed-host", "nova-a", "--confirm-fenced", "--nova-db",
                       pg_url, "--host", "nova-b")
    assert done.returncode == 1
    (item,) = json.loads(done.stdout)["instances"]
    assert item["outcome"] == "released" and "VolumeAuthError" not in item["error"]
    assert "refused CHAP" in item["error"] and "wrong-pass" not in done.stdout
    with nova.begin() as conn:
        assert conn.execute(sa.text("SELECT host FROM instances")).scalar() == "nova-a"
    nova.dispose()


@pytest.mark.slow
def test_claims_of_a_killed_recoverer_are_taken_over_after_the_lease(tmp_path, pg_url):  # noqa: F811
    config = write_conf(tmp_path, pg_url, spawn_latency_ms=50)
    with config.open("a") as handle:  # the fence check says every host is off
        handle.write("[recovery]\nclaim_lease_seconds = 2\nfence_check_command = true\n")
    with Store(pg_url) as store:
        uuids = record_instances(store, "host-a", 12, volumes=1)
    base = [*RECOVER, "--config", str(config), "--format", "json", "--failed-host", "host-a",
            "--volume-check", "none", "--parallel", "2"]
    # host-b SIGKILLs itself once its first attach is journaled as started: it dies holding
    # claims (one spawned, one maybe half-way), which no heartbeat renews any more.
    dying = subprocess.Popen([*base, "--host", "host-b"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "VIRTKIT_RECOVER_CRASH_AT": "attach:vdb:started"})
    with Store(pg_url) as store:  # host-c starts once host-b is at work
        while not claims_of(store, "host-b") and dying.poll() is None:
            time.sleep(0.05)
    survivor = subprocess.Popen([*base, "--host", "host-c"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    dying.communicate(timeout=120)
    assert dying.returncode == -signal.SIGKILL
    out, err = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, err
    report = {i["uuid"]: i for i in json.loads(out)["instances"]}
    with Store(pg_url) as store:
        rows = {r["instance_uuid"]: r for r in claims_of(store)}
        journal = RecoveryJournal(store, host="x")
        takeovers = {u: [e for e in journal.entries(u) if e["step"] == "takeover"]
                     for u in uuids}
    assert set(rows) == set(uuids) and {r["state"] for r in rows.values()} == {"done"}
    taken = {u for u, entries in takeovers.items() if entries}
    assert taken, "host-b died holding claims; host-c must have taken them over"
    for uuid in taken:
        assert report[uuid]["outcome"] == "recovered" and rows[uuid]["target_host"] == "host-c"
        assert all(e["actor"].startswith("host-c/") and "host-b/" in e["detail"]
                   for e in takeovers[uuid])
    recovered_c = {u for u, i in report.items() if i["outcome"] == "recovered"}
    done_by_b = {u for u, r in rows.items() if r["target_host"] == "host-b"}
    assert recovered_c | done_by_b == set(uuids) and not recovered_c & done_by_b
    conf = build_conf(str(config))
    assert set(fake_domains(config, "host-c")) == recovered_c  # each spawned once here
    assert all(list(fake_record(conf, "host-c", u)["block_devices"]) == ["/dev/vdb"]
               for u in recovered_c)


def claims_of(store: Store, host: str | None = None) -> list[dict]:
    from virt.recovery_journal import claims

    query = claims.select()
    if host is not None:
        query = query.where(claims.c.target_host == host)
    with store.transaction() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
