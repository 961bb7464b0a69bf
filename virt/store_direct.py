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
        self._order: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None)
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor
        # Values fixed in the statement itself (e.g. `state == 'claimed'`).
        self._fixed = {name: bind.value for name, bind in compiled.binds.items()
                       if not bind.required and name not in columns}

    def values(self, params: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        merged = {**self._fixed, **params}
        for name, processor in self._processors.items():
            if name in merged:
                merged[name] = processor(merged[name])
        if self._order is None:
            return merged
        return tuple(merged[name] for name in self._order)
