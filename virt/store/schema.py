"""The state store's tables (SQLAlchemy Core): instances and what hangs off them, hosts,
and recovery's claims and journal.

One MetaData for the whole store. These Table objects describe the schema the migrations in
`virt/store/migrations/` create; they are for queries only (a unit test compares them with
the migrated database). A schema change is a new migration plus the matching edit here.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

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

# -- recovery (migration 0002): who recovers which instance, and each step it took -----------

recovery_claims = sa.Table(
    "recovery_claims",
    metadata,
    # Not a foreign key: with --nova-db the instance lives in Nova's database.
    sa.Column("instance_uuid", sa.String(36), primary_key=True),
    sa.Column("claim_id", sa.String(36), nullable=False, unique=True),
    sa.Column("source_host", sa.String(255), nullable=False),
    sa.Column("target_host", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("claimed_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

recovery_journal = sa.Table(
    "recovery_journal",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("claim_id", sa.String(36), nullable=False, index=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("instance_uuid", sa.String(36), nullable=False, index=True),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("timestamp", sa.DateTime, nullable=False),
)
