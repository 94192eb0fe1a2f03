"""Local spreadsheets: a folder of CSV and XLSX files, one sheet per file.

Implements the embedded default of ARCHITECTURE.md, "AI-friendly integrations": rows are addressed
by identity and columns by header, never by cell coordinates. The sheet name is the file stem; an
XLSX file contributes its first worksheet, whose first row is the header.

Writes replace the file atomically (temporary file + `os.replace`), keep column order and every
other row, and are skipped when nothing changes, so repeating a write leaves the same bytes.
XLSX writes touch only the changed cells (formulas elsewhere are kept). CSV files keep their
delimiter, line ending, encoding and byte-order mark; quoting is normalised when rewritten.
"""

from __future__ import annotations

import asyncio
import builtins
import codecs
import csv
import datetime as dt
import difflib
import io
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl

from core.errors import IntegrationError
from integrations.base import Integration, Preview, Resource, Row, action
from integrations.coercion import (
    Field,
    coerce,
    date_format_of,
    describe_fields,
    format_date,
    is_plain_number,
    match_name,
    options,
)

_SUFFIXES = (".csv", ".xlsx")  # in order of preference when both exist for one name
_CSV_BOOLEANS = {"TRUE", "FALSE", "true", "false", "True", "False"}


@dataclass(frozen=True)
class _CsvFormat:
    delimiter: str = ","
    lineterminator: str = "\r\n"
    encoding: str = "utf-8"
    bom: bool = False


@dataclass
class _Table:
    """One sheet in memory: the header and the data rows (cells as read, None when empty)."""

    name: str
    header: list[str]
    rows: list[list[Any]]
    csv_format: _CsvFormat | None = None  # None for XLSX
    choices: dict[int, tuple[str, ...]] | None = None  # XLSX dropdowns by column (when loaded)

    def copy(self) -> _Table:
        return _Table(self.name, list(self.header), [list(r) for r in self.rows], self.csv_format,
                      self.choices)

    def id_column(self) -> int | None:
        for i, name in enumerate(self.header):
            if name.strip().casefold() == "id":
                return i
        return None

    def row_id(self, index: int) -> str:
        column = self.id_column()
        if column is not None:
            value = _cell(self.rows[index], column)
            if value is not None and value != "":
                return _id_text(value)
        return f"row-{index + 1}"

    def index_of(self, row_id: str) -> int | None:
        for index in range(len(self.rows)):
            if self.row_id(index) == row_id:
                return index
        return None

    def to_row(self, index: int) -> Row:
        values: dict[str, Any] = {}
        cells = self.rows[index]
        for i, name in enumerate(self.header):
            if name and name not in values:
                values[name] = _cell(cells, i)
        return Row(self.row_id(index), values)

    def columns(self) -> builtins.list[str]:
        return [name for name in self.header if name]


def _field(table: _Table, col: int) -> Field:
    """What column `col` holds: an Excel dropdown's options, else a type guessed from its cells."""
    name = table.header[col]
    choices = (table.choices or {}).get(col)
    if choices:
        return Field(name, "choice", options=options(choices))
    values = [v for v in (_cell(cells, col) for cells in table.rows) if v is not None and v != ""]
    if not values:
        return Field(name, strict=False)
    if table.csv_format is not None:
        return _text_field(name, [str(v) for v in values])
    return _typed_field(name, values)


def _text_field(name: str, values: builtins.list[str]) -> Field:
    if all(is_plain_number(v) for v in values):
        return Field(name, "number", strict=False)
    if all(v in _CSV_BOOLEANS for v in values):
        return Field(name, "boolean", strict=False)
    fmt = date_format_of(values)
    if fmt is not None:
        return Field(name, "date", date_format=fmt, strict=False)
    return Field(name, strict=False)


def _typed_field(name: str, values: builtins.list[Any]) -> Field:
    if all(isinstance(v, bool) for v in values):
        return Field(name, "boolean", strict=False)
    if all(isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values):
        return Field(name, "number", strict=False)
    if all(isinstance(v, dt.date) for v in values):
        timed = any(isinstance(v, dt.datetime) and v.time() != dt.time() for v in values)
        return Field(name, "datetime" if timed else "date", strict=False)
    return _text_field(name, [str(v) for v in values]) if all(
        isinstance(v, str) for v in values) else Field(name, strict=False)


def _cell(cells: list[Any], index: int) -> Any:
    return cells[index] if index < len(cells) else None


def _id_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# Reading and writing files.


def _read_csv(path: Path) -> _Table:
    raw = path.read_bytes()
    bom = raw.startswith(codecs.BOM_UTF8)
    try:
        text, encoding = raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = raw.decode("cp1252", errors="replace"), "cp1252"
    first_line = text.split("\n", 1)[0]
    fmt = _CsvFormat(
        delimiter="," if "," in first_line else _sniff_delimiter(text),
        lineterminator="\r\n" if first_line.endswith("\r") else "\n",
        encoding=encoding,
        bom=bom,
    )
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter))
    header = records[0] if records else []
    rows = [[cell if cell != "" else None for cell in record] for record in records[1:]]
    return _Table(path.stem, header, _trim(rows), fmt)


def _sniff_delimiter(text: str) -> str:
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _read_xlsx(path: Path) -> _Table:
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        records = [list(r) for r in book.worksheets[0].iter_rows(values_only=True)]
    finally:
        book.close()
    header = ["" if h is None else str(h) for h in records[0]] if records else []
    while header and not header[-1]:
        header.pop()
    rows = [[None if c == "" else c for c in record] for record in records[1:]]
    return _Table(path.stem, header, _trim(rows))


