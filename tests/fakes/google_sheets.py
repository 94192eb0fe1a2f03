"""A local Google Sheets API v4 (the subset gspread uses for reading, updating and appending).

Follows https://developers.google.com/sheets/api/reference/rest: `spreadsheets.get`,
`spreadsheets.batchUpdate` (updateSheetProperties, appendDimension), `spreadsheets.values.get`,
`values.batchUpdate` and `values.append`, with Google's error body
`{"error": {"code", "message", "status"}}`, grid limits, enumeration checks
(`valueInputOption`, `valueRenderOption`, `insertDataOption`) and bearer-token auth.
Values entered as USER_ENTERED are parsed the way the Sheets UI parses typed text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_RENDER = ("FORMATTED_VALUE", "UNFORMATTED_VALUE", "FORMULA")
_INPUT = ("RAW", "USER_ENTERED")
_INSERT = ("OVERWRITE", "INSERT_ROWS")
_A1 = re.compile(r"^\$?([A-Z]+)\$?(\d+)?$")


@dataclass
class Tab:
    title: str
    sheet_id: int
    cells: list[list[Any]] = field(default_factory=list)
    row_count: int = 1000
    column_count: int = 26

    def values(self) -> list[list[Any]]:
        """The cells as the API returns them: trailing empty cells and rows left out."""
        out = []
        for row in self.cells:
            row = list(row)
            while row and row[-1] in (None, ""):
                row.pop()
            out.append(row)
        while out and not out[-1]:
            out.pop()
        return out

    def set(self, row: int, col: int, value: Any) -> None:
        while len(self.cells) <= row:
            self.cells.append([])
        line = self.cells[row]
        line.extend([None] * (col + 1 - len(line)))
        line[col] = value

    def records(self) -> list[dict[str, Any]]:
        """The rows as {header: value} (what a person sees under each header)."""
        values = self.values()
        if not values:
            return []
        header = values[0]
        return [{h: (r[i] if i < len(r) else None) for i, h in enumerate(header) if h}
                for r in values[1:] if any(c not in (None, "") for c in r)]


class GoogleSheetsFake:
    """One spreadsheet, `spreadsheet_id`, with tabs; accepts the bearer `token`."""

    def __init__(self, *, spreadsheet_id: str = "sheet-1", token: str = "test-token") -> None:
        self.spreadsheet_id = spreadsheet_id
        self.token = token
        self.tabs: list[Tab] = []
        self.requests: list[tuple[str, str]] = []
        self.throttle = 0  # answer this many requests with 429 first

    def add_tab(self, title: str, rows: list[list[Any]], *, columns: int = 26) -> Tab:
        tab = Tab(title, len(self.tabs) + 100, [list(r) for r in rows], column_count=columns)
        self.tabs.append(tab)
        return tab

    def tab(self, title: str) -> Tab:
        return next(t for t in self.tabs if t.title == title)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_route("*", "/v4/spreadsheets/{rest:.*}", self._route)
        return app

    # Plumbing.

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Request had invalid authentication credentials. Expected OAuth 2 "
                          "access token, login cookie or other valid authentication credential.",
                          "UNAUTHENTICATED")
        if self.throttle > 0:
            self.throttle -= 1
            return _error(429, "Quota exceeded for quota metric 'Read requests' and limit "
                          "'Read requests per minute per user'.", "RESOURCE_EXHAUSTED",
                          headers={"Retry-After": "0"})
        return await handler(request)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        rest = request.match_info["rest"]
        book, _, tail = rest.partition("/")
        book, _, verb = book.partition(":")
        if book != self.spreadsheet_id:
            return _error(404, "Requested entity was not found.", "NOT_FOUND")
        if request.method == "GET" and not tail and not verb:
            return web.json_response(self._metadata())
        if request.method == "POST" and verb == "batchUpdate":
            return await self._batch_update(request)
        if tail == "values:batchUpdate" and request.method == "POST":
            return await self._values_batch_update(request)
        if tail.startswith("values/"):
            rng, _, op = tail[len("values/"):].partition(":")
            if request.method == "GET" and not op:
                return self._values_get(request, rng)
            if request.method == "POST" and op == "append":
                return await self._append(request, rng)
        return _error(404, f"Method not found: {request.method} {request.path}", "NOT_FOUND")

    def _metadata(self) -> dict[str, Any]:
        return {
            "spreadsheetId": self.spreadsheet_id,
            "properties": {"title": "Team sheet", "locale": "en_US", "timeZone": "Etc/GMT"},
            "sheets": [{"properties": {
                "sheetId": t.sheet_id, "title": t.title, "index": i, "sheetType": "GRID",
                "gridProperties": {"rowCount": t.row_count, "columnCount": t.column_count},
            }} for i, t in enumerate(self.tabs)],
        }

    def _range(self, text: str) -> tuple[Tab, int, int] | web.Response:
        """(tab, first row, first column), 0-based, of an A1 range like `'signups'!B3:C4`."""
        title, _, cells = text.partition("!")
        title = title[1:-1].replace("''", "'") if title.startswith("'") else title
        tab = next((t for t in self.tabs if t.title == title), None)
        if tab is None:
            return _error(400, f"Unable to parse range: {text}", "INVALID_ARGUMENT")
        start = cells.split(":")[0] if cells else "A1"
        found = _A1.match(start)
        if found is None:
            return _error(400, f"Unable to parse range: {text}", "INVALID_ARGUMENT")
        col = _column_index(found.group(1))
        row = int(found.group(2) or 1) - 1
        return tab, row, col

    def _values_get(self, request: web.Request, rng: str) -> web.Response:
        render = request.query.get("valueRenderOption", "FORMATTED_VALUE")
        if render not in _RENDER:
            return _enum_error("value_render_option", "ValueRenderOption", render)
        found = self._range(rng)
        if isinstance(found, web.Response):
            return found
        tab = found[0]
        values = tab.values()
        if render == "FORMATTED_VALUE":
            values = [[_formatted(v) for v in row] for row in values]
        body: dict[str, Any] = {"range": f"'{tab.title}'!A1:{_column_name(tab.column_count)}"
                                         f"{tab.row_count}", "majorDimension": "ROWS"}
        if values:
            body["values"] = values
        return web.json_response(body)

    async def _values_batch_update(self, request: web.Request) -> web.Response:
        body = await request.json()
        option = body.get("valueInputOption")
        if option not in _INPUT:
            return _enum_error("value_input_option", "ValueInputOption", option)
        responses = []
        for item in body.get("data", []):
            written = self._write(item["range"], item["values"], option)
            if isinstance(written, web.Response):
                return written
            responses.append(written)
        return web.json_response({
            "spreadsheetId": self.spreadsheet_id,
            "totalUpdatedCells": sum(r["updatedCells"] for r in responses),
            "responses": responses,
        })

    def _write(
        self, rng: str, values: list[list[Any]], option: str
    ) -> dict[str, Any] | web.Response:
        found = self._range(rng)
        if isinstance(found, web.Response):
            return found
        tab, row, col = found
        width = max((len(r) for r in values), default=0)
        if row + len(values) > tab.row_count or col + width > tab.column_count:
            return _error(400, f"Range ({rng}) exceeds grid limits. Max rows: {tab.row_count}, "
                          f"max columns: {tab.column_count}", "INVALID_ARGUMENT")
        for r, line in enumerate(values):
            for c, value in enumerate(line):
                tab.set(row + r, col + c, _entered(value) if option == "USER_ENTERED" else value)
        end = f"{_column_name(col + width)}{row + len(values)}"
        return {"spreadsheetId": self.spreadsheet_id, "updatedRows": len(values),
                "updatedColumns": width, "updatedCells": len(values) * width,
                "updatedRange": f"'{tab.title}'!{_column_name(col + 1)}{row + 1}:{end}"}

    async def _append(self, request: web.Request, rng: str) -> web.Response:
        option = request.query.get("valueInputOption")
        if option not in _INPUT:
            return _enum_error("value_input_option", "ValueInputOption", option)
        insert = request.query.get("insertDataOption", "OVERWRITE")
        if insert not in _INSERT:
            return _enum_error("insert_data_option", "InsertDataOption", insert)
        found = self._range(rng)
        if isinstance(found, web.Response):
            return found
        tab = found[0]
        body = await request.json()
        next_row = len(tab.values())
        if insert == "INSERT_ROWS":
            tab.row_count += len(body["values"])
        written = self._write(f"'{tab.title}'!A{next_row + 1}", body["values"], option)
        if isinstance(written, web.Response):
            return written
        return web.json_response({
            "spreadsheetId": self.spreadsheet_id,
            "tableRange": f"'{tab.title}'!A1:{_column_name(len(tab.values()[0]))}{next_row}",
            "updates": written,
        })

    async def _batch_update(self, request: web.Request) -> web.Response:
        body = await request.json()
        replies: list[dict[str, Any]] = []
        for item in body.get("requests", []):
            if "updateSheetProperties" in item:
                props = item["updateSheetProperties"]["properties"]
                tab = next(t for t in self.tabs if t.sheet_id == props["sheetId"])
                grid = props.get("gridProperties", {})
                tab.row_count = grid.get("rowCount", tab.row_count)
                tab.column_count = grid.get("columnCount", tab.column_count)
            elif "appendDimension" in item:
                spec = item["appendDimension"]
                tab = next(t for t in self.tabs if t.sheet_id == spec["sheetId"])
                if spec["dimension"] == "COLUMNS":
                    tab.column_count += spec["length"]
                else:
                    tab.row_count += spec["length"]
            else:
                return _error(400, f"Invalid requests[{len(replies)}]: unsupported request "
                              "in this fake", "INVALID_ARGUMENT")
            replies.append({})
        return web.json_response({"spreadsheetId": self.spreadsheet_id, "replies": replies})


def _error(code: int, message: str, status: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "status": status}},
                             status=code, headers=headers)


def _enum_error(field_name: str, type_name: str, value: Any) -> web.Response:
    return _error(400, f"Invalid value at '{field_name}' (type.googleapis.com/"
                  f"google.apps.sheets.v4.{type_name}), \"{value}\"", "INVALID_ARGUMENT")


def _column_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + ord(ch) - 64
    return index - 1


def _column_name(number: int) -> str:
    name = ""
    while number > 0:
        number, rest = divmod(number - 1, 26)
        name = chr(65 + rest) + name
    return name


def _entered(value: Any) -> Any:
    """What the Sheets UI stores when a person types `value`."""
    if not isinstance(value, str):
        return value
    if value.upper() in ("TRUE", "FALSE"):
        return value.upper() == "TRUE"
    try:
        number = float(value.replace(",", "")) if value.strip() else None
    except ValueError:
        return value
    if number is None:
        return None
    return int(number) if number.is_integer() and "." not in value else number


def _formatted(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)
