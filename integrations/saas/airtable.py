"""Airtable through pyairtable, with the local sheet's API (see `_tabular.py`).

One connection is one base; its tables are the sheets and its fields the columns. A row's id is
the Airtable record id ("rec…"). Values are coerced to each field's type before they are sent
(numbers from "5,000", select options from near misses such as "in progress" -> "In progress"),
and a value that fits no option fails with the options listed. A column that does not exist yet
is created as a field (number, checkbox, date or single line text, from the value).

pyairtable retries 429 answers itself (urllib3 `Retry`, honouring `Retry-After`) and reads every
page of records (`offset`).
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

import requests
from pyairtable import Api
from pyairtable.api.retrying import retry_strategy

from core.errors import IntegrationError
from integrations.base import Row
from integrations.saas._match import match_option
from integrations.saas._tabular import Table, TabularSheets

_NUMBERS = {"number", "currency", "percent", "duration", "rating"}
_TRUE = {"true", "yes", "y", "x", "1", "checked", "✓"}
_FALSE = {"false", "no", "n", "0", "", "unchecked"}


def _to_number(value: Any, column: str) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    text = str(value).strip().replace(",", "").replace("$", "").replace("€", "")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise IntegrationError(f"Column '{column}' holds numbers; '{value}' is not a number. "
                               "Pass a number such as 5000.", column=column) from None
    return int(number) if number == number.to_integral_value() else float(number)


def _to_checkbox(value: Any, column: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().casefold()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise IntegrationError(f"Column '{column}' is a checkbox; pass True or False, not "
                           f"'{value}'.", column=column)


def _to_options(value: Any, choices: builtins.list[str], column: str) -> builtins.list[str]:
    items = value if isinstance(value, builtins.list) else str(value).split(",")
    pairs = [(c, c) for c in choices]
    return [match_option(pairs, str(v).strip(), what=f"column '{column}'")
            for v in items if str(v).strip()]


def _coerce(value: Any, column: str, kind: str, choices: builtins.list[str]) -> Any:
    """`value` as Airtable accepts it for a field of type `kind` (None clears the field)."""
    if value is None or (value == "" and kind != "checkbox"):
        return None
    if kind in _NUMBERS:
        return _to_number(value, column)
    if kind == "checkbox":
        return _to_checkbox(value, column)
    if kind == "singleSelect":
        return match_option([(c, c) for c in choices], value, what=f"column '{column}'")
    if kind == "multipleSelects":
        return _to_options(value, choices, column)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if kind in ("date", "dateTime"):
        return str(value)
    return value if isinstance(value, str) else str(value)


def _new_field_type(value: Any) -> str:
    if isinstance(value, bool):
        return "checkbox"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return "date"
    return "singleLineText"


_NEW_FIELD_OPTIONS: dict[str, dict[str, Any]] = {
    "number": {"precision": 2},
    "checkbox": {"icon": "check", "color": "greenBright"},
    "date": {"dateFormat": {"name": "iso"}},
}


def _refused(exc: requests.HTTPError, table: str) -> IntegrationError:
    response = exc.response
    try:
        error = response.json().get("error") if response is not None else None
    except ValueError:
        error = None
    if isinstance(error, dict):
        reason = f"{error.get('message', '')} ({error.get('type', 'error')})"
    else:
        reason = str(error or (response.status_code if response is not None else "no answer"))
    return IntegrationError(f"Airtable refused the change to '{table}': {reason}", sheet=table)


class AirtableSheets(TabularSheets):
    """The tables of one Airtable base, read and changed by record and field name."""

    summary = "Airtable: read records, update fields by name, add records."

    def __init__(self, *, api_key: str, base_id: str,
                 base_url: str = "https://api.airtable.com") -> None:
        super().__init__()
        self.api = Api(api_key, endpoint_url=base_url.rstrip("/"), timeout=(10, 60),
                       retry_strategy=retry_strategy(total=5, backoff_factor=0.3))
        self.base = self.api.base(base_id)

    async def sheet_names(self) -> builtins.list[str]:
        schema = await self._schema()
        return [table.name for table in schema.tables]

    async def load(self, name: str) -> Table:
        schema = (await self._schema()).table(name)
        table = self.base.table(schema.id)
        records = await self._call(name, table.all)
        columns = [f.name for f in schema.fields]
        types = {f.name: str(getattr(f.type, "value", f.type)) for f in schema.fields}
        options = {f.name: [c.name for c in f.options.choices] for f in schema.fields
                   if f.type in ("singleSelect", "multipleSelects")}
        rows = [Row(r["id"], {c: r["fields"].get(c) for c in columns}) for r in records]
        return Table(name, columns, rows, types=types, options=options,
                     extra={"table": table})

    async def write_row(self, table: Table, row: Row, values: dict[str, Any],
                        new_columns: builtins.list[str]) -> Row:
        fields = await self._fields(table, values, new_columns)
        record = await self._call(table.name, table.extra["table"].update, row.id, fields)
        return await self._row(table, new_columns, record)

    async def add_row(self, table: Table, values: dict[str, Any],
                      new_columns: builtins.list[str]) -> Row:
        fields = await self._fields(table, values, new_columns)
        record = await self._call(table.name, table.extra["table"].create, fields)
        return await self._row(table, new_columns, record)

    # Helpers.

    async def _schema(self) -> Any:
        return await asyncio.to_thread(self.base.schema, force=True)

    async def _call(self, name: str, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except requests.HTTPError as exc:
            raise _refused(exc, name) from None

    async def _fields(self, table: Table, values: dict[str, Any],
                      new_columns: builtins.list[str]) -> dict[str, Any]:
        for column in new_columns:
            kind = _new_field_type(values[column])
            options = _NEW_FIELD_OPTIONS.get(kind)
            await self._call(table.name, table.extra["table"].create_field, column, kind,
                             None, options)
            table.types[column] = kind
        return {c: _coerce(v, c, table.types.get(c, "singleLineText"), table.options.get(c, []))
                for c, v in values.items()}

    async def _row(self, table: Table, new_columns: builtins.list[str],
                   record: dict[str, Any]) -> Row:
        columns = table.columns + new_columns
        return Row(record["id"], {c: record["fields"].get(c) for c in columns})
