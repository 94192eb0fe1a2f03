"""3b. Replay through the sandbox: a resumed program's journaled calls, end to end.

The `replay` benchmark times the runtime's part of a resume (`Journal.load` and
`EffectRunner.perform` on prebuilt calls). Here a real sandboxed program is resumed: each() over
N items sending an email each, every send already journaled as done, so the whole run is
replay. Measured twice, the same minute: as runs resume (the worker hands the child the recorded
results; the child answers the calls itself and sends them back in batches for the journal to
check and count), and with one awaited round trip per call, as before that. The sandbox's
start-up is included in both.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

from integrations.base import EffectCall
from tests.bench._report import Outcome
from tests.bench._services import cpu_seconds, sqlite_engine
from tests.bench.replay import catalog, write_journal
from workers.effects import EffectRunner
from workers.journal import Journal
from workers.sandbox import SandboxLimits, run_sandboxed

ITEMS = 20_000
LONG_ITEMS = 100_000  # a long job's journal, resumed as runs resume (answered in the child)
CONCURRENCY = 8
LIMITS = SandboxLimits(cpu_s=600, wall_s=600, memory_mb=2048)
MANIFEST: dict[str, Any] = {"integrations": {"mail": {"actions": {"send": "write"}}}}


def program(items: int) -> str:
    return f"""\
def ask(i):
    return mail.send(to=f"p{{i}}@example.com", subject="Your budget",
                     body=f"Hi Person {{i}}, what is your budget?")

sent = each(list(range({items})), ask, concurrency={CONCURRENCY})
print(len(sent))
"""


async def run() -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as name:
        folder = Path(name)
        async with sqlite_engine(folder) as engine:
            await write_journal(engine, "bench-replay-sandbox", await program_calls(ITEMS))
            in_child = await resume(engine, folder, ITEMS, in_child=True)
            one_by_one = await resume(engine, folder, ITEMS, in_child=False)
        async with sqlite_engine(folder, "long.db") as engine:
            await write_journal(engine, "bench-replay-sandbox", await program_calls(LONG_ITEMS))
            long = await resume(engine, folder, LONG_ITEMS, in_child=True)
    figures = {"entries": ITEMS, "concurrency": CONCURRENCY,
               **in_child, **{f"round_trips_{key}": value for key, value in one_by_one.items()},
               **{f"long_{key}": value for key, value in long.items()}}
    return [Outcome(
        name="replay_through_sandbox", title="Resume through the sandbox: replayed calls",
        headline="entries_per_s", figures=figures,
        notes=[f"{ITEMS:,} sends journaled as done, resumed by a sandboxed each() "
               f"(concurrency {CONCURRENCY}); round_trips_* is the same resume with one "
               "awaited round trip per call; long_* resumes a journal of "
               f"{LONG_ITEMS:,} sends: what a long job's resume adds to the lease's expiry "
               "(load_s, then seconds). The sandbox's start-up is included."])]


async def program_calls(items: int) -> list[EffectCall]:
    """The calls the program makes, as the worker receives them (a first run's)."""
    calls: list[EffectCall] = []

    async def record(call: EffectCall) -> str:
        calls.append(call)
        return "<sent>"

    outcome = await run_sandboxed(program(items), manifest=MANIFEST, handler=record,
                                  limits=LIMITS)
    if not outcome.ok:
        raise RuntimeError(f"the program failed: {outcome.error}")
    return calls


async def resume(engine: Any, folder: Path, items: int, *, in_child: bool) -> dict[str, Any]:
    """Load the journal (`load_s`), then resume the program over it (`seconds`, CPU)."""
    gc.collect()
    gc.freeze()  # as a worker does once warm (workers.settings._freeze_after)
    loading = time.perf_counter()
    journal = Journal(engine, "bench-replay-sandbox")
    await journal.load()
    runner = EffectRunner(run_id="bench-replay-sandbox", catalog=catalog(folder),
                          journal=journal)
    cpu, start = cpu_seconds(), time.perf_counter()
    outcome = await run_sandboxed(program(items), manifest=MANIFEST, handler=runner.perform,
                                  limits=LIMITS,
                                  replay=journal.done_results() if in_child else None,
                                  check_replayed=runner.check_replayed)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    await journal.close()
    if not outcome.ok or runner.counts.replayed != items or runner.counts.live:
        raise RuntimeError(f"the resume did not replay every call: {outcome.error} "
                           f"{runner.counts}")
    return {"seconds": round(wall, 3), "load_s": round(start - loading, 3),
            "entries_per_s": round(items / wall),
            "worker_cpu_us_per_entry": round(cpu / items * 1e6, 1),
            "answered_in_child": outcome.replayed}
