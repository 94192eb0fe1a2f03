"""4. each() with AI calls: wall time of `each()` over N items with a 50 ms model call each.

The calls go the whole real way: the sandboxed program's `ai.generate` crosses the RPC channel to
`EffectRunner.perform` (journal on SQLite), the `ai` integration, `LiteLLMModels` and the scripted
model server, which answers after 50 ms. The server runs in its own process, as a provider would.
The deployment is declared `transport: direct` in a models file (`codegen.direct`: one request
per call on its keep-alive HTTP/1.1 client), as a team running a large job would declare it; the
same program through litellm's Router (the default transport) runs on fewer items beside it, for
comparison.

What is timed: `each_wall_s` runs from the first AI call reaching the worker to the last answer
leaving it (the each() itself); `run_wall_s` is the whole sandboxed run, the child's start and
the program's other lines included. The goal compares `each_wall_s` with the ideal
N x latency / concurrency. Also measured: the calls in flight at once, the CPU time per call of
the worker and of the sandbox child, and each transport's CPU time per call on its own.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import os
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

DEFAULT_ITEMS = 20_000
FULL_ITEMS = 100_000
CONCURRENCY = 64
LATENCY_MS = 50
GOAL_RATIO = 1.2
LITELLM_EACH_ITEMS = 1_000
ALONE_CALLS = 256
DIRECT_ALONE_CALLS = 4_096
PROFILE_ITEMS = 2_048
PRICE_AS = "gpt-4o-mini"
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


class ProcessCPU:
    """CPU seconds of this process's descendants while a block runs, by role: the scripted model
    server, and the sandbox (bwrap and the child). Read from /proc every 0.2 s, since a child's
    own time reaches `os.times()` only if every process between it and us waits for it."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self.start: dict[int, float] = {}

    async def __aenter__(self) -> ProcessCPU:
        self.sample()
        self.start = {pid: cpu for pid, (_, cpu) in self.seen.items()}
        self._task = asyncio.create_task(self._forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        self.sample()

    def seconds(self, role: str) -> float:
        return sum(cpu - self.start.get(pid, 0.0)
                   for pid, (who, cpu) in self.seen.items() if who == role)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.sample()

    def sample(self) -> None:
        for pid, cpu, cmdline in _descendants(os.getpid()):
            role = "server" if "infra.scripted_model" in cmdline else "sandbox"
            self.seen[pid] = (role, cpu)


def _descendants(root: int) -> list[tuple[int, float, str]]:
    """(pid, CPU seconds, command line) of every process under `root`."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    found: list[tuple[int, float, str]] = []
    for pid in parents:
        ancestor = parents.get(pid, 0)
        while ancestor not in (0, 1, root):
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            try:
                cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(
                    errors="replace")
            except OSError:
                cmdline = ""
            found.append((pid, cpu[pid], cmdline))
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


def program(items: int) -> str:
    return PROGRAM.replace("ITEMS", str(items)).replace("CONCURRENCY", str(CONCURRENCY))


class InFlight:
    """The sandbox's handler, counting the calls in flight (the concurrency each() reached) and
    timing the span from the first call's arrival to the last call's answer."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.now = 0
        self.peak = 0
        self.first: float | None = None
        self.last = 0.0

    async def __call__(self, call: EffectCall) -> Any:
        if self.first is None:
            self.first = time.perf_counter()
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await self.handler(call)
        finally:
            self.now -= 1
            self.last = time.perf_counter()

    @property
    def span(self) -> float:
        return self.last - (self.first or self.last)


def models_file(folder: Path, url: str) -> Path:
    """The models file a team would write for this job: the server as a direct deployment."""
    path = folder / "direct-models.yaml"  # not HOME/models.yaml: the litellm runs read HOME
    path.write_text(f"default:\n  - model: openai/scripted\n    api_base: {url}/v1\n"
                    f"    transport: direct\n    price_as: {PRICE_AS}\n")
    return path


def bench_models(folder: Path, url: str, transport: str) -> LiteLLMModels:
    """`direct`: the models file above; `litellm`: the scripted default (litellm's Router)."""
    environ = {"SLUICE_HOME": str(folder), "SLUICE_SCRIPTED_MODEL_URL": url}
    if transport == "direct":
        environ["SLUICE_MODELS_FILE"] = str(models_file(folder, url))
    return LiteLLMModels.from_settings(load_settings(environ, env_file=False))


@asynccontextmanager
async def wired(folder: Path, url: str, run_id: str, *,
                transport: str = "direct") -> AsyncIterator[EffectRunner]:
    """An effect runner wired as `workers.running` wires one, its models warmed up."""
    inner = bench_models(folder, url, transport)
    models = CostedModels(inner)
    settings = load_settings({"SLUICE_HOME": str(folder)}, env_file=False)
    catalog = build_local_catalog(settings, models)
    await inner.complete([_prompt("warm-up")], kind="write")  # imports litellm, prices, connects
    gc.collect()
    gc.freeze()  # as a worker does once warm (workers.settings._freeze_after)
    async with sqlite_engine(folder, f"{run_id}.db") as engine:
        journal = Journal(engine, run_id)
        try:
            yield EffectRunner(run_id=run_id, catalog=catalog, journal=journal)
        finally:
            await journal.close()
            await catalog.aclose()
            await inner.aclose()


def _prompt(tag: str) -> ChatMessage:
    return ChatMessage(role="user", content=f"Summarize item {tag} in one line.")


async def run_each(runner: EffectRunner, items: int) -> dict[str, Any]:
    handler = InFlight(runner.perform)
    async with ProcessCPU() as others:
        cpu, start = cpu_seconds(), time.perf_counter()
        outcome = await run_sandboxed(program(items), manifest=runner.catalog.manifest(),
                                      handler=handler, limits=LIMITS)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if not outcome.ok:
        raise RuntimeError(f"the each() program failed: {outcome.error}")
    ideal = items * LATENCY_MS / 1000 / CONCURRENCY
    return {"items": items, "concurrency": CONCURRENCY, "latency_ms": LATENCY_MS,
            "each_wall_s": round(handler.span, 2), "ideal_s": round(ideal, 2),
            "ratio": round(handler.span / ideal, 2), "run_wall_s": round(wall, 2),
            "run_ratio": round(wall / ideal, 2), "calls_per_s": round(items / handler.span, 1),
            "peak_in_flight": handler.peak, "worker_cpu_ms_per_call": round(cpu / items * 1e3, 3),
            "sandbox_cpu_ms_per_call": round(others.seconds("sandbox") / items * 1e3, 3),
            "server_cpu_ms_per_call": round(others.seconds("server") / items * 1e3, 3),
            "failed_items": len(outcome.failures), "isolation": outcome.isolation}


async def litellm_each(folder: Path, url: str, items: int) -> dict[str, Any]:
    """The same each() through litellm's Router (the default transport), on fewer items."""
    async with wired(folder, url, "bench-each-litellm", transport="litellm") as runner:
        figures = await run_each(runner, items)
    keep = ("items", "each_wall_s", "ratio", "calls_per_s", "worker_cpu_ms_per_call",
            "sandbox_cpu_ms_per_call")
    return {f"litellm_each_{key}": figures[key] for key in keep}


async def layers(runner: EffectRunner, calls: int) -> dict[str, float]:
    """The worker's CPU ms per call, one layer more at a time, 64 calls at a time, without the
    sandbox: the models client alone (the direct transport), then through the catalog and the
    `ai` integration (with `CostedModels`), then through `EffectRunner.perform` (journal)."""
    models = runner.catalog.integrations["ai"].models  # type: ignore[attr-defined]
    steps: dict[str, Callable[[int], Awaitable[Any]]] = {
        "direct_cpu_ms_per_call": lambda i: models.complete([_prompt(f"a{i}")], kind="write"),
        "catalog_ai_cpu_ms_per_call": lambda i: runner.catalog.dispatch(_ai_call(f"c{i}")),
        "effect_runner_cpu_ms_per_call": lambda i: runner.perform(
            _ai_call(f"r{i}", path=f"layers/item#{i}/call#1")),
    }
    figures: dict[str, float] = {}
    for name, step in steps.items():
        figures[name], rate = await _gated(step, calls)
        if name == "direct_cpu_ms_per_call":
            figures["direct_alone_calls_per_s"] = rate
    return figures


def _ai_call(tag: str, *, path: str = "") -> EffectCall:
    return EffectCall(integration="ai", action="generate",
                      args=[f"Summarize item {tag} in one line."], kwargs={}, path=path)


async def _gated(step: Callable[[int], Awaitable[Any]], calls: int) -> tuple[float, float]:
    """CPU ms per call and calls per second of `step`, CONCURRENCY at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            await step(i)

    cpu, start = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - start
    return round(cpu / calls * 1000, 3), round(calls / wall, 1)


async def litellm_alone(folder: Path, url: str) -> dict[str, float]:
    """`LiteLLMModels.complete` through litellm's Router alone, 64 at a time: CPU ms per call
    and calls per second."""
    alone = await _rate(bench_models(folder, url, "litellm"), ALONE_CALLS)
    # The same server under a model name litellm can price: litellm then skips its zero-cost
    # diagnostic, which walks the price map on every call it cannot price.
    priced = LiteLLMModels(primary=scripted_route(url, PRICE_AS, price_as=PRICE_AS))
    priced_cpu, _ = await _rate(priced, ALONE_CALLS)
    return {"litellm_cpu_ms_per_call": alone[0], "litellm_alone_calls_per_s": alone[1],
            "litellm_priced_route_cpu_ms_per_call": priced_cpu}


async def _rate(models: LiteLLMModels, calls: int) -> tuple[float, float]:
    await models.complete([_prompt("warm-up")], kind="write")
    try:
        return await _gated(lambda i: models.complete([_prompt(str(i))], kind="write"), calls)
    finally:
        await models.aclose()


async def run(*, full: bool = False, items: int | None = None) -> list[Outcome]:
    items = items or (FULL_ITEMS if full else DEFAULT_ITEMS)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as name, \
            scripted_model_process(SCENARIO, Path(name)) as url:
        folder = Path(name)
        # Direct first: litellm leaves background work (logging, cost callbacks) behind.
        async with wired(folder, url, "bench-each") as runner:
            figures: dict[str, Any] = {"transport": "direct", **await run_each(runner, items)}
            figures.update(await layers(runner, DIRECT_ALONE_CALLS))
        profiled = await profile(folder, url)
        figures.update(await litellm_each(folder, url, min(items, LITELLM_EACH_ITEMS)))
        figures.update(await litellm_alone(folder, url))
        outcome = Outcome(
            name="each_ai", title="each() over N items, a 50 ms AI call each, concurrency 64",
            headline="ratio", figures=figures, goals=[Goal("ratio", "<=", GOAL_RATIO)],
            notes=[f"N={items:,} (default {DEFAULT_ITEMS:,}, --full {FULL_ITEMS:,}) through a "
                   "`transport: direct` deployment; litellm_each_* is the same program through "
                   f"litellm's Router on {min(items, LITELLM_EACH_ITEMS):,} items. ratio = "
                   "each_wall_s (first AI call in to last answer out, in the worker) / ideal; "
                   "run_ratio times the whole sandboxed run, the child's start included. "
                   "Scripted model in its own process; the worker's CPU time includes the "
                   "transport, the sandbox RPC and the journal."])
        outcome.analysis = explain(figures)
        if outcome.status == "fail":
            outcome.analysis += profiled
    return [outcome]


def explain(figures: dict[str, Any]) -> list[str]:
    """Why the wall time is what it is, in the measured numbers."""
    needed = CONCURRENCY / (LATENCY_MS / 1000)
    budget_ms = 1000 / needed
    cpu_ms = figures["worker_cpu_ms_per_call"]
    direct, catalog = figures["direct_cpu_ms_per_call"], figures["catalog_ai_cpu_ms_per_call"]
    runner = figures["effect_runner_cpu_ms_per_call"]
    machine_ms = cpu_ms + figures["sandbox_cpu_ms_per_call"] + figures["server_cpu_ms_per_call"]
    goal_rate = needed / GOAL_RATIO
    cheapest = min(figures["litellm_cpu_ms_per_call"],
                   figures["litellm_priced_route_cpu_ms_per_call"])
    lines = [
        f"To keep {CONCURRENCY} calls of {LATENCY_MS} ms in flight the worker must finish "
        f"{needed:,.0f} calls/s, i.e. spend at most {budget_ms:.2f} ms of CPU per call (one "
        f"event loop, one core). Through the direct transport it spent {cpu_ms} ms per call; "
        f"each() finished {figures['calls_per_s']:,} calls/s.",
        f"Worker CPU per call by layer (each measured alone, {CONCURRENCY} at a time, no "
        f"sandbox): the direct transport {direct} ms (HTTP and JSON); the "
        f"catalog and the ai integration add {catalog - direct:.3f} ms; EffectRunner and the "
        f"journal add {runner - catalog:.3f} ms; the rest of the {cpu_ms} ms "
        f"({cpu_ms - runner:.3f} ms) is the sandbox RPC on the worker's side.",
        f"Per call the machine also spends {figures['sandbox_cpu_ms_per_call']} ms in the "
        f"sandbox child and {figures['server_cpu_ms_per_call']} ms in the scripted model server: "
        f"{machine_ms:.2f} ms in all, so the goal's {goal_rate:,.0f} calls/s needs "
        f"{machine_ms * goal_rate / 1000:.1f} cores of the {os.cpu_count()} this machine has "
        f"(load average {os.getloadavg()[0]:.1f} at the end, other users included).",
        f"Through litellm's Router (the default transport) the same program finished "
        f"{figures['litellm_each_calls_per_s']} calls/s on {figures['litellm_each_items']:,} "
        f"items (ratio {figures['litellm_each_ratio']}) at "
        f"{figures['litellm_each_worker_cpu_ms_per_call']} ms of worker CPU per call: litellm "
        f"alone costs {figures['litellm_cpu_ms_per_call']} ms per call "
        f"({figures['litellm_priced_route_cpu_ms_per_call']} ms under a model name it can "
        f"price, which skips its zero-cost diagnostic), {cheapest / budget_ms:.0f}x the budget.",
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
