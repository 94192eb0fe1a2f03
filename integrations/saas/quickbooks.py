"""QuickBooks Online through python-quickbooks: vendors, customers, bills, invoices, attachments.

ARCHITECTURE.md, "AI-friendly integrations". Vendors, customers, accounts and items are named,
not referenced by id: names are matched forgivingly ("acme" -> "Acme Ltd." only when it is the
one near miss) and an unknown name fails listing the names there are. Writes pass the
idempotency key as QuickBooks' `requestid`, so a repeated create returns the first result
instead of making a second bill. Queries read every page (STARTPOSITION/MAXRESULTS).

The SDK builds URLs from `QuickBooks.api_url_v3`; the connector sets it per client from
`base_url` (tests use a local fake).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import datetime as dt
import difflib
import json
from decimal import Decimal
from typing import Any, Literal, TypedDict

import requests
from quickbooks import QuickBooks
from quickbooks.exceptions import QuickbooksException
from quickbooks.objects.attachable import Attachable
from quickbooks.objects.base import AttachableRef, Ref

from core.errors import IntegrationError
from integrations.base import Integration, Row, action
from integrations.saas._match import match_name

MINOR_VERSION = 75
_PAGE = 1000
_NAMED = {"Vendor": "DisplayName", "Customer": "DisplayName", "Account": "Name", "Item": "Name"}


class _BearerSession(requests.Session):
    """What python-quickbooks uses of its OAuth2 session: the access token and `request`."""

    def __init__(self, access_token: str) -> None:
        super().__init__()
        self.access_token = access_token


class BillLine(TypedDict):
    """One expense line of a bill: how much, booked to which expense account, and what for."""

    amount: float
    account: str
    description: str


class InvoiceLine(TypedDict):
    """One line of an invoice: which product or service, how many, at what unit price."""

    item: str
    quantity: float
    unit_price: float
    description: str


def _money(value: Any, what: str) -> float:
    try:
        return float(Decimal(str(value).replace(",", "").replace("$", "").strip()))
    except ArithmeticError:
        raise IntegrationError(f"{what} must be a number, not '{value}'.") from None
    except ValueError:
        raise IntegrationError(f"{what} must be a number, not '{value}'.") from None


def _date(value: dt.date | str | None) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise IntegrationError(f"Dates are YYYY-MM-DD or date(...); got '{value}'.") from None


def _summary(kind: str, obj: dict[str, Any]) -> Row:
    """A bill, invoice, vendor or customer as a Row the program can read."""
    if kind in ("Vendor", "Customer"):
        email = (obj.get("PrimaryEmailAddr") or {}).get("Address")
        return Row(str(obj["Id"]), {"name": obj.get("DisplayName"), "email": email,
                                    "balance": obj.get("Balance")})
    party = obj.get("VendorRef") or obj.get("CustomerRef") or {}
    lines = [{"amount": line.get("Amount"), "description": line.get("Description")}
             for line in obj.get("Line", []) if line.get("DetailType") != "SubTotalLineDetail"]
    return Row(str(obj["Id"]), {
        "vendor" if kind == "Bill" else "customer": party.get("name"),
        "total": obj.get("TotalAmt"), "balance": obj.get("Balance"),
        "date": obj.get("TxnDate"), "due_date": obj.get("DueDate"),
        "doc_number": obj.get("DocNumber"), "lines": lines,
    })


class QuickBooksOnline(Integration):
    """The team's QuickBooks Online company: vendors, customers, bills and invoices."""

    name = "accounting"
    summary = "QuickBooks Online: vendors, customers, bills and invoices with line items."

    def __init__(self, *, realm_id: str, client_id: str, client_secret: str,
                 access_token: str, refresh_token: str = "",
                 base_url: str = "https://quickbooks.api.intuit.com") -> None:
        # The SDK opens its session from an intuitlib AuthClient, whose constructor fetches
        # Intuit's OpenID discovery document; the SDK needs only `access_token` and `request`
        # of it (it sets the Authorization header itself), so a plain session does.
        self.client = QuickBooks(company_id=realm_id, minorversion=MINOR_VERSION)
        self.client.session = _BearerSession(access_token)
        self.client.api_url_v3 = base_url.rstrip("/") + "/v3"
        self.client_secret = client_secret  # for refreshing the token (not done here yet)

    @action("read")
    async def vendors(self) -> builtins.list[Row]:
        """Every vendor: Row(id, {"name", "email", "balance"})."""
        return [_summary("Vendor", v) for v in await self._all("Vendor")]

    @action("read")
    async def customers(self) -> builtins.list[Row]:
        """Every customer: Row(id, {"name", "email", "balance"})."""
        return [_summary("Customer", c) for c in await self._all("Customer")]

    @action("write", preview="add {n} vendors", idempotent=True)
    async def create_vendor(self, name: str, email: str = "", idempotency_key: str = "") -> Row:
        """Add a vendor (a supplier you get bills from) and return it."""
        body: dict[str, Any] = {"DisplayName": str(name)}
        if email:
            body["PrimaryEmailAddr"] = {"Address": email}
        return _summary("Vendor", await self._create("Vendor", body, idempotency_key))

    @action("write", preview="add {n} customers", idempotent=True)
    async def create_customer(self, name: str, email: str = "",
                              idempotency_key: str = "") -> Row:
        """Add a customer (someone you invoice) and return it."""
        body: dict[str, Any] = {"DisplayName": str(name)}
        if email:
            body["PrimaryEmailAddr"] = {"Address": email}
        return _summary("Customer", await self._create("Customer", body, idempotency_key))

    @action("write", preview="record {n} bills", idempotent=True)
    async def create_bill(self, vendor: str, lines: builtins.list[BillLine],
                          due_date: dt.date | str | None = None, doc_number: str = "",
                          idempotency_key: str = "") -> Row:
        """Record a bill from `vendor` (its name) with expense `lines`, and return it.

        e.g. accounting.create_bill("Acme Ltd.", [{"amount": 120.5, "account": "Office
        Supplies", "description": "Paper"}], due_date="2026-04-01", doc_number="INV-778").
        Vendor and account names are matched forgivingly; unknown ones fail listing the names.
        """
        vendor_ref = await self._ref("Vendor", vendor)
        body: dict[str, Any] = {"VendorRef": vendor_ref, "Line": [
            await self._bill_line(n, line) for n, line in enumerate(lines, 1)]}
        if _date(due_date):
            body["DueDate"] = _date(due_date)
        if doc_number:
            body["DocNumber"] = str(doc_number)
        return _summary("Bill", await self._create("Bill", body, idempotency_key))

    @action("write", preview="send {n} invoices", idempotent=True)
    async def create_invoice(self, customer: str, lines: builtins.list[InvoiceLine],
                             due_date: dt.date | str | None = None,
                             idempotency_key: str = "") -> Row:
        """Create an invoice for `customer` (its name) with product/service `lines`.

        e.g. accounting.create_invoice("Bo's Bakery", [{"item": "Consulting", "quantity": 3,
        "unit_price": 150, "description": "March"}]). Items are the products and services in
        the schema.
        """
        customer_ref = await self._ref("Customer", customer)
        body: dict[str, Any] = {"CustomerRef": customer_ref, "Line": [
            await self._invoice_line(n, line) for n, line in enumerate(lines, 1)]}
        if _date(due_date):
            body["DueDate"] = _date(due_date)
        return _summary("Invoice", await self._create("Invoice", body, idempotency_key))

    @action("read")
    async def bills(self, vendor: str = "") -> builtins.list[Row]:
        """Every bill, or only those of `vendor`."""
        rows = [_summary("Bill", b) for b in await self._all("Bill")]
        if not vendor:
            return rows
        name = (await self._ref("Vendor", vendor))["name"]
        return [r for r in rows if r["vendor"] == name]

    @action("read")
    async def invoices(self, customer: str = "") -> builtins.list[Row]:
        """Every invoice, or only those of `customer`."""
        rows = [_summary("Invoice", i) for i in await self._all("Invoice")]
        if not customer:
            return rows
        name = (await self._ref("Customer", customer))["name"]
        return [r for r in rows if r["customer"] == name]

    @action("write", preview="attach {n} files")
    async def attach(self, to: Literal["Bill", "Invoice"], record_id: str, file_name: str,
                     content: str, content_type: str = "text/plain",
                     base64_encoded: bool = False) -> str:
        """Attach a file to a bill or invoice; returns the attachment's id.

        `content` is the file's text, or its bytes in base64 with base64_encoded=True (for
        PDFs and images, e.g. an attachment from mail).
        """
        if to not in ("Bill", "Invoice"):
            raise IntegrationError(f"Files attach to 'Bill' or 'Invoice', not '{to}'.")
        data = base64.b64decode(content) if base64_encoded else str(content).encode()
        attachable = Attachable()
        ref = AttachableRef()
        ref.EntityRef = Ref()
        ref.EntityRef.type, ref.EntityRef.value = to, str(record_id)
        attachable.AttachableRef.append(ref)
        attachable.FileName, attachable.ContentType = file_name, content_type
        attachable._FileBytes = data
        saved = await self._call(attachable.save, qb=self.client)
        return str(saved.Id)

    async def describe(self) -> dict[str, Any]:
        """Expense accounts, products/services, vendors and customers, by name."""
        accounts = await self._all("Account")
        return {
            "accounts": {a["Name"]: a.get("AccountType") for a in accounts
                         if a.get("Active", True)},
            "items": [i["Name"] for i in await self._all("Item")],
            "vendors": [v["DisplayName"] for v in await self._all("Vendor")],
            "customers": [c["DisplayName"] for c in await self._all("Customer")],
        }

    # Helpers.

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except QuickbooksException as exc:
            detail = f" {exc.detail}" if getattr(exc, "detail", "") else ""
            raise IntegrationError(f"QuickBooks refused the call: {exc.message}.{detail} "
                                   f"(code {exc.error_code})", code=exc.error_code) from None

    async def _all(self, kind: str, where: str = "") -> builtins.list[dict[str, Any]]:
        found: builtins.list[dict[str, Any]] = []
        while True:
            select = (f"SELECT * FROM {kind}{where} STARTPOSITION {len(found) + 1} "
                      f"MAXRESULTS {_PAGE}")
            answer = await self._call(self.client.query, select)
            page = answer.get("QueryResponse", {}).get(kind, [])
            found += page
            if len(page) < _PAGE:
                return found

    async def _create(self, kind: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        answer = await self._call(self.client.create_object, kind, json.dumps(body),
                                  request_id=key or None)
        created: dict[str, Any] = answer[kind]
        return created

    async def _ref(self, kind: str, name: str) -> dict[str, str]:
        """{"value": id, "name": name} of the vendor/customer/account/item called `name`."""
        field = _NAMED[kind]
        records = await self._all(kind)
        names = [str(r[field]) for r in records]
        found = match_name(names, str(name))
        if found is None:
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            shown = ", ".join(names[:30]) + (" …" if len(names) > 30 else "")
            label = {"Item": "product or service"}.get(kind, kind.lower())
            known = (shown or "(none)").rstrip(".")
            raise IntegrationError(f"There is no {label} '{name}'. Known: {known}.{hint}",
                                   kind=kind, name=str(name))
        record = records[names.index(found)]
        return {"value": str(record["Id"]), "name": found}

    async def _bill_line(self, n: int, line: BillLine) -> dict[str, Any]:
        if not isinstance(line, dict) or "amount" not in line or "account" not in line:
            raise IntegrationError(f"Bill line {n} needs 'amount' and 'account' (and "
                                   "'description'), e.g. {'amount': 120, 'account': 'Office "
                                   "Supplies', 'description': 'Paper'}.")
        return {"DetailType": "AccountBasedExpenseLineDetail",
                "Amount": _money(line["amount"], f"Bill line {n} amount"),
                "Description": str(line.get("description") or ""),
                "AccountBasedExpenseLineDetail": {
                    "AccountRef": await self._ref("Account", line["account"])}}

    async def _invoice_line(self, n: int, line: InvoiceLine) -> dict[str, Any]:
        if not isinstance(line, dict) or "item" not in line:
            raise IntegrationError(f"Invoice line {n} needs 'item', 'quantity' and 'unit_price', "
                                   "e.g. {'item': 'Consulting', 'quantity': 3, 'unit_price': "
                                   "150, 'description': 'March'}.")
        quantity = _money(line.get("quantity", 1), f"Invoice line {n} quantity")
        price = _money(line.get("unit_price", 0), f"Invoice line {n} unit_price")
        return {"DetailType": "SalesItemLineDetail", "Amount": round(quantity * price, 2),
                "Description": str(line.get("description") or ""),
                "SalesItemLineDetail": {"ItemRef": await self._ref("Item", line["item"]),
                                        "Qty": quantity, "UnitPrice": price}}
