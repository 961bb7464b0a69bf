"""Fixed Core statements run straight on the DBAPI cursor of a store transaction.

For the few statements a hot path runs several times per instance (the recovery journal's):
a whole SQLAlchemy execution (cache lookup, execution context, events, result object) costs
several times what SQLite itself spends on a small UPDATE or INSERT. SQLAlchemy still
writes the SQL, once per dialect, and converts the values with the dialect's own bind
processors; the transaction, its commit and rollback stay SQLAlchemy's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.sql.compiler import SQLCompiler


class DirectStatement:
    """`statement` compiled once per dialect; parameters keyed by bind name (for an INSERT
    or UPDATE of plain columns, the column names given as `columns`).

    No engine events fire and no Result is built: `execute` hands back the DBAPI cursor.
    Database errors come out as SQLAlchemy's DBAPIError, parameters hidden, as from
    `Connection.execute`.
    """

    def __init__(self, statement: sa.ClauseElement, *, columns: Sequence[str] = ()) -> None:
        self.statement = statement
        self.columns = tuple(columns)
        self._prepared: dict[tuple[str, str], _Prepared] = {}

    def execute(self, conn: sa.Connection, params: Mapping[str, Any]) -> Any:
        """Run it once; returns the cursor (for `rowcount`, `fetchone`)."""
        prepared = self._prepare(conn.dialect)
        return self._run(conn, prepared, "execute", prepared.values(params))

    def executemany(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run it once per row, in one DBAPI call."""
        prepared = self._prepare(conn.dialect)
        self._run(conn, prepared, "executemany", [prepared.values(row) for row in rows]).close()

    def _prepare(self, dialect: sa.Dialect) -> _Prepared:
        key = (dialect.name, dialect.driver)
        prepared = self._prepared.get(key)
        if prepared is None:  # two threads may both compile: the same result, harmless
            prepared = self._prepared[key] = _Prepared(self.statement, dialect, self.columns)
        return prepared

    @staticmethod
    def _run(conn: sa.Connection, prepared: _Prepared, method: str, values: Any) -> Any:
        dialect = conn.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        cursor = conn.connection.cursor()
        try:
            getattr(cursor, method)(prepared.sql, values)
        except dbapi_error as error:
            if dialect.is_disconnect(error, conn.connection, cursor):
                conn.invalidate(error)
            raise exc.DBAPIError.instance(prepared.sql, None, error, dbapi_error,
                                          hide_parameters=True, dialect=dialect) from None
        return cursor


class _Prepared:
    """The SQL of one statement for one dialect, and how to turn parameters into values."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect,
                 columns: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) or None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self._positional = compiled.positional
        self._names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(
            compiled.binds)
        #: Per value: its bind name, the dialect's conversion, and the value when the
        #: statement fixes it (e.g. `state == 'claimed'`), already converted.
        self._plan: list[tuple[str, Callable[[Any], Any] | None, Any]] = []
        for name in self._names:
            bind = compiled.binds[name]
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required or name in columns:
                self._plan.append((name, processor, _GIVEN))
            else:
                value = bind.value if processor is None else processor(bind.value)
                self._plan.append((name, None, value))

    def values(self, params: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        values = [
            value if value is not _GIVEN
            else params[name] if processor is None else processor(params[name])
            for name, processor, value in self._plan
        ]
        return tuple(values) if self._positional else dict(zip(self._names, values, strict=True))


_GIVEN = object()  # a value the caller gives
