"""A local QuickBooks Online Accounting API v3 (the subset python-quickbooks uses here).

Follows https://developer.intuit.com/app/developer/qbo/docs/api/accounting: `query` (the QBO SQL
subset `SELECT * FROM X [WHERE Field = 'v'] [STARTPOSITION n] [MAXRESULTS m]`), create of
vendor/customer/bill/invoice, `upload` of attachables (multipart), the `requestid` parameter
(a repeated request id returns the first answer and creates nothing), and `Fault` error bodies:
6240 duplicate name, 2500 invalid reference, 2010 for a line `DetailType` that is not one of
the enumeration's names, 3200 authentication.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_TIME = "2026-03-12T09:00:00.000-07:00"
_QUERY = re.compile(
    r"^select \* from (\w+)\s*(?:where (\w+) = '((?:[^'\\]|\\.)*)')?\s*"
    r"(?:startposition (\d+))?\s*(?:maxresults (\d+))?\s*$", re.IGNORECASE)
_DETAIL_TYPES = {
    "bill": ["AccountBasedExpenseLineDetail", "ItemBasedExpenseLineDetail"],
    "invoice": ["SalesItemLineDetail", "GroupLineDetail", "DescriptionOnly",
                "DiscountLineDetail", "SubTotalLineDetail"],
}
_ENTITY = {"vendor": "Vendor", "customer": "Customer", "bill": "Bill", "invoice": "Invoice",
           "account": "Account", "item": "Item", "attachable": "Attachable"}


@dataclass
class QuickBooksFake:
    realm_id: str = "9130350000000001"
    token: str = "qbo-access-token"
    store: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in _ENTITY.values()})
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    answered: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        stored = {**record, "Id": str(sum(len(v) for v in self.store.values()) + 1),
                  "SyncToken": "0", "domain": "QBO", "sparse": False,
                  "MetaData": {"CreateTime": _TIME, "LastUpdatedTime": _TIME}}
        self.store[kind].append(stored)
        return stored

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        base = f"/v3/company/{self.realm_id}"
        app.router.add_post(base + "/query", self._query)
        app.router.add_post(base + "/upload", self._upload)
        app.router.add_post(base + "/{entity}", self._create)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _fault(401, "AUTHENTICATION", "message=AuthenticationFailed; "
                          "errorCode=003200; statusCode=401", "", "3200")
        if "minorversion" not in request.query:
            return _fault(400, "ValidationFault", "Minor version is required", "", "2020")
        key = request.query.get("requestid")
        if key and key in self.answered:
            return web.json_response(self.answered[key])
        response = await handler(request)
        if key and isinstance(response, web.Response) and response.status == 200:
            self.answered[key] = json.loads(response.text or "{}")
        return response

    async def _query(self, request: web.Request) -> web.Response:
        text = (await request.text()).strip()
        found = _QUERY.match(text)
        if found is None or found.group(1).lower() not in _ENTITY:
            return _fault(400, "ValidationFault", "Error parsing query",
                          f"QueryParserError: Encountered \" {text[:40]} \"", "4000")
        kind = _ENTITY[found.group(1).lower()]
        rows = self.store[kind]
        if found.group(2):
            value = found.group(3).replace("\\'", "'")
            rows = [r for r in rows if str(r.get(found.group(2))) == value]
        start, size = int(found.group(4) or 1), int(found.group(5) or 100)
        if size > 1000:
            return _fault(400, "ValidationFault", "Invalid query",
                          "MAXRESULTS must be at most 1000", "4001")
        page = rows[start - 1:start - 1 + size]
        body: dict[str, Any] = {"QueryResponse": {"startPosition": start,
                                                  "maxResults": len(page)}, "time": _TIME}
        if page:
            body["QueryResponse"][kind] = page
        return web.json_response(body)

    async def _create(self, request: web.Request) -> web.Response:
        entity = request.match_info["entity"]
        kind = _ENTITY.get(entity)
        if kind is None or kind in ("Account", "Item", "Attachable"):
            return _fault(400, "ValidationFault", "Unsupported Operation",
                          f"Operation not supported for {entity}", "500")
        body = await request.json()
        refused = self._refusal(entity, body)
        if refused is not None:
            return refused
        if entity in ("bill", "invoice"):
            body["TotalAmt"] = round(sum(float(line["Amount"]) for line in body["Line"]), 2)
            body["Balance"] = body["TotalAmt"]
            body["TxnDate"] = "2026-03-12"
        return web.json_response({kind: self.add(kind, body), "time": _TIME})

    def _refusal(self, entity: str, body: dict[str, Any]) -> web.Response | None:
        if entity in ("vendor", "customer"):
            same = [r for r in self.store[_ENTITY[entity]]
                    if r["DisplayName"] == body.get("DisplayName")]
            if same:
                return _fault(400, "ValidationFault", "Duplicate Name Exists Error",
                              f"The name supplied already exists. : Id={same[0]['Id']}", "6240")
            return None
        party = "Vendor" if entity == "bill" else "Customer"
        if not self._exists(party, body.get(f"{party}Ref", {}).get("value")):
            return _invalid_reference(party)
        for line in body.get("Line", []):
            kind = line.get("DetailType")
            if kind not in _DETAIL_TYPES[entity]:
                return _fault(400, "ValidationFault", "Request has invalid or unsupported "
                              "property", "Property Name:Can not deserialize value of type "
                              "com.intuit.schema.finance.v3.LineDetailTypeEnum from String "
                              f"\"{kind}\": value not one of declared Enum instance names: "
                              f"{_DETAIL_TYPES[entity]}", "2010")
            detail = line.get(kind, {})
            for ref, target in (("AccountRef", "Account"), ("ItemRef", "Item")):
                if ref in detail and not self._exists(target, detail[ref].get("value")):
                    return _invalid_reference(target)
        return None

    def _exists(self, kind: str, record_id: Any) -> bool:
        return any(r["Id"] == str(record_id) for r in self.store[kind])

    async def _upload(self, request: web.Request) -> web.Response:
        raw = (await request.read()).decode()
        boundary = request.headers["Content-Type"].split("boundary=", 1)[1]
        parts = [p for p in raw.split(f"--{boundary}") if p.strip() and p.strip() != "--"]
        metadata: dict[str, Any] = {}
        content = b""
        for part in parts:
            head, _, data = part.strip("\n").partition("\n\n")
            if 'name="file_metadata_01"' in head:
                metadata = json.loads(data)
            elif 'name="file_content_01"' in head:
                content = base64.b64decode(data.strip())
        for ref in metadata.get("AttachableRef", []):
            entity = ref.get("EntityRef", {})
            if not self._exists(entity.get("type", ""), entity.get("value")):
                return _invalid_reference(entity.get("type", "Entity"))
        metadata["Size"] = len(content)
        stored = self.add("Attachable", metadata)
        self.files[stored["Id"]] = content
        return web.json_response({"AttachableResponse": [{"Attachable": stored}], "time": _TIME})


def _invalid_reference(kind: str) -> web.Response:
    return _fault(400, "ValidationFault", "Invalid Reference Id",
                  f"Invalid Reference Id : {kind}s element id not found", "2500")


def _fault(status: int, kind: str, message: str, detail: str, code: str) -> web.Response:
    error = {"Message": message, "Detail": detail, "code": code}
    return web.json_response({"Fault": {"Error": [error], "type": kind}, "time": _TIME},
                             status=status)
