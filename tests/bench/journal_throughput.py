"""2. Journal throughput: journaled effects per second, durable (committed), via `Journal.record`.

Two mixes, each with 64 concurrent items yielding to the event loop between effects as a real
call would:
- reads: one non-durable `done` entry per effect, committed in batches by the flusher; the time
  runs until the last one is committed;
- writes: an `intent` committed before the call and a `done` after it, both durable (the caller
  waits for the commit), exactly as `EffectRunner` records a write; group commit shares each
  transaction among the waiting writers.
On SQLite (WAL, as the worker opens it; the journal commits through its own writer thread)
always, and the writes again with `SLUICE_SQLITE_SYNCHRONOUS=full` (an fsync per commit: durable
through a power loss, not only a crash of the process); on Postgres (through the async engine)
in a throwaway database created on the server `DATABASE_URL` names and dropped afterwards, else
on a throwaway cluster with fsync on (tests/_postgres.py) when PostgreSQL is installed.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import JournalRow
from tests import _postgres
from tests.bench import _profile
from tests.bench._report import Goal, Outcome
from tests.bench._services import cpu_seconds, postgres_engine, postgres_url, sqlite_engine
from workers.journal import Journal, JournalEntry

READS = 100_000
WRITES = 40_000
PROFILE_WRITES = 10_000
ITEMS = 64
GOAL_PER_S = 20_000
ROW = {"__row__": ["r", {"Name": "Person", "Email": "person@example.com", "Amount": 1200,
                         "Stage": "qualifiedlead", "Asked": "yes"}]}
Mix = Callable[[AsyncEngine, str, int], Awaitable[dict[str, Any]]]


def read_entry(i: int) -> JournalEntry:
    return JournalEntry(path=f"each#1/item#{i}/call#1", kind="read", call="Sheet.find",
                        request_hash=f"{i:032x}", status="done", result=[ROW])


def write_entry(i: int) -> JournalEntry:
    return JournalEntry(path=f"each#1/item#{i}/call#2", kind="write", call="Sheet.update",
                        request_hash=f"{i:032x}", status="intent")


async def reader(journal: Journal, numbers: range) -> None:
    for i in numbers:
        await asyncio.sleep(0)  # the call this entry records
        await journal.record(read_entry(i), durable=False)


async def writer(journal: Journal, numbers: range, latencies: list[float]) -> None:
    for i in numbers:
        start = time.perf_counter()
        entry = write_entry(i)
        await journal.record(entry, durable=True)
        await asyncio.sleep(0)  # the call itself
        entry.status, entry.result = "done", ROW
        await journal.record(entry, durable=True)
        latencies.append(time.perf_counter() - start)


async def reads(engine: AsyncEngine, run_id: str, count: int = READS) -> dict[str, Any]:
    journal = Journal(engine, run_id)
    cpu, start = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(reader(journal, range(k, count, ITEMS)) for k in range(ITEMS)))
    # Wait for the commit of everything recorded: a last durable entry is committed after (or
    # with) every entry before it, so the time stops at the last commit (see NOTE).
    await journal.record(read_entry(count), durable=True)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    await journal.close()
    return {**_common(count, elapsed, cpu, journal.commits, count),
            "committed_rows": await committed(engine, run_id) - 1}


async def writes(engine: AsyncEngine, run_id: str, count: int = WRITES) -> dict[str, Any]:
    journal = Journal(engine, run_id)
    latencies: list[float] = []
    cpu, start = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(writer(journal, range(k, count, ITEMS), latencies)
                           for k in range(ITEMS)))
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    await journal.close()
    cuts = statistics.quantiles(latencies, n=100)
    return {**_common(count, elapsed, cpu, journal.commits, 2 * count),
            "write_latency_p50_ms": round(cuts[49] * 1000, 2),
            "write_latency_p99_ms": round(cuts[98] * 1000, 2),
            "committed_rows": await committed(engine, run_id)}


def _common(count: int, elapsed: float, cpu: float, commits: int,
            entries: int) -> dict[str, Any]:
    commits = max(commits, 1)
    return {"effects": count, "seconds": round(elapsed, 3),
            "effects_per_s": round(count / elapsed), "commits": commits,
            "entries_per_commit": round(entries / commits, 1),
            "ms_per_commit": round(elapsed / commits * 1000, 2),
            "process_cpu_s": round(cpu, 2),
            "cpu_us_per_effect": round(cpu / count * 1e6, 1)}


async def committed(engine: AsyncEngine, run_id: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).where(JournalRow.run_id == run_id))
    return int(count or 0)


def fsync_ms(folder: Path, rounds: int = 50) -> float:
    """The median time to write 4 KiB and fsync it, in `folder`: the disk's commit floor."""
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return round(statistics.median(times) * 1000, 3)


