"""Bring a state-store database to the schema this virtkit knows (alembic, programmatic)."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from virt.errors import StoreError

LOG = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant: serializes concurrent migrations on PostgreSQL.
_PG_LOCK_KEY = 0x76697274


def alembic_config() -> Config:
    """An alembic Config pointing at virtkit's migrations, read from no ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revisions() -> set[str]:
    """The revisions a database must be at for this virtkit."""
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(conn: sa.Connection) -> set[str]:
    """The revisions recorded in the database (empty for a new one)."""
    return set(MigrationContext.configure(conn).get_current_heads())


def upgrade(engine: sa.Engine, where: str) -> None:
    """Migrate the database to the head revisions; refuse a schema newer than ours.

    The whole check-and-upgrade runs in one transaction that excludes other writers
    (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so two processes opening a
    new database at once migrate it once.
    """
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        current = current_revisions(conn)
        if current == heads:
            return
        unknown = sorted(rev for rev in current if not _known(script, rev))
        if unknown:
            raise StoreError(
                f"the state store {where} has schema revision {', '.join(unknown)}, newer than "
                f"this virtkit knows (latest {', '.join(sorted(heads))})",
                hint="upgrade virtkit on this host, or point state_connection at another database",
            )
        LOG.info("migrating state store %s from %s to %s", where, sorted(current) or "empty",
                 sorted(heads))
        config.attributes["connection"] = conn
        command.upgrade(config, "heads")


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