def _xlsx_choices(path: Path, header: list[str]) -> dict[int, tuple[str, ...]]:
    """The options of the first worksheet's dropdowns (list data validations), by column."""
    book = openpyxl.load_workbook(path)
    try:
        sheet = book.worksheets[0]
        found: dict[int, tuple[str, ...]] = {}
        for validation in sheet.data_validations.dataValidation:
            values = _validation_values(book, sheet, validation)
            if validation.type != "list" or not values:
                continue
            for cell_range in validation.sqref.ranges:
                for col in range(cell_range.min_col, cell_range.max_col + 1):
                    if col <= len(header):
                        found[col - 1] = values
        return found
    finally:
        book.close()


def _validation_values(book: Any, sheet: Any, validation: Any) -> tuple[str, ...]:
    formula = str(validation.formula1 or "").strip()
    if formula.startswith('"') and formula.endswith('"'):
        return tuple(v.strip() for v in formula[1:-1].split(",") if v.strip())
    ref = formula.lstrip("=").replace("$", "")
    where, _, cells = ref.rpartition("!")
    target = book[where.strip("'")] if where and where.strip("'") in book.sheetnames else sheet
    try:
        picked = target[cells]
    except (KeyError, ValueError):
        return ()
    flat = [c for row in (picked if isinstance(picked, tuple) else ((picked,),))
            for c in (row if isinstance(row, tuple) else (row,))]
    return tuple(str(c.value) for c in flat if c.value not in (None, ""))


def _trim(rows: list[list[Any]]) -> list[list[Any]]:
    """Drop empty rows at the end (spreadsheets often carry formatted but empty rows)."""
    while rows and all(c is None for c in rows[-1]):
        rows.pop()
    return rows


def _load(path: Path, *, schema: bool = False) -> _Table:
    """The sheet in `path`; with `schema`, an XLSX file's dropdowns too (a slower, full read)."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    table = _read_xlsx(path)
    if schema:
        table.choices = _xlsx_choices(path, table.header)
    return table


def _load_with_schema(path: Path) -> _Table:
    return _load(path, schema=True)


def _save(path: Path, old: _Table, new: _Table) -> None:
    if new.csv_format is not None:
        _atomic_write(path, _csv_bytes(new, new.csv_format))
    else:
        _save_xlsx(path, old, new)


def _csv_bytes(table: _Table, fmt: _CsvFormat) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=fmt.delimiter, lineterminator=fmt.lineterminator)
    writer.writerow(table.header)
    width = len(table.header)
    padded = [row + [None] * (width - len(row)) for row in table.rows]
    writer.writerows([["" if c is None else c for c in row] for row in padded])
    data = buffer.getvalue().encode(fmt.encoding, errors="replace")
    return codecs.BOM_UTF8 + data if fmt.bom else data


def _save_xlsx(path: Path, old: _Table, new: _Table) -> None:
    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    for col, name in enumerate(new.header):
        if col >= len(old.header) or old.header[col] != name:
            sheet.cell(row=1, column=col + 1, value=name)
    for index, cells in enumerate(new.rows):
        before = old.rows[index] if index < len(old.rows) else []
        for col, value in enumerate(cells):
            if _cell(before, col) != value:
                sheet.cell(row=index + 2, column=col + 1, value=value)
    buffer = io.BytesIO()
    book.save(buffer)
    _atomic_write(path, buffer.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Values and column names.


def _csv_text(value: Any) -> str | None:
    """How a value is stored in a CSV cell (None for an empty cell)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _xlsx_value(value: Any) -> Any:
    if value == "":
        return None
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)  # Excel has no time zones
    if isinstance(value, Decimal):
        return float(value)
    return value


def _check_value(sheet: str, column: str, value: Any) -> None:
    if value is None or isinstance(value, str | int | float | Decimal | dt.date):
        return
    raise IntegrationError(
        f"A cell holds one value: str, int, float, bool, date or None. Column '{column}' of "
        f"the sheet '{sheet}' was given a {type(value).__name__}; join lists into one string "
        "first, for example ', '.join(items).",
        sheet=sheet, column=column,
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
    cells = table.rows[index]
    for name, value in values.items():
        column = str(name)
        _check_value(table.name, column, value)
        col = _match_column(table.header, column)
        if col is None:
            table.header.append(column)
            col = len(table.header) - 1
        else:
            value = _coerced(table, col, value)
        cells.extend([None] * (col + 1 - len(cells)))
        cells[col] = _csv_text(value) if table.csv_format else _xlsx_value(value)


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
        return [
            table.to_row(i) for i, cells in enumerate(table.rows)
            if all(_matches(_cell(cells, col), value) for col, value in wanted)
        ]

    # Helpers (not actions).

    def _sheets(self) -> LocalSheets:
        if not isinstance(self.owner, LocalSheets):
            raise IntegrationError(f"The sheet handle '{self.key}' is not connected to sheets.")
        return self.owner

    async def _load(self) -> _Table:
        return await asyncio.to_thread(_load, self._sheets().path_of(self.key))

    async def _write(self, change: Callable[[_Table], int]) -> Row:
        owner = self._sheets()
        async with owner.lock:
            path = owner.path_of(self.key)
            old = await asyncio.to_thread(_load_with_schema, path)
            new = old.copy()
            index = change(new)
            if (new.header, new.rows) != (old.header, old.rows):
                await asyncio.to_thread(_save, path, old, new)
            return new.to_row(index)

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
    def _append(table: _Table, values: dict[str, Any]) -> int:
        table.rows.append([None] * len(table.header))
        index = len(table.rows) - 1
        _set_values(table, index, values)
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
        self.lock = asyncio.Lock()

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
