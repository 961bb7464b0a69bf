"""virtkit-recover as a real process: two recoverers on PostgreSQL, crash-resume, Nova schema
(on PostgreSQL and on MariaDB)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.iscsi_target import iscsi_targets  # noqa: F401  (fixture)
from tests.pg import fresh_database, fresh_mysql_database, pg_url  # noqa: F401  (fixture)
from tests.recovery_helpers import driver_for, iscsi_info, record_instances
from tests.testbed import env
from virt.config import build_conf
from virt.driver import load_driver
from virt.model import Flavor, ImageRef, Instance
from virt.recovery.journal import RecoveryJournal
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
    return driver_for(config, host).list_instance_uuids()


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
    journal transactions of `uuid` are gone (before the end, two end with an entry of the
    spawn: its write-ahead `started`, with the re-homing, and its `done`)."""
    from virt.recovery.journal import journal

    entries = RecoveryJournal(store, host="x").entries(uuid)
    ends = [i for i, e in enumerate(entries) if e["step"] == "spawn"]
    assert len(ends) >= count
    keep = entries[:ends[-count - 1] + 1] if count < len(ends) else []
    with store.transaction() as conn:
        conn.execute(journal.delete().where(journal.c.instance_uuid == uuid,
                                            journal.c.id > (keep[-1]["id"] if keep else 0)))
    if not keep:
        store.update_instance(uuid, host="host-a", node=None)


@pytest.mark.parametrize("lost", [1, 2])
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


# Nova's cell database as each engine has it (nova/db/main/models.py: MediumText is
# MEDIUMTEXT on MySQL and TEXT on PostgreSQL, Boolean TINYINT(1), soft-delete `deleted` an
# INT set to the row's id), the columns recovery reads plus some it must leave alone.
NOVA_DDL = {
    "postgresql": [
        """CREATE TABLE instances (created_at TIMESTAMP, updated_at TIMESTAMP,
           deleted_at TIMESTAMP, id SERIAL PRIMARY KEY, user_id VARCHAR(255),
           project_id VARCHAR(255), image_ref VARCHAR(255), power_state INTEGER,
           vm_state VARCHAR(255), memory_mb INTEGER, vcpus INTEGER, hostname VARCHAR(255),
           host VARCHAR(255), user_data TEXT, display_name VARCHAR(255), locked BOOLEAN,
           launched_on TEXT, uuid VARCHAR(36) NOT NULL, task_state VARCHAR(255),
           root_gb INTEGER, ephemeral_gb INTEGER, node VARCHAR(255), deleted INTEGER,
           cleaned INTEGER, compute_id BIGINT,
           CONSTRAINT uniq_instances0uuid UNIQUE (uuid))""",
        """CREATE TABLE block_device_mapping (created_at TIMESTAMP, updated_at TIMESTAMP,
           deleted_at TIMESTAMP, id SERIAL PRIMARY KEY, device_name VARCHAR(255),
           delete_on_termination BOOLEAN, snapshot_id VARCHAR(36), volume_id VARCHAR(36),
           volume_size INTEGER, no_device BOOLEAN, connection_info TEXT,
           instance_uuid VARCHAR(36) REFERENCES instances (uuid), deleted INTEGER,
           source_type VARCHAR(255), destination_type VARCHAR(255), guest_format VARCHAR(255),
           device_type VARCHAR(255), disk_bus VARCHAR(255), boot_index INTEGER,
           image_id VARCHAR(36), attachment_id VARCHAR(36), uuid VARCHAR(36))""",
    ],
    "mysql": [
        """CREATE TABLE instances (created_at DATETIME, updated_at DATETIME,
           deleted_at DATETIME, id INT NOT NULL AUTO_INCREMENT, user_id VARCHAR(255),
           project_id VARCHAR(255), image_ref VARCHAR(255), power_state INT,
           vm_state VARCHAR(255), memory_mb INT, vcpus INT, hostname VARCHAR(255),
           host VARCHAR(255), user_data MEDIUMTEXT, display_name VARCHAR(255),
           locked TINYINT(1), launched_on MEDIUMTEXT, uuid VARCHAR(36) NOT NULL,
           task_state VARCHAR(255), root_gb INT, ephemeral_gb INT, node VARCHAR(255),
           deleted INT, cleaned INT, compute_id BIGINT, locked_by ENUM('owner', 'admin'),
           PRIMARY KEY (id), UNIQUE KEY uniq_instances0uuid (uuid),
           KEY instances_host_deleted_cleaned_idx (host, deleted, cleaned)
           ) ENGINE=InnoDB DEFAULT CHARSET=utf8""",
        """CREATE TABLE block_device_mapping (created_at DATETIME, updated_at DATETIME,
           deleted_at DATETIME, id INT NOT NULL AUTO_INCREMENT, device_name VARCHAR(255),
           delete_on_termination TINYINT(1), snapshot_id VARCHAR(36), volume_id VARCHAR(36),
           volume_size INT, no_device TINYINT(1), connection_info MEDIUMTEXT,
           instance_uuid VARCHAR(36), deleted INT, source_type VARCHAR(255),
           destination_type VARCHAR(255), guest_format VARCHAR(255), device_type VARCHAR(255),
           disk_bus VARCHAR(255), boot_index INT, image_id VARCHAR(36),
           attachment_id VARCHAR(36), uuid VARCHAR(36), PRIMARY KEY (id),
           KEY block_device_mapping_instance_uuid_idx (instance_uuid),
           CONSTRAINT block_device_mapping_instance_uuid_fkey FOREIGN KEY (instance_uuid)
           REFERENCES instances (uuid)) ENGINE=InnoDB DEFAULT CHARSET=utf8""",
    ],
}

