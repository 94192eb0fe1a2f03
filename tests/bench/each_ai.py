"""4. each() with AI calls: wall time of `each()` over N items with a 50 ms model call each.

The calls go the whole real way: the sandboxed program's `ai.generate` crosses the RPC channel to
`EffectRunner.perform` (journal on SQLite), the `ai` integration, `LiteLLMModels` (litellm's
Router over HTTP) and the scripted model server, which answers after 50 ms. The server runs in
its own process, as a provider would. The goal compares the wall time with the ideal
N x latency / concurrency. Also measured: the calls really in flight at once, the worker's CPU
time per call, and litellm's CPU time per call on its own.
"""

from __future__ import annotations

import asyncio
import cProfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from codegen.models import LiteLLMModels, scripted_route
from core.protocols import ChatMessage
from core.settings import load_settings
from integrations.base import EffectCall
from integrations.catalog import build_local_catalog
from tests.bench import _profile
from tests.bench._report import Goal, Outcome
from tests.bench._services import cpu_seconds, scripted_model_process, sqlite_engine
from workers import _sandbox_loops
from workers.effects import CostedModels, EffectRunner
from workers.journal import Journal
from workers.sandbox import SandboxLimits, run_sandboxed

DEFAULT_ITEMS = 1_000
FULL_ITEMS = 100_000
CONCURRENCY = 64
LATENCY_MS = 50
GOAL_RATIO = 1.2
LITELLM_ALONE_CALLS = 256
PROFILE_ITEMS = 128
SCENARIO: dict[str, Any] = {"rules": [{"match": "^Summarize item", "delay_ms": LATENCY_MS,
                                       "response": "One line about the item."}]}
LIMITS = SandboxLimits(cpu_s=3600, wall_s=7200, memory_mb=2048)
PROGRAM = """\
items = list(range(ITEMS))

def summarize(i):
    return ai.generate(f"Summarize item {i} in one line.")

answers = each(items, summarize, concurrency=CONCURRENCY)
print(sum(1 for answer in answers if answer))
"""
Handler = Callable[[EffectCall], Awaitable[Any]]


def program(items: int) -> str:
    return PROGRAM.replace("ITEMS", str(items)).replace("CONCURRENCY", str(CONCURRENCY))


