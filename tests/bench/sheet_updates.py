"""Local sheet updates: `Sheet.update` on a CSV file, one at a time and from concurrent items.

The demo's job shape: each update marks a row ("Asked": "yes") and writes today's date into a
column the first update adds ("Date asked"), on rows spread over the whole sheet. Each update
returns once the file holding it is on disk (fsync). One at a time, every update rewrites the
file; from concurrent items (each() with concurrency 8), the updates that arrive while a write
is under way share the next one (`integrations._sheet_state`). Figures: updates per second and
milliseconds per update, for sheets of 2,000 and 20,000 rows; and `Sheet.find` by a column's
value per second on 20,000 rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from integrations.sheets import LocalSheets
from tests.bench._report import Outcome
from tests.test_durable import write_sheet

SIZES = (2_000, 20_000)
UPDATES = 400
CONCURRENCY = 8


async def updates_per_s(rows: int, concurrency: int, updates: int, *,
                        ids: bool = False) -> float:
    """Updates per second of `updates` rows of a fresh sheet of `rows` rows, `concurrency` at
    a time; with `ids`, the sheet has an "ID" column, by which rows are found."""
    with tempfile.TemporaryDirectory(prefix="sluice-bench-sheet-") as folder:
        write_sheet(Path(folder) / "sheets", rows)  # the durability test's signups sheet
        if ids:
            add_id_column(Path(folder) / "sheets" / "signups.csv")
        sheet = await LocalSheets(Path(folder) / "sheets").open("signups")
        everyone = await sheet.rows()
        targets = everyone[::max(len(everyone) // updates, 1)][:updates]
        gate = asyncio.Semaphore(concurrency)
        today = dt.date(2026, 11, 27)

        async def update(index: int) -> None:
            async with gate:
                await sheet.update(targets[index], {"Asked": "yes", "Date asked": today})

        start = time.perf_counter()
        await asyncio.gather(*(update(i) for i in range(len(targets))))
        return len(targets) / (time.perf_counter() - start)


async def run() -> list[Outcome]:
    figures: dict[str, Any] = {}
    for rows in SIZES:
        for concurrency in (1, CONCURRENCY):
            updates = UPDATES if concurrency > 1 or rows <= 2_000 else UPDATES // 4
            rate = await updates_per_s(rows, concurrency, updates)
            figures[f"rows_{rows}_concurrency_{concurrency}_per_s"] = round(rate, 1)
            figures[f"rows_{rows}_concurrency_{concurrency}_ms"] = round(1000 / rate, 2)
    rate = await updates_per_s(SIZES[-1], CONCURRENCY, UPDATES, ids=True)
    figures[f"rows_{SIZES[-1]}_id_column_concurrency_{CONCURRENCY}_per_s"] = round(rate, 1)
    figures[f"rows_{SIZES[-1]}_finds_per_s"] = round(await finds_per_s(SIZES[-1], UPDATES), 1)
    headline = f"rows_{SIZES[0]}_concurrency_{CONCURRENCY}_per_s"
    return [Outcome(
        name="sheet_updates", title="Local sheet updates (CSV, each on disk when it returns)",
        headline=headline, figures=figures,
        notes=[f"{UPDATES} updates per case ({UPDATES // 4} one at a time on "
               f"{SIZES[-1]:,} rows); concurrency {CONCURRENCY} is each()'s items in flight; "
               "id_column: the same sheet with an ID column, rows found by their id; finds: "
               f"find(Email=...) of {UPDATES} rows, one at a time, on the unchanged sheet (a "
               "program looking up one sheet's rows for each row of another)."])]


async def finds_per_s(rows: int, finds: int) -> float:
    """`Sheet.find` by email per second on a fresh sheet of `rows` rows, after a first one."""
    with tempfile.TemporaryDirectory(prefix="sluice-bench-sheet-") as folder:
        write_sheet(Path(folder) / "sheets", rows)
        sheet = await LocalSheets(Path(folder) / "sheets").open("signups")
        await sheet.find(Email="p0@example.com")
        start = time.perf_counter()
        for n in range(finds):
            found = await sheet.find(Email=f"p{n * (rows // finds)}@example.com")
            if len(found) != 1:
                raise RuntimeError(f"find by email found {len(found)} rows, not 1")
        return finds / (time.perf_counter() - start)


def add_id_column(path: Path) -> None:
    """Give the sheet at `path` a first column "ID" (S-000001, …)."""
    lines = path.read_text().splitlines()
    numbered = [f"S-{n:06d},{line}" for n, line in enumerate(lines[1:], 1)]
    path.write_text("\n".join([f"ID,{lines[0]}", *numbered]) + "\n")
