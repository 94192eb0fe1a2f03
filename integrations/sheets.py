"""Local spreadsheets: a folder of CSV and XLSX files, one sheet per file.

Implements the embedded default of ARCHITECTURE.md, "AI-friendly integrations": rows are addressed
by identity and columns by header, never by cell coordinates. The sheet name is the file stem; an
XLSX file contributes its first worksheet, whose first row is the header.

Writes keep column order and every other row, and are skipped when nothing changes, so repeating
a write leaves the same bytes. Reading and writing the files is `integrations._sheet_files`; a
run's view of each file (read once, changes written in groups, each on disk before it returns)
is `integrations._sheet_state`.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import IntegrationError
from integrations._sheet_files import (
    _SUFFIXES,
    _cell,
    _csv_text,
    _field,
    _load,
    _load_with_schema,
    _Table,
    _written,
    _xlsx_value,
)
from integrations._sheet_state import Change, SheetFile, applied
from integrations.base import Found, Integration, Preview, Resource, Row, action
from integrations.coercion import (
    check_cell_value,
    coerce,
    describe_fields,
    format_date,
    match_name,
)


def _match_column(header: list[str], name: str) -> int | None:
    """The existing column `name` means: exact, then ignoring case/spacing, then a near miss."""
    return match_name(header, name)


def _no_column(table: _Table, name: str) -> IntegrationError:
    columns = table.columns()
    by_key = {c.casefold(): c for c in columns}
    close = difflib.get_close_matches(name.casefold(), list(by_key), n=1, cutoff=0.6)
    hint = f" Did you mean '{by_key[close[0]]}'?" if close else ""
    return IntegrationError(
        f"The sheet '{table.name}' has no column '{name}'. Columns: {', '.join(columns)}.{hint}",
        sheet=table.name, column=name, columns=columns,
    )


def _no_row(table: _Table, row_id: str) -> IntegrationError:
    count, col = len(table.rows), table.id_column()
    if col is not None:
        how = f"its row ids come from the '{table.header[col]}' column"
    else:
        how = f"its rows are row-1 … row-{count}" if count else "it has no rows"
    return IntegrationError(
        f"The sheet '{table.name}' has no row '{row_id}' ({how}). Use a row from "
        "sheet.rows() or sheet.find(...).",
        sheet=table.name, row=row_id,
    )


def _set_values(table: _Table, index: int, values: dict[str, Any]) -> None:
    """Write `values` into data row `index`, adding columns that do not exist yet."""
    if not isinstance(values, dict):
        raise IntegrationError("values must be a dict of column name to value, "
                               "for example {'Budget': 5000}.")
    cells = table.own_row(index)
    for name, value in values.items():
        column = str(name)
        check_cell_value(table.name, column, value)
        col = _match_column(table.header, column)
        if col is None:
            table.header.append(column)
            col = len(table.header) - 1
        else:
            value = _coerced(table, col, value)
        cells.extend([None] * (col + 1 - len(cells)))
        if table.csv_format:
            stored = _csv_text(value)
            _written(table, col, cells[col], stored)
            cells[col] = stored
        else:
            cells[col] = _xlsx_value(value)


def _coerced(table: _Table, col: int, value: Any) -> Any:
    """`value` made to fit column `col` (see integrations.coercion), dates in its own format."""
    field = _field(table, col)
    where = f"column '{field.name}' of the sheet '{table.name}'"
    value = coerce(field, value, where=where)
    if table.csv_format is not None and isinstance(value, dt.date) and field.type == "date":
        return format_date(value, field.date_format)
    return value


def _matches(cell: Any, wanted: Any) -> bool:
    if wanted is None or wanted == "":
        return cell is None
    return cell is not None and (cell == wanted or _csv_text(cell) == _csv_text(wanted))


def _cell_text(wanted: Any) -> str | None:
    """The CSV cell that `_matches` `wanted` (None: an empty cell). A CSV cell is text or
    None, and text equal to a value is its `_csv_text`; "" matches only an empty cell."""
    return None if wanted is None or wanted == "" else _csv_text(wanted)


def read_rows(path: Path) -> builtins.list[Row]:
    """The rows of a CSV or XLSX file as sheets read them (for files that are not sheets)."""
    table = _load(path)
    return [table.to_row(i) for i in range(len(table.rows))]


def read_columns(path: Path) -> builtins.list[str]:
    return _load(path).columns()


class Sheet(Resource):
    """One sheet of the local spreadsheets folder. Get one with `sheets.open(name)`."""

    @action("read")
    async def rows(self) -> list[Row]:
        """All data rows, top to bottom.

        Each Row is a dict of column header -> value, plus `row.id`, its stable identity: the
        value of the sheet's "id" column when it has one, else "row-N" (N counts data rows from
        1 below the header; appending rows never changes existing ids). Empty cells are None, so
        `if not row["Budget"]:` finds blanks. CSV cells are text ("5000"); XLSX cells keep their
        type (numbers, dates).
        """
        table = await self._load()
        return [table.to_row(i) for i in range(len(table.rows))]

    @action("read")
    async def columns(self) -> list[str]:
        """The column headers, left to right."""
        return (await self._load()).columns()

    @action("write", preview="update {n} rows", idempotent=True)
    async def update(self, row: Row | str, values: dict[str, Any]) -> Row:
        """Set some cells of one row and return the row as now stored.

        `row` is a Row from rows()/find() or its id ("row-3", or the value of the "id" column).
        `values` maps column header -> new value, e.g. {"Budget": 5000, "Asked on": today()}.
        Other cells and rows are left unchanged. Column names are matched forgivingly: case,
        spacing and small typos ("budget ", "Budjet") map to the existing column. A name that
        matches no column adds a new column at the right end, so "note the date in the sheet"
        just works. Use None or "" to clear a cell. Updating to the same values again is a no-op.

        Values are fitted to the column (see `types` in the workspace data): a number column
        takes "$1,200" as 1200, a date column takes date(2026, 3, 12), "2026-03-12" or
        "12 March 2026" and writes it the way its other dates are written, a dropdown column takes
        "qualified lead" as its option "Qualified Lead". A value that could mean two things
        ("12/03/2026" where the order is unknown) or is not an option raises IntegrationError
        listing what to pass instead.
        """
        row_id = row.id if isinstance(row, Row) else str(row)
        return await self._write(lambda table: self._update(table, row_id, values))

    async def preview_update(self, row: Row | str, values: dict[str, Any]) -> Preview:
        """The cells `update` would change, before → after, without changing the sheet."""
        row_id = row.id if isinstance(row, Row) else str(row)
        old = await self._load()
        new = old.copy()
        index = self._update(new, row_id, values)
        return _change_preview(self.key, old, new, index, verb="update")

    async def preview_append(self, values: dict[str, Any]) -> Preview:
        """The row `append` would add, without changing the sheet."""
        old = await self._load()
        new = old.copy()
        index = self._append(new, values)
        return _change_preview(self.key, old, new, index, verb="add")

    @action("write", preview="add {n} rows")
    async def append(self, values: dict[str, Any]) -> Row:
        """Add one row at the bottom and return it (with its new `row.id`).

        `values` maps column header -> value; missing columns stay empty, unknown columns are
        added at the right end (names and values are matched as in update()). When the sheet
        has an "id" column, a value for it must not already be used by another row.
        """
        return await self._write(lambda table: self._append(table, values))

    async def confirm_update(self, row: Row | str, values: dict[str, Any]) -> Found:
        """After a crash: done when the row already holds `values` as `update` stores them
        (updating it would change nothing), else not done (or changed since)."""
        row_id = row.id if isinstance(row, Row) else str(row)
        new, index, changed = applied(await self._load(),
                                       lambda table: self._update(table, row_id, values))
        return Found(done=False) if changed else Found(done=True, result=new.to_row(index))

    async def confirm_append(self, values: dict[str, Any]) -> Found | None:
        """After a crash: when the sheet has an "id" column and `values` an id, done when a row
        has that id and the values, not done when no row has it. Otherwise there is no telling
        (a row without an id may be another row with the same values)."""
        old = await self._load()
        new, index, _ = applied(old, lambda table: self._add_row(table, values))
        row_id = new.row_id(index)
        if old.id_column() is None or row_id == f"row-{index + 1}":
            return None
        existing = old.index_of(row_id)
        if existing is None:
            return Found(done=False)
        wanted, stored = new.to_row(index), old.to_row(existing)
        if all(stored.get(name) == value for name, value in wanted.items() if value is not None):
            return Found(done=True, result=stored)
        return None

    @action("read")
    async def find(self, **equals: Any) -> list[Row]:
        """The rows whose cells equal all the given values, e.g. find(Email="ana@example.com").

        Numbers match their text form (find(Budget=5000) finds "5000"); None or "" finds empty
        cells. For a column whose header is not a Python name, pass a dict:
        find(**{"Asked on": None}). An unknown column raises IntegrationError listing the columns.
        """
        table = await self._load()
        columns = [(self._column(table, name), value) for name, value in equals.items()]
        wanted = [(col, _coerced(table, col, value)) for col, value in columns]
        candidates: Iterable[int] | None = None
        if wanted and table.csv_format is not None:
            col, value = wanted[0]
            candidates = table.rows_holding(col, _cell_text(value))
        return [
            table.to_row(i) for i in (range(len(table.rows)) if candidates is None else candidates)
            if all(_matches(_cell(table.rows[i], col), value) for col, value in wanted)
        ]

    # Helpers (not actions).

    def _sheets(self) -> LocalSheets:
        if not isinstance(self.owner, LocalSheets):
            raise IntegrationError(f"The sheet handle '{self.key}' is not connected to sheets.")
        return self.owner

    async def _load(self) -> _Table:
        """The sheet with its column types and every change made so far (not to be changed in
        place: see `applied`)."""
        return await self._sheets().file_of(self.key).read()

    async def _write(self, change: Change) -> Row:
        return await self._sheets().file_of(self.key).change(change)

    @staticmethod
    def _column(table: _Table, name: str) -> int:
        col = _match_column(table.header, name)
        if col is None:
            raise _no_column(table, name)
        return col

    @staticmethod
    def _update(table: _Table, row_id: str, values: dict[str, Any]) -> int:
        index = table.index_of(row_id)
        if index is None:
            raise _no_row(table, row_id)
        _set_values(table, index, values)
        return index

    @staticmethod
    def _add_row(table: _Table, values: dict[str, Any]) -> int:
        """Add a row holding `values` at the bottom (its id not checked); its index."""
        table.rows.append([None] * len(table.header))
        index = len(table.rows) - 1
        _set_values(table, index, values)
        return index

    @staticmethod
    def _append(table: _Table, values: dict[str, Any]) -> int:
        index = Sheet._add_row(table, values)
        new_id = table.row_id(index)
        if table.id_column() is not None and table.index_of(new_id) != index:
            raise IntegrationError(
                f"The sheet '{table.name}' already has a row with id '{new_id}'. Use "
                "sheet.update(row_id, values) to change it, or give the new row another id.",
                sheet=table.name, row=new_id,
            )
        return index


def _change_preview(sheet: str, old: _Table, new: _Table, index: int, *, verb: str) -> Preview:
    after = new.to_row(index)
    before: dict[str, Any] = dict(old.to_row(index)) if index < len(old.rows) else {}
    changes = {name: {"before": before.get(name), "after": value}
               for name, value in after.items() if before.get(name) != value}
    shown = "; ".join(f"{name}: {_brief(c['before'])} → {_brief(c['after'])}"
                      for name, c in changes.items()) or "no change"
    return Preview(text=f"{verb} {sheet} {after.id}: {shown}",
                   details={"sheet": sheet, "row": after.id, "changes": changes},
                   result=after)


def _brief(value: Any) -> str:
    text = "empty" if value is None or value == "" else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


class LocalSheets(Integration):
    """Spreadsheets in the team's sheets folder (CSV and Excel files, one sheet per file)."""

    name = "sheets"
    summary = "Spreadsheets: read rows, update cells by column name, append rows."
    resources = (Sheet,)

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._open: dict[str, SheetFile] = {}  # by sheet name

    @action("read")
    async def list(self) -> builtins.list[str]:
        """The names of the sheets there are, e.g. ["leads", "signups"]."""
        return builtins.list(self._files())

    @action("read")
    async def open(self, name: str) -> Sheet:
        """The sheet called `name` (case does not matter), to read and change its rows.

        Raises IntegrationError listing the sheets there are when no sheet has that name.
        """
        return Sheet(self._resolve(name), self)

    async def describe(self) -> dict[str, Any]:
        """{sheet name: {"columns": [...], "rows": count, "row_ids": how rows are identified,
        "types": {column: field description} for the columns that are not plain text}}."""
        described: dict[str, Any] = {}
        for name, path in self._files().items():
            try:
                table = await asyncio.to_thread(_load_with_schema, path)
            except Exception as exc:  # a broken file must not hide the others
                described[name] = {"error": f"cannot be read ({type(exc).__name__})"}
                continue
            col = table.id_column()
            described[name] = {
                "columns": table.columns(),
                "rows": len(table.rows),
                "row_ids": f"column '{table.header[col]}'" if col is not None else "row-N",
            }
            types = describe_fields(_field(table, i) for i, h in enumerate(table.header) if h)
            if types:
                described[name]["types"] = types
        return described

    async def count_rows(self, name: str) -> int:
        """How many data rows the sheet `name` has (for estimates; not an action)."""
        table = await asyncio.to_thread(_load, self.path_of(self._resolve(name)))
        return len(table.rows)

    def path_of(self, name: str) -> Path:
        """The file behind the sheet `name` (exact name, as returned by list())."""
        path = self._files().get(name)
        if path is None:
            raise self._no_sheet(name)
        return path

    def file_of(self, name: str) -> SheetFile:
        """The file behind the sheet `name`, as this run reads and writes it (found once: a
        change does not list the folder)."""
        if name not in self._open:
            self._open[name] = SheetFile(self.path_of(name))
        return self._open[name]

    def _files(self) -> dict[str, Path]:
        if not self.folder.is_dir():
            return {}
        found: dict[str, Path] = {}
        candidates = [
            p for p in self.folder.iterdir()
            if p.suffix.lower() in _SUFFIXES and not p.name.startswith((".", "~$")) and p.is_file()
        ]
        for path in sorted(candidates, key=lambda p: (p.stem, _SUFFIXES.index(p.suffix.lower()))):
            found.setdefault(path.stem, path)
        return dict(sorted(found.items(), key=lambda item: item[0].casefold()))

    def _resolve(self, name: str) -> str:
        names = builtins.list(self._files())
        if name in names:
            return name
        folded = [n for n in names if n.casefold() == str(name).strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        raise self._no_sheet(name)

    def _no_sheet(self, name: str) -> IntegrationError:
        names = builtins.list(self._files())
        if not names:
            return IntegrationError(f"There is no sheet '{name}': there are no sheets yet.",
                                    sheet=name, sheets=[])
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return IntegrationError(
            f"There is no sheet '{name}'. Sheets: {', '.join(names)}.{hint}",
            sheet=name, sheets=names,
        )
