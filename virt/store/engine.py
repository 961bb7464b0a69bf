"""Engine set-up of the state store: the URL, per-backend connection options and timeouts,
SQLite's connection and file set-up, and database errors as StoreError."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.pool import StaticPool

from virt.errors import ConfigError, StoreError
from virt.masking import remember

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


def make_engine(url: str) -> sa.Engine:
    """An engine for the store at `url`: SQLite set up for concurrent writers, a server
    database with bounded waits (ConfigError if the URL or its driver is unusable)."""
    parsed = database_url(url)
    options: dict[str, Any] = {"hide_parameters": True, "future": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        if database in ("", ":memory:"):
            options["poolclass"] = StaticPool
        else:
            private_sqlite_file(Path(database).expanduser())
            # A file's connections are cheap, and threads may keep one each
            # (`kept_transaction`): never make a thread wait for one.
            options["max_overflow"] = -1
    else:
        options["pool_pre_ping"] = True
        options["connect_args"] = server_connect_args(parsed)
    remember(parsed.password)  # a driver's error may quote the URL back
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


def private_sqlite_file(path: Path) -> None:
    """A SQLite store's directory STATE_DIR_MODE (0711: not listable by others) when created
    here, its file (and -wal/-shm) 0600.

    The store holds volume connection_info with CHAP secrets. SQLite creates -wal and -shm
    with the database file's mode, so the file is created 0600 before SQLite opens it; an
    existing one readable by others is tightened.
    """
    if not path.parent.exists():
        from virt.config import STATE_DIR_MODE

        path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        path.parent.chmod(STATE_DIR_MODE)  # whatever the umask
    with contextlib.suppress(OSError):  # SQLite reports what it cannot open
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm", f"{path.name}-journal"):
        with contextlib.suppress(OSError):
            candidate = path.with_name(name)
            if stat.S_IMODE(candidate.stat().st_mode) & 0o077:
                candidate.chmod(0o600)


@contextlib.contextmanager
def store_errors(where: str) -> Iterator[None]:
    """Turn database errors into StoreError naming the store `where`, without parameters
    (they may hold secrets)."""
    try:
        yield
    except exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        raise StoreError(f"state store {where}: {reason}") from None
    except exc.SQLAlchemyError as error:
        raise StoreError(f"state store {where}: {type(error).__name__}") from None
