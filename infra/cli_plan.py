"""`sluice plan`, `sluice rules` and `sluice eval`: the planner for people, for models outside
litellm, and for comparing models.

`sluice plan "REQUEST" --print-prompt` prints the exact messages the model would get.
`sluice plan "REQUEST" --answer FILE` takes a model's answer from a file and runs it through the
same checks, sample run (writes only previewed) and estimate as a real plan, printing the outcome
as text or `--json`; without `--answer` the configured model answers. Nothing is written to the
integrations and no run starts: this is a dry run of planning. `sluice eval SUITE_DIR` runs a
suite of tasks end to end (`infra.evaluation`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bot.render import estimate_lines, sample_lines
from codegen.extract import split_answer
from codegen.models import LiteLLMModels
from codegen.planner import (
    PlanningContext,
    PlanningOutcome,
    PlanningTools,
    check,
    make_plan,
    plan_of,
)
from codegen.prompt import build_messages, feedback
from core.errors import ConfigurationError, ModelError, SluiceError
from core.protocols import ChatMessage, Completion, TaskKind
from core.settings import Settings, load_settings
from core.store import Store
from core.types import Plan, Request
from infra.cli_database import opened_database
from integrations.registry import build_catalog
from workers.planning import planning_context, planning_tools

out = Console(soft_wrap=True)
err = Console(stderr=True)
CLI_THREAD = "cli"


@dataclass
class _Session:
    settings: Settings
    store: Store
    models: LiteLLMModels | _NoModel
    context: PlanningContext
    tools: PlanningTools


class _NoModel:
    """The models when none is configured: `--answer` and `--print-prompt` need none, and a
    program's own ai.* calls in the sample fail with the configuration message."""

    def __init__(self, problem: ConfigurationError) -> None:
        self.problem = problem

    async def complete(self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
                       json_schema: dict[str, object] | None = None) -> Completion:
        raise ModelError(self.problem.message, kind=kind, reason="not_configured")

    def close(self) -> None:
        """Nothing to release."""


def _models(settings: Settings, *, required: bool) -> LiteLLMModels | _NoModel:
    try:
        return LiteLLMModels.from_settings(settings)
    except ConfigurationError as exc:
        if required:
            raise
        return _NoModel(exc)


@asynccontextmanager
async def _session(settings: Settings, thread_id: str | None, *,
                   model_required: bool) -> AsyncIterator[_Session]:
    async with opened_database(settings) as engine:
        store = Store(engine)
        models = _models(settings, required=model_required)
        catalog = await build_catalog(settings, models, engine=engine, thread_id=thread_id)
        try:
            if thread_id is not None:
                await store.get_thread(thread_id)  # a clear error for an unknown thread
            context = await planning_context(settings, store, catalog, thread_id, models=models)
            yield _Session(settings, store, models, context,
                           planning_tools(settings, store, models))
        finally:
            await catalog.aclose()
            models.close()


def plan_command(
    request: Annotated[str, typer.Argument(help="What you would ask Sluice, in quotes.")],
    thread: Annotated[str | None, typer.Option(
        help="Plan as a follow-up in this thread (its saved variables are defined).")] = None,
    print_prompt: Annotated[bool, typer.Option(
        "--print-prompt", help="Print the messages the model would get, and stop.")] = False,
    answer: Annotated[Path | None, typer.Option(
        help="A model's answer (paragraph + ```python block) to check instead of asking one.",
        exists=True, dir_okay=False, readable=True)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sample_items: Annotated[int | None, typer.Option(
        help="Items the sample run visits (0: no sample run).", min=0)] = None,
) -> None:
    """Plan REQUEST without running it: the checks, the sample run and the estimate."""
    environ = dict(os.environ)
    if sample_items is not None:
        environ["SLUICE_PLAN_SAMPLE_ITEMS"] = str(sample_items)
    try:
        settings = load_settings(environ)
        code = asyncio.run(_plan(settings, request, thread=thread, print_prompt=print_prompt,
                                 answer=answer, as_json=as_json))
    except SluiceError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


async def _plan(settings: Settings, text: str, *, thread: str | None, print_prompt: bool,
                answer: Path | None, as_json: bool) -> int:
    if not text.strip():
        raise ConfigurationError("The request is empty. Say what you want done, in quotes.")
    request = Request(thread_id=thread or CLI_THREAD, surface="cli", user="cli", text=text)
    async with _session(settings, thread,
                        model_required=answer is None and not print_prompt) as session:
        if print_prompt:
            _print_prompt(build_messages(request, stubs=session.context.stubs,
                                         workspace=session.context.workspace), as_json=as_json)
            return 0
        if answer is not None:
            outcome = await _check_answer(session, request, answer.read_text(encoding="utf-8"))
        else:
            outcome = await make_plan(request, models=session.models, context=session.context,
                                      tools=session.tools, rounds=settings.plan_rounds)
    _print_outcome(outcome, as_json=as_json)
    return 0 if outcome.plan is not None else 1


async def _check_answer(session: _Session, request: Request, text: str) -> PlanningOutcome:
    """The same checks, sample run and estimate a model's answer gets, without the model."""
    answer = split_answer(text)
    report = await check(answer.program, context=session.context,
                         checker=session.tools.checker)
    outcome = PlanningOutcome(plan=None, check_failures=report.failures, cost_usd=None)
    if report.problem is not None:
        outcome.rejected.append(report.problem)
        outcome.failure = feedback(report.problem)
        return outcome
    executor, items = session.tools.executor, session.tools.sample_items
    sample = None
    if executor is not None and items > 0 and answer.program is not None:
        sample = await executor.sample(answer.program, thread_id=None if request.thread_id ==
                                       CLI_THREAD else request.thread_id, items=items)
    outcome.sample = sample
    if sample is not None and sample.error is not None:
        outcome.failure = f"The sample run failed (nothing was changed):\n{sample.error}"
        return outcome
    outcome.plan = plan_of(request, answer, sample, session.context, outcome)
    return outcome


def _print_prompt(messages: list[ChatMessage], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([m.model_dump() for m in messages], indent=1, ensure_ascii=False))
        return
    for message in messages:
        print(f"===== {message.role} =====")
        print(message.content)


def _print_outcome(outcome: PlanningOutcome, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_outcome_json(outcome), indent=1, ensure_ascii=False, default=str))
        return
    if outcome.plan is None:
        out.print("[red]✗ No plan.[/red]")
        print(outcome.failure or "")
        if outcome.sample is not None and (outcome.sample.items or outcome.sample.writes):
            print("\n".join(sample_lines(outcome.sample)))
        return
    out.print("[green]✓ Checks passed[/green] (parse, sandbox policy, types).")
    print(_plan_text(outcome.plan))


