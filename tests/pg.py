"""A fresh PostgreSQL (or MariaDB) database on the test bed, per test, dropped afterwards.

Use `pg_url` as a fixture (import it into a conftest or test module), or `fresh_database()` /
`fresh_mysql_database()` directly. The servers come from VIRTKIT_TEST_PG_URL and
VIRTKIT_TEST_MYSQL_URL (written by scripts/testbed).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.testbed import env, require


@contextlib.contextmanager
def fresh_database(base_url: str) -> Iterator[str]:
    """Create a uniquely named database next to `base_url`'s, yield its URL, drop it."""
    base = sa.make_url(base_url)
    name = f"virtkit_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        require(False, f"PostgreSQL at {base.render_as_string()} ({exc.orig})")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database."""
    with fresh_database(env("VIRTKIT_TEST_PG_URL")) as url:
        yield url


@contextlib.contextmanager
def fresh_mysql_database(base_url: str) -> Iterator[str]:
    """A uniquely named database on the test bed's MariaDB, dropped afterwards."""
    base = sa.make_url(base_url)
    name = f"virtkit_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as exc:
        admin.dispose()
        require(False, f"MariaDB at {base.render_as_string()} ({exc.orig})")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()
