"""HubSpot CRM through hubspot-api-client: contacts, companies and deals with their properties.

ARCHITECTURE.md, "AI-friendly integrations". A record is a `Row`: its HubSpot id and its
properties by internal name. Property names and values are coerced against the portal's property
definitions before they are sent: labels and near misses map to internal names ("Lead Status" ->
`hs_lead_status`), enumeration labels to option values ("Qualified Lead" -> `qualifiedlead`),
"5,000" to a number. A value that fits no option fails listing the options; if HubSpot itself
refuses an option (the definitions changed), they are re-read and listed.

The SDK's urllib3 `Retry` retries 429 answers for every method (HubSpot did not perform them),
honouring `Retry-After`; lists and searches read every page (`paging.next.after`).
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import difflib
import json
import logging
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, cast, get_args

from hubspot import HubSpot as HubSpotClient
from hubspot.crm.objects import (
    PublicObjectSearchRequest,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.properties import OptionInput, PropertyCreate
from urllib3.util.retry import Retry

from core.errors import IntegrationError
from integrations.base import Found, Integration, Row, action
from integrations.saas._match import match_name, match_option, no_option, norm

logger = logging.getLogger(__name__)

Kind = Literal["contacts", "companies", "deals"]
PropertyType = Literal["string", "number", "date", "bool", "enumeration"]
_KINDS: tuple[str, ...] = get_args(Kind)
_FIELD_TYPES = {"string": "text", "number": "number", "date": "date",
                "bool": "booleancheckbox", "enumeration": "select"}
_PAGE = 100


def _kind(kind: str) -> Kind:
    """`kind` as HubSpot's object type ("Contact" -> "contacts"), or an error listing them."""
    key = norm(kind)
    for known in _KINDS:
        if key in (known, known.rstrip("s"), known[:-3] + "y"):
            return cast(Kind, known)
    raise IntegrationError(f"'{kind}' is not a CRM record kind. Kinds: {', '.join(_KINDS)}.",
                           kind=kind)


def _record_id(record: Row | str | int) -> str:
    return record.id if isinstance(record, Row) else str(record)


def _same_value(stored: Any, sent: str) -> bool:
    """Whether a stored property value is the one sent, without case (an email's case is not
    significant) or surrounding spaces; an empty value is a cleared property."""
    return str(stored or "").strip().casefold() == sent.strip().casefold()


def _row(obj: Any) -> Row:
    return Row(str(obj.id), {k: v for k, v in (obj.properties or {}).items()})


def _number(value: Any, label: str) -> str:
    if isinstance(value, bool):
        raise IntegrationError(f"Property '{label}' holds numbers; got {value!r}.")
    text = str(value).strip().replace(",", "").replace("$", "").replace("€", "")
    try:
        return format(Decimal(text).normalize(), "f") if text else ""
    except InvalidOperation:
        raise IntegrationError(f"Property '{label}' holds numbers; '{value}' is not a number. "
                               "Pass a number such as 5000.") from None


def _bool(value: Any, label: str) -> str:
    text = str(value).strip().casefold()
    if isinstance(value, bool) or text in ("true", "false", "yes", "no", "1", "0"):
        return "true" if value is True or text in ("true", "yes", "1") else "false"
    raise IntegrationError(f"Property '{label}' is yes/no; pass True or False, not '{value}'.")