NOVA_IMAGE = "c0ffee00-0000-4000-8000-000000000000"


@pytest.fixture(params=["postgresql", "mariadb"])
def nova_url(request) -> Iterator[str]:
    """An empty database with Nova's two tables, on PostgreSQL or on MariaDB."""
    if request.param == "postgresql":
        databases = fresh_database(env("VIRTKIT_TEST_PG_URL"))
    else:
        databases = fresh_mysql_database(env("VIRTKIT_TEST_MYSQL_URL"))
    with databases as url:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                for ddl in NOVA_DDL[engine.dialect.name]:
                    conn.exec_driver_sql(ddl)
        finally:
            engine.dispose()
        yield url


def add_nova_instance(conn: sa.Connection, id: int, uuid: str, **values: object) -> None:
    row = {"id": id, "uuid": uuid, "host": "nova-a", "node": "nova-a.example",
           "hostname": f"web-{id}", "display_name": f"web {id}", "vm_state": "active",
           "power_state": 1, "vcpus": 1, "memory_mb": 64, "root_gb": 1, "ephemeral_gb": 0,
           "image_ref": NOVA_IMAGE, "launched_on": "nova-a", "deleted": 0, "cleaned": 0,
           "locked": False, "user_id": "u1", "project_id": "p1",
           "created_at": datetime.datetime(2024, 5, 1, 12, 0, 0),
           "updated_at": datetime.datetime(2024, 5, 2, 12, 0, 0), **values}
    conn.execute(sa.table("instances", *map(sa.column, row)).insert().values(row))
    # Nova's own BDM of an image-booted instance: its root disk, local, no connection_info.
    add_nova_bdm(conn, uuid, "/dev/vda", None, source_type="image", destination_type="local",
                 boot_index=0, image_id=NOVA_IMAGE, volume_id=None)


def add_nova_bdm(conn: sa.Connection, instance_uuid: str, device: str,
                 info: dict | None, **values: object) -> None:
    row = {"instance_uuid": instance_uuid, "device_name": device, "source_type": "volume",
           "destination_type": "volume", "deleted": 0, "delete_on_termination": False,
           "disk_bus": "virtio", "device_type": "disk", "boot_index": None,
           "volume_id": (info or {}).get("serial"),
           "connection_info": None if info is None else json.dumps(info),
           "created_at": datetime.datetime(2024, 5, 1, 12, 0, 1), **values}
    conn.execute(sa.table("block_device_mapping", *map(sa.column, row)).insert().values(row))


