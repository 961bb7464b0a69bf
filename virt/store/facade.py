"""The state store facade: what the compute service knows about instances, volumes, VIFs,
hosts and recoveries, behind typed methods.

SQLite by default (one host), any SQLAlchemy URL by `[DEFAULT] state_connection`
(PostgreSQL when several hosts share it). The schema comes from the alembic migrations in
`virt/store/migrations/`, applied on open. Every method runs in its own transaction unless
given `conn=`, a connection from `Store.transaction()`, to join a larger one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg
from sqlalchemy.pool import StaticPool

from virt.errors import InstanceNotFound, InvalidRequest, InvalidState, VolumeNotFound
from virt.model import (
    BlockDevice,
    HostStatus,
    Instance,
    PowerState,
    Vif,
    VmState,
    validate_uuid,
)
from virt.store import migrate as _migrate
from virt.store.engine import make_engine, store_errors
from virt.store.records import (
    AttachmentRecord,
    BlockDeviceRecord,
    EventRecord,
    HostRecord,
    InstanceRecord,
    VifRecord,
    flavor_to_json,
    image_to_json,
    utcnow,
)
from virt.store.schema import block_devices, hosts, instance_events, instances, metadata, vifs
from virt.store.sealing import Sealer
from virt.store.statements import (
    ANY,
    ATTACHMENTS_OF_VOLUME,
    DEVICES_OF_HOST,
    UPDATABLE,
    column_value,
    expect,
    normalise_mountpoint,
    set_fields_statement,
    update_statement,
)

LOG = logging.getLogger(__name__)


class Store:
    """Typed access to the state store."""

    def __init__(self, url: str, *, migrate: bool = True, check_schema: bool = True,
                 secret_key_file: str | os.PathLike[str] | None = None) -> None:
        """Open the store; `migrate` upgrades its schema, else `check_schema` refuses an
        outdated one (StoreError: run `virtkit db upgrade`). With `secret_key_file` the
        secrets of volumes' connection_info are sealed with that key (virt.store.sealing);
        without it they are written as they are and sealed ones cannot be read."""
        self.url = url
        self._sealer = Sealer(secret_key_file)
        self.engine = make_engine(url)
        self._kept: list[sa.Connection] = []
        self._kept_lock = threading.Lock()
        self._local = threading.local()
        self.where = self.engine.url.render_as_string(hide_password=True)
        self.metadata = metadata
        if migrate or check_schema:
            with self._errors():
                if migrate:
                    _migrate.upgrade(self.engine, self.where)
                else:
                    _migrate.require_current(self.engine, self.where)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, *, migrate: bool | None = None) -> Store:
        """The store named by `[DEFAULT] state_connection`, its schema upgraded on open
        unless `[DEFAULT] db_auto_upgrade` (or `migrate`) is False, secrets sealed with
        `[DEFAULT] secret_key_file`."""
        return cls(conf.state_connection,
                   migrate=conf.db_auto_upgrade if migrate is None else migrate,
                   secret_key_file=conf.secret_key_file)

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

    # -- schema ------------------------------------------------------------------------------

    def schema_status(self) -> _migrate.SchemaStatus:
        """Where this database's schema stands against this virtkit's migrations (imports
        alembic: for `virtkit db`, not for every open)."""
        with self._errors():
            return _migrate.status(self.engine)

    def upgrade_schema(self) -> None:
        """Migrate the database to this virtkit's schema (StoreError if it is newer)."""
        with self._errors():
            _migrate.upgrade(self.engine, self.where)

    # -- transactions ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn database errors into StoreError, without parameters (they may hold secrets)."""
        with store_errors(self.where):
            yield

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
        """Record a new instance (its uuid must be new) and return the record as stored."""
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
            if c.dialect.insert_returning:  # the record as stored, in the same round trip
                row = c.execute(instances.insert().values(**values).returning(instances))
                return InstanceRecord.from_row(row.mappings().one())
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
        unknown = set(values) - UPDATABLE
        if unknown:
            raise InvalidRequest(f"cannot update instance fields {sorted(unknown)}")
        params = {f"b_{key}": column_value(key, value) for key, value in values.items()}
        params.update(b_updated_at=utcnow(), b_uuid=uuid)
        with self._use(conn) as c:
            returning = c.dialect.update_returning  # SQLite >= 3.35, PostgreSQL
            query = update_statement(tuple(sorted(values)), returning)
            if expected_task_state is not ANY or expected_vm_state is not ANY:
                query = expect(query, instances.c.task_state, expected_task_state)
                query = expect(query, instances.c.vm_state, expected_vm_state)
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
        unknown = set(values) - UPDATABLE
        if unknown:
            raise InvalidRequest(f"cannot update instance fields {sorted(unknown)}")
        params = {f"b_{key}": column_value(key, value) for key, value in values.items()}
        params.update(b_updated_at=utcnow(), b_uuid=uuid)
        with self._use(conn) as c:
            if not set_fields_statement(tuple(sorted(values))).execute(c, params).rowcount:
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
        mountpoint = normalise_mountpoint(block_device.mountpoint)
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
                    connection_info=self._sealer.dump(
                        block_device.connection.to_connection_info()),
                    delete_on_termination=block_device.delete_on_termination,
                    disk_bus=block_device.disk_bus,
                    attached_at=utcnow(),
                )
            )
            (new_id,) = result.inserted_primary_key or (None,)
            row = c.execute(
                sa.select(block_devices).where(block_devices.c.id == new_id)
            ).mappings().one()
            return self._device(row)

    def list_block_devices(
        self, instance_uuid: str, *, conn: sa.Connection | None = None
    ) -> list[BlockDeviceRecord]:
        query = (
            sa.select(block_devices)
            .where(block_devices.c.instance_uuid == instance_uuid)
            .order_by(block_devices.c.mountpoint)
        )
        with self._use(conn) as c:
            return [self._device(row) for row in c.execute(query).mappings()]

    def find_block_device(
        self, instance_uuid: str, ref: str, *, conn: sa.Connection | None = None
    ) -> BlockDeviceRecord:
        """The attachment at mountpoint `ref` (vdb or /dev/vdb) or of volume id `ref`."""
        for record in self.list_block_devices(instance_uuid, conn=conn):
            if record.volume_id == ref or record.mountpoint == normalise_mountpoint(ref):
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
                .values(connection_info=self._sealer.dump(connection_info))
            )

    def remove_block_device(self, record_id: int, *, conn: sa.Connection | None = None) -> None:
        with self._use(conn) as c:
            c.execute(block_devices.delete().where(block_devices.c.id == record_id))

    def attachments_of_volume(
        self, volume_id: str, *, excluding_uuid: str | None = None,
        conn: sa.Connection | None = None,
    ) -> list[AttachmentRecord]:
        """The live instances volume `volume_id` is attached to (but `excluding_uuid`), by
        instance name."""
        params = {"b_volume": volume_id, "b_uuid": excluding_uuid or ""}
        with self._use(conn) as c:
            return [AttachmentRecord.from_row(row, connection_info=self._sealer.load(
                        row["connection_info"], what=f"volume {volume_id} of {row['name']}"))
                    for row in c.execute(ATTACHMENTS_OF_VOLUME, params).mappings()]

    def block_devices_of_host(
        self, host: str, *, conn: sa.Connection | None = None
    ) -> dict[str, list[BlockDeviceRecord]]:
        """The block devices of every live instance of `host` in one query: by instance uuid,
        each list by mountpoint (as `list_block_devices` orders it)."""
        found: dict[str, list[BlockDeviceRecord]] = {}
        with self._use(conn) as c:
            for row in c.execute(DEVICES_OF_HOST, {"b_host": host}).mappings():
                found.setdefault(row["instance_uuid"], []).append(self._device(row))
        return found

    def _device(self, row: Mapping[Any, Any]) -> BlockDeviceRecord:
        what = f"block device {row['id']} of instance {row['instance_uuid']}"
        return BlockDeviceRecord.from_row(
            row, connection_info=self._sealer.load(row["connection_info"], what=what))

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

