"""The `run_program` job: run an approved plan in the sandbox, durably, and report back.

ARCHITECTURE.md, "Durable execution by journal and replay" and "The sandbox holds no secrets":
the program reaches integrations only through `EffectRunner.perform`, here in the worker, which
journals every effect. A job that dies is run again from the top (by arq, or by the lease
sweeper on any worker); journaled effects replay without calling out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import zlib
from typing import Any

from core.events import publish
from core.jobs import RunProgramJob
from core.types import EventKind, JobEvent, Plan, Progress, Run, RunResult, RunState, utcnow
from integrations.registry import build_catalog
from workers.deps import Deps
from workers.effects import CostedModels, EffectRunner, StopReason
from workers.journal import Journal
from workers.sandbox import ProgressTick, SandboxLimits, SandboxOutcome, run_sandboxed
from workers.summary import estimate_vs_actual, run_summary, unconfirmed_note

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5
WORKER_ID = f"{socket.gethostname()}-{os.getpid()}"


class RunContext:
    """One run's live state: the effect runner, spend, and throttled progress reports."""

    def __init__(self, deps: Deps, run: Run, runner: EffectRunner, models: CostedModels, *,
                 owner: str) -> None:
        self.deps = deps
        self.run = run
        self.owner = owner  # this attempt's name on the run's lease
        self.runner = runner
        self.models = models
        self.started = time.monotonic()
        self.last_report = 0.0
        self.progress = Progress()
        self.stopping = asyncio.Event()

    async def on_progress(self, tick: ProgressTick) -> None:
        visited = tick.done + tick.failed
        self.progress = Progress(loop=tick.loop, done=tick.done, failed=tick.failed,
                                 total=tick.total, elapsed_s=round(self.elapsed(), 2),
                                 cost_usd=round(self.runner.counts.spent_usd, 6),
                                 price_unknown=self.models.unknown_price,
                                 per_item_s=round(tick.elapsed_s / visited, 4) if visited else None)
        now = time.monotonic()
        finished = tick.total is not None and tick.done + tick.failed >= tick.total
        if now - self.last_report < PROGRESS_EVERY_S and not finished:
            return
        self.last_report = now
        await self.deps.store.update_run(self.run.id, progress=self.progress,
                                         spent_usd=self.runner.counts.spent_usd)
        event = JobEvent(kind=EventKind.PROGRESS, thread_id=self.run.thread_id,
                         run_id=self.run.id, progress=self.progress)
        await publish(self.deps.redis, event)

    async def watch(self) -> None:
        """Renew the lease and notice a cancel request, until `stopping` is set.

        It is stopped by that event, not cancelled, so no database write is cut half-way. When
        the lease is found in another attempt's name (it expired, say while the database was
        unreachable, and the sweeper handed the run on), this attempt stops asking for effects:
        the other one replays the journal and carries on, so two never run the program at once.
        """
        ttl = self.deps.settings.lease_ttl_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ttl / 3):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            try:
                if not await self.deps.store.renew_lease(self.run.id, owner=self.owner,
                                                         ttl_s=ttl):
                    log.warning("run %s: its lease went to another attempt; this one stops",
                                self.run.id)
                    self.runner.request_stop(StopReason.LEASE_LOST,
                                             "Another attempt of this run took it over.")
                    return
                self.runner.cancel_requested = await self.deps.store.cancel_requested(self.run.id)
            except Exception as exc:  # a busy or restarting database: try again next beat
                log.warning("run %s: could not renew its lease (%s); retrying", self.run.id,
                            type(exc).__name__)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def result(self, outcome: SandboxOutcome) -> RunResult:
        counts = self.runner.counts
        items = self.progress.done + self.progress.failed if self.progress.total is not None \
            else None
        seconds = round(self.elapsed(), 2)
        cost = None if self.models.unknown_price else counts.spent_usd
        summary = run_summary(writes=counts.writes, items_done=items,
                              failures=len(outcome.failures), seconds=seconds,
                              model_calls=self.models.calls, cost_usd=cost)
        if note := unconfirmed_note(checked=counts.writes_checked,
                                    confirmed=counts.writes_confirmed,
                                    redone=counts.writes_redone):
            summary += " " + note
        return RunResult(summary=summary, writes=counts.writes, reads=counts.reads,
                         replayed=counts.replayed, writes_redone=counts.writes_redone,
                         writes_checked=counts.writes_checked,
                         writes_confirmed=counts.writes_confirmed,
                         model_calls=self.models.calls, cost_usd=counts.spent_usd,
                         seconds=seconds, output=outcome.output, table_rows=outcome.table_rows,
                         failures=outcome.failures,
                         saved_variables=sorted(outcome.variables),
                         unsaved_variables=outcome.unsaved)


