"""A resumed run answers its journaled calls inside the sandbox (ARCHITECTURE.md, "Durable
execution by journal and replay").

The worker sends the child the results of the calls journaled as done; the child answers those
calls itself, with no round trip each, and sends them back in batches for the journal to check
and count. These tests run a real program twice over a real sheet and journal: once live, then
resumed, and look at what the resumed run saw, performed and reported.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import JournalRow
from core.settings import load_settings
from integrations.catalog import Catalog, build_local_catalog
from tests._canned import CannedModel
from workers.effects import EffectRunner, StopReason
from workers.journal import Journal
from workers.sandbox import SandboxLimits, SandboxOutcome, run_sandboxed

ROWS = 520  # more calls than one batch of replayed calls holds (512)
LIMITS = SandboxLimits(cpu_s=60, wall_s=120, memory_mb=1024)
PROGRAM = """\
sheet = sheets.open("signups")
rows = sheet.rows()

def ask(row):
    sheet.update(row, {"Asked": "yes"})
    return row["Name"]

names = each(rows, ask, concurrency=8)
print(f"asked {len(names)}, first {names[0]}, last {names[-1]}")
"""


def write_sheet(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "signups.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Name", "Asked"])
        writer.writerows([name, ""] for name in names)
    return path


def sheet_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def catalog(home: Path) -> Catalog:
    return build_local_catalog(load_settings({"SLUICE_HOME": str(home)}, env_file=False),
                               CannedModel())


async def run(engine: AsyncEngine, home: Path, program: str = PROGRAM
              ) -> tuple[SandboxOutcome, EffectRunner]:
    """One attempt of run "r": the journal loaded, its done calls handed to the sandbox."""
    journal = Journal(engine, "r")
    await journal.load()
    runner = EffectRunner(run_id="r", catalog=catalog(home), journal=journal)
    try:
        outcome = await run_sandboxed(program, manifest=runner.catalog.manifest(),
                                      handler=runner.perform, limits=LIMITS,
                                      replay=journal.done_results(),
                                      check_replayed=runner.check_replayed)
    finally:
        await journal.close()
    return outcome, runner


async def test_a_resumed_run_answers_its_done_calls_from_the_journal(
        engine: AsyncEngine, tmp_path: Path) -> None:
    path = write_sheet(tmp_path / "sheets", [f"Person {i}" for i in range(ROWS)])
    first, live = await run(engine, tmp_path)
    assert first.ok, first.error
    assert live.counts.live == ROWS + 2 and first.replayed == 0
    # Someone renames the first person meanwhile: a resumed run sees what the run saw.
    write_sheet(tmp_path / "sheets", ["Renamed", *[f"Person {i}" for i in range(1, ROWS)]])

    again, resumed = await run(engine, tmp_path)

    assert again.ok, again.error
    assert again.output == first.output == f"asked {ROWS}, first Person 0, last Person {ROWS - 1}\n"
    assert again.replayed == ROWS + 2  # sheets.open, rows(), and every update
    assert resumed.counts.replayed == ROWS + 2 and resumed.counts.live == 0
    assert resumed.counts.writes == {"Sheet.update": ROWS}
    assert sheet_rows(path)[1] == ["Renamed", ""]  # nothing was written again
    assert all(row[1] == "" for row in sheet_rows(path)[1:])


async def test_a_different_call_at_a_replayed_path_stops_before_any_later_call(
        engine: AsyncEngine, tmp_path: Path) -> None:
    path, _ = await died_halfway(engine, tmp_path)
    changed = PROGRAM.replace('{"Asked": "yes"}', '{"Asked": "yes" if row["Name"] != '
                              '"Person 7" else "no"}')

    outcome, resumed = await run(engine, tmp_path, changed)

    assert not outcome.ok and outcome.error is not None
    assert outcome.error["type"] == "RunStopped"
    assert "not deterministic" in outcome.error["message"]
    assert resumed.stop is not None and resumed.stop.reason == StopReason.NON_DETERMINISTIC
    assert resumed.counts.live == 0  # no update after the changed one reached the sheet
    assert all(row[1] == "" for row in sheet_rows(path)[1:])


async def test_a_run_killed_halfway_replays_the_done_half_and_performs_the_rest(
        engine: AsyncEngine, tmp_path: Path) -> None:
    path, kept = await died_halfway(engine, tmp_path)

    outcome, resumed = await run(engine, tmp_path)

    assert outcome.ok, outcome.error
    assert outcome.replayed == kept
    assert resumed.counts.replayed == kept and resumed.counts.live == ROWS + 2 - kept
    # The replayed half was not written again; the rest was written now.
    rows = sheet_rows(path)[1:]
    assert [row[1] for row in rows].count("yes") == ROWS - (kept - 2)
    paths = await _journal_paths(engine)
    assert len(paths) == len(set(paths)) == ROWS + 2


async def died_halfway(engine: AsyncEngine, home: Path) -> tuple[Path, int]:
    """A run whose journal holds what it had done when it died halfway, its sheet as it was
    before the run (as if the writes after that never happened); the entries kept."""
    names = [f"Person {i}" for i in range(ROWS)]
    path = write_sheet(home / "sheets", names)
    first, _ = await run(engine, home)
    assert first.ok, first.error
    kept = await _forget_after(engine, ROWS)
    write_sheet(home / "sheets", names)
    return path, kept


async def _forget_after(engine: AsyncEngine, records: int) -> int:
    """Drop the journal's entries last recorded after its first `records` records (a write
    records twice: intent, then done), as if the worker died then; the entries left."""
    async with engine.begin() as conn:
        await conn.execute(delete(JournalRow).where(JournalRow.run_id == "r",
                                                    JournalRow.seq > records))
    return len(await _journal_paths(engine))


async def _journal_paths(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(JournalRow.__table__.select().where(JournalRow.run_id == "r"))
        return [row.path for row in result]
