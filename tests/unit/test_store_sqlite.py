"""SQLite connection set-up of the state store: WAL, synchronous=NORMAL, BEGIN IMMEDIATE."""

from __future__ import annotations

import sqlite3

import pytest

from virt.errors import InstanceNotFound, InvalidState
from virt.model import Flavor, Instance, TaskState, new_uuid
from virt.store import Store


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'state.sqlite'}") as s:
        yield s


def test_every_connection_is_wal_with_synchronous_normal(store):
    # synchronous is per connection, not stored in the file: check a pooled one.
    with store.transaction() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_transactions_take_the_write_lock_at_begin(store, tmp_path):
    """BEGIN IMMEDIATE (sent straight to the driver): the write lock is ours from the start,
    so writers queue on the busy timeout instead of failing half-way."""
    other = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None, timeout=0.1)
    try:
        with store.transaction():
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again after the commit
        other.execute("COMMIT")
    finally:
        other.close()


def test_update_returns_the_new_record_and_keeps_compare_and_swap(store):
    instance = Instance(uuid=new_uuid(), name="vm", flavor=Flavor("t", 1, 64))
    store.create_instance(instance)
    record = store.update_instance(instance.uuid, host="h2", node="n2", task_state=None)
    assert (record.host, record.node) == ("h2", "n2")
    assert record.updated_at >= record.created_at
    again = store.update_instance(instance.uuid, host="h3", expected_task_state=None,
                                  task_state=TaskState.SPAWNING)
    assert again.host == "h3" and again.task_state == TaskState.SPAWNING
    with pytest.raises(InvalidState, match="busy"):
        store.update_instance(instance.uuid, host="h4", expected_task_state=None)
    assert store.get_instance(instance.uuid).host == "h3"
    with pytest.raises(InstanceNotFound):
        store.update_instance(new_uuid(), host="x")


def test_kept_transactions_reuse_one_connection_per_thread_until_close(tmp_path):
    import threading

    store = Store(f"sqlite:///{tmp_path / 'state.sqlite'}")
    seen: list[object] = []

    def twice() -> None:
        for _ in range(2):
            with store.kept_transaction() as conn:
                seen.append(conn)

    twice()
    worker = threading.Thread(target=twice)
    worker.start()
    worker.join()
    assert seen[0] is seen[1] and seen[2] is seen[3] and seen[0] is not seen[2]
    store.close()
    assert all(conn.closed for conn in seen)


def test_a_failed_kept_transaction_leaves_its_connection_usable(tmp_path, monkeypatch):
    from virt.errors import StoreError

    monkeypatch.setattr("virt.store.engine.SQLITE_BUSY_TIMEOUT_S", 1)
    store = Store(f"sqlite:///{tmp_path / 'state.sqlite'}")
    instance = Instance(uuid=new_uuid(), name="vm", flavor=Flavor("t", 1, 64))
    store.create_instance(instance)
    with store.kept_transaction():
        pass
    other = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked"):  # BEGIN IMMEDIATE waits, then gives up
            with store.kept_transaction():
                pytest.fail("ran without the write lock")
        other.execute("COMMIT")
    finally:
        other.close()
    with pytest.raises(RuntimeError):  # an error in the block rolls back
        with store.kept_transaction() as conn:
            store.set_instance_fields(instance.uuid, host="h-lost", conn=conn)
            raise RuntimeError
    with store.kept_transaction() as conn:
        store.set_instance_fields(instance.uuid, host="h2", conn=conn)
    assert store.get_instance(instance.uuid).host == "h2"
    store.close()
