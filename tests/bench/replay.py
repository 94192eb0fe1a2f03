"""3. Replay: journal entries per second on resume.

A run of 100,000 items, each with a `mail.send` and a `Sheet.update` journaled as done (200,000
entries), resumes: `Journal.load()` reads the whole journal, then `EffectRunner.perform` answers
every call from it without calling out. The calls are built beforehand (in a real resume they
arrive over the sandbox RPC, measured by the sandbox benchmark). Memory: resident memory added by
the loaded journal.
"""

from __future__ import annotations

import cProfile
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from codegen.models import LiteLLMModels
from core.db import JournalRow
from core.settings import load_settings
from integrations.base import EffectCall
from integrations.catalog import Catalog, build_local_catalog
from tests.bench import _profile
from tests.bench._report import Goal, Outcome
from tests.bench._services import cpu_seconds, rss_mb, sqlite_engine
from workers._journal_json import dump_result
from workers.effects import EffectRunner, call_key, request_hash
from workers.journal import Journal

ITEMS = 100_000
GOAL_PER_S = 100_000
PROFILE_ITEMS = 10_000
CHUNK = 10_000


def item_calls(i: int) -> tuple[EffectCall, EffectCall]:
    """What item `i` of the program asks for: an email, then a row update."""
    send = EffectCall(integration="mail", action="send", args=[],
                      kwargs={"to": f"p{i}@example.com", "subject": "Your budget",
                              "body": f"Hi Person {i}, what is your budget?"},
                      path=f"each#1/item#{i}/call#1")
    row = {"__row__": [f"r{i}", {"Name": f"Person {i}", "Email": f"p{i}@example.com",
                                 "Asked": ""}]}
    update = EffectCall(integration="sheets", action="update", args=[row, {"Asked": "yes"}],
                        kwargs={}, handle=("sheets", "Sheet", "signups"),
                        path=f"each#1/item#{i}/call#2")
    return send, update


def result_of(call: EffectCall) -> Any:
    if call.action == "send":
        return f"<{call.path.replace('/', '.')}@sluice.local>"
    row_id, values = call.args[0]["__row__"]
    return {"__row__": [row_id, {**values, "Asked": "yes"}]}


def journal_row(run_id: str, call: EffectCall, seq: int) -> dict[str, Any]:
    """The row `Journal` commits for `call` done."""
    return {"run_id": run_id, "path": call.path, "kind": "write", "call": call_key(call),
            "request_hash": request_hash(call), "status": "done",
            "result": dump_result(result_of(call)), "error": None,
            "cost_usd": 0.0, "seq": seq}


def program_calls(items: int) -> list[EffectCall]:
    return [call for i in range(items) for call in item_calls(i)]


async def write_journal(engine: AsyncEngine, run_id: str, calls: list[EffectCall]) -> None:
    rows = [journal_row(run_id, call, seq) for seq, call in enumerate(calls, 1)]
    async with engine.begin() as conn:
        for start in range(0, len(rows), CHUNK):
            await conn.execute(insert(JournalRow), rows[start:start + CHUNK])


def catalog(folder: Path) -> Catalog:
    """The worker's catalog; its model is never asked (replay calls nothing)."""
    settings = load_settings({"SLUICE_HOME": str(folder),
                              "SLUICE_SCRIPTED_MODEL_URL": "http://127.0.0.1:9"}, env_file=False)
    return build_local_catalog(settings, LiteLLMModels.from_settings(settings))


async def resume(engine: AsyncEngine, run_id: str, calls: list[EffectCall],
                 folder: Path) -> dict[str, Any]:
    """Load the journal and answer every call; the catalog is built first, as `run_program`
    builds it before it loads the journal."""
    journal = Journal(engine, run_id)
    effects = catalog(folder)
    memory, cpu, start = rss_mb(), cpu_seconds(), time.perf_counter()
    loaded = await journal.load()
    loaded_at, memory = time.perf_counter(), rss_mb() - memory
    runner = EffectRunner(run_id=run_id, catalog=effects, journal=journal)
    for call in calls:
        await runner.perform(call)
    done, cpu = time.perf_counter(), cpu_seconds() - cpu
    await journal.close()
    if runner.counts.replayed != len(calls) or runner.counts.live:
        raise RuntimeError(f"replay called out: {runner.counts}")
    return {"entries": loaded, "load_s": round(loaded_at - start, 3),
            "perform_s": round(done - loaded_at, 3), "seconds": round(done - start, 3),
            "entries_per_s": round(loaded / (done - start)),
            "load_per_s": round(loaded / (loaded_at - start)),
            "perform_per_s": round(loaded / (done - loaded_at)),
            "cpu_us_per_entry": round(cpu / loaded * 1e6, 2),
            "loaded_rss_mb": round(memory, 1), "live_calls": runner.counts.live}


async def run() -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as name:
        async with sqlite_engine(Path(name)) as engine:
            calls = program_calls(ITEMS)
            await write_journal(engine, "bench-replay", calls)
            figures = await resume(engine, "bench-replay", calls, Path(name))
            outcome = Outcome(
                name="replay", title="Resume: Journal.load + EffectRunner.perform replays",
                headline="entries_per_s", figures=figures,
                goals=[Goal("entries_per_s", ">=", GOAL_PER_S)],
                notes=["SQLite; calls prebuilt, so the sandbox RPC time is not included."])
            if outcome.status == "fail":
                outcome.analysis = explain(figures) + await profile(engine, Path(name))
    return [outcome]


def explain(figures: dict[str, Any]) -> list[str]:
    per_entry_us = 1e6 / GOAL_PER_S
    return [
        f"The goal leaves {per_entry_us:.0f} µs per entry for loading and answering it; "
        f"loading took {1e6 / figures['load_per_s']:.1f} µs per entry (SQLite rows read in "
        "table order on the journal's thread, kept as plain tuples by path) and answering "
        f"{1e6 / figures['perform_per_s']:.1f} µs per call (a BLAKE2b of the call's JSON as "
        "its fingerprint, the recorded JSON result parsed); the process spent "
        f"{figures['cpu_us_per_entry']} µs of CPU per entry, and on a shared machine the load "
        "average (in the figures) says how much CPU it could get.",
        f"Resident memory grew by {figures['loaded_rss_mb']} MiB while loading "
        f"{figures['entries']:,} entries (every row held at once, as the driver's tuple; "
        "results are parsed only when replayed, and not kept).",
    ]


async def profile(engine: AsyncEngine, folder: Path) -> list[str]:
    calls = program_calls(PROFILE_ITEMS)
    await write_journal(engine, "bench-replay-profile", calls)
    profiler = cProfile.Profile()
    profiler.enable()
    await resume(engine, "bench-replay-profile", calls, folder)
    profiler.disable()
    return [f"Profile of a resume of {len(calls):,} entries (load and perform):",
            *_profile.summary(profiler)]
