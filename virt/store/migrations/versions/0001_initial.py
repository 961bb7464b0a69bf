"""The initial schema: instances, block_devices, vifs, hosts, instance_events.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _instances()
    _block_devices()
    _vifs()
    _hosts()
    _instance_events()


def _owned_by_instance() -> sa.Column:
    return sa.Column("instance_uuid", sa.String(36),
                     sa.ForeignKey("instances.uuid", ondelete="CASCADE"), nullable=False)


def _instances() -> None:
    op.create_table(
        "instances",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
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
    op.create_index("ix_instances_name", "instances", ["name"])
    op.create_index("ix_instances_host", "instances", ["host"])


def _block_devices() -> None:
    op.create_table(
        "block_devices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _owned_by_instance(),
        sa.Column("volume_id", sa.String(255), nullable=True),
        sa.Column("mountpoint", sa.String(64), nullable=False),
        sa.Column("connection_info", sa.Text, nullable=False),
        sa.Column("delete_on_termination", sa.Boolean, nullable=False),
        sa.Column("disk_bus", sa.String(32), nullable=True),
        sa.Column("attached_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("instance_uuid", "mountpoint", name="uq_block_devices_mountpoint"),
    )
    op.create_index("ix_block_devices_instance_uuid", "block_devices", ["instance_uuid"])


def _vifs() -> None:
    op.create_table(
        "vifs",
        sa.Column("id", sa.String(255), primary_key=True),
        _owned_by_instance(),
        sa.Column("address", sa.String(17), nullable=False),
        sa.Column("network", sa.String(255), nullable=True),
        sa.Column("bridge", sa.String(255), nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_vifs_instance_uuid", "vifs", ["instance_uuid"])


def _hosts() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("driver", sa.String(64), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("last_seen", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def _instance_events() -> None:
    op.create_table(
        "instance_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _owned_by_instance(),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.DateTime, nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_instance_events_instance_uuid", "instance_events", ["instance_uuid"])


def downgrade() -> None:
    op.drop_table("instance_events")
    op.drop_table("hosts")
    op.drop_table("vifs")
    op.drop_table("block_devices")
    op.drop_table("instances")
