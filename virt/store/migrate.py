"""Migrations of the state store: bring a database to the schema this virtkit knows
(alembic, run programmatically on the scripts in `migrations/`), or check it without
changing it."""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from virt.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

LOG = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
VERSION_TABLE = "alembic_version"
# Any constant: serializes concurrent migrations on PostgreSQL.
_PG_LOCK_KEY = 0x76697274


def alembic_config() -> Config:
    """An alembic Config pointing at virtkit's migrations, read from no ini file."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revisions() -> set[str]:
    """The revisions a database must be at for this virtkit (as alembic computes them)."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def declared_heads() -> set[str]:
    """The head revisions, read from the version files without importing alembic.

    Importing alembic costs a third of a CLI command's start-up; this lets an up-to-date
    database (the common case) be recognised without it.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS_DIR.glob("*.py"):
        values = _module_constants(path, ("revision", "down_revision"))
        if isinstance(values.get("revision"), str):
            revisions.add(values["revision"])
        down = values.get("down_revision")
        parents.update([down] if isinstance(down, str) else list(down or ()))
    return revisions - parents


def _module_constants(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in names:
                try:
                    found[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return found


def current_revisions(conn: sa.Connection) -> set[str]:
    """The revisions recorded in the database (empty for a new one)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return set()
    rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return {row[0] for row in rows}


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this virtkit's migrations."""

    current: tuple[str, ...]
    head: tuple[str, ...]
    unknown: tuple[str, ...]  # revisions newer than this virtkit knows

    @property
    def up_to_date(self) -> bool:
        return set(self.current) == set(self.head)

    @property
    def state(self) -> str:
        if self.unknown:
            return "newer"
        if not self.current:
            return "empty"
        return "current" if self.up_to_date else "outdated"

    def as_dict(self) -> dict[str, Any]:
        return {"current": list(self.current), "head": list(self.head),
                "state": self.state, "up_to_date": self.up_to_date}


def status(engine: sa.Engine) -> SchemaStatus:
    """The schema's revisions and this virtkit's (imports alembic: for `virtkit db`)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    with engine.connect() as conn:
        current = current_revisions(conn)
    return SchemaStatus(
        current=tuple(sorted(current)),
        head=tuple(sorted(script.get_heads())),
        unknown=tuple(sorted(rev for rev in current if not _known(script, rev))),
    )


def require_current(engine: sa.Engine, where: str) -> None:
    """Refuse a database whose schema is not this virtkit's (without changing it)."""
    with engine.connect() as conn:
        current = current_revisions(conn)
    heads = declared_heads()
    if current == heads:
        return
    known = _all_revisions()
    newer = sorted(rev for rev in current if rev not in known)
    if newer:
        raise StoreError(
            f"the state store {where} has schema revision {', '.join(newer)}, newer than "
            f"this virtkit knows (latest {', '.join(sorted(heads))})",
            hint="upgrade virtkit on this host, or point state_connection at another database",
        )
    have = ", ".join(sorted(current)) or "no schema"
    raise StoreError(
        f"the state store {where} is at {have}, older than this virtkit needs "
        f"({', '.join(sorted(heads))}), and db_auto_upgrade is off",
        hint="run `virtkit db upgrade` once every host sharing it runs this virtkit",
    )


def _all_revisions() -> set[str]:
    revisions = set()
    for path in VERSIONS_DIR.glob("*.py"):
        revision = _module_constants(path, ("revision",)).get("revision")
        if isinstance(revision, str):
            revisions.add(revision)
    return revisions


def upgrade(engine: sa.Engine, where: str) -> None:
    """Migrate the database to the head revisions; refuse a schema newer than ours.

    The check-and-upgrade runs in one transaction that excludes other writers (BEGIN
    IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so two processes opening a new
    database at once migrate it once.
    """
    with engine.connect() as conn:
        if current_revisions(conn) == declared_heads():
            return
    _upgrade_with_alembic(engine, where)


def _upgrade_with_alembic(engine: sa.Engine, where: str) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

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
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
