"""The sheet API shared by the hosted spreadsheet connectors (Google Sheets, Airtable).

ARCHITECTURE.md, "AI-friendly integrations": the same calls as the local sheet
(`integrations.sheets`): `sheets.open(name)` returns a `Sheet` whose rows are addressed by identity
and columns by header. A backend supplies three things: the sheet names, a snapshot of one sheet
(`Table`), and the two writes (set cells of a row, add a row). Column matching, no-op detection,
value checks and error messages live here, so every backend behaves the same.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import difflib
from dataclasses import dataclass, field
from typing import Any

from core.errors import IntegrationError
from integrations.base import Found, Integration, Resource, Row, action
from integrations.coercion import check_cell_value
from integrations.saas._match import match_name


@dataclass
class Table:
    """A snapshot of one sheet: its columns, left to right, and its rows, top to bottom.

    `types` and `options` hold what the backend knows of each column (for `describe()` and
    coercion); `extra` is backend bookkeeping (for example sheet row numbers by row id).
    """

    name: str
    columns: list[str]
    rows: list[Row]
    types: dict[str, str] = field(default_factory=dict)
    options: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, row_id: str) -> Row | None:
        return next((r for r in self.rows if r.id == row_id), None)

    def column(self, name: str) -> str | None:
        return match_name(self.columns, str(name))


def cell_text(value: Any) -> str | None:
    """A value as the text a spreadsheet would show (None for an empty cell)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, builtins.list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _same(cell: Any, wanted: Any) -> bool:
    return cell_text(cell) == cell_text(wanted)


def _change(table: Table, row: Row | str, values: dict[str, Any]
            ) -> tuple[Row, dict[str, Any], builtins.list[str]]:
    """The row `update(row, values)` changes, the values by the sheet's column names, and the
    columns to add. Raises IntegrationError for an unknown row or a bad value."""
    row_id = row.id if isinstance(row, Row) else str(row)
    current = table.row(row_id)
    if current is None:
        raise _no_row(table, row_id)
    resolved, new = resolve(table, values)
    return current, resolved, new


def _holds(current: Row, resolved: dict[str, Any], new: builtins.list[str]) -> bool:
    """Whether `current` already holds the values (an update to them changes nothing)."""
    return not new and all(_same(current.get(c), v) for c, v in resolved.items())


