"""Saved automations: a succeeded run's checked program, run again on a trigger.

ARCHITECTURE.md, "The flow": webhooks, schedules and email start runs without the planner. A
triggered run gets a `Plan` copied from the automation (so the worker's `run_program` runs it
unchanged) and a `Run` that is queued at once when the estimate is within the automation's budget
and its policy is "auto"; otherwise the run waits in its thread for a person's approval.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from arq import ArqRedis
from pydantic import BaseModel, Field
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from core.cron import parse_cron
from core.db import AutomationRow, AutomationRunRow
from core.errors import InvalidInputError, NotFoundError
from core.jobs import RUN_PROGRAM, RunProgramJob, enqueue
from core.store import Store
from core.types import (
    Button,
    Estimate,
    Plan,
    PlanStatus,
    Request,
    Run,
    RunState,
    new_id,
    utcnow,
)

Trigger = Literal["webhook", "schedule", "email", "cli"]
_SURFACE: dict[str, Literal["webhook", "email", "cli"]] = {
    "webhook": "webhook", "email": "email", "schedule": "cli", "cli": "cli"}


class Automation(BaseModel):
    id: str
    name: str
    source_run_id: str
    thread_id: str
    summary: str
    program: str
    estimate: Estimate
    inputs: dict[str, Any] = Field(default_factory=dict)
    budget_usd: float
    policy: Literal["auto", "ask"] = "auto"
    schedule: str | None = None
    webhook_secret: str
    enabled: bool = True
    created_by: str = ""
    last_fired_at: datetime | None = None
    created_at: datetime


class AutomationRun(BaseModel):
    run_id: str
    automation_id: str
    trigger: str
    idempotency_key: str | None = None
    callback_url: str | None = None
    callback_status: str | None = None


@dataclass(frozen=True)
class Triggered:
    run: Run
    waits_for_approval: bool
    duplicate: bool = False


class Automations:
    """Saving, finding and triggering automations, on top of `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def save_from_run(self, run_id: str, *, user: str, name: str | None = None,
                            schedule: str | None = None, policy: str = "auto",
                            budget_usd: float | None = None,
                            inputs: dict[str, Any] | None = None) -> Automation:
        """Save a succeeded run's program; raises InvalidInputError for any other run."""
        run = await self.store.get_run(run_id)
        if run.state != RunState.SUCCEEDED:
            raise InvalidInputError(f"Run {run.id} is {run.state.replace('_', ' ')}; only a run "
                                    "that succeeded can be saved as an automation.")
        if policy not in ("auto", "ask"):
            raise InvalidInputError(f"The approval policy {policy!r} is unknown; use 'auto' "
                                    "(run without asking below the budget) or 'ask'.")
        spec = parse_cron(schedule).expression if schedule else None
        plan = await self.store.get_plan(run.plan_id)
        spent = run.result.cost_usd if run.result else 0.0
        budget = budget_usd if budget_usd is not None else max(
            2 * spent, 2 * (plan.estimate.cost_usd or 0.0), run.budget_usd or 0.0)
        row = AutomationRow(
            id=new_id("auto"), name=(name or plan.summary)[:200], source_run_id=run.id,
            thread_id=run.thread_id, summary=plan.summary, program=plan.program,
            estimate=plan.estimate.model_dump(mode="json"), inputs=inputs or {},
            budget_usd=budget, policy=policy, schedule=spec,
            webhook_secret=secrets.token_urlsafe(32), enabled=True, created_by=user,
            created_at=utcnow())
        async with self.store.session() as s, s.begin():
            s.add(row)
        return _automation(row)

    async def get(self, automation_id: str) -> Automation:
        async with self.store.session() as s:
            row = await s.get(AutomationRow, automation_id)
        if row is None:
            raise NotFoundError(f"There is no automation {automation_id!r}. `sluice automations "
                                "list` shows the ids.", automation_id=automation_id)
        return _automation(row)

    async def find(self, prefix: str) -> Automation:
        """An automation by id or unique id prefix (for the command line)."""
        async with self.store.session() as s:
            rows = (await s.scalars(select(AutomationRow).where(
                AutomationRow.id.startswith(prefix)).limit(2))).all()
        if len(rows) != 1:
            found = "no automation" if not rows else "more than one automation"
            raise NotFoundError(f"There is {found} with id {prefix!r}. `sluice automations "
                                "list` shows the ids.")
        return _automation(rows[0])

    async def all(self) -> list[Automation]:
        async with self.store.session() as s:
            rows = (await s.scalars(select(AutomationRow)
                                    .order_by(AutomationRow.created_at.desc()))).all()
        return [_automation(r) for r in rows]

    async def scheduled(self) -> list[Automation]:
        async with self.store.session() as s:
            rows = (await s.scalars(select(AutomationRow).where(
                AutomationRow.enabled.is_(True), AutomationRow.schedule.is_not(None)))).all()
        return [_automation(r) for r in rows]

    async def set_enabled(self, automation_id: str, enabled: bool) -> None:
        async with self.store.session() as s, s.begin():
            await s.execute(update(AutomationRow).where(AutomationRow.id == automation_id)
                            .values(enabled=enabled))

    async def claim_fire(self, automation: Automation, at: datetime) -> bool:
        """Record that the schedule fired at `at`; False when it already fired then or later."""
        column = AutomationRow.last_fired_at
        async with self.store.session() as s, s.begin():
            result = await s.execute(update(AutomationRow).where(
                AutomationRow.id == automation.id, or_(column.is_(None), column < at))
                .values(last_fired_at=at))
        return bool(getattr(result, "rowcount", 0))

    async def automation_run(self, run_id: str) -> AutomationRun | None:
        async with self.store.session() as s:
            row = await s.get(AutomationRunRow, run_id)
        return None if row is None else _automation_run(row)

    async def runs_of(self, automation_id: str, *, limit: int = 20) -> list[AutomationRun]:
        async with self.store.session() as s:
            rows = (await s.scalars(select(AutomationRunRow).where(
                AutomationRunRow.automation_id == automation_id)
                .order_by(AutomationRunRow.created_at.desc()).limit(limit))).all()
        return [_automation_run(r) for r in rows]

    async def set_callback_status(self, run_id: str, status: str) -> bool:
        """Record a callback's outcome once; False when it was already recorded."""
        async with self.store.session() as s, s.begin():
            result = await s.execute(update(AutomationRunRow).where(
                AutomationRunRow.run_id == run_id, AutomationRunRow.callback_status.is_(None))
                .values(callback_status=status[:100]))
        return bool(getattr(result, "rowcount", 0))

    async def trigger(self, automation: Automation, *, redis: ArqRedis, trigger: Trigger,
                      user: str, inputs: dict[str, Any] | None = None,
                      idempotency_key: str | None = None,
                      callback_url: str | None = None) -> Triggered:
        """Start a run of the saved program (no planner); the same idempotency key, the same run."""
        if not automation.enabled:
            raise InvalidInputError(f"Automation {automation.id} is disabled; enable it before "
                                    "triggering it.")
        run_id = new_id("run")
        if not await self._record(run_id, automation, trigger, idempotency_key, callback_url):
            return Triggered(run=await self._first_run(automation.id, idempotency_key),
                             waits_for_approval=False, duplicate=True)
        merged = {**automation.inputs, **(inputs or {})}
        plan = await self._plan(automation, trigger, user, merged)
        cost = automation.estimate.cost_usd or 0.0
        auto = automation.policy == "auto" and cost <= automation.budget_usd
        run = Run(id=run_id, plan_id=plan.id, thread_id=automation.thread_id,
                  approved_by=f"automation {automation.id}" if auto else None,
                  budget_usd=automation.budget_usd if auto else max(automation.budget_usd,
                                                                     2 * cost))
        if auto:
            await self._queue(redis, automation, run, trigger)
        else:
            await self._ask(automation, run, trigger)
        return Triggered(run=run, waits_for_approval=not auto)

    async def _record(self, run_id: str, automation: Automation, trigger: str,
                      key: str | None, callback_url: str | None) -> bool:
        try:
            async with self.store.session() as s, s.begin():
                s.add(AutomationRunRow(run_id=run_id, automation_id=automation.id,
                                       trigger=trigger, idempotency_key=key,
                                       callback_url=callback_url, created_at=utcnow()))
        except IntegrityError:
            return False
        return True

    async def _first_run(self, automation_id: str, key: str | None) -> Run:
        """The run the first call with `key` started (waiting while that call still stores it)."""
        async with self.store.session() as s:
            run_id = await s.scalar(select(AutomationRunRow.run_id).where(
                AutomationRunRow.automation_id == automation_id,
                AutomationRunRow.idempotency_key == key))
        assert run_id is not None
        for _ in range(100):
            try:
                return await self.store.get_run(run_id)
            except NotFoundError:  # the first call recorded the key and is creating the run
                await asyncio.sleep(0.05)
        return await self.store.get_run(run_id)

    async def _plan(self, automation: Automation, trigger: str, user: str,
                    inputs: dict[str, Any]) -> Plan:
        text = f"Automation “{automation.name}” ({automation.id}) triggered by {trigger}."
        if inputs:
            text += "\nInputs: " + json.dumps(inputs, default=str)[:2000]
        request = Request(thread_id=automation.thread_id, surface=_SURFACE[trigger],
                          user=user[:100] or trigger, text=text)
        await self.store.add_user_request(request)
        if inputs:
            await self.store.save_thread_values(
                automation.thread_id, {"inputs": inputs},
                {"inputs": "the inputs of this automation's latest trigger"})
        plan = Plan(request_id=request.id, thread_id=automation.thread_id,
                    summary=automation.summary, program=automation.program,
                    estimate=automation.estimate, status=PlanStatus.APPROVED)
        await self.store.save_plan(plan)
        return plan

    async def _queue(self, redis: ArqRedis, automation: Automation, run: Run,
                     trigger: str) -> None:
        await self.store.create_run(run)
        status = await self.store.add_message(
            run.thread_id, author="sluice", kind="status",
            text=f"Queued: automation “{automation.name}” ({trigger}), budget "
                 f"${automation.budget_usd:.2f}.",
            buttons=[Button(action="cancel_run", label="Cancel run", value=run.id,
                            style="danger")],
            meta={"run_id": run.id, "plan_id": run.plan_id, "automation_id": automation.id})
        await self.store.update_run(run.id, status_message_id=status.id)
        await enqueue(redis, RUN_PROGRAM, RunProgramJob(run_id=run.id), job_id=f"run:{run.id}")

    async def _ask(self, automation: Automation, run: Run, trigger: str) -> None:
        cost = automation.estimate.cost_usd
        why = ("its approval policy is to ask" if automation.policy == "ask" else
               f"its estimate (~${cost or 0:.4f}) is above its budget "
               f"(${automation.budget_usd:.2f})")
        reason = f"Automation “{automation.name}” was triggered by {trigger}; {why}."
        run.state = RunState.WAITING_APPROVAL
        run.waiting_reason = reason
        await self.store.create_run(run)
        await self.store.update_run(run.id, waiting_reason=reason)
        await self.store.add_message(
            run.thread_id, author="sluice", kind="question",
            text=f"{reason} Approve to run it, or cancel.",
            buttons=[Button(action="raise_budget", label="Approve and run", value=run.id,
                            style="primary"),
                     Button(action="cancel_run", label="Cancel run", value=run.id,
                            style="danger")],
            meta={"run_id": run.id, "attempt": 0, "automation_id": automation.id})


def _automation(row: AutomationRow) -> Automation:
    return Automation(id=row.id, name=row.name, source_run_id=row.source_run_id,
                      thread_id=row.thread_id, summary=row.summary, program=row.program,
                      estimate=Estimate.model_validate(row.estimate), inputs=row.inputs or {},
                      budget_usd=row.budget_usd, policy=row.policy,  # type: ignore[arg-type]
                      schedule=row.schedule, webhook_secret=row.webhook_secret,
                      enabled=row.enabled, created_by=row.created_by,
                      last_fired_at=_aware(row.last_fired_at),
                      created_at=_aware(row.created_at) or utcnow())


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives datetimes back without their zone; they were stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _automation_run(row: AutomationRunRow) -> AutomationRun:
    return AutomationRun(run_id=row.run_id, automation_id=row.automation_id, trigger=row.trigger,
                         idempotency_key=row.idempotency_key, callback_url=row.callback_url,
                         callback_status=row.callback_status)
