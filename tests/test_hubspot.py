"""HubSpot CRM through hubspot-api-client, against a local fake of HubSpot's CRM API.

The fake refuses enumeration values that are not options with HubSpot's own error body, so the
connector's coercion ("Qualified Lead" -> qualifiedlead) and its error messages are tested for
real: a near miss is sent as the option's value, a wrong value fails listing the options.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hubspot import HubSpot as HubSpotClient
from hubspot.crm.objects import ApiException, SimplePublicObjectInput

from core.errors import IntegrationError
from integrations import wire
from integrations.base import EffectCall
from integrations.catalog import Catalog
from integrations.saas import FACTORIES
from tests.fakes import serve
from tests.fakes.hubspot import HubSpotFake
from workers.sandbox import SandboxLimits, detect_isolation, run_sandboxed

LIMITS = SandboxLimits(cpu_s=20, wall_s=60, memory_mb=512, output_kb=64)


@pytest.fixture
async def hubspot() -> AsyncIterator[tuple[HubSpotFake, Catalog, str]]:
    fake = HubSpotFake()
    fake.add("contacts", {"email": "ana@example.com", "firstname": "Ana"})
    async with serve(fake.app()) as url:
        crm = FACTORIES["hubspot"]({"access_token": fake.token, "base_url": url},
                                   None)  # type: ignore[arg-type]
        yield fake, Catalog([crm], secrets=[fake.token]), url


async def _call(catalog: Catalog, action: str, *args: Any, **kwargs: Any) -> Any:
    call = EffectCall("crm", action, wire.encode(list(args)), wire.encode(kwargs))
    return wire.decode(await catalog.dispatch(call), lambda i, t, k: (i, t, k))


async def test_the_fake_refuses_a_wrong_option_with_hubspots_error_body(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, _catalog, url = hubspot
    client = HubSpotClient(access_token=fake.token, host=url)
    change = SimplePublicObjectInput(properties={"lead_stage": "Qualified Lead"})
    with pytest.raises(ApiException) as raised:  # the SDK blocks: run it beside the fake's loop
        await asyncio.to_thread(client.crm.objects.basic_api.update, "contacts", "101", change)
    assert raised.value.status == 400
    body = json.loads(raised.value.body)
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith("Property values were not valid: ")
    [problem] = json.loads(body["message"].removeprefix("Property values were not valid: "))
    assert problem["error"] == "INVALID_OPTION" and problem["name"] == "lead_stage"
    assert problem["message"].startswith("Qualified Lead was not one of the allowed options")


async def test_near_miss_options_and_property_names_are_coerced(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    [ana] = await _call(catalog, "search", "contacts", email="ANA@example.com")
    updated = await _call(catalog, "update", "contacts", ana,
                          {"Lead stage": "Qualified Lead",
                           "lifecycle stage": "Sales Qualified Lead",
                           "Lead Status": "in progress"})
    assert fake.records["contacts"]["101"] == {
        "email": "ana@example.com", "firstname": "Ana", "hs_object_id": "101",
        "lead_stage": "qualifiedlead", "lifecyclestage": "salesqualifiedlead",
        "hs_lead_status": "IN_PROGRESS",
    }
    assert updated["lead_stage"] == "qualifiedlead" and updated.id == "101"


async def test_a_wrong_option_fails_listing_the_valid_ones(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    with pytest.raises(IntegrationError) as raised:
        await _call(catalog, "update", "contacts", "101", {"lead_stage": "Qualifed Lead"})
    assert raised.value.message == (
        "'Qualifed Lead' is not a valid option for the contacts property 'lead_stage'. Valid "
        "options: 'newlead' (New Lead), 'qualifiedlead' (Qualified Lead), 'customer' (Customer)."
        " Did you mean 'qualifiedlead'?"
    )
    assert "lead_stage" not in fake.records["contacts"]["101"]


async def test_options_changed_in_hubspot_are_reread_and_listed(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    await _call(catalog, "search", "contacts", email="ana@example.com")  # schema is now cached
    stage = next(p for p in fake.properties["contacts"] if p["name"] == "lead_stage")
    stage["options"] = [o for o in stage["options"] if o["value"] != "customer"]
    with pytest.raises(IntegrationError) as raised:
        await _call(catalog, "update", "contacts", "101", {"lead_stage": "customer"})
    assert raised.value.message == (
        "'customer' is not a valid option for the contacts property 'lead_stage'. Valid "
        "options: 'newlead' (New Lead), 'qualifiedlead' (Qualified Lead)."
    )
    assert ("PATCH", "/crm/v3/objects/contacts/101") in fake.requests  # HubSpot said no


async def test_companies_deals_and_associations(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    acme = await _call(catalog, "create", "companies",
                       {"name": "Acme", "Number of Employees": "1,200"})
    deal = await _call(catalog, "create", "deal",
                       {"dealname": "Acme renewal", "amount": 5000, "dealstage": "Closed Won"})
    assert fake.records["companies"][acme.id]["numberofemployees"] == "1200"
    assert fake.records["deals"][deal.id]["dealstage"] == "closedwon"
    await _call(catalog, "associate", "contacts", "101", "companies", acme)
    await _call(catalog, "associate", "deals", deal, "contacts", "101")
    await _call(catalog, "associate", "deals", deal, "contacts", "101")  # twice: no-op
    assert await _call(catalog, "associations", "companies", acme, "contacts") == ["101"]
    assert await _call(catalog, "associations", "contacts", "101", "deals") == [deal.id]
    won = await _call(catalog, "search", "deals", dealstage="closed won")
    assert [d["dealname"] for d in won] == ["Acme renewal"]


async def test_upsert_contact_never_duplicates(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    first = await _call(catalog, "upsert_contact", "bo@example.com", {"firstname": "Bo"})
    again = await _call(catalog, "upsert_contact", "bo@example.com", {"lastname": "Berg"})
    assert first.id == again.id
    assert [c["email"] for c in fake.records["contacts"].values()] == [
        "ana@example.com", "bo@example.com"]
    assert again["firstname"] == "Bo" and again["lastname"] == "Berg"


async def test_a_create_a_crash_left_unconfirmed_is_found_by_its_unique_value(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    bo = EffectCall("crm", "create", wire.encode(["contacts", {"email": "Bo@Example.com",
                                                               "firstname": "Bo"}]), {})
    assert await catalog.confirm(bo) is None  # not found yet: HubSpot's search may lag
    made = await catalog.dispatch(bo)
    found = await catalog.confirm(bo)
    assert found is not None and found.done
    assert found.result["__row__"][0] == made["__row__"][0]  # the record the create made
    # Ana exists with another first name: not this create. A deal has no unique value.
    ana = EffectCall("crm", "create", wire.encode(["contacts", {"email": "ana@example.com",
                                                                "firstname": "Anna"}]), {})
    deal = EffectCall("crm", "create", wire.encode(["deals", {"dealname": "Acme"}]), {})
    await catalog.dispatch(deal)
    assert await catalog.confirm(ana) is None and await catalog.confirm(deal) is None
    assert len(fake.records["contacts"]) == 2 and len(fake.records["deals"]) == 1


async def test_custom_property_and_unknown_property(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    _fake, catalog, _url = hubspot
    name = await _call(catalog, "create_property", "contacts", "Budget band", "enumeration",
                       ["Under 1k", "1k to 10k"])
    assert name == "budget_band"
    assert await _call(catalog, "create_property", "contacts", "Budget band") == "budget_band"
    updated = await _call(catalog, "update", "contacts", "101", {"Budget Band": "1k to 10k"})
    assert updated["budget_band"] == "1kto10k"
    with pytest.raises(IntegrationError, match="contacts have no property 'budjet'"):
        await _call(catalog, "update", "contacts", "101", {"budjet": 5})
    described = await catalog.describe()
    assert described["crm"]["contacts"]["budget_band"] == {
        "label": "Budget band", "type": "enumeration",
        "options": {"under1k": "Under 1k", "1kto10k": "1k to 10k"}}


async def test_records_reads_every_page_and_rate_limits_are_retried(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    for i in range(249):
        fake.add("contacts", {"email": f"c{i}@example.com"})
    fake.throttle = 2
    rows = await _call(catalog, "records", "contacts")
    assert len(rows) == 250 and rows[-1]["email"] == "c248@example.com"
    pages = [p for m, p in fake.requests if m == "GET" and p == "/crm/v3/objects/contacts"]
    assert len(pages) == 3
    assert fake.throttle == 0


async def test_a_program_in_the_sandbox_qualifies_leads(
    hubspot: tuple[HubSpotFake, Catalog, str],
) -> None:
    fake, catalog, _url = hubspot
    fake.add("contacts", {"email": "bo@example.com", "firstname": "Bo"})
    program = (
        "for contact in crm.records('contacts'):\n"
        "    crm.update('contacts', contact, {'Lead stage': 'Qualified Lead'})\n"
        "try:\n"
        "    crm.update('contacts', '101', {'lead_stage': 'Hot'})\n"
        "except IntegrationError as exc:\n"
        "    print(str(exc).split('.')[0])\n"
    )

    async def handler(call: EffectCall) -> Any:
        return await catalog.dispatch(call)

    outcome = await run_sandboxed(program, manifest=catalog.manifest(), handler=handler,
                                  limits=LIMITS, isolation=detect_isolation())
    assert outcome.ok, outcome.error
    assert outcome.output == "'Hot' is not a valid option for the contacts property 'lead_stage'\n"
    assert {c["lead_stage"] for c in fake.records["contacts"].values()} == {"qualifiedlead"}
    assert "def update(" in catalog.stubs() and "class HubSpot:" in catalog.stubs()


async def test_without_a_base_url_the_real_hubspot_is_not_reached() -> None:
    catalog = Catalog([FACTORIES["hubspot"]({"access_token": "t"}, None)])  # type: ignore[arg-type]
    with pytest.raises(IntegrationError, match="failed"):
        await catalog.dispatch(EffectCall("crm", "records", ["contacts"], {}))


async def test_a_stored_hubspot_connection_is_in_the_workspace_catalog(db_url: str,
                                                                      tmp_path: Path) -> None:
    from core.db import create_engine, migrate
    from core.settings import Settings
    from integrations.registry import build_catalog
    from integrations.vault import Vault

    fake = HubSpotFake()
    fake.add("contacts", {"email": "ana@example.com", "firstname": "Ana"})
    engine = create_engine(db_url)
    await migrate(engine)
    settings = Settings(home=tmp_path / "state", sheets_dir=tmp_path / "sheets")
    try:
        async with serve(fake.app()) as url:
            await Vault.from_settings(settings, engine).put(
                "default", "crm", "hubspot", {"access_token": fake.token, "base_url": url})
            catalog = await build_catalog(settings, None, engine=engine)  # type: ignore[arg-type]
            try:
                assert "crm: HubSpot" in catalog.stubs()
                [contact] = await _call(catalog, "search", "contacts", email="ana@example.com")
                assert contact["firstname"] == "Ana"
                assert fake.token not in catalog.stubs() + str(await catalog.describe())
            finally:
                await catalog.aclose()
    finally:
        await engine.dispose()