def no_column(table: Table, name: str) -> IntegrationError:
    close = difflib.get_close_matches(name, table.columns, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return IntegrationError(
        f"The sheet '{table.name}' has no column '{name}'. Columns: "
        f"{', '.join(table.columns)}.{hint}",
        sheet=table.name, column=name, columns=table.columns,
    )


def _no_row(table: Table, row_id: str) -> IntegrationError:
    return IntegrationError(
        f"The sheet '{table.name}' has no row '{row_id}'. Use a row from sheet.rows() or "
        "sheet.find(...).",
        sheet=table.name, row=row_id,
    )


def resolve(table: Table, values: dict[str, Any]) -> tuple[dict[str, Any], builtins.list[str]]:
    """`values` keyed by the sheet's own column names, and the names of columns to add."""
    if not isinstance(values, dict):
        raise IntegrationError("values must be a dict of column name to value, "
                               "for example {'Budget': 5000}.")
    resolved: dict[str, Any] = {}
    new: builtins.list[str] = []
    for name, value in values.items():
        check_cell_value(table.name, str(name), value)
        column = table.column(str(name))
        if column is None:
            column = str(name)
            if column not in new:
                new.append(column)
        resolved[column] = value
    return resolved, new


class Sheet(Resource):
    """One sheet (a tab or table) of the connected spreadsheet. Get one with `sheets.open(name)`."""

    @action("read")
    async def rows(self) -> list[Row]:
        """All data rows, top to bottom.

        Each Row is a dict of column header -> value, plus `row.id`, its stable identity (pass it
        to update()). Empty cells are None, so `if not row["Budget"]:` finds blanks. Numbers come
        back as numbers where the service stores them as numbers.
        """
        return (await self._owner().load(self.key)).rows

    @action("read")
    async def columns(self) -> list[str]:
        """The column headers, left to right."""
        return (await self._owner().load(self.key)).columns

    @action("write", preview="update {n} rows", idempotent=True)
    async def update(self, row: Row | str, values: dict[str, Any]) -> Row:
        """Set some cells of one row and return the row as now stored.

        `row` is a Row from rows()/find() or its id. `values` maps column header -> new value,
        e.g. {"Budget": 5000, "Asked on": today()}. Other cells and rows are left unchanged.
        Column names are matched forgivingly: case, spacing and small typos ("budget ", "Budjet")
        map to the existing column. A name that matches no column adds a new column at the right
        end. Use None or "" to clear a cell. Updating to the same values again is a no-op.
        """
        owner = self._owner()
        async with owner.lock:
            table = await owner.load(self.key)
            current, resolved, new = _change(table, row, values)
            if _holds(current, resolved, new):
                return current
            return await owner.write_row(table, current, resolved, new)

    async def confirm_update(self, row: Row | str, values: dict[str, Any]) -> Found:
        """After a crash: done when the row already holds `values` (updating it would change
        nothing), else not done (or changed since)."""
        owner = self._owner()
        async with owner.lock:
            table = await owner.load(self.key)
        current, resolved, new = _change(table, row, values)
        if _holds(current, resolved, new):
            return Found(done=True, result=current)
        return Found(done=False)

    @action("write", preview="add {n} rows")
    async def append(self, values: dict[str, Any]) -> Row:
        """Add one row at the bottom and return it (with its new `row.id`).

        `values` maps column header -> value; missing columns stay empty, unknown columns are
        added at the right end (names are matched as in update()).
        """
        owner = self._owner()
        async with owner.lock:
            table = await owner.load(self.key)
            resolved, new = resolve(table, values)
            return await owner.add_row(table, resolved, new)

    async def confirm_append(self, values: dict[str, Any]) -> Found | None:
        """After a crash: when the sheet has an "id" column and `values` an id for it, done when
        a row has that id and the values, not done when no row has that id. Otherwise there is
        no telling: a row without an id may be another row with the same values, and an append
        that adds columns may have stopped between adding them and adding the row."""
        owner = self._owner()
        async with owner.lock:
            table = await owner.load(self.key)
        resolved, new = resolve(table, values)
        column = next((c for c in table.columns if c.strip().casefold() == "id"), None)
        if column is None or new or cell_text(resolved.get(column)) is None:
            return None
        same_id = [r for r in table.rows if _same(r.get(column), resolved[column])]
        if not same_id:
            return Found(done=False)
        filled = {c: v for c, v in resolved.items() if cell_text(v) is not None}
        held = next((r for r in same_id if _holds(r, filled, new)), None)
        return None if held is None else Found(done=True, result=held)

    @action("read")
    async def find(self, **equals: Any) -> list[Row]:
        """The rows whose cells equal all the given values, e.g. find(Email="ana@example.com").

        Numbers match their text form (find(Budget=5000) finds "5000"); None or "" finds empty
        cells. For a column whose header is not a Python name, pass a dict:
        find(**{"Asked on": None}). An unknown column raises IntegrationError listing the columns.
        """
        table = await self._owner().load(self.key)
        wanted = []
        for name, value in equals.items():
            column = table.column(name)
            if column is None:
                raise no_column(table, name)
            wanted.append((column, value))
        return [r for r in table.rows if all(_same(r.get(c), v) for c, v in wanted)]

    def _owner(self) -> TabularSheets:
        if not isinstance(self.owner, TabularSheets):
            raise IntegrationError(f"The sheet handle '{self.key}' is not connected to sheets.")
        return self.owner


class TabularSheets(Integration):
    """Base of the hosted spreadsheet connectors; subclasses implement the four hooks below."""

    name = "sheets"
    resources = (Sheet,)

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    @action("read")
    async def list(self) -> builtins.list[str]:
        """The names of the sheets there are, e.g. ["leads", "signups"]."""
        return await self.sheet_names()

    @action("read")
    async def open(self, name: str) -> Sheet:
        """The sheet called `name` (case does not matter), to read and change its rows.

        Raises IntegrationError listing the sheets there are when no sheet has that name.
        """
        return Sheet(await self.resolve_name(name), self)

    async def describe(self) -> dict[str, Any]:
        """{sheet: {"columns": {name: type}, "options": {column: [...]}, "rows": count}}."""
        described: dict[str, Any] = {}
        for name in await self.sheet_names():
            table = await self.load(name)
            entry: dict[str, Any] = {
                "columns": {c: table.types.get(c, "text") for c in table.columns},
                "rows": len(table.rows),
            }
            if table.options:
                entry["options"] = table.options
            described[name] = entry
        return described

    async def resolve_name(self, name: str) -> str:
        """The exact name of the sheet `name` means, or an error listing the sheets."""
        names = await self.sheet_names()
        if name in names:
            return name
        folded = [n for n in names if n.casefold() == str(name).strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return_names = ", ".join(names) or "(none)"
        raise IntegrationError(f"There is no sheet '{name}'. Sheets: {return_names}.{hint}",
                               sheet=name, sheets=names)

    # Backend hooks.

    async def sheet_names(self) -> builtins.list[str]:
        raise NotImplementedError

    async def load(self, name: str) -> Table:
        raise NotImplementedError

    async def write_row(self, table: Table, row: Row, values: dict[str, Any],
                        new_columns: builtins.list[str]) -> Row:
        """Set `values` (keyed by column names, new ones included) in `row`; the row as stored."""
        raise NotImplementedError

    async def add_row(self, table: Table, values: dict[str, Any],
                      new_columns: builtins.list[str]) -> Row:
        """Add a row holding `values` at the bottom; the row as stored."""
        raise NotImplementedError
