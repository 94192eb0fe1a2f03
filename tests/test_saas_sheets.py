"""Google Sheets (gspread) and Airtable (pyairtable) behind the local sheet's API.

Each SDK talks HTTP to a local fake of the vendor's API (tests/fakes/). The same program, written
against the stubs, runs in the real sandbox on the local sheet, Google Sheets and Airtable, and
leaves the same rows behind.
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import IntegrationError
from integrations import wire
from integrations.base import EffectCall, Found, Row, actions_of
from integrations.catalog import Catalog
from integrations.saas import FACTORIES
from integrations.saas._tabular import Sheet as SaasSheet
from integrations.saas._tabular import cell_text
from integrations.sheets import LocalSheets
from integrations.sheets import Sheet as LocalSheet
from integrations.stubs import signature_text
from tests.fakes import serve
from tests.fakes.airtable import AirtableFake, Field
from tests.fakes.google_sheets import GoogleSheetsFake
from workers.sandbox import SandboxLimits, detect_isolation, run_sandboxed

HEADER = ["Name", "Email", "Budget"]
ROWS = [["Ana", "ana@example.com", None], ["Bo", "bo@example.com", 300],
        ["Cy", "cy@example.com", None]]
NOW = {"__datetime__": "2026-03-12T09:00:00+00:00"}
LIMITS = SandboxLimits(cpu_s=20, wall_s=60, memory_mb=512, output_kb=64)

PROGRAM = """\
sheet = sheets.open("Signups")
for row in sheet.rows():
    if not row["Budget"]:
        sheet.update(row, {"budget": 5000, "Status": "asked"})
sheet.append({"Name": "Zoe", "Email": "zoe@example.com", "Budget": 100})
again = sheet.update(sheet.find(Email="ana@example.com")[0], {"Budget": 5000})
print(len(sheet.rows()), sorted(r["Name"] for r in sheet.find(Budget=5000)), sheet.columns())
try:
    sheet.find(Bugdet=1, Nmae="x")
except IntegrationError as exc:
    print("error:", str(exc).split(".")[0])
