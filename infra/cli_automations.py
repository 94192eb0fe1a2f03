"""`sluice automations save RUN_ID | list | show ID | disable ID | enable ID | run ID`."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from core.automations import Automation, Automations
from core.jobs import connect
from core.settings import Settings
from core.store import Store
from infra.cli_database import run_with_database
from infra.cli_jobs import _redis_url

automations_app = typer.Typer(help="Save runs as automations and trigger them.",
                              no_args_is_help=True)
out = Console()
T = TypeVar("T")


def _with_automations(work: Callable[[Settings, Automations], Awaitable[T]]) -> T:
    return run_with_database(lambda settings, engine: work(settings, Automations(Store(engine))))


def _triggers(settings: Settings, automation: Automation) -> list[str]:
    hook = f"{settings.effective_public_url}/hooks/{automation.id}/runs"
    from bot.email.outgoing import address_for  # the email surface: 0.6 s of imports

    lines = [f"webhook: POST {hook}", f"email:   {address_for(settings, automation.id)}"]
    if automation.schedule:
        lines.append(f"schedule: {automation.schedule} (UTC)")
    return lines


@automations_app.command()
def save(run_id: str,
         name: Annotated[str | None, typer.Option(help="A name people recognise.")] = None,
         schedule: Annotated[str | None, typer.Option(
             help="Cron expression (UTC), e.g. '0 9 * * 1-5'.")] = None,
         policy: Annotated[str, typer.Option(
             help="auto: run without asking while the estimate is within budget; ask.")]
         = "auto",
         budget: Annotated[float | None, typer.Option(min=0, help="USD per run.")] = None,
         inputs: Annotated[str | None, typer.Option(
             help="Default inputs as a JSON object (the program reads `inputs`).")] = None,
         ) -> None:
    """Save a run that succeeded as an automation: its checked program, inputs and budget."""
    try:
        defaults = json.loads(inputs) if inputs else {}
    except ValueError as exc:
        raise typer.BadParameter(f"--inputs is not JSON ({exc}).") from None
    if not isinstance(defaults, dict):
        raise typer.BadParameter('--inputs must be a JSON object, e.g. \'{"limit": 10}\'.')

    async def work(settings: Settings, automations: Automations) -> tuple[Settings, Automation]:
        run = await automations.store.find_run(run_id)
        return settings, await automations.save_from_run(
            run.id, user=os.environ.get("USER", "cli"), name=name, schedule=schedule,
            policy=policy, budget_usd=budget, inputs=defaults)

    settings, automation = _with_automations(work)
    out.print(f"Saved [bold]{automation.id}[/bold] “{automation.name}” "
              f"(budget ${automation.budget_usd:.2f}, policy {automation.policy}).")
    for line in _triggers(settings, automation):
        out.print("  " + line)


@automations_app.command("list")
def list_automations() -> None:
    """Every automation, newest first."""
    found = _with_automations(lambda _s, automations: automations.all())
    table = Table()
    for column in ("automation", "name", "enabled", "schedule", "policy", "budget", "thread"):
        table.add_column(column, overflow="fold", no_wrap=column == "automation")
    for a in found:
        table.add_row(a.id, a.name, "yes" if a.enabled else "no", a.schedule or "-", a.policy,
                      f"${a.budget_usd:.2f}", a.thread_id)
    out.print(table)


@automations_app.command()
def show(automation_id: str) -> None:
    """One automation: triggers, webhook secret, program and recent runs."""
    async def work(settings: Settings, automations: Automations) -> None:
        a = await automations.find(automation_id)
        runs = await automations.runs_of(a.id, limit=10)
        out.print(f"[bold]{a.id}[/bold] “{a.name}” — {'enabled' if a.enabled else 'disabled'}, "
                  f"policy {a.policy}, budget ${a.budget_usd:.2f}, posts to thread "
                  f"{a.thread_id}, saved from run {a.source_run_id}")
        for line in _triggers(settings, a):
            out.print("  " + line)
        out.print(f"  webhook secret: {a.webhook_secret}")
        if a.inputs:
            out.print(f"  default inputs: {json.dumps(a.inputs)}")
        out.print(f"\n{a.summary}\n")
        out.print(a.program, markup=False, highlight=False)
        for r in runs:
            out.print(f"  run {r.run_id} ({r.trigger})"
                      + (f", callback {r.callback_status}" if r.callback_status else ""))

    _with_automations(work)


def _set_enabled(automation_id: str, enabled: bool) -> None:
    async def work(_settings: Settings, automations: Automations) -> str:
        a = await automations.find(automation_id)
        await automations.set_enabled(a.id, enabled)
        return a.id

    found = _with_automations(work)
    out.print(f"{found} {'enabled' if enabled else 'disabled: no trigger starts it'}.")


@automations_app.command()
def disable(automation_id: str) -> None:
    """Stop every trigger of an automation (it stays saved)."""
    _set_enabled(automation_id, False)


@automations_app.command()
def enable(automation_id: str) -> None:
    """Let a disabled automation's triggers start runs again."""
    _set_enabled(automation_id, True)


@automations_app.command()
def run(automation_id: str,
        inputs: Annotated[str | None, typer.Option(help="Inputs as a JSON object.")] = None
        ) -> None:
    """Run an automation now, as its triggers would (next to a running `sluice up`)."""
    values = json.loads(inputs) if inputs else {}
    if not isinstance(values, dict):
        raise typer.BadParameter("--inputs must be a JSON object.")

    async def work(settings: Settings, automations: Automations) -> str:
        a = await automations.find(automation_id)
        redis = await connect(_redis_url(settings))
        try:
            triggered = await automations.trigger(a, redis=redis, trigger="cli",
                                                  user=os.environ.get("USER", "cli"),
                                                  inputs=values)
        finally:
            await redis.aclose()
        verb = "waits for approval in its thread" if triggered.waits_for_approval else "queued"
        return f"run {triggered.run.id} {verb} (thread {a.thread_id})."

    out.print(_with_automations(work))
