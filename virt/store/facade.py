"""The state store: what the compute service knows about instances, volumes, VIFs and hosts.

SQLite by default (one host), any SQLAlchemy URL by `[DEFAULT] state_connection`
(PostgreSQL when several hosts share it). The schema comes from the alembic migrations in
`virt/migrations/`, applied on open. Every method runs in its own transaction unless given
`conn=`, a connection from `Store.transaction()`, to join a larger one.

The Table objects (`virt.store_schema`) and `Store.engine` are public, for queries this
class does not offer (e.g. `SELECT ... FOR UPDATE SKIP LOCKED` claims).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg
from sqlalchemy import event, exc
from sqlalchemy.pool import StaticPool

from virt import store_migrate
from virt.errors import (
    ConfigError,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    StoreError,
    VolumeNotFound,
)
from virt.model import BlockDevice, Instance, PowerState, Vif, validate_uuid
from virt.store_direct import DirectStatement
from virt.store_records import (
    BlockDeviceRecord,
    EventRecord,
    HostRecord,
    InstanceRecord,
    VifRecord,
    flavor_to_json,
    image_to_json,
    utcnow,
)
from virt.store_schema import (
    HostStatus,
    TaskState,
    VmState,
    block_devices,
    hosts,
    instance_events,
    instances,
    metadata,
    vifs,
)

LOG = logging.getLogger(__name__)

__all__ = [
    "ANY",
    "BlockDeviceRecord",
    "EventRecord",
    "HostRecord",
    "HostStatus",
    "InstanceRecord",
    "Store",
    "TaskState",
    "VifRecord",
    "VmState",
    "block_devices",
    "database_url",
    "driver_hint",
    "hosts",
    "instance_events",
    "instances",
    "metadata",
    "server_connect_args",
    "vifs",
]

SQLITE_BUSY_TIMEOUT_S = 30
PG_CONNECT_TIMEOUT_S = 10
PG_LOCK_TIMEOUT_MS = 30_000
PG_STATEMENT_TIMEOUT_MS = 120_000
#: The driver of a plain postgresql:// URL (the `postgresql` extra installs it).
PG_DEFAULT_DRIVER = "psycopg"
#: PostgreSQL drivers that take libpq's connect_timeout and options (the timeouts above).
PG_DRIVERS = ("psycopg", "psycopg2")
#: The driver of a plain mysql:// or mariadb:// URL (the `mysql` extra installs it).
MYSQL_DEFAULT_DRIVER = "pymysql"
#: MySQL drivers that take connect_timeout, read_timeout and init_command.
MYSQL_DRIVERS = ("pymysql", "mysqldb")
#: The extra that installs the default driver of each server backend.
DRIVER_EXTRAS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
MYSQL_CONNECT_TIMEOUT_S = 10
MYSQL_LOCK_WAIT_TIMEOUT_S = 30
MYSQL_READ_TIMEOUT_S = 120


class _Any:
    def __repr__(self) -> str:
        return "ANY"


#: "Do not check" for `expected_task_state`.
ANY: Any = _Any()

_UPDATABLE = frozenset(
    {
        "name",
        "host",
        "node",
        "vm_state",
        "task_state",
        "power_state",
        "flavor",
        "image",
        "metadata",
        "fault",
        "launched_at",
    }
)


def _normalise_mountpoint(mountpoint: str) -> str:
    return mountpoint if mountpoint.startswith("/dev/") else f"/dev/{mountpoint}"


def _column_value(key: str, value: Any) -> Any:
    if key == "power_state" and isinstance(value, PowerState):
        return value.value
    if key == "flavor" and not isinstance(value, Mapping):
        return flavor_to_json(value)
    if key == "image" and value is not None and not isinstance(value, Mapping):
        return image_to_json(value)
    if key == "metadata":
        return dict(value or {})
    if isinstance(value, VmState | TaskState):
        return value.value
    return value


def database_url(url: str, *, what: str = "state_connection") -> sa.URL:
    """`url` parsed, a plain postgresql:// made postgresql+psycopg:// and a plain mysql:// or
    mariadb:// made mysql+pymysql:// or mariadb+pymysql:// (ConfigError if invalid).

    SQLAlchemy's own choice for a plain postgresql:// is psycopg2 up to 2.0 and psycopg (3)
    from 2.1, for mysql:// mysqlclient (a C build); naming one keeps the URL meaning what
    the `postgresql` or `mysql` extra installs.
    """
    try:
        parsed = sa.make_url(url)
    except exc.ArgumentError:
        raise ConfigError(
            f"{what} is not a valid SQLAlchemy URL",
            hint="use sqlite:////path/to/virtkit.sqlite or postgresql://user@host/db",
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=f"postgresql+{PG_DEFAULT_DRIVER}")
    elif parsed.drivername in ("mysql", "mariadb"):  # SQLAlchemy's own choice: mysqlclient
        parsed = parsed.set(drivername=f"{parsed.drivername}+{MYSQL_DEFAULT_DRIVER}")
    return parsed


def server_connect_args(url: sa.URL) -> dict[str, Any]:
    """connect_args bounding a PostgreSQL connection attempt, lock wait and statement (on
    MySQL/MariaDB: the connection attempt, InnoDB's lock wait and each wait for a reply)."""
    if url.get_backend_name() in ("mysql", "mariadb") and url.get_driver_name() in MYSQL_DRIVERS:
        return {
            "connect_timeout": MYSQL_CONNECT_TIMEOUT_S,
            "read_timeout": MYSQL_READ_TIMEOUT_S,
            "init_command": f"SET SESSION innodb_lock_wait_timeout={MYSQL_LOCK_WAIT_TIMEOUT_S}",
        }
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in PG_DRIVERS:
        return {}
    return {
        "connect_timeout": PG_CONNECT_TIMEOUT_S,
        "options": f"-c lock_timeout={PG_LOCK_TIMEOUT_MS}"
        f" -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}",
    }


def driver_hint(url: sa.URL) -> str | None:
    """What to install when `url`'s database driver is missing (None: no extra has it)."""
    extra = DRIVER_EXTRAS.get(url.get_backend_name())
    return f"pip install 'virtkit[{extra}]'" if extra else None


def _make_engine(url: str) -> sa.Engine:
    parsed = database_url(url)
    options: dict[str, Any] = {"hide_parameters": True, "future": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        if database in ("", ":memory:"):
            options["poolclass"] = StaticPool
        else:
            store_migrate.private_sqlite_file(Path(database).expanduser())
            # A file's connections are cheap, and threads may keep one each
            # (`kept_transaction`): never make a thread wait for one.
            options["max_overflow"] = -1
    else:
        options["pool_pre_ping"] = True
        options["connect_args"] = server_connect_args(parsed)
    try:
        engine = sa.create_engine(parsed, **options)
    except ImportError as error:
        raise ConfigError(f"cannot use state_connection: {error}",
                          hint=driver_hint(parsed)) from None
    except exc.ArgumentError as error:
        raise ConfigError(f"cannot use state_connection: {error}") from None
    if engine.dialect.name == "sqlite":
        _setup_sqlite(engine)
    return engine


def _setup_sqlite(engine: sa.Engine) -> None:
    """WAL with synchronous=NORMAL, foreign keys, a busy timeout, and BEGIN IMMEDIATE so
    writers queue, not fail.

    synchronous=NORMAL is the standard setting for WAL: a commit is not fsynced (the WAL is,
    at each checkpoint). A killed process loses nothing committed; an OS crash or power cut
    may lose the last transactions (a suffix, never one in the middle) but never corrupts
    the database. What runs on top must tolerate that: the recovery engine does, because
    every step with an effect outside the store is redone or undone idempotently when its
    journal entry is missing (see "Power cuts" in docs/recovery.md).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # per connection: not persistent
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Straight to the driver: through exec_driver_sql it costs as much as a real
        # statement, and every transaction pays it.
        driver_conn = conn.connection.driver_connection
        assert driver_conn is not None
        try:
            driver_conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:  # e.g. "database is locked" after the busy timeout
            raise exc.OperationalError("BEGIN IMMEDIATE", None, error) from None


class Store:
    """Typed access to the state store."""

    def __init__(self, url: str, *, migrate: bool = True, check_schema: bool = True) -> None:
        """Open the store; `migrate` upgrades its schema, else `check_schema` refuses an
        outdated one (StoreError: run `virtkit db upgrade`)."""
        self.url = url
        self.engine = _make_engine(url)
        self._kept: list[sa.Connection] = []
        self._kept_lock = threading.Lock()
        self._local = threading.local()
        self.where = self.engine.url.render_as_string(hide_password=True)
        self.metadata = metadata
        if migrate or check_schema:
            with self._errors():
                if migrate:
                    store_migrate.upgrade(self.engine, self.where)
                else:
                    store_migrate.require_current(self.engine, self.where)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, *, migrate: bool | None = None) -> Store:
        """The store named by `[DEFAULT] state_connection`, its schema upgraded on open
        unless `[DEFAULT] db_auto_upgrade` (or `migrate`) is False."""
        return cls(conf.state_connection,
                   migrate=conf.db_auto_upgrade if migrate is None else migrate)

    def close(self) -> None:
        with self._kept_lock:
            kept, self._kept = self._kept, []
        for conn in kept:
            conn.close()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    # -- transactions ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn database errors into StoreError, without parameters (they may hold secrets)."""
        try:
            yield
        except exc.DBAPIError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise StoreError(f"state store {self.where}: {reason}") from None
        except exc.SQLAlchemyError as error:
            raise StoreError(f"state store {self.where}: {type(error).__name__}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A connection in one transaction: committed on success, rolled back on error."""
        with self._errors(), self.engine.begin() as conn:
            yield conn

    session = transaction

    @contextlib.contextmanager
    def kept_transaction(self) -> Iterator[sa.Connection]:
        """`transaction()`, on SQLite on a connection this thread keeps until `close()`.

        For callers committing many small transactions (the recovery journal, several per
        instance): on SQLite, taking a connection from the pool and giving it back costs as
        much as their statements. Elsewhere the pool stays in the way on purpose: its
        pre-ping replaces a connection the server dropped.
        """
        if self.engine.dialect.name != "sqlite" or isinstance(self.engine.pool, StaticPool):
            with self.transaction() as conn:
                yield conn
            return
        kept: sa.Connection | None = getattr(self._local, "conn", None)
        if kept is None or kept.closed:
            kept = self._local.conn = self.engine.connect()
            with self._kept_lock:
                self._kept.append(kept)
        with self._errors(), kept.begin():
            yield kept

    @contextlib.contextmanager
    def _use(self, conn: sa.Connection | None) -> Iterator[sa.Connection]:
        if conn is not None:
            yield conn
        else:
            with self.transaction() as new:
                yield new

    # -- instances ---------------------------------------------------------------------------

    def create_instance(
        self,
        instance: Instance,
        *,
        vm_state: str = VmState.BUILDING,
        task_state: str | None = None,
        power_state: PowerState = PowerState.NOSTATE,
        node: str | None = None,
        conn: sa.Connection | None = None,
    ) -> InstanceRecord:
        """Record a new instance; its uuid must be new."""
        now = utcnow()
        values = {
            "uuid": instance.uuid,
            "name": instance.name,
            "host": instance.host,
            "node": node,
            "vm_state": str(vm_state),
            "task_state": None if task_state is None else str(task_state),
            "power_state": power_state.value,
            "flavor": flavor_to_json(instance.flavor),
            "image": image_to_json(instance.image),
            "metadata": dict(instance.metadata),
            "fault": None,
            "launched_at": None,
            "created_at": now,
            "updated_at": now,
            "deleted_at": None,
        }
        with self._use(conn) as c:
            if c.execute(sa.select(instances.c.uuid).where(instances.c.uuid == instance.uuid)).first():
                raise InvalidRequest(f"instance {instance.uuid} is already recorded")
            c.execute(instances.insert().values(**values))
            return self.get_instance(instance.uuid, conn=c)

    def get_instance(
        self, uuid: str, *, read_deleted: bool = False, conn: sa.Connection | None = None
    ) -> InstanceRecord:
        """The instance with this uuid; InstanceNotFound if there is none (or it is deleted)."""
        query = sa.select(instances).where(instances.c.uuid == uuid)
        if not read_deleted:
            query = query.where(instances.c.deleted_at.is_(None))
        with self._use(conn) as c:
            row = c.execute(query).mappings().first()
        if row is None:
            raise InstanceNotFound(uuid)
        return InstanceRecord.from_row(row)

    def find_instance(self, ref: str, *, conn: sa.Connection | None = None) -> InstanceRecord:
        """The live instance named `ref` or with uuid `ref`.

        A name shared by several instances is an error that says to use the uuid.
        """
        try:
            uuid = validate_uuid(ref)
        except InvalidRequest:
            uuid = None
        with self._use(conn) as c:
            if uuid is not None:
                with contextlib.suppress(InstanceNotFound):
                    return self.get_instance(uuid, conn=c)
            rows = (
                c.execute(
                    sa.select(instances)
                    .where(instances.c.name == ref, instances.c.deleted_at.is_(None))
                    .limit(10)
                )
                .mappings()
                .all()
            )
        if not rows:
            raise InstanceNotFound(ref, hint="'virtkit list' shows the instances")
        if len(rows) > 1:
            uuids = ", ".join(row["uuid"] for row in rows)
            raise InvalidRequest(
                f"instance name {ref!r} is ambiguous: {len(rows)} instances have it ({uuids})",
                hint="name the instance by its uuid",
            )
        return InstanceRecord.from_row(rows[0])

    def list_instances(
        self,
        *,
        host: str | None = None,
        vm_state: str | None = None,
        name: str | None = None,
        read_deleted: bool = False,
        conn: sa.Connection | None = None,
    ) -> list[InstanceRecord]:
        """Instances, oldest first, optionally only those of `host` / in `vm_state` / `name`."""
        query = sa.select(instances).order_by(instances.c.created_at, instances.c.name)
        if name is not None:
            query = query.where(instances.c.name == name)
        if host is not None:
            query = query.where(instances.c.host == host)
        if vm_state is not None:
            query = query.where(instances.c.vm_state == str(vm_state))
        if not read_deleted:
            query = query.where(instances.c.deleted_at.is_(None))
        with self._use(conn) as c:
            return [InstanceRecord.from_row(row) for row in c.execute(query).mappings()]

    def update_instance(
        self,
        uuid: str,
        /,
        *,
        expected_task_state: Any = ANY,
        expected_vm_state: Any = ANY,
        conn: sa.Connection | None = None,
        **values: Any,
    ) -> InstanceRecord:
        """Change columns of a live instance and return the new record.

        With `expected_task_state` / `expected_vm_state` (a value, None, or a tuple of
        them) the update is a compare-and-swap: if the row no longer matches, nothing
        changes and InvalidState says what the instance is doing.
        """
        unknown = set(values) - _UPDATABLE
        if unknown:
            raise InvalidRequest(f"cannot update instance fields {sorted(unknown)}")
        params = {f"b_{key}": _column_value(key, value) for key, value in values.items()}
        params.update(b_updated_at=utcnow(), b_uuid=uuid)
        with self._use(conn) as c:
            returning = c.dialect.update_returning  # SQLite >= 3.35, PostgreSQL
            query = _update_statement(tuple(sorted(values)), returning)
            if expected_task_state is not ANY or expected_vm_state is not ANY:
                query = _expect(query, instances.c.task_state, expected_task_state)
                query = _expect(query, instances.c.vm_state, expected_vm_state)
            if returning:  # the new record in the same round trip
                row = c.execute(query, params).mappings().first()
                if row is not None:
                    return InstanceRecord.from_row(row)
            elif c.execute(query, params).rowcount:
                return self.get_instance(uuid, conn=c)
            current = self.get_instance(uuid, conn=c)  # InstanceNotFound if gone
            raise InvalidState(
                f"instance {current.name} is {current.vm_state}"
                + (f" and busy ({current.task_state})" if current.task_state else ""),
                hint="wait for the running operation to finish, then retry; if the "
                "process running it died, clear it with `virtkit reset-state`",
            )

    def set_instance_fields(self, uuid: str, /, *, conn: sa.Connection | None = None,
                            **values: Any) -> None:
        """`update_instance` without reading the record back (InstanceNotFound if gone):
        for writers that do not use it, e.g. recovery's re-home and power state."""
        unknown = set(values) - _UPDATABLE
        if unknown:
            raise InvalidRequest(f"cannot update instance fields {sorted(unknown)}")
        params = {f"b_{key}": _column_value(key, value) for key, value in values.items()}
        params.update(b_updated_at=utcnow(), b_uuid=uuid)
        with self._use(conn) as c:
            if not _set_fields_statement(tuple(sorted(values))).execute(c, params).rowcount:
                self.get_instance(uuid, conn=c)  # raises InstanceNotFound

    def delete_instance(self, uuid: str, *, conn: sa.Connection | None = None) -> None:
        """Soft-delete: keep the row (and its events) with vm_state DELETED; drop its devices."""
        now = utcnow()
        with self._use(conn) as c:
            result = c.execute(
                instances.update()
                .where(instances.c.uuid == uuid, instances.c.deleted_at.is_(None))
                .values(
                    vm_state=VmState.DELETED.value,
                    task_state=None,
                    power_state=PowerState.NOSTATE.value,
                    deleted_at=now,
                    updated_at=now,
                )
            )
            if result.rowcount == 0:
                raise InstanceNotFound(uuid)
            c.execute(block_devices.delete().where(block_devices.c.instance_uuid == uuid))
            c.execute(vifs.delete().where(vifs.c.instance_uuid == uuid))

    def purge_instance(self, uuid: str, *, conn: sa.Connection | None = None) -> None:
        """Remove the instance and everything attached to it for good."""
        with self._use(conn) as c:
            for table in (instance_events, block_devices, vifs):
                c.execute(table.delete().where(table.c.instance_uuid == uuid))
            c.execute(instances.delete().where(instances.c.uuid == uuid))

    # -- block devices -----------------------------------------------------------------------

    def add_block_device(
        self, instance_uuid: str, block_device: BlockDevice, *, conn: sa.Connection | None = None
    ) -> BlockDeviceRecord:
        """Record a volume attachment; the mountpoint must be free on that instance."""
        mountpoint = _normalise_mountpoint(block_device.mountpoint)
        with self._use(conn) as c:
            self.get_instance(instance_uuid, conn=c)
            taken = c.execute(
                sa.select(block_devices.c.id).where(
                    block_devices.c.instance_uuid == instance_uuid,
                    block_devices.c.mountpoint == mountpoint,
                )
            ).first()
            if taken:
                raise InvalidRequest(
                    f"mountpoint {mountpoint} of instance {instance_uuid} is already in use",
                    hint="detach that volume first or choose another mountpoint",
                )
            result = c.execute(
                block_devices.insert().values(
                    instance_uuid=instance_uuid,
                    volume_id=block_device.volume_id,
                    mountpoint=mountpoint,
                    connection_info=json.dumps(block_device.connection.to_connection_info()),
                    delete_on_termination=block_device.delete_on_termination,
                    disk_bus=block_device.disk_bus,
                    attached_at=utcnow(),
                )
            )
            (new_id,) = result.inserted_primary_key or (None,)
            row = c.execute(
                sa.select(block_devices).where(block_devices.c.id == new_id)
            ).mappings().one()
            return BlockDeviceRecord.from_row(row)

    def list_block_devices(
        self, instance_uuid: str, *, conn: sa.Connection | None = None
    ) -> list[BlockDeviceRecord]:
        query = (
            sa.select(block_devices)
            .where(block_devices.c.instance_uuid == instance_uuid)
            .order_by(block_devices.c.mountpoint)
        )
        with self._use(conn) as c:
            return [BlockDeviceRecord.from_row(row) for row in c.execute(query).mappings()]

    def find_block_device(
        self, instance_uuid: str, ref: str, *, conn: sa.Connection | None = None
    ) -> BlockDeviceRecord:
        """The attachment at mountpoint `ref` (vdb or /dev/vdb) or of volume id `ref`."""
        for record in self.list_block_devices(instance_uuid, conn=conn):
            if record.volume_id == ref or record.mountpoint == _normalise_mountpoint(ref):
                return record
        raise VolumeNotFound(
            f"instance {instance_uuid} has no volume at or with id {ref!r}",
            hint="'virtkit show NAME' lists its volumes",
        )

    def update_block_device(
        self,
        record_id: int,
        *,
        connection_info: Mapping[str, Any],
        conn: sa.Connection | None = None,
    ) -> None:
        """Replace an attachment's connection_info (e.g. refreshed for a new host)."""
        with self._use(conn) as c:
            c.execute(
                block_devices.update()
                .where(block_devices.c.id == record_id)
                .values(connection_info=json.dumps(dict(connection_info)))
            )

    def remove_block_device(self, record_id: int, *, conn: sa.Connection | None = None) -> None:
        with self._use(conn) as c:
            c.execute(block_devices.delete().where(block_devices.c.id == record_id))

    # -- vifs --------------------------------------------------------------------------------

    def add_vif(
        self, instance_uuid: str, vif: Vif, *, conn: sa.Connection | None = None
    ) -> VifRecord:
        with self._use(conn) as c:
            self.get_instance(instance_uuid, conn=c)
            if c.execute(sa.select(vifs.c.id).where(vifs.c.id == vif.id)).first():
                raise InvalidRequest(f"vif {vif.id} is already recorded")
            c.execute(
                vifs.insert().values(
                    id=vif.id,
                    instance_uuid=instance_uuid,
                    address=vif.address,
                    network=vif.network,
                    bridge=vif.bridge,
                    model=vif.model,
                    created_at=utcnow(),
                )
            )
        return VifRecord(vif.id, instance_uuid, vif.address, vif.network, vif.bridge, vif.model)

    def list_vifs(self, instance_uuid: str, *, conn: sa.Connection | None = None) -> list[VifRecord]:
        query = sa.select(vifs).where(vifs.c.instance_uuid == instance_uuid).order_by(vifs.c.id)
        with self._use(conn) as c:
            return [VifRecord.from_row(row) for row in c.execute(query).mappings()]

    def remove_vif(self, vif_id: str, *, conn: sa.Connection | None = None) -> None:
        with self._use(conn) as c:
            c.execute(vifs.delete().where(vifs.c.id == vif_id))

    # -- hosts -------------------------------------------------------------------------------

    def heartbeat(
        self,
        name: str,
        *,
        driver: str | None = None,
        status: str | None = None,
        conn: sa.Connection | None = None,
    ) -> HostRecord:
        """Record that `name` is alive now (creating the host row, status UP, if needed).

        An existing host keeps its status (a host marked fenced or disabled stays so)
        unless `status` is given.
        """
        now = utcnow()
        values: dict[str, Any] = {"driver": driver, "last_seen": now, "updated_at": now}
        if status is not None:
            values["status"] = str(status)
        with self._use(conn) as c:
            updated = c.execute(hosts.update().where(hosts.c.name == name).values(**values)).rowcount
            if not updated:
                c.execute(
                    hosts.insert().values(
                        name=name, driver=driver, status=str(status or HostStatus.UP),
                        last_seen=now, created_at=now, updated_at=now,
                    )
                )
            return self.get_host(name, conn=c)

    def set_host_status(self, name: str, status: str, *, conn: sa.Connection | None = None) -> None:
        with self._use(conn) as c:
            result = c.execute(
                hosts.update()
                .where(hosts.c.name == name)
                .values(status=str(status), updated_at=utcnow())
            )
            if result.rowcount == 0:
                raise InvalidRequest(f"host {name!r} is not recorded in the state store")

    def get_host(self, name: str, *, conn: sa.Connection | None = None) -> HostRecord:
        with self._use(conn) as c:
            row = c.execute(sa.select(hosts).where(hosts.c.name == name)).mappings().first()
        if row is None:
            raise InvalidRequest(f"host {name!r} is not recorded in the state store")
        return HostRecord.from_row(row)

    def list_hosts(self, *, conn: sa.Connection | None = None) -> list[HostRecord]:
        with self._use(conn) as c:
            rows = c.execute(sa.select(hosts).order_by(hosts.c.name)).mappings()
            return [HostRecord.from_row(row) for row in rows]

    # -- events ------------------------------------------------------------------------------

    def add_event(
        self,
        instance_uuid: str,
        event_name: str,
        *,
        detail: str | None = None,
        host: str | None = None,
        timestamp: Any = None,
        conn: sa.Connection | None = None,
    ) -> None:
        """Append to the instance's history (a lifecycle transition or an action)."""
        with self._use(conn) as c:
            c.execute(
                instance_events.insert().values(
                    instance_uuid=instance_uuid,
                    event=event_name,
                    timestamp=timestamp or utcnow(),
                    host=host,
                    detail=detail,
                )
            )

    def list_events(
        self, instance_uuid: str, *, conn: sa.Connection | None = None
    ) -> list[EventRecord]:
        query = (
            sa.select(instance_events)
            .where(instance_events.c.instance_uuid == instance_uuid)
            .order_by(instance_events.c.id)
        )
        with self._use(conn) as c:
            return [EventRecord.from_row(row) for row in c.execute(query).mappings()]


@functools.lru_cache(maxsize=128)
def _update_statement(keys: tuple[str, ...], returning: bool) -> sa.Update:
    """UPDATE of a live instance's `keys` (and updated_at), bound as b_<key> and b_uuid.

    Built once per set of keys: building a statement costs more than running it on SQLite.
    """
    columns = (*keys, "updated_at")
    query = (
        instances.update()
        .where(instances.c.uuid == sa.bindparam("b_uuid"), instances.c.deleted_at.is_(None))
        .values({key: sa.bindparam(f"b_{key}", type_=instances.c[key].type) for key in columns})
    )
    return query.returning(instances) if returning else query


@functools.lru_cache(maxsize=128)
def _set_fields_statement(keys: tuple[str, ...]) -> DirectStatement:
    """`_update_statement` without RETURNING, run directly: recovery runs it twice per
    instance."""
    return DirectStatement(_update_statement(keys, False))


def _expect(query: sa.Update, column: sa.Column[Any], expected: Any) -> sa.Update:
    if expected is ANY:
        return query
    choices = expected if isinstance(expected, tuple | list | set | frozenset) else (expected,)
    values = [str(v) for v in choices if v is not None]
    clauses = []
    if values:
        clauses.append(column.in_(values))
    if any(v is None for v in choices):
        clauses.append(column.is_(None))
    return query.where(sa.or_(*clauses))