def nova_rows(engine: sa.Engine) -> dict[str, list[dict]]:
    """Every row of Nova's two tables, every column."""
    with engine.connect() as conn:
        return {t: [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))
                    .mappings()] for t in ("instances", "block_device_mapping")}


def nova_iscsi_info(lun, **overrides) -> dict:
    """What Cinder's iSCSI driver hands Nova, as Nova stores it in connection_info."""
    info = lun.connection_info(access_mode="rw", encrypted=False, qos_specs=None,
                               discard=False, cacheable=False, **overrides)
    info["connector"] = {"host": "nova-a", "initiator": "iqn.1993-08.org.debian:01:nova-a",
                         "ip": "192.0.2.10", "multipath": False, "platform": "x86_64"}
    return info


def test_nova_schema_with_real_iscsi(tmp_path, nova_url, iscsi_targets):  # noqa: F811
    plain, chap = iscsi_targets.create(size_mb=16), iscsi_targets.create(size_mb=8, chap=True)
    nova = sa.create_engine(nova_url)
    uuids = ["6f2c7d7e-0000-4000-8000-000000000001", "6f2c7d7e-0000-4000-8000-000000000002"]
    deleted, elsewhere = ("6f2c7d7e-0000-4000-8000-00000000000d",
                          "6f2c7d7e-0000-4000-8000-00000000000e")
    with nova.begin() as conn:
        add_nova_instance(conn, 1, uuids[0])
        add_nova_instance(conn, 2, uuids[1], vm_state="stopped", power_state=4)
        add_nova_instance(conn, 13, deleted, deleted=13,  # Nova's soft delete: deleted = id
                          deleted_at=datetime.datetime(2024, 5, 3))
        add_nova_instance(conn, 14, elsewhere, host="nova-c", node="nova-c.example")
        for dev, lun in (("/dev/vdb", plain), ("/dev/vdc", chap)):
            add_nova_bdm(conn, uuids[0], dev, nova_iscsi_info(lun))
        # A detached volume (soft-deleted BDM) is not attached again.
        add_nova_bdm(conn, uuids[0], "/dev/vdd", nova_iscsi_info(plain), deleted=99)
    before = nova_rows(nova)
    config = write_conf(tmp_path, f"sqlite:///{tmp_path / 'virtkit.sqlite'}")
    # A plain mysql:// (postgresql://) URL, as an operator writes it: PyMySQL (psycopg 3).
    plain_url = sa.make_url(nova_url).set(drivername=nova.dialect.name)
    done = run_recover(config, "--failed-host", "nova-a", "--confirm-fenced", "--nova-db",
                       plain_url.render_as_string(hide_password=False), "--host", "nova-b")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert chap.password not in done.stdout + done.stderr
    assert sorted(i["uuid"] for i in report["instances"]) == uuids
    assert {i["outcome"] for i in report["instances"]} == {"recovered"}
    first = next(i for i in report["instances"] if i["uuid"] == uuids[0])
    assert first["name"] == "instance-00000001" and first["power_state"] == "running"
    assert sorted((v["mountpoint"], v["size_bytes"]) for v in first["volumes"]) == [
        ("/dev/vdb", 16 << 20), ("/dev/vdc", 8 << 20)]
    after = nova_rows(nova)
    nova.dispose()
    # Written back: host and node of the two recovered instances, nothing else anywhere.
    assert after["block_device_mapping"] == before["block_device_mapping"]
    expected = [dict(r, host="nova-b", node="nova-b") if r["uuid"] in uuids else r
                for r in before["instances"]]
    assert after["instances"] == expected
    conf = build_conf(str(config))
    driver = load_driver("fake", conf)
    driver.init_host(host="nova-b")
    assert sorted(driver.list_instance_uuids()) == uuids
    assert sorted(fake_record(conf, "nova-b", uuids[0])["block_devices"]) == [
        "/dev/vdb", "/dev/vdc"]
    second = Instance(uuid=uuids[1], name="instance-00000002",
                      flavor=Flavor(name="x", vcpus=1, memory_mb=64), image=ImageRef("x"))
    assert driver.get_info(instance=second).state.value == "shutdown"


