"""The state store on SQLite and on the test bed's PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tests.pg import fresh_database
from tests.testbed import env
from tests.volumes import CHAP_CONNECTION_INFO as CONNECTION_INFO
from virt.errors import (
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    StoreError,
    VolumeNotFound,
)
from virt.model import (
    BlockDevice,
    Flavor,
    ImageRef,
    Instance,
    PowerState,
    TaskState,
    Vif,
    VmState,
    VolumeConnection,
    new_uuid,
)
from virt.store import ANY, Store, metadata
from virt.store import migrate as store_migrate


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state/virtkit.sqlite"
    else:
        with fresh_database(env("VIRTKIT_TEST_PG_URL")) as url:
            yield url


@pytest.fixture
def store(store_url):
    with Store(store_url) as opened:
        yield opened


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def make_instance(name: str = "vm1", **kwargs) -> Instance:
    return Instance(
        uuid=new_uuid(),
        name=name,
        flavor=Flavor("m1.tiny", 1, 512, 1, extra_specs={"hw:cpu": "x"}),
        image=ImageRef("cirros", disk_format="qcow2", properties={"os": "linux"}),
        host="host-a",
        metadata={"role": "web"},
        **kwargs,
    )


def test_open_migrates_to_head_and_schema_matches_tables(store):
    with store.engine.connect() as conn:
        assert store_migrate.current_revisions(conn) == store_migrate.head_revisions()
        assert "0001" in _ancestry(conn)
        context = MigrationContext.configure(conn)
        diffs = compare_metadata(context, metadata)
    assert diffs == []  # every table, the recovery's too: one MetaData, one migration history


def _ancestry(conn: sa.Connection) -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(store_migrate.alembic_config())
    revisions = set()
    for head in store_migrate.current_revisions(conn):
        revisions |= {rev.revision for rev in script.iterate_revisions(head, "base")}
    return revisions


def test_heads_read_from_the_files_match_alembic():
    assert store_migrate.declared_heads() == store_migrate.head_revisions()


def test_reopen_is_idempotent_and_keeps_data(store_url):
    with Store(store_url) as first:
        record = first.create_instance(make_instance())
    with Store(store_url) as second:
        assert second.get_instance(record.uuid).name == "vm1"


def test_instance_roundtrip_builds_the_model(store):
    instance = make_instance()
    created = store.create_instance(instance, task_state=TaskState.SPAWNING)
    assert created.vm_state == VmState.BUILDING
    assert created.task_state == "spawning"
    assert created.power_state is PowerState.NOSTATE
    assert created.to_instance() == instance
    as_json = json.loads(json.dumps(created.as_dict()))
    assert as_json["flavor"]["extra_specs"] == {"hw:cpu": "x"}
    assert as_json["image"]["ref"] == "cirros"


def test_create_twice_is_refused(store):
    instance = make_instance()
    store.create_instance(instance)
    with pytest.raises(InvalidRequest, match="already recorded"):
        store.create_instance(instance)


def test_find_by_name_uuid_and_ambiguity(store):
    a = store.create_instance(make_instance("web"))
    assert store.find_instance("web").uuid == a.uuid
    assert store.find_instance(a.uuid).uuid == a.uuid
    assert store.find_instance(a.uuid.upper()).uuid == a.uuid
    with pytest.raises(InstanceNotFound) as missing:
        store.find_instance("nope")
    assert missing.value.exit_code == 3
    b = store.create_instance(make_instance("web"))
    with pytest.raises(InvalidRequest, match="ambiguous") as ambiguous:
        store.find_instance("web")
    assert a.uuid in str(ambiguous.value) and b.uuid in str(ambiguous.value)
    store.delete_instance(b.uuid)
    assert store.find_instance("web").uuid == a.uuid


def test_update_is_compare_and_swap_on_task_state(store):
    record = store.create_instance(make_instance(), task_state=TaskState.SPAWNING)
    updated = store.update_instance(
        record.uuid,
        expected_task_state=TaskState.SPAWNING,
        vm_state=VmState.ACTIVE,
        task_state=None,
        power_state=PowerState.RUNNING,
    )
    assert (updated.vm_state, updated.task_state, updated.power_state) == (
        "active", None, PowerState.RUNNING
    )
    assert updated.updated_at >= record.updated_at
    store.update_instance(record.uuid, expected_task_state=None, task_state=TaskState.PAUSING)
    with pytest.raises(InvalidState, match="busy \\(pausing\\)"):
        store.update_instance(record.uuid, expected_task_state=None, task_state="rebooting")
    store.update_instance(
        record.uuid, expected_task_state=(None, TaskState.PAUSING), task_state=None,
        expected_vm_state=ANY,
    )
    with pytest.raises(InvalidRequest, match="created_at"):
        store.update_instance(record.uuid, created_at="x")
    with pytest.raises(InstanceNotFound):
        store.update_instance(new_uuid(), vm_state="active")


def test_list_filters_and_soft_delete(store):
    one = store.create_instance(make_instance("one"))
    two = store.create_instance(make_instance("two"))
    store.update_instance(two.uuid, host="host-b", vm_state=VmState.ACTIVE)
    assert [r.name for r in store.list_instances()] == ["one", "two"]
    assert [r.name for r in store.list_instances(host="host-b")] == ["two"]
    assert [r.name for r in store.list_instances(vm_state="active")] == ["two"]
    store.add_block_device(one.uuid, _block_device())
    store.delete_instance(one.uuid)
    assert [r.name for r in store.list_instances()] == ["two"]
    deleted = store.get_instance(one.uuid, read_deleted=True)
    assert deleted.vm_state == "deleted" and deleted.deleted_at is not None
    assert store.list_block_devices(one.uuid) == []
    with pytest.raises(InstanceNotFound):
        store.get_instance(one.uuid)
    with pytest.raises(InstanceNotFound):
        store.delete_instance(one.uuid)


def _block_device(mountpoint: str = "/dev/vdb") -> BlockDevice:
    return BlockDevice(VolumeConnection.from_connection_info(CONNECTION_INFO), mountpoint)


def test_block_devices_keep_nova_connection_info_and_mask_it(store):
    record = store.create_instance(make_instance())
    bdm = store.add_block_device(record.uuid, _block_device())
    assert bdm.volume_id == "vol-1"
    assert bdm.connection_info == CONNECTION_INFO
    assert "s3cr3t" not in repr(bdm)
    assert bdm.as_dict()["connection_info"]["data"]["auth_password"] == "***"
    assert bdm.to_block_device() == _block_device()
    # Stored as Nova stores it: JSON text in the column.
    with store.engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT connection_info FROM block_devices")).scalar_one()
    assert json.loads(raw) == CONNECTION_INFO

    with pytest.raises(InvalidRequest, match="already in use"):
        store.add_block_device(record.uuid, _block_device())
    assert store.find_block_device(record.uuid, "vdb").id == bdm.id
    assert store.find_block_device(record.uuid, "vol-1").id == bdm.id
    refreshed = dict(CONNECTION_INFO, data={**CONNECTION_INFO["data"], "target_lun": 2})
    store.update_block_device(bdm.id, connection_info=refreshed)
    assert store.list_block_devices(record.uuid)[0].connection_info["data"]["target_lun"] == 2
    store.remove_block_device(bdm.id)
    with pytest.raises(VolumeNotFound):
        store.find_block_device(record.uuid, "vdb")
    with pytest.raises(InstanceNotFound):
        store.add_block_device(new_uuid(), _block_device())


def test_attachments_of_volume_are_the_live_instances_it_is_attached_to(store):
    first = store.create_instance(make_instance("vm1"))
    second = store.create_instance(dataclasses.replace(make_instance("vm2"), host="host-b"))
    gone = store.create_instance(make_instance("vm3"))
    for record in (first, second, gone):
        store.add_block_device(record.uuid, _block_device())
    store.delete_instance(gone.uuid)

    found = store.attachments_of_volume("vol-1")
    assert [(a.name, a.host, a.mountpoint) for a in found] == [
        ("vm1", "host-a", "/dev/vdb"), ("vm2", "host-b", "/dev/vdb")]
    assert found[0].instance_uuid == first.uuid
    assert found[0].connection_info == CONNECTION_INFO
    assert "s3cr3t" not in repr(found)
    others = store.attachments_of_volume("vol-1", excluding_uuid=first.uuid)
    assert [a.instance_uuid for a in others] == [second.uuid]
    assert store.attachments_of_volume("vol-2") == []
    with store.transaction() as conn:  # joins a larger transaction
        assert len(store.attachments_of_volume("vol-1", conn=conn)) == 2


def test_block_devices_of_host_by_instance_by_mountpoint(store):
    first = store.create_instance(make_instance("vm1"))
    second = store.create_instance(make_instance("vm2"))
    elsewhere = store.create_instance(dataclasses.replace(make_instance("vm3"), host="host-b"))
    gone = store.create_instance(make_instance("vm4"))
    for mountpoint in ("/dev/vdc", "/dev/vdb"):
        store.add_block_device(first.uuid, _block_device(mountpoint))
    for record in (second, elsewhere, gone):
        store.add_block_device(record.uuid, _block_device())
    store.create_instance(make_instance("bare"))  # no devices: not in the result
    store.delete_instance(gone.uuid)

    found = store.block_devices_of_host("host-a")
    assert set(found) == {first.uuid, second.uuid}
    for uuid, records in found.items():
        assert records == store.list_block_devices(uuid)  # the same records, the same order
    assert [r.mountpoint for r in found[first.uuid]] == ["/dev/vdb", "/dev/vdc"]
    assert store.block_devices_of_host("nowhere") == {}


def test_create_instance_returns_the_record_as_stored(store):
    created = store.create_instance(make_instance(), node="node-1")
    assert created == store.get_instance(created.uuid)
    assert created.node == "node-1" and created.fault is None


def test_create_instance_without_insert_returning_reads_the_record_back(store, monkeypatch):
    monkeypatch.setattr(store.engine.dialect, "insert_returning", False)
    created = store.create_instance(make_instance())
    assert created == store.get_instance(created.uuid)


def test_vifs_hosts_events(store):
    record = store.create_instance(make_instance())
    vif = Vif("port-1", "52:54:00:12:34:56", network="net", bridge="br0", model="virtio")
    store.add_vif(record.uuid, vif)
    assert [v.to_vif() for v in store.list_vifs(record.uuid)] == [vif]
    with pytest.raises(InvalidRequest):
        store.add_vif(record.uuid, vif)
    store.remove_vif("port-1")
    assert store.list_vifs(record.uuid) == []

    first = store.heartbeat("host-a", driver="fake")
    again = store.heartbeat("host-a", driver="fake")
    assert again.last_seen >= first.last_seen and again.status == "up"
    store.set_host_status("host-a", "fenced")
    store.heartbeat("host-a", driver="fake")  # a heartbeat does not unfence
    assert [h.as_dict()["status"] for h in store.list_hosts()] == ["fenced"]
    assert store.heartbeat("host-a", status="up").status == "up"
    with pytest.raises(InvalidRequest):
        store.get_host("nowhere")

    store.add_event(record.uuid, "started", detail="boot", host="host-a")
    store.add_event(record.uuid, "stopped")
    assert [e.event for e in store.list_events(record.uuid)] == ["started", "stopped"]


def test_transaction_rolls_back_everything_on_error(store):
    instance = make_instance()
    with pytest.raises(InvalidRequest), store.transaction() as conn:
        store.create_instance(instance, conn=conn)
        store.add_block_device(instance.uuid, _block_device(), conn=conn)
        raise InvalidRequest("boom")
    with pytest.raises(InstanceNotFound):
        store.get_instance(instance.uuid)


def test_newer_schema_is_refused_with_a_clear_error(store_url):
    Store(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="revision 9999, newer than this virtkit") as err:
        Store(store_url)
    assert "upgrade virtkit" in str(err.value)


def test_old_database_is_upgraded(store_url):
    from alembic import command

    url = sa.make_url(store_url)
    if url.get_backend_name() == "sqlite":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    config = store_migrate.alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    with engine.begin() as conn:
        assert store_migrate.current_revisions(conn) == {"0001"}
        conn.execute(sa.text(
            "INSERT INTO hosts (name, status, created_at, updated_at) "
            "VALUES ('old-host', 'up', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        ))
    engine.dispose()
    with Store(store_url) as store:
        with store.engine.connect() as conn:
            assert store_migrate.current_revisions(conn) == store_migrate.head_revisions()
        assert store.get_host("old-host").status == "up"  # data kept across the upgrade


def test_bad_urls_are_clear_errors(tmp_path):
    from virt.errors import ConfigError

    with pytest.raises(ConfigError, match="not a valid SQLAlchemy URL"):
        Store("not a url")
    with pytest.raises(StoreError, match="state store") as err:
        Store("postgresql://u:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(err.value)


def _connect_params(store: Store) -> tuple[str, dict]:
    """The dialect driver and the DBAPI connect() keywords, captured without a server."""
    captured: dict = {}

    @sa.event.listens_for(store.engine, "do_connect")
    def _capture(_dialect, _record, _cargs, cparams):
        captured.update(cparams)
        raise RuntimeError("captured")

    with pytest.raises(RuntimeError, match="captured"):
        store.engine.connect()
    return store.engine.dialect.driver, captured


@pytest.mark.parametrize("url, driver", [
    ("postgresql://u:hunter2@db.example/virtkit", "psycopg"),
    ("postgresql+psycopg://u@db.example/virtkit", "psycopg"),
    pytest.param("postgresql+psycopg2://u@db.example/virtkit", "psycopg2",
                 marks=pytest.mark.skipif(not _has_module("psycopg2"),
                                          reason="psycopg2 is not installed")),
])
def test_postgresql_urls_use_their_driver_with_timeouts(url, driver):
    store = Store(url, migrate=False, check_schema=False)
    try:
        used, params = _connect_params(store)
    finally:
        store.close()
    assert used == driver
    assert params["connect_timeout"] == 10
    assert "-c lock_timeout=30000" in params["options"]
    assert "-c statement_timeout=120000" in params["options"]
    assert "hunter2" not in store.where


@pytest.mark.parametrize("url, expected", [
    ("mysql://nova:pw@db.example/nova", "mysql+pymysql"),
    ("mariadb://nova@db.example/nova", "mariadb+pymysql"),
    ("mysql+mysqldb://nova@db.example/nova", "mysql+mysqldb"),
    ("postgresql://u@db.example/nova", "postgresql+psycopg"),
    ("sqlite:///x.sqlite", "sqlite"),
])
def test_database_url_names_the_driver_of_the_extras(url, expected):
    from virt.store import database_url

    parsed = database_url(url, what="--nova-db")
    assert parsed.drivername == expected
    assert parsed.database == sa.make_url(url).database


def test_mysql_connect_args_bound_connect_lock_wait_and_reads():
    from virt.store import database_url, server_connect_args

    args = server_connect_args(database_url("mysql://nova@db.example/nova"))
    assert args == {"connect_timeout": 10, "read_timeout": 120,
                    "init_command": "SET SESSION innodb_lock_wait_timeout=30"}
    assert server_connect_args(database_url("mariadb+mysqldb://n@h/nova")) == args
    assert server_connect_args(database_url("mysql+asyncmy://n@h/nova")) == {}
    assert server_connect_args(database_url("sqlite:///x.sqlite")) == {}


@pytest.mark.skipif(not _has_module("pymysql"), reason="PyMySQL is not installed")
def test_mysql_connect_args_reach_pymysql():
    from virt.store import database_url, server_connect_args

    url = database_url("mysql://nova:hunter2@db.example/nova")
    engine = sa.create_engine(url, connect_args=server_connect_args(url))
    captured: dict = {}

    @sa.event.listens_for(engine, "do_connect")
    def _capture(_dialect, _record, _cargs, cparams):
        captured.update(cparams)
        raise RuntimeError("captured")

    with pytest.raises(RuntimeError, match="captured"):
        engine.connect()
    assert engine.dialect.driver == "pymysql"
    assert captured["connect_timeout"] == 10 and captured["read_timeout"] == 120
    assert captured["init_command"] == "SET SESSION innodb_lock_wait_timeout=30"


def test_from_conf_creates_the_state_directory(conf, state_dir):
    with Store.from_conf(conf) as store:
        store.create_instance(make_instance())
    assert (state_dir / "virtkit.sqlite").is_file()


def test_in_memory_sqlite_works():
    with Store("sqlite://") as store:
        store.create_instance(make_instance())
        assert len(store.list_instances()) == 1


def test_without_auto_upgrade_an_outdated_or_empty_schema_is_refused(store_url):
    from alembic import command

    url = sa.make_url(store_url)
    if url.get_backend_name() == "sqlite":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    with pytest.raises(StoreError, match="is at no schema, older than") as err:
        Store(store_url, migrate=False)
    assert "virtkit db upgrade" in str(err.value)
    engine = sa.create_engine(url)
    config = store_migrate.alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    with pytest.raises(StoreError, match="is at 0001, older than this virtkit needs"):
        Store(store_url, migrate=False)
    with engine.connect() as conn:
        assert store_migrate.current_revisions(conn) == {"0001"}  # nothing moved it
    status = store_migrate.status(engine)
    assert (status.state, status.up_to_date) == ("outdated", False)
    engine.dispose()
    with Store(store_url, migrate=False, check_schema=False) as store:
        assert store.schema_status() == status
        store.upgrade_schema()  # an explicit upgrade
        assert store.schema_status().state == "current"
    with Store(store_url, migrate=False) as store:
        assert store_migrate.status(store.engine).state == "current"


def test_from_conf_follows_db_auto_upgrade(conf, state_dir):
    conf.set_override("db_auto_upgrade", False)
    with pytest.raises(StoreError, match="virtkit db upgrade"):
        Store.from_conf(conf)
    conf.set_override("db_auto_upgrade", True)
    Store.from_conf(conf).close()


def test_sqlite_store_is_private_to_its_owner(tmp_path):
    state = tmp_path / "new-state"
    path = state / "virtkit.sqlite"
    with Store(f"sqlite:///{path}") as store:
        store.create_instance(make_instance())
        files = sorted(state.iterdir())
        assert {p.name for p in files} >= {"virtkit.sqlite", "virtkit.sqlite-wal",
                                           "virtkit.sqlite-shm"}
        for file in files:
            assert file.stat().st_mode & 0o777 == 0o600, file
    assert state.stat().st_mode & 0o777 == 0o711
    # A database an older virtkit left world-readable is tightened on open.
    path.chmod(0o644)
    Store(f"sqlite:///{path}").close()
    assert path.stat().st_mode & 0o777 == 0o600
