"""Rendering job events as thread messages (ARCHITECTURE.md: bot renders `JobEvent`s).

Rendering is idempotent: an event delivered twice (a reader died before acknowledging it) finds
its message already there and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.conversation import (
    approve_automatically,
    auto_approves,
    budget_step,
    cancel_run_button,
)
from bot.deps import BotDeps
from bot.saving import save_automation_button
from core.text import duration_text
from core.types import (
    Button,
    Estimate,
    EventKind,
    JobEvent,
    Plan,
    PlanStatus,
    Progress,
    Run,
    RunState,
    SampleRun,
)

log = logging.getLogger(__name__)
RUN_FIRST_N = 3
SAMPLE_LINES_SHOWN = 5


def estimate_lines(estimate: Estimate) -> list[str]:
    items = "unknown" if estimate.items is None else (
        f"{estimate.items}" if estimate.measured else f"up to {estimate.items}")
    lines = [f"Estimate: {items} items · {estimate.model_calls} AI calls · "
             f"{_cost_text(estimate)} · {_time_text(estimate)}"]
    if estimate.write_lines:
        lines.append("It will " + ", ".join(estimate.write_lines) + ".")
    lines += [f"Note: {note}" for note in estimate.notes]
    return lines


def _cost_text(estimate: Estimate) -> str:
    if estimate.cost_usd is None:
        return "price unknown"
    if estimate.model_calls == 0 and estimate.cost_usd == 0:
        return "no AI cost"
    return _ranged(f"${estimate.cost_usd:.4f}", estimate.cost_range,
                   lambda value: f"${value:.4f}")


def _time_text(estimate: Estimate) -> str:
    return _ranged(duration_text(estimate.seconds), estimate.seconds_range, duration_text)


def _ranged(middle: str, bounds: tuple[float, float] | None,
            show: Callable[[float], str]) -> str:
    """"~5 s (4–7 s)", or "~5 s" when the range shows as one value."""
    if bounds is None:
        return f"~{middle}"
    low, high = show(bounds[0]), show(bounds[1])
    return f"~{middle}" if low == high else f"~{middle} ({low}–{high})"


def sample_lines(sample: SampleRun) -> list[str]:
    """What the sample run did, for the person approving: output, writes, failures, result."""
    of = f" of {sample.available}" if sample.available is not None else ""
    lines = [f"Tried on the first {sample.items}{of} items (writes only previewed):"]
    output = [line for line in sample.output.strip().splitlines() if line.strip()]
    lines += [f"  > {line}" for line in output[:SAMPLE_LINES_SHOWN]]
    if sample.writes:
        lines.append("Would:")
        lines += [f"  • {write.text}" for write in sample.writes[:SAMPLE_LINES_SHOWN]]
        more = sum(sample.write_counts.values()) - min(len(sample.writes), SAMPLE_LINES_SHOWN)
        lines += [f"  • … and {more} more"] if more > 0 else []
    else:
        lines.append("Would write nothing.")
    lines += [f"  ✗ item {f.get('index')}: {f.get('error')}" for f in sample.failures[:3]]
    if sample.table_rows is not None:
        lines.append(f"Result: a table of {sample.table_rows} rows on the sample.")
    return lines


def plan_text(plan: Plan) -> str:
    sample = ["", *sample_lines(plan.sample)] if plan.sample is not None else []
    return "\n".join([f"Plan: {plan.summary}", *sample, "", *estimate_lines(plan.estimate), "",
                      "Approve to run it, or Cancel."])


def plan_buttons(plan: Plan) -> list[Button]:
    buttons = [Button(action="approve", label="Approve", value=plan.id, style="primary")]
    if plan.estimate.items is None or plan.estimate.items > RUN_FIRST_N:
        buttons.append(Button(action="run_first", label=f"Run first {RUN_FIRST_N}",
                              value=plan.id, count=RUN_FIRST_N))
    buttons.append(Button(action="cancel", label="Cancel", value=plan.id, style="danger"))
    return buttons


def progress_text(progress: Progress, *, finished: bool = False) -> str:
    total = "?" if progress.total is None else str(progress.total)
    head = "Finished" if finished else "Running"
    text = (f"{head}: {progress.done}/{total} done, {progress.failed} failed · "
            f"{duration_text(progress.elapsed_s)} · "
            f"{'price unknown' if progress.price_unknown else f'${progress.cost_usd:.4f}'}")
    eta = progress.eta_s()
    if eta is None or finished:
        return text
    return f"{text} · about {duration_text(eta)} left"


async def render(deps: BotDeps, event: JobEvent) -> None:
    """Show one event in its thread."""
    handler = _HANDLERS.get(event.kind)
    if handler is not None:
        await handler(deps, event)


async def _plan_ready(deps: BotDeps, event: JobEvent) -> None:
    assert event.plan_id is not None
    plan = await deps.store.get_plan(event.plan_id)
    message_id = await deps.store.plan_message_id(plan.id)
    if message_id is None:
        message = await deps.store.add_message(
            plan.thread_id, author="sluice", kind="plan", text=plan_text(plan),
            buttons=plan_buttons(plan),
            meta={"plan_id": plan.id, "program": plan.program,
                  "estimate": plan.estimate.model_dump(mode="json"),
                  "sample": plan.sample.model_dump(mode="json") if plan.sample else None})
        await deps.store.set_plan_message(plan.id, message.id)
    else:  # a redelivered event: the message is there; the policy may not have been applied
        message = await deps.store.get_message(message_id)
    if plan.status == PlanStatus.AWAITING_APPROVAL and auto_approves(
            plan, below_usd=deps.settings.auto_approve_below_usd):
        await approve_automatically(deps, plan, message)


async def _plan_failed(deps: BotDeps, event: JobEvent) -> None:
    thread = await deps.store.get_thread(event.thread_id)
    if any(m.meta.get("failed_request") == event.request_id for m in thread.messages):
        return
    await deps.store.add_message(event.thread_id, author="sluice", kind="error",
                                 text=f"I could not plan this request. {event.text}",
                                 meta={"failed_request": event.request_id})


async def _status(deps: BotDeps, event: JobEvent, text: str,
                  buttons: list[Button] | None = None) -> None:
    """Edit the run's one status message (there is none for runs started elsewhere)."""
    assert event.run_id is not None
    message_id = await deps.store.run_status_message(event.run_id)
    if message_id:
        await deps.store.update_message(message_id, text=text, buttons=buttons)