"""


def _normal(rows: list[dict[str, Any]]) -> list[dict[str, str | None]]:
    return [{k: cell_text(v) for k, v in row.items()} for row in rows]


def _local_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return [dict(r) for r in csv.DictReader(handle)]


@pytest.fixture
async def google() -> AsyncIterator[tuple[GoogleSheetsFake, Catalog]]:
    fake = GoogleSheetsFake()
    fake.add_tab("signups", [HEADER, *ROWS], columns=3)
    fake.add_tab("archive", [["Name"]])
    async with serve(fake.app()) as url:
        sheets = FACTORIES["google_sheets"](
            {"spreadsheet_id": fake.spreadsheet_id, "access_token": fake.token, "base_url": url},
            None,  # type: ignore[arg-type]
        )
        yield fake, Catalog([sheets], secrets=[fake.token])


@pytest.fixture
async def airtable() -> AsyncIterator[tuple[AirtableFake, Catalog]]:
    fake = AirtableFake()
    stage = {"choices": [{"id": "selA", "name": "New lead", "color": "blueLight2"},
                         {"id": "selB", "name": "Qualified Lead", "color": "greenLight2"}]}
    fake.add_table("signups", [Field("Name"), Field("Email", "email"),
                               Field("Budget", "number", {"precision": 0})],
                   [dict(zip(HEADER, r, strict=True)) for r in ROWS])
    fake.add_table("leads", [Field("Name"), Field("Stage", "singleSelect", stage),
                             Field("Won", "checkbox", {"icon": "check", "color": "greenBright"})],
                   [{"Name": "Dora"}])
    async with serve(fake.app()) as url:
        sheets = FACTORIES["airtable"](
            {"api_key": fake.token, "base_id": fake.base_id, "base_url": url},
            None,  # type: ignore[arg-type]
        )
        yield fake, Catalog([sheets], secrets=[fake.token])


async def _run(catalog: Catalog, program: str = PROGRAM) -> str:
    async def handler(call: EffectCall) -> Any:
        return NOW if call.integration == "runtime" else await catalog.dispatch(call)

    outcome = await run_sandboxed(program, manifest=catalog.manifest(), handler=handler,
                                  limits=LIMITS, isolation=detect_isolation())
    assert outcome.ok, outcome.error
    return outcome.output


async def _call(catalog: Catalog, action: str, *args: Any, sheet: str = "signups",
                **kwargs: Any) -> Any:
    call = EffectCall("sheets", action, wire.encode(list(args)), wire.encode(kwargs),
                      handle=("sheets", "Sheet", sheet))
    return wire.decode(await catalog.dispatch(call), lambda i, t, k: (i, t, k))


def test_the_hosted_sheets_have_the_local_sheet_api() -> None:
    local = {name: signature_text(getattr(LocalSheet, name)) for name in actions_of(LocalSheet)}
    hosted = {name: signature_text(getattr(SaasSheet, name)) for name in actions_of(SaasSheet)}
    assert hosted == local
    assert actions_of(SaasSheet) == actions_of(LocalSheet)
    assert SaasSheet.__name__ == LocalSheet.__name__ == "Sheet"


async def test_one_program_leaves_the_same_rows_on_every_backend(
    tmp_path: Path,
    google: tuple[GoogleSheetsFake, Catalog],
    airtable: tuple[AirtableFake, Catalog],
) -> None:
    path = tmp_path / "signups.csv"
    path.write_text("\n".join(",".join(c or "" for c in map(cell_text, r))
                              for r in [HEADER, *ROWS]) + "\n")
    local_output = await _run(Catalog([LocalSheets(tmp_path)]))
    google_output = await _run(google[1])
    airtable_output = await _run(airtable[1])

    expected_output = (
        "4 ['Ana', 'Cy'] ['Name', 'Email', 'Budget', 'Status']\n"
        "error: The sheet 'signups' has no column 'Nmae'\n"
    )
    assert local_output == google_output == airtable_output == expected_output
    expected = _normal(_local_rows(path))
    assert expected == [
        {"Name": "Ana", "Email": "ana@example.com", "Budget": "5000", "Status": "asked"},
        {"Name": "Bo", "Email": "bo@example.com", "Budget": "300", "Status": None},
        {"Name": "Cy", "Email": "cy@example.com", "Budget": "5000", "Status": "asked"},
        {"Name": "Zoe", "Email": "zoe@example.com", "Budget": "100", "Status": None},
    ]
    assert _normal(google[0].tab("signups").records()) == expected
    assert _normal(airtable[0].table("signups").rows()) == expected


async def test_google_update_addresses_the_row_and_repeating_it_sends_nothing(
    google: tuple[GoogleSheetsFake, Catalog],
) -> None:
    fake, catalog = google
    rows = await _call(catalog, "rows")
    assert [r.id for r in rows] == ["row-1", "row-2", "row-3"]
    assert rows[1] == {"Name": "Bo", "Email": "bo@example.com", "Budget": 300}

    updated = await _call(catalog, "update", "row-2", {"BUDGET ": "450"})
    assert updated == Row("row-2", {"Name": "Bo", "Email": "bo@example.com", "Budget": 450})
    writes = [r for r in fake.requests if r[0] == "POST"]
    await _call(catalog, "update", "row-2", {"Budget": 450})
    assert [r for r in fake.requests if r[0] == "POST"] == writes
    assert fake.tab("signups").cells[2] == ["Bo", "bo@example.com", 450]


async def _confirm_update_after_a_crash(catalog: Catalog) -> None:
    """What the catalog finds about an update of Bo's budget: not done before it, done once it
    was done, and not done once someone changed the cell since."""
    bo = (await _call(catalog, "rows"))[1]
    call = EffectCall("sheets", "update", wire.encode([bo.id, {"budget": "450"}]), {},
                      handle=("sheets", "Sheet", "signups"))
    before = await catalog.confirm(call)
    await catalog.dispatch(call)
    done = await catalog.confirm(call)
    await _call(catalog, "update", bo.id, {"Budget": 7})
    changed = await catalog.confirm(call)
    assert before == changed == Found(done=False)
    assert done is not None and done.done and done.result["__row__"][1]["Budget"] == 450


async def test_google_confirms_an_update_by_reading_the_row(
    google: tuple[GoogleSheetsFake, Catalog],
) -> None:
    fake, catalog = google
    await _confirm_update_after_a_crash(catalog)
    writes = [r for r in fake.requests if r[0] == "POST"]
    assert len(writes) == 2  # the update and the change since; looking wrote nothing


async def test_airtable_confirms_an_update_by_reading_the_row(
    airtable: tuple[AirtableFake, Catalog],
) -> None:
    await _confirm_update_after_a_crash(airtable[1])


async def _confirm_append_after_a_crash(catalog: Catalog) -> None:
    """What the catalog finds about appending order A-2 to a sheet with an ID column: not done
    before it, done once it was done; no telling (a person is asked) about an append without an
    id, and one whose id another row has with other values."""
    def append(values: dict[str, Any]) -> EffectCall:
        return EffectCall("sheets", "append", wire.encode([values]), {},
                          handle=("sheets", "Sheet", "orders"))

    call = append({"id": "A-2", "Item": "Tea", "Amount": 20})
    assert await catalog.confirm(call) == Found(done=False)
    await catalog.dispatch(call)
    done = await catalog.confirm(call)
    assert done is not None and done.done
    assert done.result["__row__"][1] == {"ID": "A-2", "Item": "Tea", "Amount": 20}
    assert await catalog.confirm(append({"Item": "Tea", "Amount": 20})) is None
    assert await catalog.confirm(append({"ID": "A-1", "Item": "Tea"})) is None


async def test_google_confirms_an_append_by_its_id(
    google: tuple[GoogleSheetsFake, Catalog],
) -> None:
    fake, catalog = google
    fake.add_tab("orders", [["ID", "Item", "Amount"], ["A-1", "Mugs", 100]], columns=3)
    await _confirm_append_after_a_crash(catalog)
    assert fake.tab("orders").cells[1:] == [["A-1", "Mugs", 100], ["A-2", "Tea", 20]]


async def test_airtable_confirms_an_append_by_its_id(
    airtable: tuple[AirtableFake, Catalog],
) -> None:
    fake, catalog = airtable
    fake.add_table("orders", [Field("ID"), Field("Item"),
                              Field("Amount", "number", {"precision": 0})],
                   [{"ID": "A-1", "Item": "Mugs", "Amount": 100}])
    await _confirm_append_after_a_crash(catalog)
    rows = await _call(catalog, "rows", sheet="orders")
    assert [r["ID"] for r in rows] == ["A-1", "A-2"]  # looking added nothing


async def test_google_grows_the_grid_for_a_new_column(
    google: tuple[GoogleSheetsFake, Catalog],
) -> None:
    fake, catalog = google
    assert fake.tab("signups").column_count == 3
    await _call(catalog, "update", "row-1", {"Asked on": "2026-03-12"})
    assert fake.tab("signups").column_count == 4
    assert fake.tab("signups").cells[0] == [*HEADER, "Asked on"]


async def test_google_retries_a_rate_limited_call(
    google: tuple[GoogleSheetsFake, Catalog],
) -> None:
    fake, catalog = google
    fake.throttle = 2
    rows = await _call(catalog, "rows")
    assert len(rows) == 3
    assert fake.throttle == 0


async def test_google_lists_tabs_and_names_the_missing_one(
    google: tuple[GoogleSheetsFake, Catalog],
) -> None:
    _fake, catalog = google
    assert await catalog.dispatch(EffectCall("sheets", "list", [], {})) == ["signups", "archive"]
    with pytest.raises(IntegrationError, match=r"no sheet 'signup'.*Did you mean 'signups'"):
        await catalog.dispatch(EffectCall("sheets", "open", ["signup"], {}))
    described = await catalog.describe()
    assert described["sheets"]["signups"] == {
        "columns": {"Name": "text", "Email": "text", "Budget": "number"}, "rows": 3}


async def test_airtable_coerces_near_misses_and_lists_options(
    airtable: tuple[AirtableFake, Catalog],
) -> None:
    fake, catalog = airtable
    [dora] = await _call(catalog, "rows", sheet="leads")
    updated = await _call(catalog, "update", dora, {"stage": "qualified lead", "Won": "yes"},
                          sheet="leads")
    assert updated["Stage"] == "Qualified Lead" and updated["Won"] is True
    assert fake.table("leads").rows()[0]["Stage"] == "Qualified Lead"

    with pytest.raises(IntegrationError) as raised:
        await _call(catalog, "update", dora, {"Stage": "Closed"}, sheet="leads")
    assert raised.value.message == (
        "'Closed' is not a valid option for column 'Stage'. "
        "Valid options: 'New lead', 'Qualified Lead'."
    )
    with pytest.raises(IntegrationError, match="'lots' is not a number"):
        await _call(catalog, "append", {"Budget": "lots"})
    assert len(fake.table("signups").records) == 3


async def test_airtable_reads_every_page_and_retries_when_rate_limited(
    airtable: tuple[AirtableFake, Catalog],
) -> None:
    fake, catalog = airtable
    table = fake.table("signups")
    for i in range(230):
        table.records.append({"id": f"recBULK{i:010d}", "createdTime": "2026-01-01T00:00:00.000Z",
                              "fields": {"Name": f"bulk {i}"}})
    fake.throttle = 1
    rows = await _call(catalog, "rows")
    assert len(rows) == 233
    assert rows[-1] == Row("recBULK0000000229",
                           {"Name": "bulk 229", "Email": None, "Budget": None})
    pages = [p for m, p in fake.requests if m == "GET" and "/tbl" in p and "meta" not in p]
    assert len(pages) == 3  # 100 records a page
    assert len(fake.requests) == 1 + 1 + 3  # schema, schema again after the 429, three pages


async def test_airtable_describes_field_types_and_options(
    airtable: tuple[AirtableFake, Catalog],
) -> None:
    _fake, catalog = airtable
    described = (await catalog.describe())["sheets"]
    assert described["leads"] == {
        "columns": {"Name": "singleLineText", "Stage": "singleSelect", "Won": "checkbox"},
        "rows": 1, "options": {"Stage": ["New lead", "Qualified Lead"]},
    }


async def test_airtable_refusals_reach_the_program_without_the_token(
    airtable: tuple[AirtableFake, Catalog],
) -> None:
    fake, catalog = airtable
    fake.table("signups").fields.append(Field("Due", "date", {"dateFormat": {
        "name": "iso", "format": "YYYY-MM-DD"}}))
    with pytest.raises(IntegrationError) as raised:
        await _call(catalog, "append", {"Name": "Eve", "Due": "next week"})
    assert "cannot accept the provided value (INVALID_VALUE_FOR_COLUMN)" in raised.value.message
    assert raised.value.message.startswith(
        "Airtable refused the change to 'signups': Field \"Due\"")
    assert fake.token not in raised.value.message
    assert len(fake.table("signups").records) == 3


@pytest.mark.parametrize("service", ["google_sheets", "airtable"])
async def test_a_connector_without_a_base_url_would_reach_the_vendor_and_is_stopped(
    service: str,
) -> None:
    credentials = {"spreadsheet_id": "x", "access_token": "t", "api_key": "k", "base_id": "appX"}
    catalog = Catalog([FACTORIES[service](credentials, None)])  # type: ignore[arg-type]
    with pytest.raises(IntegrationError, match="failed"):
        await catalog.dispatch(EffectCall("sheets", "list", [], {}))


def test_missing_credentials_name_what_to_add() -> None:
    with pytest.raises(IntegrationError, match="airtable is missing base_id"):
        FACTORIES["airtable"]({"api_key": "k"}, None)  # type: ignore[arg-type]
    assert inspect.isfunction(FACTORIES["google_sheets"])
