"""Recovery: claims (who recovers which instance) and the recovery journal.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recovery_claims",
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
    op.create_table(
        "recovery_journal",
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


def downgrade() -> None:
    op.drop_table("recovery_journal")
    op.drop_table("recovery_claims")