async def _posted(deps: BotDeps, run: Run, kinds: set[str], **meta: object) -> bool:
    """Whether the thread already has a message of `kinds` for this run (a redelivered event)."""
    thread = await deps.store.get_thread(run.thread_id)
    return any(m.kind in kinds and m.meta.get("run_id") == run.id
               and all(m.meta.get(k) == v for k, v in meta.items()) for m in thread.messages)


async def _progress(deps: BotDeps, event: JobEvent) -> None:
    if event.progress is not None:
        await _status(deps, event, progress_text(event.progress))


async def _started(deps: BotDeps, event: JobEvent) -> None:
    assert event.run_id is not None
    text = "Running: starting the program…" if event.text == "starting" else \
        f"Running again after an interruption, {event.text}…"
    await _status(deps, event, text, [cancel_run_button(event.run_id)])


async def _waiting(deps: BotDeps, event: JobEvent) -> None:
    run = await _run(deps, event)
    if run.state != RunState.WAITING_APPROVAL or await _posted(
            deps, run, {"question"}, attempt=run.attempts):
        return
    if run.waiting_path:
        buttons = [Button(action="resolve_done", label="It was done: continue", value=run.id),
                   Button(action="resolve_redo", label="Do it again", value=run.id)]
    else:
        more = budget_step(run)
        buttons = [Button(action="raise_budget", label=f"Allow ${more:.2f} more and continue",
                          value=run.id, style="primary")]
    buttons.append(cancel_run_button(run.id))
    await deps.store.add_message(run.thread_id, author="sluice", kind="question",
                                 text=f"Paused. {event.text}", buttons=buttons,
                                 meta={"run_id": run.id, "attempt": run.attempts})


async def _cancelled(deps: BotDeps, event: JobEvent) -> None:
    run = await _run(deps, event)
    if await _posted(deps, run, {"result", "error"}):
        return
    await _status(deps, event, progress_text(run.progress, finished=True), [])
    done = run.result.summary if run.result else ""
    await deps.store.add_message(run.thread_id, author="sluice", kind="result",
                                 text=f"Cancelled. What was done before it stopped: {done}",
                                 meta={"run_id": run.id})


async def _finished(deps: BotDeps, event: JobEvent) -> None:
    run = await _run(deps, event)
    if await _posted(deps, run, {"result", "error"}):
        return
    ok = event.kind == EventKind.RUN_FINISHED
    await _status(deps, event, progress_text(run.progress, finished=True) if ok else "Stopped.",
                  [])
    text = _result_text(run) if ok else (f"The run failed. {event.text}\nNothing more will run; "
                                         "reply with a changed request to try again.")
    attachments = [run.result.table] if ok and run.result and run.result.table else []
    failed = run.result.failures if ok and run.result else []
    buttons = [Button(action="retry_failed", label=f"Retry the {len(failed)} failed",
                      value=run.id)] if failed else []
    if ok and run.state == RunState.SUCCEEDED:
        buttons.append(save_automation_button(run.id))
    await deps.store.add_message(run.thread_id, author="sluice", kind="result" if ok else "error",
                                 text=text, attachments=attachments, buttons=buttons,
                                 meta={"run_id": run.id})


def _result_text(run: Run) -> str:
    assert run.result is not None
    parts = [run.result.summary]
    if run.result.estimate_vs_actual:
        parts.append(run.result.estimate_vs_actual)
    for failure in run.result.failures[:10]:
        parts.append(f"- item {failure.get('index')} ({failure.get('item')}): "
                     f"{failure.get('error')}")
    if len(run.result.failures) > 10:
        parts.append(f"- … and {len(run.result.failures) - 10} more")
    if run.result.output.strip():
        parts.append("Output:\n" + run.result.output.strip()[-2000:])
    if run.result.table is not None:
        parts.append(f"Table attached: {run.result.table.name} ({run.result.table_rows} rows).")
    if run.result.saved_variables:
        parts.append("Kept for the next request here: " + ", ".join(run.result.saved_variables))
    for unsaved in run.result.unsaved_variables[:10]:
        parts.append(f"Not kept: {unsaved.get('name')} ({unsaved.get('reason')})")
    return "\n".join(parts)


async def _run(deps: BotDeps, event: JobEvent) -> Run:
    assert event.run_id is not None
    return await deps.store.get_run(event.run_id)


_HANDLERS = {
    EventKind.PLAN_READY: _plan_ready,
    EventKind.PLAN_FAILED: _plan_failed,
    EventKind.RUN_STARTED: _started,
    EventKind.PROGRESS: _progress,
    EventKind.RUN_FINISHED: _finished,
    EventKind.RUN_FAILED: _finished,
    EventKind.RUN_WAITING: _waiting,
    EventKind.RUN_CANCELLED: _cancelled,
}
