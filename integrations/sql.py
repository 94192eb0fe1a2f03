"""SQL databases: tables with the same row API as sheets, and parameterised queries.

See ARCHITECTURE.md, "AI-friendly integrations". Any SQLAlchemy URL works: async drivers
(`sqlite+aiosqlite`, `postgresql+asyncpg`) run on the event loop, sync ones (`sqlite:///`) in a
thread. A table's rows are addressed by primary key (`row.id` is its text) and its columns by name,
matched forgivingly as in sheets; values are coerced to the column's SQL type
(`integrations.coercion`). Table and column names only ever reach SQL after they were matched
against the reflected schema; values always travel as bound parameters.

`query()` runs in a transaction that is rolled back (and read-only where the database can say so),
so a read can never change data; `execute()` is the write.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import difflib
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.errors import IntegrationError
from core.settings import Settings
from integrations.base import Found, Integration, Resource, Row, action
from integrations.coercion import Field, coerce, describe_fields, match_name, options
from integrations.registry import CredentialField, Service, named
from integrations.vault import Credentials

T = TypeVar("T")
_DESCRIBE_TABLES = 50


def engine_for(url: str) -> AsyncEngine | Engine:
    """An engine for any SQLAlchemy URL; a bare `postgresql://` gets the asyncpg driver.

    Raises:
        IntegrationError: the URL cannot be parsed or names a driver that is not installed.
    """
    try:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+asyncpg")
        if getattr(parsed.get_dialect(), "is_async", False):
            return create_async_engine(parsed, pool_pre_ping=True)
        return sa.create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise IntegrationError(f"The database URL cannot be used ({type(exc).__name__}). Give a "
                               "SQLAlchemy URL such as postgresql+asyncpg://user:password@host/db "
                               "or sqlite:///path/to/file.db.") from None


def _field(column: sa.Column[Any]) -> Field:
    kind = column.type
    read_only = bool(column.computed is not None)
    if isinstance(kind, sa.Enum) and kind.enums:
        return Field(column.name, "choice", options=options(kind.enums), read_only=read_only)
    for sql_type, field_type in _TYPES:
        if isinstance(kind, sql_type):
            return Field(column.name, field_type, read_only=read_only,
                         required=not column.nullable and column.default is None
                         and column.server_default is None and not column.primary_key)
    return Field(column.name, read_only=read_only)


_TYPES: tuple[tuple[type[Any], Any], ...] = (
    (sa.Boolean, "boolean"), (sa.Integer, "integer"), (sa.Numeric, "number"),
    (sa.Float, "number"), (sa.DateTime, "datetime"), (sa.Date, "date"),
)


def _plain(value: Any) -> Any:
    """A database value as something that crosses the sandbox boundary."""
    if value is None or isinstance(value, bool | int | float | str | Decimal | dt.date):
        return value
    if isinstance(value, uuid.UUID | dt.time | dt.timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _database_error(exc: DBAPIError, what: str) -> IntegrationError:
    """The database's own complaint (first line, no SQL echo, no parameters)."""
    original = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    return IntegrationError(f"{what} failed: {original[:300]}", database_error=original[:300])