def _date(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


class _Schema:
    """The property definitions of one object type, as HubSpot describes them."""

    def __init__(self, kind: str, definitions: builtins.list[Any]) -> None:
        self.kind = kind
        self.by_name = {p.name: p for p in definitions if not p.hidden}

    def name(self, wanted: str) -> str:
        names = builtins.list(self.by_name)
        found = match_name(names, wanted)
        if found is None:
            labels = {p.label: p.name for p in self.by_name.values() if p.label}
            label = match_name(builtins.list(labels), wanted)
            found = labels[label] if label is not None else None
        if found is None:
            close = difflib.get_close_matches(str(wanted), names, n=5, cutoff=0.5)
            hint = f" Close: {', '.join(close)}." if close else ""
            raise IntegrationError(
                f"{self.kind} have no property '{wanted}'.{hint} See the CRM schema for all "
                "properties, or add one with crm.create_property(...).",
                kind=self.kind, property=str(wanted),
            )
        return found

    def options(self, name: str) -> builtins.list[tuple[str, str]]:
        return [(o.value, o.label) for o in (self.by_name[name].options or []) if not o.hidden]

    def value(self, name: str, value: Any) -> str:
        """`value` as HubSpot accepts it for the property `name` (always a string)."""
        prop = self.by_name[name]
        label = f"{prop.label or name}' ({name}"
        if value is None or value == "":
            return ""
        if prop.type == "enumeration":
            return self._enumeration(name, value)
        if prop.type == "number":
            return _number(value, label)
        if prop.type == "bool":
            return _bool(value, label)
        if prop.type in ("date", "datetime"):
            return _date(value)
        return value if isinstance(value, str) else str(value)

    def _enumeration(self, name: str, value: Any) -> str:
        what = f"the {self.kind} property '{name}'"
        if self.by_name[name].field_type == "checkbox":  # several options, ";"-separated
            items = value if isinstance(value, builtins.list) else str(value).split(";")
            return ";".join(match_option(self.options(name), str(v).strip(), what=what)
                            for v in items if str(v).strip())
        return match_option(self.options(name), value, what=what)

    def properties(self, values: dict[str, Any]) -> dict[str, str]:
        if not isinstance(values, dict):
            raise IntegrationError("properties must be a dict of property name to value, for "
                                   "example {'lifecyclestage': 'lead'}.")
        out: dict[str, str] = {}
        for wanted, value in values.items():
            name = self.name(str(wanted))
            if getattr(self.by_name[name].modification_metadata, "read_only_value", False):
                raise IntegrationError(f"The {self.kind} property '{name}' is read-only.",
                                       property=name)
            out[name] = self.value(name, value)
        return out

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {}
        for name, prop in self.by_name.items():
            entry: dict[str, Any] = {"label": prop.label, "type": prop.type}
            if prop.type == "enumeration":
                entry["options"] = {value: label for value, label in self.options(name)}
            described[name] = entry
        return described


class HubSpot(Integration):
    """The team's HubSpot CRM: contacts, companies and deals, each with its properties.

    Records are Rows: `row.id` is the HubSpot id, values are keyed by property internal name
    (see the CRM schema for names, types and the options of each dropdown).
    """

    name = "crm"
    summary = "HubSpot CRM: find, create and update contacts, companies and deals; link them."

    def __init__(self, *, access_token: str, base_url: str = "https://api.hubapi.com") -> None:
        retry = Retry(total=5, connect=1, backoff_factor=0.5, status_forcelist=(429,),
                      allowed_methods=None, respect_retry_after_header=True,
                      raise_on_status=False)
        self.client = HubSpotClient(access_token=access_token, host=base_url.rstrip("/"),
                                    retry=retry)
        self._schemas: dict[str, _Schema] = {}

    @action("read")
    async def get(self, kind: Kind, record: Row | str) -> Row:
        """One record by its id, e.g. crm.get("contacts", "151")."""
        kind = _kind(kind)
        schema = await self._schema(kind)
        obj = await self._call(self.client.crm.objects.basic_api.get_by_id, kind,
                               _record_id(record), properties=builtins.list(schema.by_name))
        return _row(obj)

    @action("read")
    async def records(self, kind: Kind) -> builtins.list[Row]:
        """Every record of a kind (all pages), e.g. crm.records("deals")."""
        kind = _kind(kind)
        names = builtins.list((await self._schema(kind)).by_name)
        rows: builtins.list[Row] = []
        after: str | None = None
        while True:
            page = await self._call(self.client.crm.objects.basic_api.get_page, kind,
                                    limit=_PAGE, after=after, properties=names)
            rows += [_row(obj) for obj in page.results]
            after = page.paging.next.after if page.paging and page.paging.next else None
            if after is None:
                return rows

    @action("read")
    async def search(self, kind: Kind, text: str = "", **equals: Any) -> builtins.list[Row]:
        """Records matching all `equals` (property = value) and, if given, the free `text`.

        e.g. crm.search("contacts", email="ana@example.com") or
        crm.search("deals", dealstage="Closed Won"). Property names and dropdown values are
        matched like in update(). Returns every match (all pages).
        """
        kind = _kind(kind)
        schema = await self._schema(kind)
        filters = []
        for wanted, value in equals.items():
            name = schema.name(wanted)
            filters.append({"propertyName": name, "operator": "EQ",
                            "value": schema.value(name, value)})
        return await self._search(kind, schema, text, filters)

    @action("write", preview="create {n} CRM records")
    async def create(self, kind: Kind, properties: dict[str, Any]) -> Row:
        """Create a record and return it as stored.

        e.g. crm.create("deals", {"dealname": "Acme", "amount": 5000, "dealstage": "Closed Won"}).

        For contacts prefer upsert_contact(email, ...), which never makes a duplicate.
        """
        kind = _kind(kind)
        values = (await self._schema(kind)).properties(properties)
        body = SimplePublicObjectInputForCreate(properties=values, associations=[])
        obj = await self._call(self.client.crm.objects.basic_api.create, kind, body, kind=kind)
        return await self.get(kind, str(obj.id))

    async def confirm_create(self, kind: Kind, properties: dict[str, Any]) -> Found | None:
        """After a crash: done when a record has the value of a unique property among
        `properties` (a contact's email, or a property made with unique values) and the other
        values. Otherwise there is no telling: HubSpot's search is eventually consistent, so a
        record made moments ago may not be found yet, and without a unique value a record found
        may be another with the same values."""
        kind = _kind(kind)
        schema = await self._schema(kind)
        values = schema.properties(properties)
        unique = [name for name, value in values.items()
                  if value and getattr(schema.by_name[name], "has_unique_value", False)]
        if not unique:
            return None
        match = [{"propertyName": unique[0], "operator": "EQ", "value": values[unique[0]]}]
        for row in await self._search(kind, schema, "", match):
            if all(_same_value(row.get(name), value) for name, value in values.items()):
                return Found(done=True, result=row)
        return None

    @action("write", preview="update {n} CRM records", idempotent=True)
    async def update(self, kind: Kind, record: Row | str, properties: dict[str, Any]) -> Row:
        """Set some properties of one record and return it as now stored.

        `record` is a Row from search()/records() or its id. Property names may be labels or
        near misses ("Lead Status" -> hs_lead_status); dropdown values may be labels ("Qualified
        Lead" -> qualifiedlead). An unknown option fails listing the valid ones. Use "" to clear.
        """
        kind = _kind(kind)
        values = (await self._schema(kind)).properties(properties)
        await self._call(self.client.crm.objects.basic_api.update, kind, _record_id(record),
                         SimplePublicObjectInput(properties=values), kind=kind)
        return await self.get(kind, record)

    @action("write", preview="create or update {n} contacts", idempotent=True)
    async def upsert_contact(self, email: str, properties: dict[str, Any] | None = None) -> Row:
        """The contact with this email, updated with `properties`; created when there is none."""
        found = await self.search("contacts", email=email)
        if found:
            return await self.update("contacts", found[0], properties or {})
        return await self.create("contacts", {**(properties or {}), "email": email})

    @action("write", preview="link {n} CRM records", idempotent=True)
    async def associate(self, kind: Kind, record: Row | str, to_kind: Kind,
                        to_record: Row | str) -> None:
        """Link two records with HubSpot's default association, e.g. a contact to its company.

        e.g. crm.associate("contacts", ana, "companies", acme). Linking twice is a no-op.
        """
        kind, to_kind = _kind(kind), _kind(to_kind)
        await self._call(self.client.crm.associations.v4.basic_api.create_default,
                         kind, _record_id(record), to_kind, _record_id(to_record))

    @action("read")
    async def associations(self, kind: Kind, record: Row | str,
                           to_kind: Kind) -> builtins.list[str]:
        """The ids of the `to_kind` records linked to a record, e.g. a deal's contacts."""
        kind, to_kind = _kind(kind), _kind(to_kind)
        ids: builtins.list[str] = []
        after: str | None = None
        while True:
            page = await self._call(self.client.crm.associations.v4.basic_api.get_page,
                                    kind, _record_id(record), to_kind, limit=500, after=after)
            ids += [str(item.to_object_id) for item in page.results]
            after = page.paging.next.after if page.paging and page.paging.next else None
            if after is None:
                return ids

    @action("write", preview="add {n} CRM properties", idempotent=True)
    async def create_property(self, kind: Kind, label: str, type: PropertyType = "string",
                              options: builtins.list[str] | None = None) -> str:
        """Add a custom property and return its internal name (kept if it already exists).

        `type` "enumeration" makes a dropdown with `options` (their labels). e.g.
        crm.create_property("contacts", "Budget", "number") -> "budget".
        """
        kind = _kind(kind)
        name = "_".join(norm(word) for word in str(label).split() if norm(word))
        schema = await self._schema(kind)
        if name in schema.by_name:
            return name
        if type not in _FIELD_TYPES:
            raise no_option([(t, t) for t in _FIELD_TYPES], str(type), what="a property type")
        choices = [OptionInput(label=o, value=norm(o), display_order=i, hidden=False)
                   for i, o in enumerate(options or [])]
        create = PropertyCreate(name=name, label=label, type=type, field_type=_FIELD_TYPES[type],
                                group_name=f"{kind[:-1] if kind != 'companies' else 'company'}"
                                           "information", options=choices)
        await self._call(self.client.crm.properties.core_api.create, kind, create)
        self._schemas.pop(kind, None)
        return name

    async def describe(self) -> dict[str, Any]:
        """{kind: {property: {"label", "type", "options": {value: label}}}} for every kind."""
        return {kind: (await self._schema(kind)).describe() for kind in _KINDS}

    # Helpers.

    async def _schema(self, kind: str, *, fresh: bool = False) -> _Schema:
        if fresh or kind not in self._schemas:
            answer = await self._call(self.client.crm.properties.core_api.get_all, kind)
            self._schemas[kind] = _Schema(kind, answer.results)
        return self._schemas[kind]

    async def _search(self, kind: str, schema: _Schema, text: str,
                      filters: builtins.list[dict[str, Any]]) -> builtins.list[Row]:
        rows: builtins.list[Row] = []
        after: str | None = None
        while True:
            request = PublicObjectSearchRequest(
                query=text or None, filter_groups=[{"filters": filters}] if filters else [],
                properties=builtins.list(schema.by_name), limit=_PAGE, after=after, sorts=[],
            )
            page = await self._call(self.client.crm.objects.search_api.do_search, kind, request)
            rows += [_row(obj) for obj in page.results]
            after = page.paging.next.after if page.paging and page.paging.next else None
            if after is None:
                return rows

    async def _call(self, fn: Callable[..., Any], *args: Any, kind: str = "",
                    **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            status, body = getattr(exc, "status", None), getattr(exc, "body", None)
            if status is None or body is None:
                raise
            raise await self._refused(int(status), body, kind) from None

    async def _refused(self, status: int, body: Any, kind: str) -> IntegrationError:
        try:
            error = json.loads(body)
        except (TypeError, ValueError):
            error = {}
        message = str(error.get("message") or f"HTTP {status}")
        if kind and error.get("category") == "VALIDATION_ERROR":
            invalid = _invalid_option(message)
            if invalid is not None:  # the options changed since they were read: list them now
                schema = await self._schema(kind, fresh=True)
                if invalid[0] in schema.by_name:
                    return no_option(schema.options(invalid[0]), invalid[1],
                                     what=f"the {kind} property '{invalid[0]}'")
        return IntegrationError(f"HubSpot refused the call: {message} "
                                f"({error.get('category', status)})", status=status)


def _invalid_option(message: str) -> tuple[str, str] | None:
    """(property, value) from HubSpot's "Property values were not valid" INVALID_OPTION text."""
    _, _, details = message.partition("Property values were not valid: ")
    try:
        problems = json.loads(details) if details else []
    except ValueError:
        return None
    for problem in problems:
        if isinstance(problem, dict) and problem.get("error") == "INVALID_OPTION":
            value = str(problem.get("message", "")).split(" was not one of", 1)[0]
            return str(problem.get("name")), value
    return None
