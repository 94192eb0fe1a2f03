"""Sheet files on disk: the table a CSV or XLSX file holds, read and written faithfully.

Part of `integrations.sheets` (the local spreadsheets). Writes replace the file atomically
(temporary file + `os.replace`); XLSX writes touch only the changed cells, so formulas elsewhere
are kept; CSV files keep their delimiter, line ending, encoding and byte-order mark. Column types
and dropdown options are read from the values and from Excel's data validations.
"""

from __future__ import annotations

import builtins
import codecs
import csv
import dataclasses
import datetime as dt
import io
import itertools
import operator
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from integrations.base import Row
from integrations.coercion import (
    TEXT_DATE_FORMATS,
    Field,
    FieldType,
    date_format_of,
    fits_date_format,
    is_plain_number,
    options,
)

_SUFFIXES = (".csv", ".xlsx")  # in order of preference when both exist for one name
_CSV_BOOLEANS = {"TRUE", "FALSE", "true", "false", "True", "False"}
# The types a CSV column is guessed to hold when all its values fit, tried in this order (then
# dates, by format): `_text_field` guesses with them and `_fits` checks a value written.
_TEXT_TYPES: dict[FieldType, Callable[[str], bool]] = {
    "number": is_plain_number, "boolean": _CSV_BOOLEANS.__contains__}


@dataclass(frozen=True)
class _CsvFormat:
    delimiter: str = ","
    lineterminator: str = "\r\n"
    encoding: str = "utf-8"
    bom: bool = False


@dataclass
class _Lines:
    """The CSV line of each row as last written (`text`), by position, with the row list it
    was made from (`cells`, held, so that a row is known by identity), for one width and
    format."""

    width: int = -1
    fmt: _CsvFormat | None = None
    cells: list[list[Any]] = dataclasses.field(default_factory=list)
    text: list[str] = dataclasses.field(default_factory=list)


@dataclass
class _RowIds:
    """Where each row id was last found, for one id column: shared by a table's copies, and
    checked on use (a row's id cell may have changed since), so a stale entry costs a scan, not
    a wrong row. Rows are only ever added at the bottom, so a position once right stays a row's.
    Where two rows share an id, the first wins when the index is made, as a scan finds it; one
    given a used id afterwards is not looked for (a sheet read anew gets a new index). Looking
    a row up by id used to scan the whole sheet each time: 36.5 updates/s on a 100,000-row
    sheet with an "ID" column, against 160.5/s without one."""

    column: int = -1
    where: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass
class _Table:
    """One sheet in memory: the header and the data rows (cells as read, None when empty)."""

    name: str
    header: list[str]
    rows: list[list[Any]]
    csv_format: _CsvFormat | None = None  # None for XLSX
    choices: dict[int, tuple[str, ...]] | None = None  # XLSX dropdowns by column (when loaded)
    # A CSV column's guessed type, and whether it had values, by column (see `_field` and
    # `_written`): guessing reads the whole column, and a value written needs the guess.
    guessed: dict[int, tuple[Field, bool]] = dataclasses.field(default_factory=dict,
                                                                 repr=False, compare=False)
    lines: _Lines = dataclasses.field(default_factory=_Lines, repr=False,
                                      compare=False)  # shared by copies: see `_csv_bytes`
    ids: _RowIds = dataclasses.field(default_factory=_RowIds, repr=False,
                                     compare=False)  # shared by copies: see `index_of`
    # Row positions by cell text, per CSV column: this table's own (see `rows_holding`).
    by_text: dict[int, dict[str | None, list[int]] | None] = dataclasses.field(
        default_factory=dict, repr=False, compare=False)

    def copy(self) -> _Table:
        """A copy that shares the row lists: change a row through `own_row`, never in place."""
        return _Table(self.name, list(self.header), list(self.rows), self.csv_format,
                      self.choices, dict(self.guessed), self.lines, self.ids)

    def own_row(self, index: int) -> list[Any]:
        """Row `index`'s cells, copied first, so that tables this one was copied from (or to)
        keep theirs."""
        cells = self.rows[index] = list(self.rows[index])
        return cells

    def id_column(self) -> int | None:
        for i, name in enumerate(self.header):
            if name.strip().casefold() == "id":
                return i
        return None

    def row_id(self, index: int) -> str:
        return _row_id(self.rows[index], index, self.id_column())

    def index_of(self, row_id: str) -> int | None:
        column = self.id_column()
        if column is None:  # ids are positions: "row-N" is data row N
            number = row_id[4:] if row_id.startswith("row-") else ""
            exact = number.isascii() and number.isdigit() and not number.startswith("0")
            index = int(number) - 1 if exact else -1
            return index if 0 <= index < len(self.rows) else None
        ids = self.ids
        if ids.column != column:  # the first lookup by this column: where every id is
            ids.column, ids.where = column, {}
            for index in range(len(self.rows) - 1, -1, -1):  # the first row of an id wins
                ids.where[_row_id(self.rows[index], index, column)] = index
        index = ids.where.get(row_id, -1)
        if 0 <= index < len(self.rows) and _row_id(self.rows[index], index, column) == row_id:
            return index
        for index, cells in enumerate(self.rows):
            if _row_id(cells, index, column) == row_id:
                ids.where[row_id] = index
                return index
        return None

    def rows_holding(self, column: int, text: str | None) -> list[int] | None:
        """The positions of the rows whose cell in `column` is `text` (None: empty), top to
        bottom; None when the column cannot be indexed (an XLSX sheet's typed cells match by
        value too). The index is made on first use and kept with this table, which is never
        changed in place (a change makes a copy: see `applied`), so it cannot go stale, and
        every lookup until the next change (a program looking up one sheet's rows for each row
        of another) takes no scan. Making it costs less than the scan per lookup it replaces
        (~50 ms at 100,000 rows)."""
        if column not in self.by_text:
            self.by_text[column] = _positions_by_text(self.rows, column)
        positions = self.by_text[column]
        return None if positions is None else positions.get(text, [])

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
    if col in table.guessed:
        return table.guessed[col][0]
    # One pass, no call per cell: this reads the whole column.
    values = [v for cells in table.rows if len(cells) > col
              for v in (cells[col],) if v is not None and v != ""]
    if table.csv_format is None:  # a workbook's guess is made afresh (`_written` is for CSV)
        return _typed_field(name, values) if values else Field(name, strict=False)
    guess = _text_field(name, values) if values else Field(name, strict=False)  # text already
    table.guessed[col] = (guess, bool(values))
    return guess


