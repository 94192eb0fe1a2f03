"""A local Airtable Web API (records and the metadata API subset pyairtable uses).

Follows https://airtable.com/developers/web/api: `GET /v0/meta/bases/{base}/tables` (schema),
`GET /v0/{base}/{table}` (list records, `pageSize` at most 100, `offset` paging),
`POST /v0/{base}/{table}` (create), `PATCH /v0/{base}/{table}/{record}` (update),
`POST /v0/meta/bases/{base}/tables/{table}/fields` (create field). Errors use Airtable's bodies:
`UNKNOWN_FIELD_NAME`, `INVALID_VALUE_FOR_COLUMN`, `INVALID_MULTIPLE_CHOICE_OPTIONS` (a select value
that is not an option, unless `typecast`), `DUPLICATE_OR_EMPTY_FIELD_NAME`, 404 `NOT_FOUND`,
401 `AUTHENTICATION_REQUIRED` and 429 `RATE_LIMIT_REACHED`. Empty fields are left out of records,
as Airtable does.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_ids = itertools.count(1)
_TEXT = {"singleLineText", "multilineText", "email", "url", "phoneNumber", "richText"}
_NUMBER = {"number", "currency", "percent"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):014d}"


@dataclass
class Field:
    name: str
    type: str = "singleLineText"
    options: dict[str, Any] | None = None
    id: str = field(default_factory=lambda: _new_id("fld"))

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name, "type": self.type}
        if self.options is not None:
            out["options"] = self.options
        return out

    def choices(self) -> list[str]:
        return [c["name"] for c in (self.options or {}).get("choices", [])]


@dataclass
class AirTable:
    name: str
    fields: list[Field]
    records: list[dict[str, Any]] = field(default_factory=list)
    id: str = field(default_factory=lambda: _new_id("tbl"))

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if name in (f.name, f.id)), None)

    def rows(self) -> list[dict[str, Any]]:
        """The records' fields, top to bottom, with every field named (None when empty)."""
        return [{f.name: r["fields"].get(f.name) for f in self.fields} for r in self.records]


