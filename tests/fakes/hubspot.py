"""A local HubSpot CRM API (the v3 objects, search and properties and v4 associations endpoints).

Follows https://developers.hubspot.com/docs/api/crm: records with string property values,
`limit`/`after` paging (`paging.next.after`), search with `filterGroups` (operators checked), the
properties API with enumeration options, default associations. Errors use HubSpot's body
`{"status": "error", "message", "correlationId", "category"}`; an enumeration value that is not
an option is refused with `VALIDATION_ERROR` / `INVALID_OPTION` listing the allowed options, as
HubSpot does, and a second contact with the same email is a 409 `CONFLICT`.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

_NOW = "2026-01-01T00:00:00.000Z"
_OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY",
              "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}
_TYPES = {"string", "number", "date", "datetime", "enumeration", "bool"}
_DEFAULT_TYPES = {("contacts", "companies"): 279, ("companies", "contacts"): 280,
                  ("deals", "contacts"): 3, ("contacts", "deals"): 4,
                  ("deals", "companies"): 341, ("companies", "deals"): 342}


def prop(name: str, label: str, type: str = "string", options: list[tuple[str, str]] = (),  # type: ignore[assignment]
         *, field_type: str = "", read_only: bool = False) -> dict[str, Any]:
    """A property definition as HubSpot returns it; `options` are (label, value) pairs."""
    return {
        "name": name, "label": label, "type": type,
        "fieldType": field_type or {"enumeration": "select", "number": "number",
                                    "bool": "booleancheckbox", "date": "date"}.get(type, "text"),
        "groupName": "information", "description": "", "hidden": False, "displayOrder": -1,
        "calculated": False, "externalOptions": False, "hasUniqueValue": name == "email",
        "formField": True, "createdAt": _NOW, "updatedAt": _NOW, "archived": False,
        "modificationMetadata": {"archivable": True, "readOnlyDefinition": True,
                                 "readOnlyValue": read_only},
        "options": [{"label": label_, "value": value, "displayOrder": i, "hidden": False}
                    for i, (label_, value) in enumerate(options)],
    }


def default_properties() -> dict[str, list[dict[str, Any]]]:
    lifecycle = [("Subscriber", "subscriber"), ("Lead", "lead"),
                 ("Marketing Qualified Lead", "marketingqualifiedlead"),
                 ("Sales Qualified Lead", "salesqualifiedlead"), ("Opportunity", "opportunity"),
                 ("Customer", "customer"), ("Evangelist", "evangelist"), ("Other", "other")]
    lead_status = [("New", "NEW"), ("Open", "OPEN"), ("In Progress", "IN_PROGRESS"),
                   ("Open Deal", "OPEN_DEAL"), ("Unqualified", "UNQUALIFIED"),
                   ("Attempted to Contact", "ATTEMPTED_TO_CONTACT"), ("Connected", "CONNECTED"),
                   ("Bad Timing", "BAD_TIMING")]
    stages = [("Appointment Scheduled", "appointmentscheduled"),
              ("Qualified To Buy", "qualifiedtobuy"), ("Closed Won", "closedwon"),
              ("Closed Lost", "closedlost")]
    return {
        "contacts": [
            prop("email", "Email"), prop("firstname", "First Name"),
            prop("lastname", "Last Name"),
            prop("lifecyclestage", "Lifecycle Stage", "enumeration", lifecycle),
            prop("hs_lead_status", "Lead Status", "enumeration", lead_status),
            prop("lead_stage", "Lead stage", "enumeration",
                 [("New Lead", "newlead"), ("Qualified Lead", "qualifiedlead"),
                  ("Customer", "customer")]),
            prop("hs_object_id", "Record ID", "number", read_only=True),
        ],
        "companies": [prop("name", "Company name"), prop("domain", "Company Domain Name"),
                      prop("numberofemployees", "Number of Employees", "number")],
        "deals": [prop("dealname", "Deal Name"), prop("amount", "Amount", "number"),
                  prop("dealstage", "Deal Stage", "enumeration", stages),
                  prop("pipeline", "Pipeline", "enumeration", [("Sales Pipeline", "default")])],
    }


@dataclass
class HubSpotFake:
    """A portal accepting the private app token `token`."""

    token: str = "pat-na1-test"
    properties: dict[str, list[dict[str, Any]]] = field(default_factory=default_properties)
    records: dict[str, dict[str, dict[str, str]]] = field(
        default_factory=lambda: {"contacts": {}, "companies": {}, "deals": {}})
    links: set[tuple[str, str, str, str]] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    throttle: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(101))

    def add(self, kind: str, properties: dict[str, str]) -> str:
        record_id = str(next(self._ids))
        self.records[kind][record_id] = {**properties, "hs_object_id": record_id}
        return record_id

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        r = app.router
        r.add_get("/crm/v3/properties/{kind}", self._properties)
        r.add_post("/crm/v3/properties/{kind}", self._create_property)
        r.add_get("/crm/v3/objects/{kind}", self._page)
        r.add_post("/crm/v3/objects/{kind}", self._create)
        r.add_post("/crm/v3/objects/{kind}/search", self._search)
        r.add_get("/crm/v3/objects/{kind}/{id}", self._get)
        r.add_patch("/crm/v3/objects/{kind}/{id}", self._update)
        r.add_put("/crm/v4/objects/{kind}/{id}/associations/default/{to}/{to_id}", self._link)
        r.add_get("/crm/v4/objects/{kind}/{id}/associations/{to}", self._links)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Authentication credentials not found. This API supports OAuth 2.0"
                          " authentication and you can find more details at "
                          "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                          "INVALID_AUTHENTICATION")
        if self.throttle > 0:
            self.throttle -= 1
            return web.json_response(
                {"status": "error", "message": "You have reached your secondly limit.",
                 "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()),
                 "policyName": "SECONDLY"}, status=429, headers={"Retry-After": "0"})
        kind = request.match_info.get("kind")
        if kind is not None and kind not in self.records:
            return _error(400, f"Unable to infer object type from: {kind}", "VALIDATION_ERROR")
        return await handler(request)

    # Properties.

    async def _properties(self, request: web.Request) -> web.Response:
        return web.json_response({"results": self.properties[request.match_info["kind"]]})

    async def _create_property(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        body = await request.json()
        if any(p["name"] == body.get("name") for p in self.properties[kind]):
            return _error(409, f"Property named '{body['name']}' already exists.",
                          "OBJECT_ALREADY_EXISTS")
        if body.get("type") not in _TYPES:
            return _error(400, f"Invalid input JSON on line 1: Cannot deserialize value of type "
                          f"`PropertyType` from String \"{body.get('type')}\"", "VALIDATION_ERROR")
        options = [(o["label"], o["value"]) for o in body.get("options", [])]
        created = prop(body["name"], body["label"], body["type"], options,
                       field_type=body.get("fieldType", ""))
        self.properties[kind].append(created)
        return web.json_response(created, status=201)

    # Records.

    def _object(self, kind: str, record_id: str, wanted: list[str] | None) -> dict[str, Any]:
        stored = self.records[kind][record_id]
        names = wanted if wanted else ["hs_object_id", "createdate", "lastmodifieddate"]
        return {"id": record_id, "properties": {n: stored.get(n) for n in names},
                "createdAt": _NOW, "updatedAt": _NOW, "archived": False}

    async def _page(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        limit = int(request.query.get("limit", "10"))
        if limit > 100:
            return _error(400, "limit must be at most 100", "VALIDATION_ERROR")
        wanted = _names(request.query.getall("properties", []))
        ids = list(self.records[kind])
        start = int(request.query.get("after", "0") or 0)
        body: dict[str, Any] = {"results": [self._object(kind, i, wanted)
                                            for i in ids[start:start + limit]]}
        if start + limit < len(ids):
            body["paging"] = {"next": {"after": str(start + limit), "link": "?after="}}
        return web.json_response(body)

    async def _get(self, request: web.Request) -> web.Response:
        kind, record_id = request.match_info["kind"], request.match_info["id"]
        if record_id not in self.records[kind]:
            return _error(404, "Object not found.  objectId are usually numeric.",
                          "OBJECT_NOT_FOUND")
        wanted = _names(request.query.getall("properties", []))
        return web.json_response(self._object(kind, record_id, wanted))

    async def _create(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        values = (await request.json()).get("properties", {})
        refused = self._validate(kind, values)
        if refused is not None:
            return refused
        email = values.get("email")
        if kind == "contacts" and email:
            for record_id, stored in self.records[kind].items():
                if stored.get("email", "").casefold() == email.casefold():
                    return _error(409, f"Contact already exists. Existing ID: {record_id}",
                                  "CONFLICT")
        record_id = self.add(kind, {k: v for k, v in values.items() if v != ""})
        return web.json_response(self._object(kind, record_id, list(values)), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        kind, record_id = request.match_info["kind"], request.match_info["id"]
        if record_id not in self.records[kind]:
            return _error(404, "Object not found.  objectId are usually numeric.",
                          "OBJECT_NOT_FOUND")
        values = (await request.json()).get("properties", {})
        refused = self._validate(kind, values)
        if refused is not None:
            return refused
        stored = self.records[kind][record_id]
        for name, value in values.items():
            if value == "":
                stored.pop(name, None)
            else:
                stored[name] = value
        return web.json_response(self._object(kind, record_id, list(values)))

    def _validate(self, kind: str, values: dict[str, Any]) -> web.Response | None:
        problems = []
        defined = {p["name"]: p for p in self.properties[kind]}
        for name, value in values.items():
            spec = defined.get(name)
            problem = _problem(name, value, spec)
            if problem is not None:
                problems.append(problem)
        if not problems:
            return None
        return _error(400, "Property values were not valid: " + json.dumps(problems),
                      "VALIDATION_ERROR")

    async def _search(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        body = await request.json()
        limit = int(body.get("limit") or 10)
        if limit > 200:
            return _error(400, "limit must be at most 200", "VALIDATION_ERROR")
        groups = body.get("filterGroups") or []
        for group in groups:
            for f in group.get("filters", []):
                if f.get("operator") not in _OPERATORS:
                    return _error(400, f"Invalid input JSON on line 1: Cannot deserialize value of"
                                  f" type `FilterOperatorEnum` from String \"{f.get('operator')}\"",
                                  "VALIDATION_ERROR")
        query = (body.get("query") or "").casefold()
        hits = [i for i, stored in self.records[kind].items()
                if (not groups or any(_matches(stored, g) for g in groups))
                and (not query or any(query in str(v).casefold() for v in stored.values()))]
        start = int(body.get("after") or 0)
        wanted = body.get("properties") or None
        out: dict[str, Any] = {"total": len(hits), "results": [
            self._object(kind, i, wanted) for i in hits[start:start + limit]]}
        if start + limit < len(hits):
            out["paging"] = {"next": {"after": str(start + limit)}}
        return web.json_response(out)

    # Associations.

    async def _link(self, request: web.Request) -> web.Response:
        m = request.match_info
        for kind, record_id in ((m["kind"], m["id"]), (m["to"], m["to_id"])):
            if kind not in self.records or record_id not in self.records[kind]:
                return _error(404, f"No {kind} with ID {record_id} exist", "OBJECT_NOT_FOUND")
        self.links.add((m["kind"], m["id"], m["to"], m["to_id"]))
        self.links.add((m["to"], m["to_id"], m["kind"], m["id"]))
        type_id = _DEFAULT_TYPES.get((m["kind"], m["to"]), 1)
        return web.json_response({
            "status": "COMPLETE", "startedAt": _NOW, "completedAt": _NOW,
            "results": [{"from": {"id": m["id"]}, "to": {"id": m["to_id"]}, "associationSpec": {
                "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}}],
        })

    async def _links(self, request: web.Request) -> web.Response:
        m = request.match_info
        type_id = _DEFAULT_TYPES.get((m["kind"], m["to"]), 1)
        found = sorted(to_id for kind, i, to, to_id in self.links
                       if (kind, i, to) == (m["kind"], m["id"], m["to"]))
        return web.json_response({"results": [
            {"toObjectId": int(to_id), "associationTypes": [
                {"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": None}]}
            for to_id in found]})


def _names(values: list[str]) -> list[str] | None:
    names = [n for v in values for n in v.split(",") if n]
    return names or None


def _problem(name: str, value: Any, spec: dict[str, Any] | None) -> dict[str, Any] | None:
    def bad(kind: str, message: str) -> dict[str, Any]:
        return {"isValid": False, "message": message, "error": kind, "name": name,
                "localizedErrorMessage": message}

    if spec is None:
        return bad("PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
    if spec["modificationMetadata"]["readOnlyValue"]:
        return bad("READ_ONLY_VALUE", f"{name} is a read only property; its value cannot be set.")
    if value == "" or value is None:
        return None
    if spec["type"] == "enumeration":
        allowed = [o["value"] for o in spec["options"]]
        chosen = str(value).split(";") if spec["fieldType"] == "checkbox" else [str(value)]
        wrong = [v for v in chosen if v not in allowed]
        if wrong:
            listed = ", ".join(f'[label: "{o["label"]}"\nvalue: "{o["value"]}"\n'
                               f'display_order: {o["displayOrder"]}\nhidden: false\n]'
                               for o in spec["options"])
            return bad("INVALID_OPTION",
                       f"{wrong[0]} was not one of the allowed options: [{listed}]")
    if spec["type"] == "number":
        try:
            Decimal(str(value))
        except InvalidOperation:
            return bad("INVALID_DECIMAL", f"{value} was not a valid decimal")
    if spec["type"] == "bool" and str(value) not in ("true", "false"):
        return bad("INVALID_BOOLEAN", f"{value} was not a valid boolean")
    return None


def _matches(stored: dict[str, str], group: dict[str, Any]) -> bool:
    for f in group.get("filters", []):
        have = stored.get(f["propertyName"])
        if f["operator"] == "EQ" and str(have or "").casefold() != str(f["value"]).casefold():
            return False
        if f["operator"] == "HAS_PROPERTY" and have in (None, ""):
            return False
    return True


def _error(status: int, message: str, category: str) -> web.Response:
    return web.json_response({"status": "error", "message": message,
                              "correlationId": str(uuid.uuid4()), "category": category},
                             status=status)
