"""Sample runs for the planner (ARCHITECTURE.md, "Preview before spending").

`SandboxExecutor` is the `core.protocols.ProgramExecutor` that `codegen`'s planner is handed. It
runs a program in the sandbox on the first few items of its loops, in preview mode: reads and AI
calls happen for real, each write is described by its connector ("email to ana@…", "update
signups row-3: Budget: empty → 5000") and answered with what it would have returned, and
nothing is journaled. It measures what the estimate needs: seconds, tokens, model calls and
dollars per item, and the time outside the items' work.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from core.protocols import Completion, ModelClient
from core.settings import Settings
from core.store import Store
from core.types import SampleRun, WritePreview
from integrations.base import EffectCall
from integrations.catalog import Catalog
from integrations.kept import KeptConnections
from integrations.registry import build_catalog
from workers.effects import CostedModels, call_key, model_answers, runtime_now, spent
from workers.sandbox import ProgressTick, SandboxLimits, SandboxOutcome, run_sandboxed

log = logging.getLogger(__name__)
TABLE_ROWS_SHOWN = 10
WRITES_KEPT = 50
# "each#1/item#3/call#2" or "for@4/iter#0/…": the top-level loop item a call belongs to.
_ITEM = re.compile(r"^((?:each#\d+|for@\d+)/(?:item|iter)#\d+)/")


@dataclass
class _Item:
    seconds: float = 0.0
    cost: float = 0.0
    tokens: int = 0
    model_calls: int = 0


@dataclass
class SampleHandler:
    """The sandbox's call handler for a sample run: reads live, writes previewed, all measured."""

    catalog: Catalog
    writes: list[WritePreview] = field(default_factory=list)
    write_counts: dict[str, int] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)
    items: dict[str, _Item] = field(default_factory=dict)
    loop_span: list[float] = field(default_factory=list)  # first start, last end of item calls
    cost: float = 0.0

    async def perform(self, call: EffectCall) -> Any:
        if call.integration == "runtime":
            return runtime_now()
        key = call_key(call)
        started = time.monotonic()
        with model_answers() as answers:
            if self.catalog.effect_of(call) == "write":
                result = await self._preview(call, key)
            else:
                self.reads[key] = self.reads.get(key, 0) + 1
                result = await self.catalog.dispatch(call)
        self._measure(call.path, started, time.monotonic(), answers)
        return result

    async def _preview(self, call: EffectCall, key: str) -> Any:
        preview = await self.catalog.preview(call)
        self.write_counts[key] = self.write_counts.get(key, 0) + 1
        if len(self.writes) < WRITES_KEPT:
            self.writes.append(WritePreview(action=key, text=preview.text,
                                            details=preview.details, path=call.path))
        return preview.result

    def _measure(self, path: str, started: float, ended: float,
                 answers: list[Completion]) -> None:
        self.cost += spent(answers)
        match = _ITEM.match(path)
        if match is None:
            return
        item = self.items.setdefault(match.group(1), _Item())
        item.seconds += ended - started
        item.cost += spent(answers)
        item.tokens += sum(a.prompt_tokens + a.completion_tokens for a in answers)
        item.model_calls += len(answers)
        if not self.loop_span:
            self.loop_span[:] = [started, ended]
        self.loop_span[0] = min(self.loop_span[0], started)
        self.loop_span[1] = max(self.loop_span[1], ended)


class SandboxExecutor:
    """Sample runs in the workers' sandbox, with the worker's integrations and models."""

    def __init__(self, *, settings: Settings, store: Store, models: ModelClient,
                 kept: KeptConnections | None = None) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.kept = kept  # the worker's open connections (MCP servers, mail accounts)

    async def sample(self, program: str, *, thread_id: str | None, items: int) -> SampleRun:
        """Run `program` on the first `items` items of its loops, writes only previewed."""
        settings = self.settings
        models = CostedModels(self.models)
        catalog = await build_catalog(settings, models, engine=self.store.engine,
                                      thread_id=thread_id, kept=self.kept)
        handler = SampleHandler(catalog)
        ticks: dict[str, ProgressTick] = {}

        async def on_progress(tick: ProgressTick) -> None:
            ticks[tick.loop] = tick

        state: dict[str, str] = {}  # JSON text by name, as kept
        if thread_id is not None:
            state, _summaries = await self.store.thread_state(thread_id)
        limits = SandboxLimits.from_settings(settings).model_copy(
            update={"wall_s": settings.plan_sample_wall_s})
        started = time.monotonic()  # the whole of it, the sandbox's start included
        try:
            outcome = await run_sandboxed(
                program, manifest=catalog.manifest(), handler=handler.perform, limits=limits,
                preview=True, limit_items=items, on_progress=on_progress,
                isolation=settings.sandbox_isolation, state=state,
                seed=zlib.crc32(program.encode()))
        finally:
            await catalog.aclose()
        return sample_of(outcome, handler, ticks, models,
                         seconds=time.monotonic() - started)


def sample_of(outcome: SandboxOutcome, handler: SampleHandler, ticks: dict[str, ProgressTick],
              models: CostedModels, *, seconds: float) -> SampleRun:
    """The planner's view of a sample run that took `seconds` from spawn to exit."""
    main = max(ticks.values(), key=lambda t: (t.available or t.total or 0), default=None)
    measured = list(handler.items.values())
    loop_s = handler.loop_span[1] - handler.loop_span[0] if handler.loop_span else 0.0
    table, rows = _table(outcome.table_csv)
    return SampleRun(
        items=(main.done + main.failed) if main else 0,
        available=main.available if main else None,
        failed=main.failed if main else 0,
        output=outcome.output, table=table, table_rows=rows, writes=handler.writes,
        write_counts=handler.write_counts, reads=handler.reads,
        model_calls=models.calls, tokens=models.tokens,
        cost_usd=None if models.unknown_price else handler.cost,
        seconds=round(seconds, 3),
        item_seconds=[round(i.seconds, 4) for i in measured],
        item_costs=[i.cost for i in measured], item_tokens=[i.tokens for i in measured],
        item_model_calls=[i.model_calls for i in measured],
        fixed_seconds=round(max(0.0, seconds - loop_s), 3),
        error=None if outcome.ok else _error_text(outcome), failures=outcome.failures)


def _table(table_csv: str | None) -> tuple[list[dict[str, Any]], int | None]:
    if table_csv is None:
        return [], None
    rows = list(csv.DictReader(io.StringIO(table_csv)))
    return rows[:TABLE_ROWS_SHOWN], len(rows)


def _error_text(outcome: SandboxOutcome) -> str:
    if outcome.killed_reason:
        return f"The program was stopped: {outcome.killed_reason}."
    error = outcome.error or {}
    where = f"line {error['line']}: " if error.get("line") else ""
    return f"{where}{error.get('type', 'Error')}: {error.get('message', 'unknown error')}"

