"""What happens when someone writes in a thread or clicks a button, on any surface.

A message becomes a `Request`, stored and acknowledged at once, and a `plan_request` job is
enqueued by name. A click on Approve creates a `Run` and enqueues `run_program`; a decision is a
single conditional update, so a double click or a replayed payload does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

from bot.deps import BotDeps
from bot.saving import SAVE_ACTION, save_from_button
from core.errors import InvalidInputError, SluiceError
from core.jobs import PLAN_REQUEST, RUN_PROGRAM, PlanRequestJob, RunProgramJob, enqueue
from core.types import (
    Attachment,
    Button,
    Message,
    Plan,
    PlanStatus,
    Request,
    Run,
    RunState,
    utcnow,
)

log = logging.getLogger(__name__)

ACK_TEXT = "Got it. I'm writing a program for this; the plan and its estimate will follow here."


class AlreadyDecidedError(SluiceError):
    code = "already_decided"


@dataclass(frozen=True)
class Decision:
    action: str
    message_id: str
    value: str
    user: str
    count: int | None = None
    budget_usd: float | None = None


async def receive_request(deps: BotDeps, request: Request, *,
                          attachments: list[Attachment] | None = None) -> Message:
    """Store the request with its message, acknowledge it in the thread, enqueue planning.

    `attachments` are files shared with the request, already stored with the thread.
    """
    await deps.store.get_thread(request.thread_id)
    message = await deps.store.add_user_request(request, attachments=attachments)
    await deps.store.add_message(request.thread_id, author="sluice", kind="ack", text=ACK_TEXT,
                                 meta={"request_id": request.id})
    await enqueue(deps.redis, PLAN_REQUEST, PlanRequestJob(request_id=request.id),
                  job_id=f"plan:{request.id}")
    log.info("request %s in thread %s enqueued for planning", request.id, request.thread_id)
    return message


RUN_ACTIONS = {"cancel_run", "raise_budget", "resolve_done", "resolve_redo", "retry_failed"}


async def decide(deps: BotDeps, decision: Decision) -> Message:
    """Apply a button click; returns the message that says what happened."""
    message = await deps.store.get_message(decision.message_id)
    if decision.action == SAVE_ACTION:
        _find_button(message, decision)
        return await save_from_button(deps, message, decision.user, decision.value)
    if decision.action in RUN_ACTIONS:
        return await decide_run(deps, message, decision)
    if not message.buttons and message.meta.get("plan_id"):
        await _already_decided(deps, message.meta["plan_id"])
    button = _find_button(message, decision)
    plan = await deps.store.get_plan(button.value)
    status = PlanStatus.CANCELLED if decision.action == "cancel" else PlanStatus.APPROVED
    if not await deps.store.decide_plan(plan.id, status=status, user=decision.user):
        await _already_decided(deps, plan.id)
    verb = "Cancelled" if status == PlanStatus.CANCELLED else "Approved"
    stamp = f"{verb} by {decision.user} at {utcnow():%H:%M UTC}"
    await deps.store.update_message(message.id, text=f"{message.text}\n\n{stamp}", buttons=[])
    if status == PlanStatus.CANCELLED:
        return await deps.store.add_message(plan.thread_id, author="sluice", kind="decision",
                                            text="Cancelled. Nothing was run.",
                                            meta={"plan_id": plan.id})
    limit = (decision.count or button.count) if decision.action == "run_first" else None
    budget = decision.budget_usd if decision.budget_usd is not None else max(
        deps.settings.run_budget_usd, 2 * (plan.estimate.cost_usd or 0.0))
    return await _start_run(deps, plan.id, plan.thread_id, decision, limit, budget)


AUTO_APPROVER = "the auto-approval policy"


def auto_approves(plan: Plan, *, below_usd: float) -> bool:
    """Whether `plan` may start without asking: it writes nothing, and even its highest
    estimated cost is known and below the workspace's threshold."""
    estimate = plan.estimate
    writes = bool(estimate.writes) or bool(plan.sample and plan.sample.write_counts)
    high = estimate.cost_range[1] if estimate.cost_range else estimate.cost_usd
    return below_usd > 0 and not writes and high is not None and high < below_usd


async def approve_automatically(deps: BotDeps, plan: Plan, message: Message) -> Message | None:
    """Start `plan` at once under the auto-approval policy (once, however often it is asked)."""
    if not await deps.store.decide_plan(plan.id, status=PlanStatus.APPROVED, user=AUTO_APPROVER):
        return None
    below = deps.settings.auto_approve_below_usd
    note = (f"Started at once: it writes nothing and costs under ${below:.2f} "
            "(the auto-approval policy).")
    await deps.store.update_message(message.id, text=f"{message.text}\n\n{note}", buttons=[])
    decision = Decision(action="approve", message_id=message.id, value=plan.id,
                        user=AUTO_APPROVER)
    budget = max(deps.settings.run_budget_usd, 2 * (plan.estimate.cost_usd or 0.0))
    return await _start_run(deps, plan.id, plan.thread_id, decision, None, budget)


