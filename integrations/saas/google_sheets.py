"""Google Sheets through gspread, with the local sheet's API (see `_tabular.py`).

One connection is one spreadsheet; its tabs are the sheets. The first row of a tab is its header.
Row ids are "row-N" (N counts data rows from 1 below the header), or the value of an "id" column
when the tab has one, exactly as for the local sheets.

gspread builds its URLs from fixed constants, so the base URL is changed by the HTTP session it is
given: `_GoogleSession` rewrites Google's API origins to `base_url` (tests point it at a loopback
fake) and retries rate-limited calls, honouring `Retry-After`.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import json
import logging
import re
import time
from decimal import Decimal
from typing import Any

import gspread
import requests
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account
from gspread.utils import DateTimeOption, ValueInputOption, ValueRenderOption, rowcol_to_a1

from core.errors import IntegrationError
from integrations.base import Row
from integrations.saas._tabular import Table, TabularSheets, cell_text

logger = logging.getLogger(__name__)

GOOGLE_APIS = ("https://sheets.googleapis.com", "https://www.googleapis.com")
SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)
_RETRIES = 4
_MAX_WAIT_S = 60.0
_UPDATED = re.compile(r"!\$?[A-Z]+\$?(\d+)")


def google_credentials(secrets: dict[str, str], scopes: tuple[str, ...]) -> Credentials:
    """Credentials from a service account key (`service_account_json`) or an `access_token`."""
    if secrets.get("service_account_json"):
        info = json.loads(secrets["service_account_json"])
        creds: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(scopes))
        return creds
    if secrets.get("access_token"):
        return oauth2_credentials.Credentials(  # type: ignore[no-untyped-call]
            token=secrets["access_token"])
    raise IntegrationError("Google needs 'service_account_json' (a service account key) or "
                           "'access_token'. Add one with `sluice connect`.")


def _retry_after(response: requests.Response, attempt: int) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        wait = float(value)
    except ValueError:
        wait = 0.5 * 2 ** attempt
    return min(max(wait, 0.0), _MAX_WAIT_S)


class _GoogleSession(AuthorizedSession):
    """An authorised session that sends Google API calls to `base_url` and retries politely.

    A 429 is retried for every method (Google did not perform the request); other 5xx answers
    only for GET, the calls that are safe to repeat.
    """

    def __init__(self, credentials: Credentials, base_url: str) -> None:
        super().__init__(credentials)  # type: ignore[no-untyped-call]
        self.base_url = base_url.rstrip("/")

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        for origin in GOOGLE_APIS:
            if url.startswith(origin):
                url = self.base_url + url[len(origin):]
        for attempt in range(_RETRIES + 1):
            response: requests.Response = super().request(  # type: ignore[no-untyped-call]
                method, url, *args, **kwargs)
            retry = response.status_code == 429 or (
                method.upper() == "GET" and response.status_code in (500, 502, 503, 504))
            if not retry or attempt == _RETRIES:
                return response
            wait = _retry_after(response, attempt)
            logger.info("google %s %s: %s, retrying in %.1fs", method, response.status_code,
                        url.split("?")[0], wait)
            time.sleep(wait)
        return response


def _cell_value(value: Any) -> Any:
    """A value as gspread sends it (JSON), entered as a user would type it."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _api_error(exc: gspread.exceptions.APIError, sheet: str) -> IntegrationError:
    error = exc.error if isinstance(exc.error, dict) else {}
    return IntegrationError(
        f"Google Sheets refused the change to '{sheet}': {error.get('message', 'no reason given')}",
        sheet=sheet, status=error.get("code"),
    )


