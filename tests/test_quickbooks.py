"""QuickBooks Online through python-quickbooks, against a local fake of the Accounting API."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quickbooks.exceptions import ValidationException

from core.errors import IntegrationError
from integrations import wire
from integrations.base import EffectCall
from integrations.catalog import Catalog
from integrations.saas import FACTORIES
from integrations.saas.quickbooks import QuickBooksOnline
from tests.fakes import serve
from tests.fakes.quickbooks import QuickBooksFake
from workers.sandbox import SandboxLimits, detect_isolation, run_sandboxed

LIMITS = SandboxLimits(cpu_s=20, wall_s=60, memory_mb=512, output_kb=64)


@pytest.fixture
async def books() -> AsyncIterator[tuple[QuickBooksFake, Catalog]]:
    fake = QuickBooksFake()
    fake.add("Account", {"Name": "Office Supplies", "AccountType": "Expense", "Active": True})
    fake.add("Account", {"Name": "Travel", "AccountType": "Expense", "Active": True})
    fake.add("Item", {"Name": "Consulting", "Type": "Service"})
    fake.add("Vendor", {"DisplayName": "Acme Ltd."})
    fake.add("Customer", {"DisplayName": "Bo's Bakery"})
    async with serve(fake.app()) as url:
        integration = FACTORIES["quickbooks"]({
            "realm_id": fake.realm_id, "client_id": "id", "client_secret": "secret",
            "access_token": fake.token, "base_url": url}, None)  # type: ignore[arg-type]
        yield fake, Catalog([integration], secrets=[fake.token, "secret"])


async def _call(catalog: Catalog, action: str, *args: Any, **kwargs: Any) -> Any:
    call = EffectCall("accounting", action, wire.encode(list(args)), wire.encode(kwargs))
    return wire.decode(await catalog.dispatch(call), lambda i, t, k: (i, t, k))


async def test_a_bill_with_lines_is_recorded_once_per_idempotency_key(
    books: tuple[QuickBooksFake, Catalog],
) -> None:
    fake, catalog = books
    lines = [{"amount": "1,200.50", "account": "office supplies", "description": "Paper"},
             {"amount": 80, "account": "Travel", "description": "Taxi"}]
    bill = await _call(catalog, "create_bill", "acme ltd", lines, due_date="2026-04-01",
                       doc_number="INV-778", idempotency_key="run1/item#1/call#1")
    again = await _call(catalog, "create_bill", "acme ltd", lines, due_date="2026-04-01",
                        doc_number="INV-778", idempotency_key="run1/item#1/call#1")
    assert again == bill and bill.id == again.id
    assert bill["vendor"] == "Acme Ltd." and bill["total"] == 1280.5
    [stored] = fake.store["Bill"]
    assert stored["VendorRef"] == {"value": "4", "name": "Acme Ltd."}
    assert [line["AccountBasedExpenseLineDetail"]["AccountRef"]["name"]
            for line in stored["Line"]] == ["Office Supplies", "Travel"]
    assert stored["DueDate"] == "2026-04-01" and stored["DocNumber"] == "INV-778"
    assert [b.id for b in await _call(catalog, "bills", "Acme Ltd.")] == [bill.id]


async def test_unknown_names_fail_listing_the_known_ones(
    books: tuple[QuickBooksFake, Catalog],
) -> None:
    fake, catalog = books
    with pytest.raises(IntegrationError) as raised:
        await _call(catalog, "create_bill", "Acme Ltd.",
                    [{"amount": 5, "account": "Office Suplies", "description": "x"},
                     {"amount": 5, "account": "Meals", "description": "x"}])
    assert raised.value.message == (
        "There is no account 'Meals'. Known: Office Supplies, Travel.")
    with pytest.raises(IntegrationError) as raised:
        await _call(catalog, "create_bill", "Acne", [])
    assert raised.value.message == "There is no vendor 'Acne'. Known: Acme Ltd."
    assert fake.store["Bill"] == []


async def test_invoice_lines_vendors_customers_and_the_schema(
    books: tuple[QuickBooksFake, Catalog],
) -> None:
    fake, catalog = books
    invoice = await _call(catalog, "create_invoice", "bo's bakery", [
        {"item": "consulting", "quantity": 3, "unit_price": 150, "description": "March"}])
    assert invoice["total"] == 450 and invoice["customer"] == "Bo's Bakery"
    line = fake.store["Invoice"][0]["Line"][0]
    assert line["SalesItemLineDetail"] == {"ItemRef": {"value": "3", "name": "Consulting"},
                                           "Qty": 3.0, "UnitPrice": 150.0}
    vendor = await _call(catalog, "create_vendor", "Zed Co", email="ap@zed.example")
    assert vendor["name"] == "Zed Co" and vendor["email"] == "ap@zed.example"
    with pytest.raises(IntegrationError, match=r"Duplicate Name Exists Error\. The name "
                       r"supplied already exists\. : Id=\d+ \(code 6240\)"):
        await _call(catalog, "create_vendor", "Zed Co")
    described = (await catalog.describe())["accounting"]
    assert described == {"accounts": {"Office Supplies": "Expense", "Travel": "Expense"},
                         "items": ["Consulting"], "vendors": ["Acme Ltd.", "Zed Co"],
                         "customers": ["Bo's Bakery"]}


async def test_a_file_is_attached_to_a_bill(books: tuple[QuickBooksFake, Catalog]) -> None:
    fake, catalog = books
    bill = await _call(catalog, "create_bill", "Acme Ltd.",
                       [{"amount": 5, "account": "Travel", "description": "Bus"}])
    pdf = b"%PDF-1.4 fake invoice"
    attachment = await _call(catalog, "attach", "Bill", bill.id, "invoice.pdf",
                             base64.b64encode(pdf).decode(), content_type="application/pdf",
                             base64_encoded=True)
    assert fake.files[attachment] == pdf
    [stored] = fake.store["Attachable"]
    assert stored["FileName"] == "invoice.pdf"
    ref = stored["AttachableRef"][0]["EntityRef"]
    assert (ref["type"], ref["value"]) == ("Bill", bill.id)


async def test_the_fake_refuses_a_line_type_that_is_not_in_the_enumeration(
    books: tuple[QuickBooksFake, Catalog],
) -> None:
    fake, catalog = books
    integration = catalog.integrations["accounting"]
    assert isinstance(integration, QuickBooksOnline)
    body = json.dumps({"VendorRef": {"value": "4"}, "Line": [
        {"DetailType": "AccountExpenseLine", "Amount": 5}]})
    with pytest.raises(ValidationException) as raised:  # the SDK blocks: run it in a thread
        await asyncio.to_thread(integration.client.create_object, "Bill", body)
    assert raised.value.error_code == 2010
    assert raised.value.message == "Request has invalid or unsupported property"
    assert '"AccountExpenseLine": value not one of declared Enum' in raised.value.detail
    assert fake.store["Bill"] == []


async def test_without_a_base_url_the_real_quickbooks_is_not_reached() -> None:
    integration = FACTORIES["quickbooks"]({  # type: ignore[arg-type]
        "realm_id": "1", "client_id": "id", "client_secret": "s", "access_token": "t"}, None)
    with pytest.raises(IntegrationError, match="failed"):
        await Catalog([integration]).dispatch(EffectCall("accounting", "vendors", [], {}))


async def test_a_program_books_bills_for_each_row(books: tuple[QuickBooksFake, Catalog]) -> None:
    fake, catalog = books
    program = (
        "rows = [('Acme Ltd.', 12.5, 'Paper'), ('acme', 40, 'Taxi')]\n"
        "def book(row):\n"
        "    vendor, amount, what = row\n"
        "    account = 'Travel' if what == 'Taxi' else 'Office Supplies'\n"
        "    return accounting.create_bill(vendor, [{'amount': amount, 'account': account,\n"
        "                                            'description': what}])['total']\n"
        "print(each(rows, book))\n"
    )

    async def handler(call: EffectCall) -> Any:
        return await catalog.dispatch(call)

    outcome = await run_sandboxed(program, manifest=catalog.manifest(), handler=handler,
                                  limits=LIMITS, isolation=detect_isolation())
    assert outcome.ok, outcome.error
    assert outcome.output == "[12.5, None]\n"  # 'acme' is not a vendor name near enough
    assert [b["TotalAmt"] for b in fake.store["Bill"]] == [12.5]
    assert "class BillLine(TypedDict):" in catalog.stubs()
