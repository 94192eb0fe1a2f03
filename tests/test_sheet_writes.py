"""LocalSheets writes made together: concurrent changes share a write, each returns only once
the file holds it, and edits made to the file by someone else are kept."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

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