def _written(table: _Table, col: int, old: str | None, new: str | None) -> None:
    """Keep CSV column `col`'s guessed type after one of its cells went from `old` to `new`
    when guessing again from every cell would give the same, else forget it. A value that fits
    the guess, written where there was none, adds one more value that fits: text stays text, a
    type stays (and a date format: the first format all values fit is still the first). One
    written over another may let a type, or an earlier date format, fit where it did not,
    unless `_replaceable` says otherwise; an emptied cell may too. Then the guess is made again."""
    guess = table.guessed.get(col)
    if guess is None or new == old:
        return
    field, had_values = guess
    if new is None or not had_values or not _fits(field, new) or (
            old is not None and not _replaceable(field)):
        del table.guessed[col]


def _replaceable(field: Field) -> bool:
    """Whether a value of a column guessed as `field` can be replaced by another that fits
    without changing the guess: in a number or boolean column every value still fits (and a
    boolean is no number); an ISO date column's format is the first of all, so still the first
    that fits. Text may have been text because of the value replaced."""
    return field.type in ("number", "boolean") or (
        field.type == "date" and field.date_format == TEXT_DATE_FORMATS[0])


def _fits(field: Field, text: str) -> bool:
    """Whether `text` is a value of the type `_text_field` guessed."""
    if field.type in _TEXT_TYPES:
        return _TEXT_TYPES[field.type](text)
    if field.type == "date":
        return field.date_format is not None and fits_date_format(text, field.date_format)
    return field.type == "text"


def _text_field(name: str, values: builtins.list[str]) -> Field:
    for kind, fits in _TEXT_TYPES.items():
        if all(fits(v) for v in values):
            return Field(name, kind, strict=False)
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


def _positions_by_text(rows: list[list[Any]], column: int
                       ) -> dict[str | None, list[int]] | None:
    """Row positions by their cell in `column`, if every cell is text or empty (a CSV sheet's
    are, as read and as written: see `_csv_text`); else None."""
    positions: dict[str | None, list[int]] = {}
    for index, cells in enumerate(rows):
        cell = cells[column] if column < len(cells) else None
        if cell is not None and type(cell) is not str:
            return None
        positions.setdefault(cell, []).append(index)
    return positions


def _row_id(cells: list[Any], index: int, id_column: int | None) -> str:
    """Data row `index`'s id: its "id" cell when it has one, else "row-N"."""
    if id_column is not None:
        value = _cell(cells, id_column)
        if value is not None and value != "":
            return _id_text(value)
    return f"row-{index + 1}"


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
    import openpyxl  # 0.3 s to import: only when there is a workbook to read

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
    import openpyxl

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
    """The file's bytes. A row's CSV line is made once and kept (`_Lines`) while the row is the
    same list: a write after a change makes the changed rows' lines only (rows are replaced,
    not changed in place: `_Table.own_row`), and finds them by identity in one pass in C, so
    that the thread writing holds the GIL briefly. Making every line took 51 ms at 20,000
    rows; finding the changed ones with a Python loop took ~5 ms at 100,000, and slowed the
    event loop's thread, which shares the GIL."""
    width = len(table.header)
    kept = table.lines
    if (kept.width, kept.fmt) != (width, fmt):
        kept.width, kept.fmt, kept.cells, kept.text = width, fmt, [], []
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=fmt.delimiter, lineterminator=fmt.lineterminator)

    def line(cells: list[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(["" if c is None else c for c in cells] + [""] * (width - len(cells)))
        return buffer.getvalue()

    rows, made, text = table.rows, kept.cells, kept.text
    del made[len(rows):], text[len(rows):]
    for index in list(itertools.compress(itertools.count(), map(operator.is_not, made, rows))):
        made[index], text[index] = rows[index], line(rows[index])
    for cells in rows[len(made):]:  # rows added since
        made.append(cells)
        text.append(line(cells))
    data = (line(table.header) + "".join(text)).encode(fmt.encoding, errors="replace")
    return codecs.BOM_UTF8 + data if fmt.bom else data


def _save_xlsx(path: Path, old: _Table, new: _Table) -> None:
    import openpyxl

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
