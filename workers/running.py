"""The `run_program` job: run an approved plan in the sandbox and report back.

ARCHITECTURE.md, "The sandbox holds no secrets": the program reaches integrations only through
`handle_call`, here in the worker, which holds the credentials.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from core.events import publish
from core.jobs import RunProgramJob
from core.types import EventKind, JobEvent, Progress, Run, RunResult, RunState, utcnow
from integrations.base import EffectCall
from integrations.catalog import Catalog, build_local_catalog
from workers.deps import Deps, MeteredModels
from workers.sandbox import ProgressTick, SandboxLimits, SandboxOutcome, run_sandboxed
from workers.summary import run_summary

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5


class RunContext:
    """One run's live state: counts of effects, spend, and throttled progress reports."""

    def __init__(self, deps: Deps, run: Run, catalog: Catalog, models: MeteredModels) -> None:
        self.deps = deps
        self.run = run
        self.catalog = catalog
        self.models = models
        self.started = time.monotonic()
        self.reads: dict[str, int] = {}
        self.writes: dict[str, int] = {}
        self.last_report = 0.0
        self.progress = Progress()

    async def handle_call(self, call: EffectCall) -> Any:
        key = f"{call.handle[1] if call.handle else call.integration}.{call.action}"
        counts = self.writes if self.catalog.effect_of(call) == "write" else self.reads
        result = await self.catalog.dispatch(call)
        counts[key] = counts.get(key, 0) + 1
        return result

    async def on_progress(self, tick: ProgressTick) -> None:
        self.progress = Progress(loop=tick.loop, done=tick.done, failed=tick.failed,
                                 total=tick.total, elapsed_s=round(self.elapsed(), 2),
                                 cost_usd=self.models.cost_usd or 0.0)
        now = time.monotonic()
        finished = tick.total is not None and tick.done + tick.failed >= tick.total
        if now - self.last_report < PROGRESS_EVERY_S and not finished:
            return
        self.last_report = now
        await self.deps.store.update_run(self.run.id, progress=self.progress)
        event = JobEvent(kind=EventKind.PROGRESS, thread_id=self.run.thread_id,
                         run_id=self.run.id, progress=self.progress)
        await publish(self.deps.redis, event)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def result(self, outcome: SandboxOutcome) -> RunResult:
        items = self.progress.done + self.progress.failed if self.progress.total is not None \
            else None
        seconds = round(self.elapsed(), 2)
        summary = run_summary(writes=self.writes, items_done=items, failures=len(outcome.failures),
                              seconds=seconds, model_calls=self.models.calls,
                              cost_usd=self.models.cost_usd)
        return RunResult(summary=summary, writes=self.writes, reads=self.reads,
                         model_calls=self.models.calls, cost_usd=self.models.cost_usd or 0.0,
                         seconds=seconds, output=outcome.output, table_rows=outcome.table_rows,
                         failures=outcome.failures)


async def run_program(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """arq job: run an approved plan's program and post the result to its thread."""
    deps: Deps = ctx["deps"]
    job = RunProgramJob.model_validate(payload)
    run = await deps.store.get_run(job.run_id)
    if run.state != RunState.QUEUED:
        log.info("↻ run_program %s already %s; nothing to do", run.id, run.state)
        return run.state
    plan = await deps.store.get_plan(run.plan_id)
    models = MeteredModels(deps.models)
    catalog = build_local_catalog(deps.settings, models)
    live = RunContext(deps, run, catalog, models)
    limits = SandboxLimits.from_settings(deps.settings)
    await deps.store.update_run(run.id, state=RunState.RUNNING, started_at=utcnow())
    log.info("→ run_program %s (plan %s, first %s)", run.id, plan.id, run.limit_items or "all")
    await publish(deps.redis, JobEvent(kind=EventKind.RUN_STARTED, thread_id=run.thread_id,
                                       run_id=run.id, plan_id=plan.id))
    outcome = await run_sandboxed(plan.program, manifest=catalog.manifest(),
                                  handler=live.handle_call, limits=limits,
                                  limit_items=run.limit_items, on_progress=live.on_progress,
                                  isolation=deps.settings.sandbox_isolation)
    return await _finish(deps, live, outcome)


async def _finish(deps: Deps, live: RunContext, outcome: SandboxOutcome) -> str:
    run, result = live.run, live.result(outcome)
    if outcome.table_csv is not None:
        result.table = await deps.store.add_attachment(
            run.thread_id, name=f"{run.id}.csv", content_type="text/csv",
            data=outcome.table_csv.encode())
    state = RunState.SUCCEEDED if outcome.ok else RunState.FAILED
    error = None if outcome.ok else _error_text(outcome)
    await deps.store.update_run(run.id, state=state, result=result, error=error,
                                isolation=outcome.isolation, progress=live.progress,
                                finished_at=utcnow())
    kind = EventKind.RUN_FINISHED if outcome.ok else EventKind.RUN_FAILED
    await publish(deps.redis, JobEvent(kind=kind, thread_id=run.thread_id, run_id=run.id,
                                       text=error or result.summary, progress=live.progress))
    log.info("← run_program %s %s in %.2f s", run.id, state, result.seconds)
    return state


def _error_text(outcome: SandboxOutcome) -> str:
    if outcome.killed_reason:
        return f"The program was stopped: {outcome.killed_reason}."
    error = outcome.error or {}
    where = f" (line {error['line']})" if error.get("line") else ""
    return f"The program failed{where}: {error.get('message', 'unknown error')}"
