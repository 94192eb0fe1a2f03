"""The SQL connector on real databases: SQLite (sync and async drivers) and, when
SLUICE_TEST_POSTGRES_URL is set, Postgres (see tests/_database.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from core.errors import IntegrationError
from integrations.base import Found, Row
from integrations.sql import SQL, Table
from tests._database import database_url


def _schema(dialect: str) -> list[str]:
    key = "id serial primary key" if dialect == "postgresql" else "id integer primary key"
    return [
        f"create table contacts ({key}, name varchar(100) not null, email varchar(200), "
        "budget numeric(12, 2), signed_on date, active boolean default true)",
        "create table notes (body text)",
        "insert into contacts (name, email, budget, signed_on, active) values "
        "('Ana', 'ana@example.com', 5000, '2026-01-15', true), "
        "('Bo', 'bo@example.com', null, null, false)",
    ]


@pytest.fixture(params=["sqlite-sync", "database"])
async def sql(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQL]:
    """A connector on a fresh database: a sync SQLite URL, or the suite's (aiosqlite/Postgres)."""
    async with database_url(tmp_path) as async_url:
        engine = create_async_engine(async_url)
        async with engine.begin() as conn:
            for statement in _schema(engine.dialect.name):
                await conn.execute(sa.text(statement))
        await engine.dispose()
        url = f"sqlite:///{tmp_path / 'sluice.db'}" if (
            request.param == "sqlite-sync" and async_url.startswith("sqlite")) else async_url
        connector = SQL(url)
        yield connector
        await connector.aclose()


async def test_tables_rows_and_describe(sql: SQL) -> None:
    assert await sql.tables() == ["contacts", "notes"]
    contacts = await sql.table("Contacts")
    assert isinstance(contacts, Table) and contacts.key == "contacts"
    rows = await contacts.rows()
    assert [r.id for r in rows] == ["1", "2"]
    assert rows[0] == {"id": 1, "name": "Ana", "email": "ana@example.com",
                       "budget": Decimal("5000.00"), "signed_on": dt.date(2026, 1, 15),
                       "active": True}
    assert [r.id for r in await contacts.rows(limit=1)] == ["1"]
    described = await sql.describe()
    assert described["contacts"] == {
        "columns": ["id", "name", "email", "budget", "signed_on", "active"], "rows": 2,
        "row_ids": "column 'id'",
        "types": {"id": {"type": "integer"}, "budget": {"type": "number"},
                  "signed_on": {"type": "date"}, "active": {"type": "boolean"}},
    }
    assert described["notes"]["row_ids"] == "none: no primary key, use sql.execute() to change rows"


async def test_update_and_append_coerce_values_to_column_types(sql: SQL) -> None:
    contacts = await sql.table("contacts")
    row = await contacts.update("2", {"Budget": "$1,200.50", "signed on": "12 March 2026",
                                      "active": "yes"})
    assert row == Row("2", {"id": 2, "name": "Bo", "email": "bo@example.com",
                            "budget": Decimal("1200.50"), "signed_on": dt.date(2026, 3, 12),
                            "active": True})
    again = await contacts.update(row, {"budget": 1200.5})
    assert again == row
    added = await contacts.append({"name": "Cy", "email": "cy@example.com"})
    assert added.id == "3" and added["active"] is True  # the table's default
    assert [r.id for r in await contacts.find(active=True)] == ["1", "2", "3"]
    assert [r.id for r in await contacts.find(budget=None)] == ["3"]
    assert [r.id for r in await contacts.find(Signed_On="2026-03-12")] == ["2"]


async def test_confirm_update_tells_an_applied_update_from_one_not_done(sql: SQL) -> None:
    contacts = await sql.table("contacts")
    values = {"Budget": "$1,200.50", "signed on": "12 March 2026"}
    assert await contacts.confirm_update("2", values) == Found(done=False)
    stored = await contacts.update("2", values)
    assert await contacts.confirm_update("2", values) == Found(done=True, result=stored)
    await contacts.update("2", {"budget": 7})  # changed since
    assert await contacts.confirm_update("2", values) == Found(done=False)
    with pytest.raises(IntegrationError, match="no row '9'"):
        await contacts.confirm_update("9", values)


async def test_confirm_append_looks_the_row_up_by_the_key_it_gives(sql: SQL) -> None:
    contacts = await sql.table("contacts")
    values = {"id": "7", "name": "Cy", "budget": "$90"}
    assert await contacts.confirm_append(values) == Found(done=False)
    stored = await contacts.append(values)
    assert await contacts.confirm_append(values) == Found(done=True, result=stored)
    assert await contacts.confirm_append({"id": 7, "name": "Dee"}) is None  # another row's key
    assert await contacts.confirm_append({"name": "Cy"}) is None  # a key the database picks
    assert [r.id for r in await contacts.rows()] == ["1", "2", "7"]  # looking inserted nothing


async def test_values_that_do_not_fit_say_what_to_pass(sql: SQL) -> None:
    contacts = await sql.table("contacts")
    with pytest.raises(IntegrationError) as info:
        await contacts.update("1", {"signed_on": "03/04/2026"})
    assert info.value.message == (
        "'03/04/2026' for column 'signed_on' of the table 'contacts' could be 3 April 2026 or "
        "4 March 2026. Pass a date, e.g. date(2026, 4, 3), or ISO text '2026-04-03' or "
        "'2026-03-04'.")
    with pytest.raises(IntegrationError, match=r"has no column 'budjet_total'\. Columns: id, name"):
        await contacts.update("1", {"budjet_total": 1})
    with pytest.raises(IntegrationError, match="holds numbers; 'lots' is not one"):
        await contacts.append({"name": "Di", "budget": "lots"})
    with pytest.raises(IntegrationError, match="has no row '9'"):
        await contacts.update("9", {"name": "Nobody"})
    with pytest.raises(IntegrationError, match=r"There is no table 'contact_list'\. Tables: "
                                               r"contacts, notes\."):
        await sql.table("contact_list")
    notes = await sql.table("notes")
    with pytest.raises(IntegrationError, match="has no primary key"):
        await notes.update("row-1", {"body": "x"})
    assert [r["budget"] for r in await contacts.rows()] == [Decimal("5000.00"), None]


async def test_queries_are_parameterised_and_cannot_write(sql: SQL) -> None:
    found = await sql.query("select name, budget from contacts where budget > :least",
                            least=100)
    assert found == [{"name": "Ana", "budget": Decimal("5000.00")}]
    hostile = "x'; drop table contacts; --"
    assert await sql.query("select id from contacts where name = :n", n=hostile) == []
    assert await (await sql.table("contacts")).find(name=hostile) == []
    with pytest.raises(IntegrationError, match=r"only reads; use sql\.execute"):
        await sql.query("delete from contacts")
    with pytest.raises(IntegrationError, match="only reads"):
        await sql.query("drop table notes")
    assert await sql.tables() == ["contacts", "notes"]
    changed = await sql.execute("update contacts set email = :e where name = :n",
                                e="ana@new.example", n="Ana")
    assert changed == 1
    assert (await sql.query("select email from contacts where id = 1")) == [
        {"email": "ana@new.example"}]
    with pytest.raises(IntegrationError, match=r"failed: .*(no such column|does not exist)"):
        await sql.query("select nope from contacts")