async def run_program(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """arq job: run (or resume) an approved plan's program and post the result to its thread."""
    deps: Deps = ctx["deps"]
    job = RunProgramJob.model_validate(payload)
    run = await deps.store.get_run(job.run_id)
    if run.state not in (RunState.QUEUED, RunState.RUNNING):
        log.info("↻ run_program %s is %s; nothing to do", run.id, run.state)
        return run.state
    # One name per attempt, not per worker: a second attempt of the run in this same worker
    # (re-enqueued by a sweeper while the first still ran) must not share the first's lease.
    owner = f"{WORKER_ID}-{uuid.uuid4().hex[:8]}"
    if not await deps.store.acquire_lease(run.id, owner=owner, ttl_s=deps.settings.lease_ttl_s):
        log.info("↻ run_program %s is leased by another attempt", run.id)
        return "leased"
    deps.runs_going += 1  # the start-up warm-ups wait for none (workers.settings)
    try:
        return await _run_leased(deps, run, owner)
    finally:
        deps.runs_going -= 1
        await deps.store.release_lease(run.id, owner=owner)


async def _run_leased(deps: Deps, run: Run, owner: str) -> str:
    plan = await deps.store.get_plan(run.plan_id)
    models = CostedModels(deps.models)
    catalog = await build_catalog(deps.settings, models, engine=deps.store.engine,
                                  thread_id=run.thread_id, kept=deps.kept)
    journal = Journal(deps.store.engine, run.id)
    replaying = await journal.load()
    runner = EffectRunner(run_id=run.id, catalog=catalog, journal=journal,
                          budget_usd=run.budget_usd)
    runner.counts.spent_usd = runner.replayed_spend()
    live = RunContext(deps, run, runner, models, owner=owner)
    await deps.store.update_run(run.id, state=RunState.RUNNING, started_at=utcnow())
    verb = f"resuming from {replaying} journaled effects" if replaying else "starting"
    log.info("→ run_program %s (plan %s, first %s): %s", run.id, plan.id,
             run.limit_items or "all", verb)
    await publish(deps.redis, JobEvent(kind=EventKind.RUN_STARTED, thread_id=run.thread_id,
                                       run_id=run.id, plan_id=plan.id, text=verb))
    watcher = asyncio.create_task(live.watch())
    try:
        outcome = await _sandbox(deps, run, plan, live)
    finally:
        live.stopping.set()
        with contextlib.suppress(Exception):
            await watcher
        await journal.close()
        await catalog.aclose()
    return await _finish(deps, live, outcome, plan)


async def _sandbox(deps: Deps, run: Run, plan: Plan, live: RunContext) -> SandboxOutcome:
    state, _summaries = await deps.store.thread_state(run.thread_id)
    return await run_sandboxed(
        plan.program, manifest=live.runner.catalog.manifest(), handler=live.runner.perform,
        limits=SandboxLimits.from_settings(deps.settings), limit_items=run.limit_items,
        on_progress=live.on_progress, isolation=deps.settings.sandbox_isolation,
        state=state, seed=zlib.crc32(run.id.encode()), only_items=run.only_items,
        replay=live.runner.journal.done_results(), check_replayed=live.runner.check_replayed)


async def _finish(deps: Deps, live: RunContext, outcome: SandboxOutcome, plan: Plan) -> str:
    stop = live.runner.stop
    if stop is not None and stop.reason == StopReason.LEASE_LOST:
        log.info("↷ run_program %s: left to the attempt that holds its lease", live.run.id)
        return "lease lost"
    if stop is not None and stop.reason in (StopReason.BUDGET, StopReason.UNCERTAIN_WRITE):
        return await _wait_for_person(deps, live, stop.message, stop.path)
    run, result = live.run, live.result(outcome)
    if outcome.ok and run.limit_items is None and run.only_items is None:
        result.estimate_vs_actual = estimate_vs_actual(
            plan.estimate, seconds=result.seconds, model_calls=result.model_calls,
            cost_usd=None if live.models.unknown_price else result.cost_usd)
    if outcome.table_csv is not None:
        result.table = await deps.store.add_attachment(
            run.thread_id, name=f"{run.id}.csv", content_type="text/csv",
            data=outcome.table_csv.encode())
    if outcome.ok and outcome.variables:
        await deps.store.save_thread_state(run.thread_id, outcome.variables,
                                           outcome.summaries)
    state, kind, error = _final_state(live, outcome)
    await deps.store.update_run(run.id, state=state, result=result, error=error,
                                isolation=outcome.isolation, progress=live.progress,
                                spent_usd=live.runner.counts.spent_usd, finished_at=utcnow())
    await publish(deps.redis, JobEvent(kind=kind, thread_id=run.thread_id, run_id=run.id,
                                       text=error or result.summary, progress=live.progress))
    log.info("← run_program %s %s in %.2f s (%d replayed, %d live)", run.id, state,
             result.seconds, live.runner.counts.replayed, live.runner.counts.live)
    return state


def _final_state(live: RunContext, outcome: SandboxOutcome) -> tuple[RunState, EventKind,
                                                                     str | None]:
    stop = live.runner.stop
    if stop is not None and stop.reason == StopReason.CANCELLED:
        return RunState.CANCELLED, EventKind.RUN_CANCELLED, None
    if stop is not None:
        return RunState.FAILED, EventKind.RUN_FAILED, stop.message
    if outcome.ok:
        return RunState.SUCCEEDED, EventKind.RUN_FINISHED, None
    return RunState.FAILED, EventKind.RUN_FAILED, _error_text(outcome)


async def _wait_for_person(deps: Deps, live: RunContext, message: str, path: str | None) -> str:
    run = live.run
    await deps.store.update_run(run.id, state=RunState.WAITING_APPROVAL, waiting_reason=message,
                                waiting_path=path, progress=live.progress,
                                spent_usd=live.runner.counts.spent_usd)
    await publish(deps.redis, JobEvent(kind=EventKind.RUN_WAITING, thread_id=run.thread_id,
                                       run_id=run.id, text=message, progress=live.progress))
    log.info("⏸ run_program %s waits for a person: %s", run.id, message)
    return RunState.WAITING_APPROVAL


def _error_text(outcome: SandboxOutcome) -> str:
    if outcome.killed_reason:
        return f"The program was stopped: {outcome.killed_reason}."
    error = outcome.error or {}
    where = f" (line {error['line']})" if error.get("line") else ""
    return f"The program failed{where}: {error.get('message', 'unknown error')}"