class Table(Resource):
    """One table of a SQL database. Get one with `sql.table(name)`."""

    @action("read")
    async def rows(self, *, limit: int | None = None) -> list[Row]:
        """The table's rows in primary-key order (the first `limit` when given).

        Each Row is a dict of column name -> value, plus `row.id`: the primary key as text
        ("42"; "a|b" for a key of several columns). For large tables prefer find() or
        sql.query() with a WHERE clause.
        """
        if limit is not None and limit < 0:
            raise IntegrationError(f"limit must be 0 or more, not {limit}.")
        return await self._db().read(lambda conn: self._db().select_rows(conn, self.key, {},
                                                                         limit))

    @action("read")
    async def columns(self) -> list[str]:
        """The column names, in table order."""
        return [c.name for c in (await self._db().table_schema(self.key)).columns]

    @action("read")
    async def find(self, **equals: Any) -> list[Row]:
        """The rows whose columns equal all the given values, e.g. find(email="ana@example.com").

        Values are converted to the column's type ("42" finds 42, "2026-03-12" a date); None
        finds NULL. Column names are matched ignoring case and small typos.
        """
        return await self._db().read(lambda conn: self._db().select_rows(conn, self.key, equals,
                                                                         None))

    @action("write", preview="update {n} table rows", idempotent=True)
    async def update(self, row: Row | str, values: dict[str, Any]) -> Row:
        """Set some columns of one row and return the row as now stored.

        `row` is a Row from rows()/find() or its id (the primary key as text). `values` maps
        column name -> new value, converted to the column's type ("$1,200" for a numeric
        column, "12 March 2026" for a date, a near-miss enum value); a value that does not fit
        raises IntegrationError saying what to pass. Updating to the same values again is a
        no-op.
        """
        row_id = row.id if isinstance(row, Row) else str(row)
        return await self._db().write(lambda conn: self._db().update_row(conn, self.key, row_id,
                                                                         values))

    async def confirm_update(self, row: Row | str, values: dict[str, Any]) -> Found:
        """After a crash: done when the row already holds `values` (converted as update()
        converts them), else not done (or changed since)."""
        row_id = row.id if isinstance(row, Row) else str(row)
        stored = await self._db().read(lambda conn: self._db().holding(conn, self.key, row_id,
                                                                       values))
        return Found(done=False) if stored is None else Found(done=True, result=stored)

    @action("write", preview="insert {n} table rows")
    async def append(self, values: dict[str, Any]) -> Row:
        """Insert one row and return it as stored (with defaults filled in and its `row.id`).

        `values` maps column name -> value, converted as in update(). Columns left out get the
        table's default (or NULL).
        """
        return await self._db().write(lambda conn: self._db().insert_row(conn, self.key, values))

    async def confirm_append(self, values: dict[str, Any]) -> Found | None:
        """After a crash: when `values` hold the whole primary key, done when that row exists
        holding them, not done when there is no such row. Otherwise (a key the database picks,
        or a row with that key but other values) there is no telling."""
        return await self._db().read(lambda conn: self._db().inserted(conn, self.key, values))

    def _db(self) -> SQL:
        if not isinstance(self.owner, SQL):
            raise IntegrationError(f"The table handle '{self.key}' is not connected to a "
                                   "database.")
        return self.owner