class InFlight:
    """The sandbox's handler, counting the calls in flight: the concurrency each() reached."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.now = 0
        self.peak = 0

    async def __call__(self, call: EffectCall) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await self.handler(call)
        finally:
            self.now -= 1


@asynccontextmanager
async def wired(folder: Path, url: str, run_id: str) -> AsyncIterator[EffectRunner]:
    """An effect runner wired as `workers.running` wires one, its models warmed up."""
    settings = load_settings({"SLUICE_HOME": str(folder), "SLUICE_SCRIPTED_MODEL_URL": url},
                             env_file=False)
    inner = LiteLLMModels.from_settings(settings)
    models = CostedModels(inner)
    catalog = build_local_catalog(settings, models)
    await inner.complete([_prompt("warm-up")], kind="write")  # imports litellm, builds the Router
    async with sqlite_engine(folder, f"{run_id}.db") as engine:
        journal = Journal(engine, run_id)
        try:
            yield EffectRunner(run_id=run_id, catalog=catalog, journal=journal)
        finally:
            await journal.close()
            await catalog.aclose()
            inner.close()


def _prompt(tag: str) -> ChatMessage:
    return ChatMessage(role="user", content=f"Summarize item {tag} in one line.")


async def run_each(runner: EffectRunner, items: int) -> dict[str, Any]:
    handler = InFlight(runner.perform)
    cpu, start = cpu_seconds(), time.perf_counter()
    outcome = await run_sandboxed(program(items), manifest=runner.catalog.manifest(),
                                  handler=handler, limits=LIMITS)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if not outcome.ok:
        raise RuntimeError(f"the each() program failed: {outcome.error}")
    ideal = items * LATENCY_MS / 1000 / CONCURRENCY
    return {"items": items, "concurrency": CONCURRENCY, "latency_ms": LATENCY_MS,
            "wall_s": round(wall, 2), "ideal_s": round(ideal, 2), "ratio": round(wall / ideal, 2),
            "calls_per_s": round(items / wall, 1), "peak_in_flight": handler.peak,
            "worker_cpu_ms_per_call": round(cpu / items * 1000, 2),
            "failed_items": len(outcome.failures), "isolation": outcome.isolation}


async def litellm_alone(url: str, calls: int) -> dict[str, float]:
    """`LiteLLMModels.complete` alone, 64 at a time: CPU ms per call and calls per second."""
    settings = load_settings({"SLUICE_HOME": "/nonexistent", "SLUICE_SCRIPTED_MODEL_URL": url},
                             env_file=False)
    alone = await _litellm_rate(LiteLLMModels.from_settings(settings), calls)
    # The same server under a model name litellm can price: litellm then skips its zero-cost
    # diagnostic, which walks the price map on every call it cannot price.
    priced = LiteLLMModels(primary=scripted_route(url, "gpt-4o-mini", price_as="gpt-4o-mini"))
    priced_cpu, _ = await _litellm_rate(priced, calls)
    return {"litellm_cpu_ms_per_call": alone[0], "litellm_alone_calls_per_s": alone[1],
            "litellm_priced_route_cpu_ms_per_call": priced_cpu}


async def _litellm_rate(models: LiteLLMModels, calls: int) -> tuple[float, float]:
    await models.complete([_prompt("warm-up")], kind="write")
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            await models.complete([_prompt(str(i))], kind="write")

    cpu, start = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - start
    models.close()
    return round(cpu / calls * 1000, 2), round(calls / wall, 1)


async def run(*, full: bool = False, items: int | None = None) -> list[Outcome]:
    items = items or (FULL_ITEMS if full else DEFAULT_ITEMS)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as name, \
            scripted_model_process(SCENARIO, Path(name)) as url:
        async with wired(Path(name), url, "bench-each") as runner:
            figures = await run_each(runner, items)
        figures.update(await litellm_alone(url, LITELLM_ALONE_CALLS))
        outcome = Outcome(
            name="each_ai", title="each() over N items, a 50 ms AI call each, concurrency 64",
            headline="ratio", figures=figures, goals=[Goal("ratio", "<=", GOAL_RATIO)],
            notes=[f"N={items:,} (default {DEFAULT_ITEMS:,}, --full {FULL_ITEMS:,}); "
                   "scripted model in its own process; the worker's CPU time includes litellm, "
                   "the sandbox RPC and the journal."])
        if outcome.status == "fail":
            outcome.analysis = explain(figures) + await profile(Path(name), url)
    return [outcome]


def explain(figures: dict[str, Any]) -> list[str]:
    """Why the wall time is what it is, in the measured numbers."""
    needed = CONCURRENCY / (LATENCY_MS / 1000)
    budget_ms = 1000 / needed
    cpu_ms = figures["worker_cpu_ms_per_call"]
    busy = cpu_ms * figures["calls_per_s"] / 1000
    cheapest = min(figures["litellm_cpu_ms_per_call"],
                   figures["litellm_priced_route_cpu_ms_per_call"])
    lines = [
        f"To keep {CONCURRENCY} calls of {LATENCY_MS} ms in flight the worker must finish "
        f"{needed:,.0f} calls/s, i.e. spend at most {budget_ms:.2f} ms of CPU per call (one "
        f"event loop, one core). It spent {cpu_ms} ms per call, "
        f"{figures['litellm_cpu_ms_per_call']} ms of it in litellm alone (measured without the "
        f"sandbox; litellm alone managed {figures['litellm_alone_calls_per_s']} calls/s at "
        f"concurrency {CONCURRENCY}). The run finished {figures['calls_per_s']} calls/s with "
        f"the worker on CPU {busy:.0%} of the time; the rest it waited for the sandbox's item "
        "threads and for the other processes sharing this machine's cores.",
        "The scripted route is priced by Sluice (price_as), not by litellm, so litellm also "
        "runs its zero-cost diagnostic on every answer (zero_cost_diagnostic in the profile "
        "below); under a model name litellm can price, the same calls cost "
        f"{figures['litellm_priced_route_cpu_ms_per_call']} ms of CPU each. Either way litellm "
        f"alone needs {cheapest / budget_ms:.0f}x the CPU budget per call: one worker process "
        "cannot drive this concurrency through litellm.",
    ]
    if figures["peak_in_flight"] < CONCURRENCY:
        lines.append(
            f"each() reached {figures['peak_in_flight']} calls in flight of {CONCURRENCY} asked: "
            f"the sandbox child runs at most {_sandbox_loops.MAX_THREADS} helper threads "
            "(workers/_sandbox_loops.py MAX_THREADS) besides the calling one.")
    return lines


async def profile(folder: Path, url: str) -> list[str]:
    """A cProfile summary of the worker during a short run."""
    async with wired(folder, url, "bench-each-profile") as runner:
        profiler = cProfile.Profile()
        profiler.enable()
        await run_each(runner, PROFILE_ITEMS)
        profiler.disable()
    return [f"Worker process, {PROFILE_ITEMS} items:", *_profile.summary(profiler)]