class GoogleSheets(TabularSheets):
    """The tabs of one Google spreadsheet, read and changed by row and column name."""

    summary = "Google Sheets: read rows, update cells by column name, append rows."

    def __init__(self, *, spreadsheet_id: str, credentials: Credentials,
                 base_url: str = "https://sheets.googleapis.com") -> None:
        super().__init__()
        self.spreadsheet_id = spreadsheet_id
        session = _GoogleSession(credentials, base_url)
        self.client = gspread.Client(auth=None, session=session)  # type: ignore[arg-type]
        self._spreadsheet: gspread.Spreadsheet | None = None

    async def sheet_names(self) -> builtins.list[str]:
        worksheets = await asyncio.to_thread(lambda: self._book().worksheets())
        return [ws.title for ws in worksheets]

    async def load(self, name: str) -> Table:
        worksheet = await asyncio.to_thread(lambda: self._book().worksheet(name))
        values = await asyncio.to_thread(
            worksheet.get, value_render_option=ValueRenderOption.unformatted,
            date_time_render_option=DateTimeOption.formatted_string, pad_values=False,
        )
        return _table(name, [builtins.list(r) for r in values], worksheet)

    async def write_row(self, table: Table, row: Row, values: dict[str, Any],
                        new_columns: builtins.list[str]) -> Row:
        worksheet: gspread.Worksheet = table.extra["worksheet"]
        header = await self._widen(table, new_columns)
        line = table.extra["lines"][row.id]
        data = [{"range": rowcol_to_a1(line, header.index(c) + 1), "values": [[_cell_value(v)]]}
                for c, v in values.items()]
        await self._call(table.name, worksheet.batch_update, data,
                         value_input_option=ValueInputOption.user_entered)
        return await self._reread(table.name, line)

    async def add_row(self, table: Table, values: dict[str, Any],
                      new_columns: builtins.list[str]) -> Row:
        worksheet: gspread.Worksheet = table.extra["worksheet"]
        header = await self._widen(table, new_columns)
        cells = [_cell_value(values.get(c)) for c in header]
        answer = await self._call(
            table.name, worksheet.append_row, cells,
            value_input_option=ValueInputOption.user_entered,
            insert_data_option="INSERT_ROWS", table_range="A1",
        )
        found = _UPDATED.search(str(answer.get("updates", {}).get("updatedRange", "")))
        if found is None:
            raise IntegrationError(f"Google Sheets did not say where the row was added to "
                                   f"'{table.name}'; read the sheet to see it.")
        return await self._reread(table.name, int(found.group(1)))

    # Helpers.

    def _book(self) -> gspread.Spreadsheet:
        if self._spreadsheet is None:
            self._spreadsheet = self.client.open_by_key(self.spreadsheet_id)
        return self._spreadsheet

    async def _call(self, sheet: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except gspread.exceptions.APIError as exc:
            raise _api_error(exc, sheet) from None

    async def _widen(self, table: Table, new_columns: builtins.list[str]) -> builtins.list[str]:
        """The header with `new_columns` written at its right end (the grid grows if needed)."""
        header = builtins.list(table.extra["header"])
        if not new_columns:
            return header
        worksheet: gspread.Worksheet = table.extra["worksheet"]
        width = len(header) + len(new_columns)
        if width > worksheet.col_count:
            await self._call(table.name, worksheet.add_cols, width - worksheet.col_count)
        start = rowcol_to_a1(1, len(header) + 1)
        await self._call(table.name, worksheet.batch_update,
                         [{"range": start, "values": [new_columns]}],
                         value_input_option=ValueInputOption.raw)
        return header + new_columns

    async def _reread(self, name: str, line: int) -> Row:
        table = await self.load(name)
        for row_id, at in table.extra["lines"].items():
            if at == line:
                row = table.row(row_id)
                if row is not None:
                    return row
        raise IntegrationError(f"Row {line} of '{name}' changed while it was written; read the "
                               "sheet again.")


def _table(name: str, values: builtins.list[builtins.list[Any]], worksheet: Any) -> Table:
    header = [str(h) if h is not None else "" for h in values[0]] if values else []
    id_col = next((i for i, h in enumerate(header) if h.strip().casefold() == "id"), None)
    rows: builtins.list[Row] = []
    lines: dict[str, int] = {}
    for index, cells in enumerate(values[1:]):
        if not any(c not in (None, "") for c in cells):
            continue  # a blank line inside the grid is not a row
        row_id = f"row-{index + 1}"
        if id_col is not None and id_col < len(cells) and cells[id_col] not in (None, ""):
            row_id = cell_text(cells[id_col]) or row_id
        padded = cells + [None] * (len(header) - len(cells))
        rows.append(Row(row_id, {h: (None if v == "" else v)
                                 for h, v in zip(header, padded, strict=False) if h}))
        lines[row_id] = index + 2
    return Table(name, [h for h in header if h], rows, types=_types(header, rows),
                 extra={"worksheet": worksheet, "header": header, "lines": lines})


def _types(header: builtins.list[str], rows: builtins.list[Row]) -> dict[str, str]:
    types: dict[str, str] = {}
    for column in header:
        seen = {type(r.get(column)) for r in rows if r.get(column) is not None}
        if seen and seen <= {int, float}:
            types[column] = "number"
        elif seen == {bool}:
            types[column] = "checkbox"
        else:
            types[column] = "text"
    return types
