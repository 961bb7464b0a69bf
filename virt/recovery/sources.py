"""Where recovery reads instances from and writes re-homing to: the virtkit store or Nova's DB."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from virt.errors import (
    ConfigError,
    InstanceMoved,
    InstanceNotFound,
    InvalidRequest,
    StoreError,
)
from virt.lifecycle import vm_state_for
from virt.masking import remember
from virt.model import Flavor, ImageRef, Instance, PowerState, TaskState, VmState
from virt.store import (
    BlockDeviceRecord,
    InstanceRecord,
    Store,
    database_url,
    driver_hint,
    server_connect_args,
)

ROOT_DEVICES = frozenset({"vda", "sda", "xvda", "hda"})


@dataclass(frozen=True)
class VolumeRef:
    """One attached volume as the source records it. connection_info holds secrets."""

    row_id: int | None
    volume_id: str | None
    mountpoint: str
    connection_info: Mapping[str, Any] = field(repr=False)
    disk_bus: str | None = None

    @property
    def device(self) -> str:
        return self.mountpoint.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Candidate:
    """An instance to recover, as the source knows it."""

    uuid: str
    name: str
    host: str | None
    vm_state: str
    should_run: bool
    flavor: Flavor
    image: ImageRef | None
    metadata: Mapping[str, str]
    volumes: tuple[VolumeRef, ...]
    #: Why it cannot be spawned here (image not resolved, boots from a volume), if so.
    problem: str | None = None

    def instance(self, host: str) -> Instance:
        return Instance(uuid=self.uuid, name=self.name, flavor=self.flavor, image=self.image,
                        host=host, metadata=self.metadata)


class InstanceSource(Protocol):
    """What recovery needs from a database of instances."""

    description: str

    def candidates(self, host: str, uuids: Sequence[str] = ()) -> list[Candidate]: ...

    def get(self, uuid: str) -> Candidate: ...

    def joins(self, store: Store) -> bool:
        """True if writes can join a transaction of `store` (`conn=` below)."""
        ...

    def rehome(self, uuid: str, *, host: str, node: str | None, from_host: str,
               conn: sa.Connection | None = None) -> None:
        """Record the instance on `host`; InstanceMoved if it is on neither `from_host`
        nor `host` by now."""
        ...

    def refresh_volume(self, uuid: str, volume: VolumeRef, connection_info: Mapping[str, Any],
                       conn: sa.Connection | None = None) -> None: ...

    def begin_recovery(self, uuid: str, *, host: str, conn: sa.Connection | None = None) -> None:
        """Mark the instance as being recovered by `host` (its claim was just taken)."""
        ...

    def end_recovery(self, uuid: str, *, conn: sa.Connection | None = None) -> None:
        """Clear that mark: the claim was given back with nothing changed."""
        ...

    def record_result(self, uuid: str, *, power_state: PowerState | None,
                      fault: str | None = None, conn: sa.Connection | None = None) -> None:
        """The outcome: the power state found after it (the vm_state follows from it), or
        the fault of a failed recovery. Clears the `recovering` mark."""
        ...


class StoreSource:
    """Instances in virtkit's own state store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.description = f"virtkit store {store.where}"

    def _candidate(self, record: InstanceRecord, conn: sa.Connection,
                   devices: Sequence[BlockDeviceRecord] | None = None) -> Candidate:
        if devices is None:
            devices = self.store.list_block_devices(record.uuid, conn=conn)
        volumes = tuple(
            VolumeRef(b.id, b.volume_id, b.mountpoint, dict(b.connection_info), b.disk_bus)
            for b in devices
        )
        return Candidate(
            uuid=record.uuid, name=record.name, host=record.host, vm_state=record.vm_state,
            should_run=record.vm_state == VmState.ACTIVE, flavor=record.flavor,
            image=record.image, metadata=dict(record.metadata), volumes=volumes,
        )

    def candidates(self, host: str, uuids: Sequence[str] = ()) -> list[Candidate]:
        wanted = set(uuids)
        with self.store.transaction() as conn:
            records = self.store.list_instances(host=host, conn=conn)
            devices = self.store.block_devices_of_host(host, conn=conn)  # one query
            return [self._candidate(r, conn, devices.get(r.uuid, ())) for r in records
                    if not wanted or r.uuid in wanted]

    def get(self, uuid: str) -> Candidate:
        with self.store.transaction() as conn:
            return self._candidate(self.store.get_instance(uuid, conn=conn), conn)

    def joins(self, store: Store) -> bool:
        return store is self.store

    def rehome(self, uuid: str, *, host: str, node: str | None, from_host: str,
               conn: sa.Connection | None = None) -> None:
        # The claim in this same store already makes the recoverer the only writer.
        self.store.set_instance_fields(uuid, host=host, node=node, conn=conn)

    def refresh_volume(self, uuid: str, volume: VolumeRef, connection_info: Mapping[str, Any],
                       conn: sa.Connection | None = None) -> None:
        if volume.row_id is not None and dict(connection_info) != dict(volume.connection_info):
            self.store.update_block_device(volume.row_id, connection_info=connection_info,
                                           conn=conn)

    def begin_recovery(self, uuid: str, *, host: str, conn: sa.Connection | None = None) -> None:
        # Whatever task a dead process left is overridden: the claim decides who acts now.
        self.store.set_instance_fields(uuid, task_state=TaskState.RECOVERING, conn=conn)

    def end_recovery(self, uuid: str, *, conn: sa.Connection | None = None) -> None:
        self.store.set_instance_fields(uuid, task_state=None, conn=conn)

    def record_result(self, uuid: str, *, power_state: PowerState | None,
                      fault: str | None = None, conn: sa.Connection | None = None) -> None:
        # A failed recovery keeps vm_state (what the instance should be) so a retry knows
        # whether to start it; the fault says what went wrong.
        values: dict[str, Any] = {"task_state": None, "fault": fault}
        if power_state is not None:
            values["power_state"] = power_state
            if not fault:
                values["vm_state"] = vm_state_for(power_state, VmState.STOPPED)
        self.store.set_instance_fields(uuid, conn=conn, **values)