class SQL(Integration):
    """A SQL database: read and write tables by row, and run parameterised SQL."""

    name = "sql"
    summary = "SQL database: tables as rows by primary key, parameterised queries."
    resources = (Table,)

    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        self.dialect = self.engine.dialect.name
        self._schemas: dict[str, sa.Table] = {}

    @action("read")
    async def tables(self) -> list[str]:
        """The names of the tables there are."""
        return await self.read(lambda conn: sorted(sa.inspect(conn).get_table_names()))

    @action("read")
    async def table(self, name: str) -> Table:
        """The table called `name` (case does not matter), to read and change its rows.

        Raises IntegrationError listing the tables when there is none by that name.
        """
        return Table(await self.read(lambda conn: self._resolve(conn, name)), self)

    @action("read")
    async def query(self, statement: str, /, **params: Any) -> list[dict[str, Any]]:
        """Run a SELECT and return its rows as dicts of column -> value.

        Pass values as named parameters, never inside the text:
        sql.query("select * from orders where total > :least and status = :status",
        least=100, status="open"). The query runs in a transaction that is rolled back, so it
        cannot change data; use sql.execute() for INSERT, UPDATE and DELETE.
        """
        def run(conn: Connection) -> list[dict[str, Any]]:
            self._read_only(conn, on=True)
            try:
                result = conn.execute(sa.text(statement), params)
                if not result.returns_rows:
                    raise IntegrationError("sql.query() is for statements that return rows; "
                                           "use sql.execute() for ones that change data.")
                return [{k: _plain(v) for k, v in r.items()} for r in result.mappings()]
            finally:
                self._read_only(conn, on=False)

        return await self.read(run, what="sql.query() (it only reads; use sql.execute() to "
                                         "change data)")

    @action("write", preview="run {n} SQL statements")
    async def execute(self, statement: str, /, **params: Any) -> int:
        """Run one INSERT, UPDATE, DELETE (or DDL) statement and return how many rows it changed.

        Pass values as named parameters: sql.execute("update orders set status = :s where id
        = :id", s="paid", id=42). It is committed when it succeeds.
        """
        def run(conn: Connection) -> int:
            return max(conn.execute(sa.text(statement), params).rowcount, 0)

        self._schemas.clear()  # it may have changed the schema
        return await self.write(run, what="sql.execute()")

    async def describe(self) -> dict[str, Any]:
        """{table: {"columns", "rows" (count), "row_ids", "types"}}, like sheets."""
        return await self.read(self._describe)

    async def aclose(self) -> None:
        if isinstance(self.engine, AsyncEngine):
            await self.engine.dispose()
        else:
            await asyncio.to_thread(self.engine.dispose)

    # Running work on a connection, whatever the driver.

    async def read(self, work: Callable[[Connection], T], *, what: str = "The read") -> T:
        """`work(connection)` in a transaction that is rolled back."""
        return await self._run(work, commit=False, what=what)

    async def write(self, work: Callable[[Connection], T], *, what: str = "The write") -> T:
        """`work(connection)` in a transaction that is committed when it returns."""
        return await self._run(work, commit=True, what=what)

    async def _run(self, work: Callable[[Connection], T], *, commit: bool, what: str) -> T:
        try:
            if isinstance(self.engine, AsyncEngine):
                async with self.engine.connect() as conn:
                    result = await conn.run_sync(work)
                    if commit:
                        await conn.commit()
                    return result
            return await asyncio.to_thread(self._run_sync, self.engine, work, commit)
        except DBAPIError as exc:
            raise _database_error(exc, what) from None
        except SQLAlchemyError as exc:
            raise IntegrationError(f"{what} failed ({type(exc).__name__}).") from None

    @staticmethod
    def _run_sync(engine: Engine, work: Callable[[Connection], T], commit: bool) -> T:
        with engine.connect() as conn:
            result = work(conn)
            if commit:
                conn.commit()
            return result

    def _read_only(self, conn: Connection, *, on: bool) -> None:
        """Make the transaction read-only (SQLite runs DDL outside transactions: a pragma)."""
        if self.dialect == "postgresql" and on:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif self.dialect == "sqlite":
            conn.exec_driver_sql(f"PRAGMA query_only = {int(on)}")

    # Schema.

    def _resolve(self, conn: Connection, name: str) -> str:
        names = sa.inspect(conn).get_table_names()
        index = match_name(names, str(name), cutoff=0.9)  # tables differ by little more often
        if index is not None:
            return names[index]
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise IntegrationError(f"There is no table '{name}'. Tables: "
                               f"{', '.join(sorted(names)) or 'none'}.{hint}", table=name,
                               tables=sorted(names))

    def schema(self, conn: Connection, name: str) -> sa.Table:
        if name not in self._schemas:
            self._schemas[name] = sa.Table(name, sa.MetaData(), autoload_with=conn)
        return self._schemas[name]

    async def table_schema(self, name: str) -> sa.Table:
        return await self.read(lambda conn: self.schema(conn, name))

    def _describe(self, conn: Connection) -> dict[str, Any]:
        described: dict[str, Any] = {}
        for name in sorted(sa.inspect(conn).get_table_names())[:_DESCRIBE_TABLES]:
            table = self.schema(conn, name)
            keys = [c.name for c in table.primary_key.columns]
            count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            entry: dict[str, Any] = {
                "columns": [c.name for c in table.columns],
                "rows": count,
                "row_ids": f"column '{keys[0]}'" if len(keys) == 1 else (
                    f"columns {', '.join(keys)} joined with '|'" if keys else
                    "none: no primary key, use sql.execute() to change rows"),
            }
            types = describe_fields(_field(c) for c in table.columns)
            if types:
                entry["types"] = types
            described[name] = entry
        return described

    # Rows.

    def select_rows(self, conn: Connection, name: str, equals: dict[str, Any],
                    limit: int | None) -> builtins.list[Row]:
        table = self.schema(conn, name)
        query = sa.select(table)
        for column, value in self._values(table, equals).items():
            query = query.where(column.is_(None) if value is None else column == value)
        keys = builtins.list(table.primary_key.columns)
        query = query.order_by(*keys) if keys else query
        if limit is not None:
            query = query.limit(limit)
        rows = conn.execute(query).mappings().all()
        return [self._row(table, dict(r), n) for n, r in enumerate(rows, start=1)]

    def update_row(self, conn: Connection, name: str, row_id: str,
                   values: dict[str, Any]) -> Row:
        table = self.schema(conn, name)
        where = self._where_id(table, row_id)
        changes = {c.name: v for c, v in self._values(table, values).items()}
        if changes:
            changed = conn.execute(sa.update(table).where(where).values(changes)).rowcount
        else:
            changed = conn.execute(sa.select(sa.func.count()).select_from(table)
                                   .where(where)).scalar_one()
        if not changed:
            raise _no_row(name, row_id)
        found = conn.execute(sa.select(table).where(where)).mappings().one()
        return self._row(table, dict(found), 0)

    def holding(self, conn: Connection, name: str, row_id: str,
                values: dict[str, Any]) -> Row | None:
        """The row `row_id` when it already holds `values` (converted as `update_row` converts
        them), else None."""
        table = self.schema(conn, name)
        found = conn.execute(sa.select(table).where(self._where_id(table, row_id))
                             ).mappings().one_or_none()
        if found is None:
            raise _no_row(name, row_id)
        return self._if_holding(table, found, self._values(table, values))

    def inserted(self, conn: Connection, name: str, values: dict[str, Any]) -> Found | None:
        """Whether `insert_row(values)` was done, told by the primary key it gives (see
        `Table.confirm_append`)."""
        table = self.schema(conn, name)
        wanted = self._values(table, values)
        keys = builtins.list(table.primary_key.columns)
        if not keys or any(wanted.get(key) is None for key in keys):
            return None
        where = sa.and_(*(key == wanted[key] for key in keys))
        found = conn.execute(sa.select(table).where(where)).mappings().one_or_none()
        if found is None:
            return Found(done=False)
        stored = self._if_holding(table, found, wanted)
        return None if stored is None else Found(done=True, result=stored)

    def _if_holding(self, table: sa.Table, found: Any,
                    wanted: dict[sa.Column[Any], Any]) -> Row | None:
        """The stored row `found` as a Row when it holds the `wanted` values, else None."""
        if all(found[column.name] == value for column, value in wanted.items()):
            return self._row(table, dict(found), 0)
        return None

    def insert_row(self, conn: Connection, name: str, values: dict[str, Any]) -> Row:
        table = self.schema(conn, name)
        changes = {c.name: v for c, v in self._values(table, values).items()}
        result = conn.execute(sa.insert(table).values(changes))
        keys = builtins.list(table.primary_key.columns)
        if not keys:
            return self._row(table, {c.name: changes.get(c.name) for c in table.columns}, 0)
        ids = result.inserted_primary_key or ()
        where = sa.and_(*(k == v for k, v in zip(keys, ids, strict=True)))
        found = conn.execute(sa.select(table).where(where)).mappings().one()
        return self._row(table, dict(found), 0)

    def _values(self, table: sa.Table, values: dict[str, Any]) -> dict[sa.Column[Any], Any]:
        if not isinstance(values, dict):
            raise IntegrationError("values must be a dict of column name -> value, for example "
                                   "{'status': 'paid'}.")
        names = [c.name for c in table.columns]
        result: dict[sa.Column[Any], Any] = {}
        for name, value in values.items():
            index = match_name(names, str(name))
            if index is None:
                raise _no_column(table, str(name))
            column = table.columns[names[index]]
            where = f"column '{column.name}' of the table '{table.name}'"
            result[column] = coerce(_field(column), value, where=where)
        return result

    def _where_id(self, table: sa.Table, row_id: str) -> sa.ColumnElement[bool]:
        keys = builtins.list(table.primary_key.columns)
        if not keys:
            raise IntegrationError(f"The table '{table.name}' has no primary key, so its rows "
                                   "have no identity. Change them with sql.execute(\"update "
                                   f"{table.name} set ... where ...\", ...).", table=table.name)
        parts = row_id.split("|") if len(keys) > 1 else [row_id]
        if len(parts) != len(keys):
            raise IntegrationError(f"Row ids of the table '{table.name}' have {len(keys)} parts "
                                   f"joined with '|' ({', '.join(k.name for k in keys)}); got "
                                   f"{row_id!r}.", table=table.name, row=row_id)
        where = f"the id of a row of the table '{table.name}'"
        return sa.and_(*(k == coerce(_field(k), part, where=where)
                         for k, part in zip(keys, parts, strict=True)))

    @staticmethod
    def _row(table: sa.Table, values: dict[str, Any], n: int) -> Row:
        keys = [c.name for c in table.primary_key.columns]
        row_id = "|".join(str(_plain(values[k])) for k in keys) if keys else f"row-{n}"
        return Row(row_id, {k: _plain(v) for k, v in values.items()})


def _no_column(table: sa.Table, name: str) -> IntegrationError:
    names = [c.name for c in table.columns]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return IntegrationError(f"The table '{table.name}' has no column '{name}'. Columns: "
                            f"{', '.join(names)}.{hint}", table=table.name, column=name,
                            columns=names)


def _from_credentials(credentials: Credentials, settings: Settings) -> Integration:
    return named(SQL, credentials.name)(credentials["url"])


SERVICE = Service(
    name="sql",
    summary="Any SQL database SQLAlchemy can reach (Postgres, SQLite, MySQL with its driver).",
    fields=(CredentialField("url", "SQLAlchemy URL, e.g. postgresql+asyncpg://user:password@"
                                   "host/db or sqlite:////path/to/file.db", secret=True),),
    factory=_from_credentials,
)


def _no_row(table: str, row_id: str) -> IntegrationError:
    return IntegrationError(f"The table '{table}' has no row '{row_id}' (row ids are the primary "
                            "key). Use a row from table.rows() or table.find().",
                            table=table, row=row_id)