async def on(engine: AsyncEngine, database: str, run_prefix: str,
             extra: dict[str, Any]) -> list[Outcome]:
    """Both mixes on `engine`; `extra` figures (the disk's fsync time) go with each. The goal is
    the issue's, on SQLite; Postgres is measured beside it."""
    goal = [Goal("effects_per_s", ">=", GOAL_PER_S)] if database == "sqlite" else []
    results = [
        Outcome(name=f"journal_{database}_reads", headline="effects_per_s", goals=goal,
                title=f"Journaled reads on {database}, batched, {ITEMS} items at once",
                figures={**await reads(engine, f"{run_prefix}-reads"), **extra}, notes=[NOTE]),
        Outcome(name=f"journal_{database}_writes", headline="effects_per_s", goals=goal,
                title=f"Journaled writes on {database}, intent + done durable, {ITEMS} writers",
                figures={**await writes(engine, f"{run_prefix}-writes"), **extra}),
    ]
    for outcome, mix in zip(results, (reads, writes), strict=True):
        if outcome.status == "fail":
            outcome.analysis = explain(outcome.figures) + await profile(
                engine, mix, f"{run_prefix}-profile-{outcome.name}")
    return results


def explain(figures: dict[str, Any]) -> list[str]:
    busy = figures["process_cpu_s"] / figures["seconds"]
    lines = [f"{figures['commits']:,} commits of {figures['entries_per_commit']} entries, "
             f"{figures['ms_per_commit']} ms each; this process spent "
             f"{figures['cpu_us_per_effect']} µs of CPU per effect and was on CPU {busy:.0%} "
             "of the wall time (its SQLite writer thread included; on a shared machine the "
             "load average, in the figures, says how much CPU it could get).",
             f"{GOAL_PER_S:,} effects/s leaves {1e6 / GOAL_PER_S:.0f} µs of wall time per "
             "effect for the event loop and the writer thread together (they overlap only "
             "where SQLite runs without the GIL)."]
    if "fsync_ms" in figures:
        lines.append(f"The disk's fsync takes {figures['fsync_ms']} ms (median), and in WAL mode "
                     "with synchronous=NORMAL a commit does not wait for one, so the commits are "
                     "bound by the CPU spent per commit, not by the disk.")
    if "write_latency_p50_ms" in figures:
        per_commit = figures["entries_per_commit"]
        lines.append(f"A write waits for two commits (intent, then done); one commit runs at a "
                     f"time while the next batch gathers, so writes/s is about {per_commit / 2:g}"
                     " (entries per commit / 2) / commit time.")
    return lines


async def profile(engine: AsyncEngine, mix: Mix, run_id: str) -> list[str]:
    count = PROFILE_WRITES
    profiler = cProfile.Profile()
    profiler.enable()
    await mix(engine, run_id, count)
    profiler.disable()
    return [f"Profile of {count:,} effects of the same mix (the event-loop thread only: its "
            "epoll wait is mostly the database running the SQL, in the journal's SQLite writer "
            "thread or the Postgres server):",
            *_profile.summary(profiler)]


async def run() -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as folder:
        floor = {"fsync_ms": fsync_ms(Path(folder))}
        async with sqlite_engine(Path(folder)) as engine:
            results = await on(engine, "sqlite", "bench", floor)
        async with sqlite_engine(Path(folder), "full.db", synchronous="full") as engine:
            results.append(Outcome(
                name="journal_sqlite_full_writes", headline="effects_per_s",
                title=f"Journaled writes on SQLite with synchronous=FULL (through a power loss), "
                      f"{ITEMS} writers",
                figures={**await writes(engine, "bench-full-writes"), **floor}))
    return results + await on_postgres()


NOTE = ("This mix ends with one durable entry, committed after (or with) all the others, and "
        "stops the clock when it is acknowledged; Journal.close() then has nothing left to do.")


async def on_postgres() -> list[Outcome]:
    url = postgres_url()
    if url is not None:
        async with postgres_engine(url) as engine:
            return await on(engine, "postgres", "bench", {"server": "DATABASE_URL"})
    why = _postgres.available()
    if why is not None:
        return [Outcome(name=f"journal_postgres_{mix}", title=f"Journaled {mix} on Postgres",
                        skipped=f"DATABASE_URL does not name a Postgres database and {why}")
                for mix in ("reads", "writes")]
    with _postgres.postgres_server(durable=True) as admin_url:
        async with postgres_engine(admin_url) as engine:
            return await on(engine, "postgres", "bench",
                            {"server": "throwaway cluster on a unix socket, fsync on"})