class AirtableFake:
    """One base, `base_id`, accepting the personal access token `token`."""

    def __init__(self, *, base_id: str = "appTEST0000000001", token: str = "pat-test") -> None:
        self.base_id = base_id
        self.token = token
        self.tables: list[AirTable] = []
        self.requests: list[tuple[str, str]] = []
        self.throttle = 0

    def add_table(self, name: str, fields: list[Field], rows: list[dict[str, Any]]) -> AirTable:
        table = AirTable(name, fields)
        for values in rows:
            table.records.append(_record({k: v for k, v in values.items() if v not in (None, "")}))
        self.tables.append(table)
        return table

    def table(self, name: str) -> AirTable:
        return next(t for t in self.tables if name in (t.name, t.id))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        base = f"/v0/meta/bases/{self.base_id}/tables"
        app.router.add_get(base, self._schema)
        app.router.add_post(base + "/{table}/fields", self._create_field)
        app.router.add_get(f"/v0/{self.base_id}/{{table}}", self._list)
        app.router.add_post(f"/v0/{self.base_id}/{{table}}", self._create)
        app.router.add_patch(f"/v0/{self.base_id}/{{table}}/{{record}}", self._update)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "AUTHENTICATION_REQUIRED", "Authentication required")
        if self.throttle > 0:
            self.throttle -= 1
            return web.json_response({"errors": [{"error": "RATE_LIMIT_REACHED", "message":
                                     "Rate limit exceeded. Please try again later"}]},
                                     status=429, headers={"Retry-After": "0"})
        return await handler(request)

    def _table(self, request: web.Request) -> AirTable | None:
        wanted = request.match_info["table"]
        return next((t for t in self.tables if wanted in (t.name, t.id)), None)

    async def _schema(self, request: web.Request) -> web.Response:
        return web.json_response({"tables": [{
            "id": t.id, "name": t.name, "primaryFieldId": t.fields[0].id,
            "fields": [f.schema() for f in t.fields],
            "views": [{"id": "viwGRID" + t.id[3:10], "name": "Grid view", "type": "grid"}],
        } for t in self.tables]})

    async def _list(self, request: web.Request) -> web.Response:
        table = self._table(request)
        if table is None:
            return _not_found_table(request)
        try:
            size = int(request.query.get("pageSize", "100"))
            start = int(request.query.get("offset", "0") or 0)
        except ValueError:
            return _error(422, "INVALID_REQUEST_UNKNOWN", "Invalid request: parameter validation "
                          "failed. Check your request data.")
        if not 1 <= size <= 100:
            return _error(422, "INVALID_PAGE_SIZE", f"Invalid page size: {size}")
        page = table.records[start:start + size]
        body: dict[str, Any] = {"records": page}
        if start + size < len(table.records):
            body["offset"] = str(start + size)
        return web.json_response(body)

    async def _create(self, request: web.Request) -> web.Response:
        table = self._table(request)
        if table is None:
            return _not_found_table(request)
        body = await request.json()
        checked = _check(table, body.get("fields", {}), bool(body.get("typecast")))
        if isinstance(checked, web.Response):
            return checked
        record = _record(checked)
        table.records.append(record)
        return web.json_response(record)

    async def _update(self, request: web.Request) -> web.Response:
        table = self._table(request)
        if table is None:
            return _not_found_table(request)
        record = next((r for r in table.records if r["id"] == request.match_info["record"]), None)
        if record is None:
            return web.json_response({"error": "NOT_FOUND"}, status=404)
        body = await request.json()
        checked = _check(table, body.get("fields", {}), bool(body.get("typecast")))
        if isinstance(checked, web.Response):
            return checked
        for name, value in checked.items():
            if value in (None, "", False, []):
                record["fields"].pop(name, None)
            else:
                record["fields"][name] = value
        return web.json_response(record)

    async def _create_field(self, request: web.Request) -> web.Response:
        table = self._table(request)
        if table is None:
            return _not_found_table(request)
        body = await request.json()
        name = str(body.get("name", "")).strip()
        if not name or table.field(name) is not None:
            return _error(422, "DUPLICATE_OR_EMPTY_FIELD_NAME",
                          "Field names must be unique and non-empty")
        new = Field(name, body["type"], body.get("options"))
        table.fields.append(new)
        return web.json_response(new.schema())


def _record(fields: dict[str, Any]) -> dict[str, Any]:
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat().replace("+00:00", ".000Z")
    return {"id": _new_id("rec"), "createdTime": created, "fields": dict(fields)}


def _check(
    table: AirTable, fields: dict[str, Any], typecast: bool
) -> dict[str, Any] | web.Response:
    """The fields as stored, or Airtable's 422 for the first one it would refuse."""
    stored: dict[str, Any] = {}
    for name, value in fields.items():
        spec = table.field(name)
        if spec is None:
            return _error(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
        if value is None:
            stored[spec.name] = None
            continue
        problem = _refusal(spec, value, typecast)
        if problem is not None:
            return problem
        stored[spec.name] = value
    return stored


def _refusal(spec: Field, value: Any, typecast: bool) -> web.Response | None:
    cannot = _error(422, "INVALID_VALUE_FOR_COLUMN",
                    f'Field "{spec.name}" cannot accept the provided value')
    if spec.type in _TEXT:
        return None if isinstance(value, str) else cannot
    if spec.type in _NUMBER:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else cannot
    if spec.type == "checkbox":
        return None if isinstance(value, bool) else cannot
    if spec.type == "date":
        return None if isinstance(value, str) and _DATE.match(value) else cannot
    if spec.type in ("singleSelect", "multipleSelects"):
        wanted = value if isinstance(value, list) else [value]
        unknown = [v for v in wanted if v not in spec.choices()]
        if unknown and not typecast:
            return _error(422, "INVALID_MULTIPLE_CHOICE_OPTIONS",
                          f'Insufficient permissions to create new select option ""{unknown[0]}""')
    return None


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


def _not_found_table(request: web.Request) -> web.Response:
    return _error(404, "TABLE_NOT_FOUND",
                  f"Could not find table {request.match_info['table']} in application")
