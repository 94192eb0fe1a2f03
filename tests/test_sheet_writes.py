"""LocalSheets writes made together: concurrent changes share a write, each returns only once
the file holds it, and edits made to the file by someone else are kept."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import random
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from core.errors import IntegrationError
from integrations.sheets import LocalSheets

ROWS = 300


def write_people(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Name", "Email", "Asked"])
        writer.writerows([f"Person {i}", f"p{i}@example.com", ""] for i in range(n))


def on_disk(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def people(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    write_people(path, ROWS)
    return path


async def test_concurrent_updates_all_land_and_each_is_on_disk_when_it_returns(
        people: Path) -> None:
    sheet = await LocalSheets(people.parent).open("people")
    rows = await sheet.rows()
    seen_on_return: list[str] = []

    async def ask(i: int) -> None:
        row = await sheet.update(rows[i], {"Asked": f"yes {i}"})
        assert row["Asked"] == f"yes {i}"
        seen_on_return.append(on_disk(people)[i]["Asked"])

    await asyncio.gather(*(ask(i) for i in range(ROWS)))
    assert sorted(seen_on_return) == sorted(f"yes {i}" for i in range(ROWS))
    assert [r["Asked"] for r in on_disk(people)] == [f"yes {i}" for i in range(ROWS)]
    assert [p.name for p in people.parent.iterdir()] == ["people.csv"]  # no temporary files


async def test_a_failing_change_fails_alone_among_concurrent_ones(people: Path) -> None:
    sheet = await LocalSheets(people.parent).open("people")
    targets = [f"row-{i + 1}" for i in range(20)]
    targets[7] = "row-9999"
    done = await asyncio.gather(*(sheet.update(t, {"Asked": "yes"}) for t in targets),
                                return_exceptions=True)
    assert isinstance(done[7], IntegrationError) and "row-9999" in done[7].message
    assert [r.id for r in done if not isinstance(r, BaseException)] == targets[:7] + targets[8:]
    asked = [r["Asked"] for r in on_disk(people)]
    assert asked[:20] == ["yes"] * 7 + [""] + ["yes"] * 12 and set(asked[20:]) == {""}


async def test_an_edit_made_by_someone_else_between_updates_is_kept(people: Path) -> None:
    sheet = await LocalSheets(people.parent).open("people")
    await sheet.update("row-1", {"Asked": "yes"})
    text = people.read_text().replace("Person 2,", "Persona Two,")  # another app saves the file
    people.write_text(text)
    await sheet.update("row-1", {"Asked": "twice"})
    stored = on_disk(people)
    assert stored[2]["Name"] == "Persona Two"
    assert stored[1]["Name"] == "Person 1" and stored[0]["Asked"] == "twice"


async def test_reads_see_an_edit_made_by_someone_else(people: Path) -> None:
    sheet = await LocalSheets(people.parent).open("people")
    assert len(await sheet.rows()) == ROWS
    with people.open("a", newline="") as f:
        csv.writer(f).writerow(["Late Person", "late@example.com", ""])
    rows = await sheet.rows()
    assert len(rows) == ROWS + 1 and rows[-1]["Name"] == "Late Person"
    assert (await sheet.update(rows[-1], {"Asked": "yes"}))["Name"] == "Late Person"
    assert on_disk(people)[-1] == {"Name": "Late Person", "Email": "late@example.com",
                                   "Asked": "yes"}


async def test_a_sheet_deleted_while_changes_wait_fails_them_with_a_clear_error(
        people: Path) -> None:
    sheet = await LocalSheets(people.parent).open("people")
    await sheet.rows()
    updates = [asyncio.create_task(sheet.update(f"row-{i + 1}", {"Asked": "yes"}))
               for i in range(5)]
    await asyncio.sleep(0)  # the five are made in memory and wait for the write, which runs next
    people.unlink()
    done = await asyncio.gather(*updates, return_exceptions=True)
    assert all(isinstance(d, IntegrationError) for d in done), done
    assert {d.message for d in done if isinstance(d, IntegrationError)} == {
        "The sheet file 'people.csv' could not be read (No such file or directory); nothing "
        "was changed. Check the sheets folder, then retry."}
    write_people(people, 3)  # the file is put back: the next change reads it anew
    assert (await sheet.update("row-1", {"Asked": "later"}))["Asked"] == "later"
    assert [r["Asked"] for r in on_disk(people)] == ["later", "", ""]


async def test_two_runs_writing_one_sheet_lose_nothing(people: Path) -> None:
    """Two runs (each with its own sheets) update different rows of one file at once: each
    write checks, under a lock other writers take too, that the file is as it read it."""
    first = await LocalSheets(people.parent).open("people")
    second = await LocalSheets(people.parent).open("people")
    await asyncio.gather(*(sheet.update(f"row-{i + 1}", {"Asked": f"by {name}"})
                           for i in range(ROWS)
                           for name, sheet in (("first", first), ("second", second))
                           if (i % 2 == 0) == (name == "first")))
    assert [r["Asked"] for r in on_disk(people)] == [
        "by first" if i % 2 == 0 else "by second" for i in range(ROWS)]


def write_mixed(path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Name", "Amount", "When", "Since", "Flag", "Note", "Asked"])
        for i in range(30):
            writer.writerow([f"P{i}", str(i * 10) if i % 3 else "", f"{i % 28 + 1:02d}/03/2026"
                             if i % 4 else "", f"2025-{i % 12 + 1:02d}-01" if i % 3 else "",
                             "TRUE" if i % 2 else "", "x" if i % 5 == 0 else "", ""])


WRITES: list[Any] = [None, "", 5, 1200.5, "$1,200", "n/a", True, "FALSE", "yes",
                     dt.date(2026, 11, 27), "2026-11-27", "12/03/2026", "27/11/2026",
                     "12 March 2026", 'said "maybe",\nlater', "ünïcode ✓"]


async def test_a_run_guesses_column_types_as_a_fresh_read_would(tmp_path: Path) -> None:
    """Column types are guessed once per run and kept as values are written, and the lines of
    rows not changed are kept for the next write: a long run must store and refuse exactly what
    a run reading the file afresh before each update would, and write the same bytes."""
    kept, fresh = tmp_path / "kept", tmp_path / "fresh"
    for folder in (kept, fresh):
        folder.mkdir()
        write_mixed(folder / "mixed.csv")
    rng = random.Random(20261127)
    long_run = await LocalSheets(kept).open("mixed")
    for step in range(400):
        row = f"row-{rng.randrange(30) + 1}"
        column = rng.choice(["Amount", "When", "Since", "Flag", "Note", "Asked", "Extra note"])
        values = {column: rng.choice(WRITES)}
        outcomes = []
        for sheet in (long_run, await LocalSheets(fresh).open("mixed")):
            try:
                outcomes.append(dict(await sheet.update(row, values)))
            except IntegrationError as exc:
                outcomes.append({"refused": exc.message})
        assert outcomes[0] == outcomes[1], (step, row, values)
    assert (kept / "mixed.csv").read_bytes() == (fresh / "mixed.csv").read_bytes()


async def test_a_type_comes_back_when_the_value_that_broke_it_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "amounts.csv").write_text("Name,Amount\nA,10\nB,20\nC,\n")
    sheet = await LocalSheets(tmp_path).open("amounts")
    assert (await sheet.update("row-3", {"Amount": "n/a"}))["Amount"] == "n/a"
    assert (await sheet.update("row-1", {"Amount": "$1,200"}))["Amount"] == "$1,200"  # text now
    await sheet.update("row-1", {"Amount": 10})
    await sheet.update("row-3", {"Amount": 30})  # the column holds only numbers again
    assert (await sheet.update("row-2", {"Amount": "$1,500"}))["Amount"] == "1500"
    assert [r["Amount"] for r in on_disk(tmp_path / "amounts.csv")] == ["10", "1500", "30"]


async def test_a_date_written_over_the_one_that_set_the_format_is_guessed_afresh(
        tmp_path: Path) -> None:
    """"03/25/2026" alone makes the column month-first; written over with a date that fits
    day-first too, the column reads day-first again (the first format all fit), as a fresh
    read of the file would say."""
    results = []
    for name in ("kept", "fresh"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "dates.csv").write_text("Name,When\nA,03/25/2026\nB,03/05/2026\n")
        sheet = await LocalSheets(folder).open("dates")
        for row, when in (("row-1", dt.date(2026, 3, 4)), ("row-2", dt.date(2026, 11, 27))):
            if name == "fresh":
                sheet = await LocalSheets(folder).open("dates")
            await sheet.update(row, {"When": when})
        results.append((folder / "dates.csv").read_text())
    assert results[0] == results[1]


async def test_a_column_added_after_earlier_writes_reaches_every_row(people: Path) -> None:
    sheet = await LocalSheets(people.parent).open("people")
    await sheet.update("row-1", {"Asked": "yes"})
    await sheet.update("row-2", {"Asked on": dt.date(2026, 11, 27)})  # a new column
    lines = people.read_text().splitlines()
    assert lines[:4] == ["Name,Email,Asked,Asked on", "Person 0,p0@example.com,yes,",
                         "Person 1,p1@example.com,,2026-11-27", "Person 2,p2@example.com,,"]
    assert len(lines) == ROWS + 1 and all(line.count(",") == 3 for line in lines)


async def test_a_workbook_column_takes_the_type_of_the_values_written_into_it(
        tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    book.active.append(["Name", "Amount"])
    for name in ("A", "B", "C"):
        book.active.append([name, None])
    book.save(tmp_path / "amounts.xlsx")
    sheet = await LocalSheets(tmp_path).open("amounts")
    assert (await sheet.update("row-1", {"Amount": 5}))["Amount"] == 5
    assert (await sheet.update("row-2", {"Amount": "$1,200"}))["Amount"] == 1200  # a number now
    cells = [c.value for c in openpyxl.load_workbook(tmp_path / "amounts.xlsx").active["B"][1:]]
    assert cells == [5, 1200, None]