# Nova's power_state integers (nova/compute/power_state.py).
NOVA_POWER_STATES = {0: PowerState.NOSTATE, 1: PowerState.RUNNING, 3: PowerState.PAUSED,
                     4: PowerState.SHUTDOWN, 6: PowerState.CRASHED, 7: PowerState.SUSPENDED}


class NovaSource:
    """A Nova database: `instances` and `block_device_mapping` with Nova's column names.

    Only `instances.host` and `instances.node` are ever written.
    """

    def __init__(self, url: str, *, image_dir: str | None = None) -> None:
        self.image_dir = image_dir or None
        # A plain mysql:// is PyMySQL and postgresql:// psycopg 3, as for state_connection.
        parsed = database_url(url, what="--nova-db")
        remember(parsed.password)
        try:
            self.engine = sa.create_engine(parsed, hide_parameters=True, pool_pre_ping=True,
                                           connect_args=server_connect_args(parsed))
        except ImportError as exc:
            raise ConfigError(
                f"--nova-db {parsed.drivername}: its driver is not installed ({exc})",
                hint=driver_hint(parsed)) from None
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"--nova-db is not a usable SQLAlchemy URL: {exc}") from None
        self.description = f"Nova database {self.engine.url.render_as_string(hide_password=True)}"
        try:
            meta = sa.MetaData()
            self.instances = sa.Table("instances", meta, autoload_with=self.engine)
            self.bdms = sa.Table("block_device_mapping", meta, autoload_with=self.engine)
        except sa.exc.NoSuchTableError as exc:
            raise ConfigError(f"{self.description} has no table {exc}",
                              hint="--nova-db must point at Nova's cell database") from None
        except sa.exc.DBAPIError as exc:
            raise StoreError(f"cannot read {self.description}: {_first_line(exc)}") from None

    def _candidate(self, row: Mapping[Any, Any], conn: sa.Connection) -> Candidate:
        bdm = self.bdms.c
        rows = conn.execute(
            sa.select(self.bdms).where(
                bdm.instance_uuid == row["uuid"], bdm.deleted == 0,
                bdm.destination_type == "volume", bdm.connection_info.isnot(None),
            ).order_by(bdm.device_name)
        ).mappings().all()
        volumes, bad_volume = _nova_volumes(rows)
        flavor, bad_flavor = _nova_flavor(row)
        image, problem = self._image(row["image_ref"], rows)
        problem = bad_flavor or bad_volume or problem
        return Candidate(
            uuid=row["uuid"], name=f"instance-{row['id']:08x}", host=row["host"],
            vm_state=row["vm_state"], should_run=row["vm_state"] == "active",
            flavor=flavor, image=image, metadata={"nova_display_name": row["display_name"] or ""},
            volumes=volumes, problem=problem,
        )

    def _image(self, image_ref: str | None, bdms: Sequence[Mapping[Any, Any]]
               ) -> tuple[ImageRef | None, str | None]:
        """The image to spawn from, or why there is none: a Glance id is looked up in
        `image_dir`, Nova's image cache (`_base/<sha1 of the id>`) or files named by the id."""
        if not image_ref:
            root = next((b for b in bdms if b.get("boot_index") == 0), None)
            what = f" {root['volume_id']} at {root['device_name']}" if root is not None else ""
            return None, (f"it boots from volume{what} (no image_ref): virtkit-recover cannot "
                          "spawn from a root volume; evacuate it with Nova or by hand")
        if self.image_dir is None:
            return ImageRef(image_ref), None  # the driver resolves it (or says it cannot)
        path = nova_image_path(self.image_dir, image_ref)
        if path is None:
            return None, (f"its image {image_ref} is not in nova_image_dir {self.image_dir} "
                          f"(looked for {nova_cache_name(image_ref)} and {image_ref}): copy "
                          "the image there or point nova_image_dir at Nova's _base")
        return ImageRef(path), None

    def candidates(self, host: str, uuids: Sequence[str] = ()) -> list[Candidate]:
        c = self.instances.c
        query = sa.select(self.instances).where(c.host == host, c.deleted == 0).order_by(c.id)
        if uuids:
            query = query.where(c.uuid.in_(list(uuids)))
        with self._conn() as conn:
            return [self._candidate(r, conn) for r in conn.execute(query).mappings().all()]

    def get(self, uuid: str) -> Candidate:
        c = self.instances.c
        with self._conn() as conn:
            row = conn.execute(sa.select(self.instances).where(c.uuid == uuid, c.deleted == 0)
                               ).mappings().first()
            if row is None:
                raise InstanceNotFound(uuid, hint="not in the Nova database")
            return self._candidate(row, conn)

    def joins(self, store: Store) -> bool:
        return False  # another database: its writes commit on their own

    def rehome(self, uuid: str, *, host: str, node: str | None, from_host: str,
               conn: sa.Connection | None = None) -> None:
        # Compare-and-set: recoverers with separate stores (or Nova itself) may share this
        # database, and only one of them may take the instance.
        rows = self.instances.c
        with self._conn() as nova:
            changed = nova.execute(
                self.instances.update()
                .where(rows.uuid == uuid, rows.host.in_([from_host, host]))
                .values(host=host, node=node or host)).rowcount
            if not changed:
                where = nova.execute(sa.select(rows.host).where(rows.uuid == uuid)).scalar()
                raise InstanceMoved(uuid, where)

    def refresh_volume(self, uuid: str, volume: VolumeRef, connection_info: Mapping[str, Any],
                       conn: sa.Connection | None = None) -> None:
        """Nova's rows are Nova's: connection_info is not written back."""

    def begin_recovery(self, uuid: str, *, host: str, conn: sa.Connection | None = None) -> None:
        """Nova's task_state is Nova's: the claim in virtkit's store is the mark."""

    def end_recovery(self, uuid: str, *, conn: sa.Connection | None = None) -> None:
        """Nothing was marked in Nova's database."""

    def record_result(self, uuid: str, *, power_state: PowerState | None,
                      fault: str | None = None, conn: sa.Connection | None = None) -> None:
        """Nova's own power-state sync records the state; only host/node are ours to write."""

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sa.Connection]:
        """A transaction on the Nova DB; its errors become StoreError without parameters."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            raise StoreError(f"{self.description}: {_first_line(exc)}") from None


#: What a Nova row that cannot be recovered as it is gets as its flavor (it is released
#: with its `problem` before anything is made of it).
_UNUSABLE_FLAVOR = Flavor(name="nova-unusable", vcpus=1, memory_mb=1)


def _nova_flavor(row: Mapping[Any, Any]) -> tuple[Flavor, str | None]:
    """The flavor of a Nova instance row, or a placeholder and why the row has none."""
    try:
        return Flavor(name=f"nova-{row['vcpus']}c-{row['memory_mb']}m", vcpus=row["vcpus"],
                      memory_mb=row["memory_mb"], root_gb=row["root_gb"] or 0,
                      ephemeral_gb=row["ephemeral_gb"] or 0), None
    except InvalidRequest as exc:
        return _UNUSABLE_FLAVOR, f"its Nova row has no usable size: {exc.message}"


def _nova_volumes(rows: Sequence[Mapping[Any, Any]]) -> tuple[tuple[VolumeRef, ...], str | None]:
    """The volumes of Nova BDM rows, and what is wrong with the first unreadable one."""
    volumes: list[VolumeRef] = []
    for b in rows:
        try:
            info = json.loads(b["connection_info"])
        except (TypeError, ValueError, RecursionError) as exc:
            return (), (f"the connection_info of its volume at {b['device_name']} (Nova BDM "
                        f"{b['id']}) is not valid JSON: {getattr(exc, 'msg', type(exc).__name__)}")
        if not isinstance(info, Mapping):
            return (), (f"the connection_info of its volume at {b['device_name']} (Nova BDM "
                        f"{b['id']}) is not a JSON object")
        volumes.append(VolumeRef(b["id"], b["volume_id"], b["device_name"], info,
                                 b.get("disk_bus")))
    return tuple(volumes), None


def nova_cache_name(image_id: str) -> str:
    """The file name Nova's libvirt image cache gives an image (imagecache.get_cache_fname)."""
    return hashlib.sha1(image_id.encode("utf-8"), usedforsecurity=False).hexdigest()


def nova_image_path(image_dir: str, image_id: str) -> str | None:
    """The image file of a Glance id in `image_dir`, None if it is not there. A Glance id
    never holds a path separator; one that does is not looked up."""
    if "/" in image_id or image_id in (".", ".."):
        return None
    for name in (nova_cache_name(image_id), image_id):
        path = os.path.join(image_dir, name)
        if os.path.isfile(path):
            return path
    return None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
