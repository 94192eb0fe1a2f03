"""LocalSheets on real CSV and XLSX files in a temporary folder."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import openpyxl
import pytest

from core.errors import IntegrationError
from integrations.base import Found, Row
from integrations.sheets import LocalSheets, Sheet

SIGNUPS = "Name,Email,Budget\r\nAna,ana@example.com,\r\nBo,bo@example.com,5000\r\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "signups.csv").write_bytes(SIGNUPS.encode())
    (tmp_path / "leads.csv").write_text("id,Company,Stage\nL-7,Acme,new\nL-9,Globex,won\n")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Invoice", "Amount", "Due", "Total"])
    sheet.append(["INV-1", 120, dt.datetime(2024, 5, 1), "=B2*2"])
    sheet.append(["INV-2", 80.5, None, "=B3*2"])
    book.create_sheet("ignored").append(["not", "read"])
    book.save(tmp_path / "invoices.xlsx")
    (tmp_path / "notes.txt").write_text("not a sheet")
    (tmp_path / "~$invoices.xlsx").write_text("excel lock file")
    return tmp_path


@pytest.fixture
def sheets(folder: Path) -> LocalSheets:
    return LocalSheets(folder)


async def test_list_and_open(sheets: LocalSheets) -> None:
    assert await sheets.list() == ["invoices", "leads", "signups"]
    sheet = await sheets.open("SignUps")
    assert isinstance(sheet, Sheet) and sheet.key == "signups" and sheet.owner is sheets


async def test_unknown_sheet_lists_the_sheets(sheets: LocalSheets) -> None:
    with pytest.raises(IntegrationError) as info:
        await sheets.open("signup")
    assert info.value.message == (
        "There is no sheet 'signup'. Sheets: invoices, leads, signups. Did you mean 'signups'?"
    )
    with pytest.raises(IntegrationError, match="there are no sheets yet"):
        await LocalSheets(Path("/nonexistent/folder")).open("x")


async def test_rows_have_stable_ids_and_none_for_empty(sheets: LocalSheets) -> None:
    sheet = await sheets.open("signups")
    rows = await sheet.rows()
    assert [r.id for r in rows] == ["row-1", "row-2"]
    assert rows[0] == {"Name": "Ana", "Email": "ana@example.com", "Budget": None}
    assert rows[1]["Budget"] == "5000"
    await sheet.append({"Name": "Cy", "Email": "cy@example.com"})
    assert [r.id for r in await sheet.rows()] == ["row-1", "row-2", "row-3"]
    assert await sheet.columns() == ["Name", "Email", "Budget"]


async def test_id_column_gives_identity(sheets: LocalSheets) -> None:
    leads = await sheets.open("leads")
    assert [r.id for r in await leads.rows()] == ["L-7", "L-9"]
    updated = await leads.update("L-9", {"Stage": "lost"})
    assert updated == Row("L-9", {"id": "L-9", "Company": "Globex", "Stage": "lost"})
    with pytest.raises(IntegrationError, match="already has a row with id 'L-7'"):
        await leads.append({"id": "L-7", "Company": "Dup"})


async def test_rows_are_found_by_id_after_ids_change_and_rows_are_added(
        sheets: LocalSheets, folder: Path) -> None:
    # Where each id is, is remembered between lookups; a row whose id changed is found by its
    # new id, and its old id finds nothing, whatever was looked up before.
    leads = await sheets.open("leads")
    await leads.update("L-9", {"Stage": "lost"})
    await leads.update("L-9", {"id": "L-10"})
    await leads.preview_append({"id": "L-11", "Company": "Initech"})  # not added
    with pytest.raises(IntegrationError, match="has no row 'L-9'"):
        await leads.update("L-9", {"Stage": "won"})
    with pytest.raises(IntegrationError, match="has no row 'L-11'"):
        await leads.update("L-11", {"Stage": "won"})
    await leads.append({"id": "L-12", "Company": "Hooli"})
    assert (await leads.update("L-10", {"Stage": "won"}))["Company"] == "Globex"
    assert (await leads.update("L-12", {"Stage": "new"}))["Company"] == "Hooli"
    with pytest.raises(IntegrationError, match="already has a row with id 'L-10'"):
        await leads.append({"id": "L-10", "Company": "Dup"})
    assert (folder / "leads.csv").read_text().splitlines()[1:] == [
        "L-7,Acme,new", "L-10,Globex,won", "L-12,Hooli,new"]


async def test_update_by_row_and_by_id(sheets: LocalSheets, folder: Path) -> None:
    sheet = await sheets.open("signups")
    ana = (await sheet.rows())[0]
    row = await sheet.update(ana, {"Budget": 7000})
    assert row.id == "row-1" and row["Budget"] == "7000"
    await sheet.update("row-2", {"budget ": None})  # near-miss spelling, cleared cell
    data = (folder / "signups.csv").read_bytes()
    assert data == b"Name,Email,Budget\r\nAna,ana@example.com,7000\r\nBo,bo@example.com,\r\n"


async def test_update_is_idempotent(sheets: LocalSheets, folder: Path) -> None:
    sheet = await sheets.open("signups")
    await sheet.update("row-1", {"Budget": 100, "Asked on": dt.date(2024, 6, 1)})
    first = (folder / "signups.csv").read_bytes()
    mtime = (folder / "signups.csv").stat().st_mtime_ns
    await sheet.update("row-1", {"Budget": "100", "Asked on": dt.date(2024, 6, 1)})
    assert (folder / "signups.csv").read_bytes() == first
    assert (folder / "signups.csv").stat().st_mtime_ns == mtime  # not even rewritten


async def test_confirm_update_tells_an_applied_update_from_one_not_done(
        sheets: LocalSheets, folder: Path) -> None:
    sheet = await sheets.open("signups")
    values = {"Budget": 100, "Asked on": dt.date(2024, 6, 1)}
    assert await sheet.confirm_update("row-1", values) == Found(done=False)
    before = (folder / "signups.csv").read_bytes()
    assert before == SIGNUPS.encode()  # looking changes nothing
    stored = await sheet.update("row-1", values)
    found = await sheet.confirm_update("row-1", {"Budget": "100", "Asked on": "2024-06-01"})
    assert found == Found(done=True, result=stored) and found.result.id == "row-1"
    await sheet.update("row-1", {"Budget": 7})  # changed since: no longer what was asked
    assert await sheet.confirm_update("row-1", values) == Found(done=False)
    with pytest.raises(IntegrationError, match="row-9"):
        await sheet.confirm_update("row-9", values)


async def test_confirm_append_needs_an_id_to_tell(sheets: LocalSheets, folder: Path) -> None:
    leads = await sheets.open("leads")
    new = {"id": "L-11", "Company": "Initech", "Stage": "new"}
    assert await leads.confirm_append(new) == Found(done=False)
    added = await leads.append(new)
    assert await leads.confirm_append(new) == Found(done=True, result=added)
    # The id is taken by a row with other values: not this append's row, or changed since.
    assert await leads.confirm_append({**new, "Stage": "won"}) is None
    # Without an id a row with the same values may be another row.
    signups = await sheets.open("signups")
    await signups.append({"Name": "Cy", "Email": "cy@example.com"})
    assert await signups.confirm_append({"Name": "Cy", "Email": "cy@example.com"}) is None
    assert (folder / "leads.csv").read_text().count("L-11") == 1


async def test_new_column_is_added_at_the_right_end(sheets: LocalSheets, folder: Path) -> None:
    sheet = await sheets.open("signups")
    row = await sheet.update("row-2", {"Asked on": dt.date(2024, 6, 1), "Budjet": 9})
    assert row == {"Name": "Bo", "Email": "bo@example.com", "Budget": "9",
                   "Asked on": "2024-06-01"}
    assert await sheet.columns() == ["Name", "Email", "Budget", "Asked on"]
    lines = (folder / "signups.csv").read_text().splitlines()
    assert lines == ["Name,Email,Budget,Asked on", "Ana,ana@example.com,,",
                     "Bo,bo@example.com,9,2024-06-01"]


async def test_near_miss_with_other_digits_is_a_new_column(sheets: LocalSheets) -> None:
    sheet = await sheets.open("invoices")
    await sheet.update("row-1", {"Amount 2": 1})
    assert await sheet.columns() == ["Invoice", "Amount", "Due", "Total", "Amount 2"]


async def test_unknown_row_and_bad_value(sheets: LocalSheets) -> None:
    sheet = await sheets.open("signups")
    with pytest.raises(IntegrationError, match=r"no row 'row-9' \(its rows are row-1 … row-2\)"):
        await sheet.update("row-9", {"Budget": 1})
    with pytest.raises(IntegrationError, match="join lists into one string"):
        await sheet.update("row-1", {"Budget": [1, 2]})


async def test_find_and_unknown_column_message(sheets: LocalSheets) -> None:
    sheet = await sheets.open("signups")
    assert [r.id for r in await sheet.find(Budget=5000)] == ["row-2"]
    assert [r.id for r in await sheet.find(Budget=None)] == ["row-1"]
    assert [r.id for r in await sheet.find(email="ana@example.com")] == ["row-1"]
    with pytest.raises(IntegrationError) as info:
        await sheet.find(Bud="x")
    assert info.value.message == (
        "The sheet 'signups' has no column 'Bud'. Columns: Name, Email, Budget. "
        "Did you mean 'Budget'?"
    )


async def test_find_sees_every_change_and_the_file_changed_by_someone_else(
        sheets: LocalSheets, folder: Path) -> None:
    sheet = await sheets.open("signups")
    assert [r.id for r in await sheet.find(Budget=None)] == ["row-1"]
    await sheet.update("row-1", {"Budget": 300})
    await sheet.append({"Name": "Cy", "Email": "cy@example.com"})
    await sheet.append({"Name": "Di", "Email": "di@example.com", "Budget": 5000.0})
    assert [r.id for r in await sheet.find(Budget=None)] == ["row-3"]
    assert [r.id for r in await sheet.find(Budget="")] == ["row-3"]
    assert [r.id for r in await sheet.find(Budget=300)] == ["row-1"]
    assert [r.id for r in await sheet.find(Budget=5000)] == ["row-2", "row-4"]
    assert [r.id for r in await sheet.find(Budget=5000, Name="Di")] == ["row-4"]
    assert await sheet.find(Budget=5000, Name="Cy") == []
    assert await sheet.find(Name="Zed") == []
    (folder / "signups.csv").write_text("Name,Email,Budget\nEd,ed@example.com,5000\n")
    assert [r["Name"] for r in await sheet.find(Budget=5000)] == ["Ed"]


async def test_xlsx_keeps_types_formulas_and_other_worksheets(
    sheets: LocalSheets, folder: Path
) -> None:
    sheet = await sheets.open("invoices")
    rows = await sheet.rows()
    assert rows[0]["Amount"] == 120 and rows[0]["Due"] == dt.datetime(2024, 5, 1)
    assert rows[1]["Due"] is None
    row = await sheet.update("row-2", {"Due": dt.date(2024, 7, 1), "Paid": True})
    assert row["Paid"] is True and row["Amount"] == 80.5
    appended = await sheet.append({"Invoice": "INV-3", "Amount": 10})
    assert appended.id == "row-3"
    book = openpyxl.load_workbook(folder / "invoices.xlsx")
    first = book.worksheets[0]
    assert [c.value for c in first[1]] == ["Invoice", "Amount", "Due", "Total", "Paid"]
    assert first["D2"].value == "=B2*2"  # untouched formula is kept
    assert first["C3"].value == dt.datetime(2024, 7, 1)
    assert first["A4"].value == "INV-3"
    assert book.sheetnames == ["Sheet", "ignored"]


async def test_csv_keeps_delimiter_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "eu.csv"
    path.write_bytes(b"\xef\xbb\xbfName;Amount\nAna;1,5\n")
    sheet = await LocalSheets(tmp_path).open("eu")
    assert (await sheet.rows())[0] == {"Name": "Ana", "Amount": "1,5"}
    await sheet.append({"Name": "Bo", "Amount": "2,0"})
    assert path.read_bytes() == b"\xef\xbb\xbfName;Amount\nAna;1,5\nBo;2,0\n"


async def test_writes_leave_no_temporary_files(sheets: LocalSheets, folder: Path) -> None:
    before = sorted(p.name for p in folder.iterdir())
    sheet = await sheets.open("signups")
    await sheet.update("row-1", {"Budget": 1})
    await (await sheets.open("invoices")).update("row-1", {"Amount": 1})
    assert sorted(p.name for p in folder.iterdir()) == before


async def test_concurrent_appends_all_land(sheets: LocalSheets) -> None:
    import asyncio

    sheet = await sheets.open("signups")
    await asyncio.gather(*(sheet.append({"Name": f"P{i}"}) for i in range(10)))
    names = [r["Name"] for r in await sheet.rows()]
    assert sorted(names[2:]) == sorted(f"P{i}" for i in range(10))


async def test_describe_and_count_rows(sheets: LocalSheets, folder: Path) -> None:
    (folder / "broken.xlsx").write_text("not a zip")
    described = await sheets.describe()
    assert described["signups"] == {"columns": ["Name", "Email", "Budget"], "rows": 2,
                                    "row_ids": "row-N", "types": {"Budget": {"type": "number"}}}
    assert described["invoices"]["types"] == {"Amount": {"type": "number"},
                                              "Due": {"type": "date"}}
    assert described["leads"]["row_ids"] == "column 'id'"
    assert "error" in described["broken"]
    assert await sheets.count_rows("invoices") == 2


# Values fitted to the column's type (integrations.coercion), on real files.


async def test_csv_columns_take_near_miss_values_in_their_own_format(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("Order,Amount,Due,Paid\nA-1,120,25/03/2026,FALSE\nA-2,80.5,,TRUE\n")
    sheet = await LocalSheets(tmp_path).open("orders")
    row = await sheet.update("row-2", {"Amount": "$1,234.50", "Due": "12/04/2026",
                                       "Paid": "no"})
    assert row == {"Order": "A-2", "Amount": "1234.50", "Due": "12/04/2026", "Paid": "FALSE"}
    await sheet.update("row-1", {"Due": dt.date(2026, 5, 1)})
    await sheet.append({"Order": "A-3", "Due": "2026-06-09", "Amount": "n/a"})
    assert path.read_text().splitlines() == [
        "Order,Amount,Due,Paid", "A-1,120,01/05/2026,FALSE", "A-2,1234.50,12/04/2026,FALSE",
        "A-3,n/a,09/06/2026,"]
    assert [r["Order"] for r in await sheet.find(Due=dt.date(2026, 6, 9))] == ["A-3"]


async def test_ambiguous_date_for_an_iso_column_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.csv"
    path.write_text("Task,Due\nShip,2026-03-01\n")
    before = path.read_bytes()
    sheet = await LocalSheets(tmp_path).open("tasks")
    with pytest.raises(IntegrationError) as info:
        await sheet.update("row-1", {"Due": "12/03/2026"})
    assert info.value.message == (
        "'12/03/2026' for column 'Due' of the sheet 'tasks' could be 12 March 2026 or "
        "3 December 2026. Pass a date, e.g. date(2026, 3, 12), or ISO text '2026-03-12' or "
        "'2026-12-03'.")
    assert path.read_bytes() == before
    await sheet.update("row-1", {"Due": "March 12, 2026"})
    assert path.read_text().splitlines()[1] == "Ship,2026-03-12"


async def test_xlsx_dropdowns_are_choices(tmp_path: Path) -> None:
    from openpyxl.worksheet.datavalidation import DataValidation

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Company", "Stage", "Owner"])
    sheet.append(["Acme", "New", "Ana"])
    stage = DataValidation(type="list", formula1='"New,Qualified Lead,Won,Lost"')
    stage.add("B2:B100")
    lists = book.create_sheet("Lists")
    for name in ("Ana", "Bo"):
        lists.append([name])
    owner = DataValidation(type="list", formula1="=Lists!$A$1:$A$2")
    owner.add("C2:C100")
    sheet.add_data_validation(stage)
    sheet.add_data_validation(owner)
    book.save(tmp_path / "pipeline.xlsx")
    sheets = LocalSheets(tmp_path)
    described = await sheets.describe()
    assert described["pipeline"]["types"] == {
        "Stage": {"type": "choice", "options": ["New", "Qualified Lead", "Won", "Lost"]},
        "Owner": {"type": "choice", "options": ["Ana", "Bo"]},
    }
    pipeline = await sheets.open("pipeline")
    row = await pipeline.update("row-1", {"Stage": "qualified lead", "Owner": "bo"})
    assert row == {"Company": "Acme", "Stage": "Qualified Lead", "Owner": "Bo"}
    with pytest.raises(IntegrationError) as info:
        await pipeline.append({"Company": "Globex", "Stage": "Closed"})
    assert info.value.message == (
        "'Closed' is not an option of column 'Stage' of the sheet 'pipeline'. Options: 'New', "
        "'Qualified Lead', 'Won', 'Lost'. Pass one of these values exactly.")
    assert len(await pipeline.rows()) == 1


async def test_a_new_column_named_like_an_old_one_plus_a_word_is_added(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text("Name,Asked\nAna,yes\n")
    sheet = await LocalSheets(tmp_path).open("people")
    row = await sheet.update("row-1", {"Asked on": dt.date(2026, 11, 27)})
    assert row == {"Name": "Ana", "Asked": "yes", "Asked on": "2026-11-27"}
    assert (tmp_path / "people.csv").read_text().splitlines() == [
        "Name,Asked,Asked on", "Ana,yes,2026-11-27"]