async def _start_run(deps: BotDeps, plan_id: str, thread_id: str, decision: Decision,
                     limit: int | None, budget: float) -> Message:
    run = Run(plan_id=plan_id, thread_id=thread_id, limit_items=limit, approved_by=decision.user,
              budget_usd=budget)
    scope = f"the first {limit} items" if limit else "everything"
    return await _queue_run(deps, run, f"Queued: running on {scope}.")


async def _queue_run(deps: BotDeps, run: Run, text: str) -> Message:
    """Store `run`, give it a status message with a Cancel button, and enqueue it."""
    await deps.store.create_run(run)
    status = await deps.store.add_message(run.thread_id, author="sluice", kind="status",
                                          text=text, buttons=[cancel_run_button(run.id)],
                                          meta={"run_id": run.id, "plan_id": run.plan_id})
    await deps.store.update_run(run.id, status_message_id=status.id)
    await enqueue(deps.redis, RUN_PROGRAM, RunProgramJob(run_id=run.id), job_id=f"run:{run.id}")
    log.info("run %s of plan %s enqueued (approved by %s)", run.id, run.plan_id, run.approved_by)
    return status


async def _already_decided(deps: BotDeps, plan_id: str) -> NoReturn:
    plan = await deps.store.get_plan(plan_id)
    raise AlreadyDecidedError(f"This plan was already {plan.status.replace('_', ' ')}; "
                              "nothing changed.", plan_id=plan.id)


def budget_step(run: Run) -> float:
    """How much more a "raise the budget" click allows: the budget again, at least the spend."""
    return max(run.budget_usd or 0.0, run.spent_usd)


def cancel_run_button(run_id: str) -> Button:
    return Button(action="cancel_run", label="Cancel run", value=run_id, style="danger")


async def decide_run(deps: BotDeps, message: Message, decision: Decision) -> Message:
    """Cancel a run, or answer its question (budget, uncertain write) and resume it."""
    button = _find_button(message, decision)
    run = await deps.store.get_run(button.value)
    if decision.action == "retry_failed":
        return await _retry_failed(deps, message, run, decision)
    if decision.action == "cancel_run":
        state = await deps.store.request_cancel(run.id)
        await deps.store.update_message(message.id, buttons=[])
        text = ("Cancelled. Nothing more will run." if state == RunState.CANCELLED
                else "Cancelling: no new steps start; what is in flight finishes.")
        return await deps.store.add_message(run.thread_id, author="sluice", kind="decision",
                                            text=f"{text} ({decision.user})",
                                            meta={"run_id": run.id})
    if decision.action in ("resolve_done", "resolve_redo") and run.waiting_path:
        await deps.store.resolve_journal_entry(run.id, run.waiting_path,
                                               done=decision.action == "resolve_done")
    extra = budget_step(run) if decision.action == "raise_budget" else 0.0
    if not await deps.store.resume_waiting(run.id, add_budget_usd=extra):
        raise AlreadyDecidedError(f"This run is {run.state.replace('_', ' ')}; nothing changed.")
    await deps.store.update_message(message.id, buttons=[],
                                    text=f"{message.text}\n\n{button.label} ({decision.user})")
    await enqueue(deps.redis, RUN_PROGRAM, RunProgramJob(run_id=run.id),
                  job_id=f"run:{run.id}:{run.attempts + 1}")
    return await deps.store.add_message(run.thread_id, author="sluice", kind="decision",
                                        text="Resuming from where it stopped.",
                                        meta={"run_id": run.id})


async def _retry_failed(deps: BotDeps, message: Message, run: Run,
                        decision: Decision) -> Message:
    """A new run of the same plan whose each() loops visit only the items that failed."""
    failures = run.result.failures if run.result else []
    only: dict[str, list[int]] = {}
    for failure in failures:
        only.setdefault(str(failure.get("loop")), []).append(int(failure.get("index", -1)))
    if not only:
        raise InvalidInputError("This run has no failed items to retry.")
    await deps.store.update_message(message.id, buttons=[])
    retry = Run(plan_id=run.plan_id, thread_id=run.thread_id, approved_by=decision.user,
                budget_usd=run.budget_usd, retry_of=run.id, only_items=only)
    count = sum(len(v) for v in only.values())
    return await _queue_run(deps, retry, f"Queued: retrying the {count} failed items.")


def _find_button(message: Message, decision: Decision) -> Button:
    for button in message.buttons:
        if button.action == decision.action and button.value == decision.value:
            return button
    if not message.buttons:
        raise AlreadyDecidedError("This message has no buttons left: it was already decided.")
    offered = ", ".join(f"{b.action} ({b.value})" for b in message.buttons)
    raise InvalidInputError(f"This message has no '{decision.action}' button for "
                            f"{decision.value!r}. Buttons: {offered}.")


__all__ = ["ACK_TEXT", "AUTO_APPROVER", "RUN_ACTIONS", "AlreadyDecidedError", "Decision",
           "approve_automatically", "auto_approves", "budget_step", "cancel_run_button",
           "decide", "decide_run", "receive_request"]