def test_nova_wrong_chap_leaves_instance_unclaimed(tmp_path, nova_url, iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create(size_mb=8, chap=True)
    nova = sa.create_engine(nova_url)
    uuid = "6f2c7d7e-0000-4000-8000-000000000003"
    with nova.begin() as conn:
        add_nova_instance(conn, 3, uuid, image_ref="img")
        add_nova_bdm(conn, uuid, "/dev/vdb", nova_iscsi_info(lun, auth_password="wrong-pass"))
    before = nova_rows(nova)
    config = write_conf(tmp_path, f"sqlite:///{tmp_path / 'virtkit.sqlite'}")
    done = run_recover(config, "--failed-host", "nova-a", "--confirm-fenced", "--nova-db",
                       nova_url, "--host", "nova-b")
    assert done.returncode == 1
    (item,) = json.loads(done.stdout)["instances"]
    assert item["outcome"] == "released" and "VolumeAuthError" not in item["error"]
    assert "refused CHAP" in item["error"] and "wrong-pass" not in done.stdout
    assert nova_rows(nova) == before  # nothing written
    nova.dispose()


@pytest.mark.parametrize("url, extra", [("mysql://nova:hunter2@db.example/nova", "mysql"),
                                        ("mariadb://nova:hunter2@db.example/nova", "mysql")])
def test_nova_db_without_its_driver_names_the_extra(tmp_path, url, extra):
    """No PyMySQL (an import that fails, as when the extra is not installed): the error
    says what to install, not that the URL is unusable."""
    blocker = tmp_path / "site" / "pymysql"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pymysql'\", name='pymysql')\n")
    config = write_conf(tmp_path, f"sqlite:///{tmp_path / 'virtkit.sqlite'}")
    path = os.pathsep.join([str(blocker.parent), *sys.path])
    # The URL holds a password: it comes from the environment, never the command line.
    done = run_recover(config, "--failed-host", "nova-a", "--confirm-fenced", "--nova-db",
                       "--host", "nova-b", env={"PYTHONPATH": path, "VIRTKIT_NOVA_DB": url})
    assert done.returncode == 2, done.stderr
    assert f"pip install 'virtkit[{extra}]'" in done.stderr
    assert "No module named 'pymysql'" in done.stderr
    assert "not a usable SQLAlchemy URL" not in done.stderr and "Traceback" not in done.stderr
    assert "hunter2" not in done.stdout + done.stderr


@pytest.mark.slow
def test_two_recoverers_on_one_nova_database(tmp_path, pg_url, nova_url):  # noqa: F811
    """Claims live in virtkit's (shared PostgreSQL) store, whatever engine Nova's DB is on:
    two recoverers re-home each Nova instance exactly once, to the one that spawned it."""
    config = write_conf(tmp_path, pg_url, spawn_latency_ms=20)
    with config.open("a") as handle:
        handle.write(f"[recovery]\nfence_check_command = {barrier_fence(tmp_path, 2)}\n"
                     "claim_lease_seconds = 8\n")  # contested claims are re-checked each 2 s
    nova = sa.create_engine(nova_url)
    uuids = [f"6f2c7d7e-0000-4000-8000-{n:012d}" for n in range(100, 130)]
    with nova.begin() as conn:
        for n, uuid in enumerate(uuids, start=100):
            add_nova_instance(conn, n, uuid)
            add_nova_bdm(conn, uuid, "/dev/vdb", iscsi_info(n))
    before = nova_rows(nova)
    procs = [subprocess.Popen(
        [*RECOVER, "--config", str(config), "--format", "json", "--failed-host", "nova-a",
         "--volume-check", "none", "--parallel", "4", "--host", host, "--nova-db", nova_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for host in ("host-b", "host-c")]
    recovered = {}
    for host, proc in zip(("host-b", "host-c"), procs, strict=True):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        recovered[host] = {i["uuid"] for i in json.loads(out)["instances"]
                           if i["outcome"] == "recovered"}
    assert recovered["host-b"] and recovered["host-c"], {h: len(u) for h, u in recovered.items()}
    assert not recovered["host-b"] & recovered["host-c"]
    assert recovered["host-b"] | recovered["host-c"] == set(uuids)
    for host in ("host-b", "host-c"):
        assert set(fake_domains(config, host)) == recovered[host]  # each spawned once
    after = nova_rows(nova)
    nova.dispose()
    assert after["block_device_mapping"] == before["block_device_mapping"]
    owner = {u: h for h, us in recovered.items() for u in us}
    assert after["instances"] == [dict(r, host=owner[r["uuid"]], node=owner[r["uuid"]])
                                  for r in before["instances"]]


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
    from virt.recovery.journal import claims

    query = claims.select()
    if host is not None:
        query = query.where(claims.c.target_host == host)
    with store.transaction() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


@pytest.mark.slow
def test_recoverers_with_separate_stores_take_each_nova_instance_once(tmp_path, nova_url):
    """No shared claims: re-homing in Nova's database is a compare-and-set, so of two
    recoverers with their own SQLite stores exactly one takes each instance; the other
    releases it before changing anything on its host."""
    gate = barrier_fence(tmp_path, 2)
    configs = {}
    for host in ("host-b", "host-c"):
        home = tmp_path / host
        home.mkdir()
        configs[host] = write_conf(home, f"sqlite:///{home / 'store.sqlite'}",
                                   spawn_latency_ms=20)
        with configs[host].open("a") as handle:
            handle.write(f"[recovery]\nfence_check_command = {gate}\n")
    nova = sa.create_engine(nova_url)
    uuids = [f"6f2c7d7e-0000-4000-8000-{n:012d}" for n in range(200, 220)]
    with nova.begin() as conn:
        for n, uuid in enumerate(uuids, start=200):
            add_nova_instance(conn, n, uuid)
    procs = {host: subprocess.Popen(
        [*RECOVER, "--config", str(config), "--format", "json", "--failed-host", "nova-a",
         "--volume-check", "none", "--parallel", "2", "--host", host, "--nova-db", nova_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for host, config in configs.items()}
    recovered, released = {}, {}
    for host, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode in (0, 1), err
        report = json.loads(out)["instances"]
        recovered[host] = {i["uuid"] for i in report if i["outcome"] == "recovered"}
        released[host] = {i["uuid"] for i in report if i["outcome"] == "released"}
        assert all("another recoverer" in i["error"] for i in report
                   if i["outcome"] == "released"), report
    assert not recovered["host-b"] & recovered["host-c"]
    assert recovered["host-b"] | recovered["host-c"] == set(uuids)
    for host, config in configs.items():
        assert set(fake_domains(config, host)) == recovered[host]  # nothing spawned twice
    with nova.connect() as conn:
        hosts = dict(conn.execute(sa.text("SELECT uuid, host FROM instances")).all())
    nova.dispose()
    owner = {u: h for h, us in recovered.items() for u in us}
    assert {u: hosts[u] for u in uuids} == owner


def test_nova_db_password_on_the_command_line_is_refused(tmp_path):
    config = write_conf(tmp_path, f"sqlite:///{tmp_path / 'virtkit.sqlite'}")
    done = run_recover(config, "--failed-host", "nova-a", "--confirm-fenced", "--nova-db",
                       "postgresql://nova:hunter2@db.example/nova", "--host", "nova-b")
    assert done.returncode == 2, done.stderr
    assert "a password on the command line" in done.stderr
    assert "[recovery] nova_connection" in done.stderr and "VIRTKIT_NOVA_DB" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr and "Traceback" not in done.stderr