def _plan_text(plan: Plan) -> str:
    lines = [f"Plan: {plan.summary}", "", "```python", plan.program.rstrip(), "```"]
    if plan.sample is not None:
        lines += ["", *sample_lines(plan.sample)]
    return "\n".join([*lines, "", *estimate_lines(plan.estimate)])


def _outcome_json(outcome: PlanningOutcome) -> dict[str, Any]:
    plan = outcome.plan
    return {
        "ok": plan is not None,
        "checks": {"passed": not outcome.check_failures or plan is not None,
                   "feedback": outcome.failure if plan is None else None,
                   "failures": [{"stage": f.stage, "rule": f.rule, "message": f.message}
                                for f in outcome.check_failures]},
        "model_calls": outcome.model_calls,
        "plan": plan.model_dump(mode="json", exclude={"sample"}) if plan else None,
        "sample": outcome.sample.model_dump(mode="json") if outcome.sample else None,
    }


def rules_command(
    limit: Annotated[int, typer.Option(help="How many rules to list.", min=1)] = 20,
) -> None:
    """The check rules models broke most while planning (change a rule that is not about safety
    and keeps being broken)."""
    try:
        settings = load_settings()
        rows = asyncio.run(_rule_counts(settings, limit))
    except SluiceError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    if not rows:
        out.print("No program has failed a check yet.")
        return
    for row in rows:
        example = " ".join(str(row["example"]).split())[:80]
        print(f"{row['count']:>6}  {row['stage']:<7} {row['rule']:<24} {example}")


async def _rule_counts(settings: Settings, limit: int) -> list[dict[str, Any]]:
    async with opened_database(settings) as engine:
        return await Store(engine).check_failure_counts(limit=limit)


def eval_command(
    suite: Annotated[Path, typer.Argument(help="A folder of tasks (see examples/eval).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run a suite of tasks with the configured models: success, calls, tokens, cost, time."""
    from infra.evaluation import report_json, run_suite

    try:
        report = asyncio.run(run_suite(suite, environ=dict(os.environ)))
    except SluiceError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(report_json(report), indent=1))
    else:
        _print_report(report_json(report))
    raise typer.Exit(0 if report.passed == len(report.tasks) else 1)


def _print_report(data: dict[str, Any]) -> None:
    tasks = Table(title=f"{data['passed']} of {data['tasks']} tasks passed")
    for column in ("task", "passed", "model calls", "tokens", "cost", "seconds"):
        tasks.add_column(column)
    for row in data["results"]:
        tasks.add_row(row["task"], "✓" if row["passed"] else "✗ " + "; ".join(row["problems"]),
                      str(row["model_calls"]), str(row["tokens"]), _usd(row["cost_usd"]),
                      f"{row['seconds']:.1f}")
    out.print(tasks)
    kinds = Table(title="By task kind")
    for column in ("kind", "model", "calls", "cost", "tasks passed", "passed per $", "best"):
        kinds.add_column(column, no_wrap=column == "model")
    best = data["best_per_dollar"]
    for row in data["kinds"]:
        per_dollar = row["passed_per_dollar"]
        kinds.add_row(row["kind"], row["model"], str(row["calls"]), _usd(row["cost_usd"]),
                      f"{row['passed']}/{row['tasks']}",
                      "-" if per_dollar is None else f"{per_dollar:,.0f}",
                      "★" if best.get(row["kind"]) == row["model"] else "")
    out.print(kinds)


def _usd(value: float | None) -> str:
    return "price unknown" if value is None else f"${value:.4f}"
