"""The state store's tables (SQLAlchemy Core) and the instance state vocabularies.

These Table objects describe the schema the migrations in `virt/migrations/` create; they
are for queries only. A schema change is a new migration plus the matching edit here.
"""

from __future__ import annotations

import enum

import sqlalchemy as sa

metadata = sa.MetaData()


class VmState(enum.StrEnum):
    """Nova's vm_states: what the instance is, as the service sees it."""

    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    RESCUED = "rescued"
    ERROR = "error"
    DELETED = "deleted"


class TaskState(enum.StrEnum):
    """Nova's task_states: the operation in progress (None when idle)."""

    SPAWNING = "spawning"
    DELETING = "deleting"
    POWERING_OFF = "powering-off"
    POWERING_ON = "powering-on"
    REBOOTING = "rebooting"
    REBOOTING_HARD = "rebooting_hard"
    PAUSING = "pausing"
    UNPAUSING = "unpausing"
    SUSPENDING = "suspending"
    RESUMING = "resuming"
    IMAGE_SNAPSHOT = "image_snapshot"
    UPDATING_PASSWORD = "updating_password"
    ATTACHING_VOLUME = "attaching_volume"
    DETACHING_VOLUME = "detaching_volume"
    REBUILDING = "rebuilding"


class HostStatus(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    FENCED = "fenced"
    DISABLED = "disabled"


instances = sa.Table(
    "instances",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("host", sa.String(255), nullable=True, index=True),
    sa.Column("node", sa.String(255), nullable=True),
    sa.Column("vm_state", sa.String(32), nullable=False),
    sa.Column("task_state", sa.String(32), nullable=True),
    sa.Column("power_state", sa.String(16), nullable=False),
    sa.Column("flavor", sa.JSON, nullable=False),
    sa.Column("image", sa.JSON, nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("fault", sa.Text, nullable=True),
    sa.Column("launched_at", sa.DateTime, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("deleted_at", sa.DateTime, nullable=True),
)

block_devices = sa.Table(
    "block_devices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "instance_uuid",
        sa.String(36),
        sa.ForeignKey("instances.uuid", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("volume_id", sa.String(255), nullable=True),
    sa.Column("mountpoint", sa.String(64), nullable=False),
    # Nova's JSON text, byte-compatible with a Nova block_device_mapping row.
    sa.Column("connection_info", sa.Text, nullable=False),
    sa.Column("delete_on_termination", sa.Boolean, nullable=False),
    sa.Column("disk_bus", sa.String(32), nullable=True),
    sa.Column("attached_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("instance_uuid", "mountpoint", name="uq_block_devices_mountpoint"),
)

vifs = sa.Table(
    "vifs",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column(
        "instance_uuid",
        sa.String(36),
        sa.ForeignKey("instances.uuid", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("address", sa.String(17), nullable=False),
    sa.Column("network", sa.String(255), nullable=True),
    sa.Column("bridge", sa.String(255), nullable=True),
    sa.Column("model", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("driver", sa.String(64), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("last_seen", sa.DateTime, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

instance_events = sa.Table(
    "instance_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "instance_uuid",
        sa.String(36),
        sa.ForeignKey("instances.uuid", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("timestamp", sa.DateTime, nullable=False),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)
