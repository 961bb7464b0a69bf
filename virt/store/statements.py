"""The statements the store facade builds from parts: instance updates (built once per set
of columns), compare-and-swap conditions, and the joins of block devices with their
instances."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from virt.model import PowerState, TaskState, VmState
from virt.store.direct import DirectStatement
from virt.store.records import flavor_to_json, image_to_json
from virt.store.schema import block_devices, instances


class _Any:
    def __repr__(self) -> str:
        return "ANY"


#: "Do not check" for `expected_task_state` / `expected_vm_state`.
ANY: Any = _Any()

#: The columns `Store.update_instance` may change.
UPDATABLE = frozenset(
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


def normalise_mountpoint(mountpoint: str) -> str:
    """`vdb` as `/dev/vdb`; a `/dev/` path unchanged."""
    return mountpoint if mountpoint.startswith("/dev/") else f"/dev/{mountpoint}"


def column_value(key: str, value: Any) -> Any:
    """An `instances` column's value from a model or vocabulary value."""
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


@functools.lru_cache(maxsize=128)
def update_statement(keys: tuple[str, ...], returning: bool) -> sa.Update:
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
def set_fields_statement(keys: tuple[str, ...]) -> DirectStatement:
    """`update_statement` without RETURNING, run directly: recovery runs it twice per
    instance."""
    return DirectStatement(update_statement(keys, False))


def expect(query: sa.Update, column: sa.Column[Any], expected: Any) -> sa.Update:
    """`query` only where `column` is `expected` (a value, None, or a collection of them)."""
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


#: The live instances (other than `b_uuid`) a volume is attached to.
ATTACHMENTS_OF_VOLUME = (
    sa.select(instances.c.uuid, instances.c.name, instances.c.host, block_devices.c.mountpoint,
              block_devices.c.connection_info)
    .join(instances, instances.c.uuid == block_devices.c.instance_uuid)
    .where(block_devices.c.volume_id == sa.bindparam("b_volume"),
           instances.c.deleted_at.is_(None), instances.c.uuid != sa.bindparam("b_uuid"))
    .order_by(instances.c.name, instances.c.uuid)
)

#: The block devices of every live instance of host `b_host`, by instance, by mountpoint.
DEVICES_OF_HOST = (
    sa.select(block_devices)
    .join(instances, instances.c.uuid == block_devices.c.instance_uuid)
    .where(instances.c.host == sa.bindparam("b_host"), instances.c.deleted_at.is_(None))
    .order_by(block_devices.c.instance_uuid, block_devices.c.mountpoint)
)
