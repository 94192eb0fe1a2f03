"""`sluice jobs list | show ID [--follow] | resume ID | cancel ID`: runs from the command line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from core.errors import ConfigurationError
from core.jobs import RUN_PROGRAM, RunProgramJob, connect, enqueue
from core.settings import Settings
from core.store import Store
from core.text import duration_text
from core.types import Run, RunState
from infra.cli_database import run_with_database
from workers._isolation import describe

jobs_app = typer.Typer(help="List, follow, resume and cancel runs.", no_args_is_help=True)
out = Console()
T = TypeVar("T")
FINAL = {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED}


def _redis_url(settings: Settings) -> str:
    """REDIS_URL, else the socket of a running `sluice up` in this folder."""
    if settings.redis_url:
        return settings.redis_url
    sock = settings.home.resolve() / "redis" / "redis.sock"
    if sock.exists():
        return f"unix://{sock}"
    raise ConfigurationError("No Redis to talk to: run this next to a running `sluice up`, or "
                             "set REDIS_URL.")


def _with_store(work: Callable[[Settings, Store], Awaitable[T]]) -> T:
    return run_with_database(lambda settings, engine: work(settings, Store(engine)))


def _progress_text(run: Run) -> str:
    """Done, failed, the run's time so far and, while it runs, the time left at its pace."""
    p = run.progress
    total = "?" if p.total is None else str(p.total)
    text = f"{p.done}/{total} done, {p.failed} failed, {duration_text(p.elapsed_s)}"
    left = _time_left(run)
    return f"{text}, {left}" if left else text


def _time_left(run: Run) -> str | None:
    """"about 36 s left" while the run runs and its pace is known."""
    eta = run.progress.eta_s() if run.state == RunState.RUNNING else None
    return None if eta is None else f"about {duration_text(eta)} left"


@jobs_app.command("list")
def list_runs(limit: Annotated[int, typer.Option(min=1, max=1000)] = 20) -> None:
    """The most recent runs."""
    runs = _with_store(lambda _s, store: store.list_runs(limit=limit))
    if not runs:
        out.print("No runs yet in this database. Ask for one in the console (`sluice up`), in "
                  "Slack or by email; `sluice up --demo` asks the bundled demo.")
        return
    table = Table()
    for name in ("run", "state", "progress", "spent", "thread"):
        table.add_column(name, no_wrap=name in {"run", "state"}, overflow="fold")
    for run in runs:
        table.add_row(run.id, run.state, _progress_text(run), f"${run.spent_usd:.4f}",
                      run.thread_id)
    out.print(table)


@jobs_app.command()
def show(run_id: str, follow: Annotated[bool, typer.Option(
        help="Show live progress until the run ends.")] = False) -> None:
    """One run: state, progress, spend, result or error."""
    run = _with_store(lambda _s, store: store.find_run(run_id))
    if follow and run.state not in FINAL:
        run = _follow(run.id)
    out.print(f"[bold]{run.id}[/bold]  {run.state}  ({_progress_text(run)}, "
              f"${run.spent_usd:.4f} spent, budget "
              f"{'none' if run.budget_usd is None else f'${run.budget_usd:.2f}'})")
    if run.isolation:
        tries = f"; attempt {run.attempts}" if run.attempts > 1 else ""
        out.print(f"sandbox: {describe(run.isolation)}{tries}")
    if run.waiting_reason:
        out.print(f"waiting for a person: {run.waiting_reason}")
    if run.result is not None:
        out.print(run.result.summary)
    if run.error:
        out.print(f"[red]{run.error}[/red]")


def _follow(run_id: str) -> Run:
    async def watch(_settings: Settings, store: Store) -> Run:
        # The run's own times (from its progress), not the time since this command started.
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[extra]}"))
        with Progress(*columns, console=out) as bar:
            task = bar.add_task(run_id, total=None, extra="")
            while True:
                run = await store.get_run(run_id)
                p = run.progress
                shown = [f"{p.failed} failed", duration_text(p.elapsed_s), _time_left(run),
                         f"${run.spent_usd:.4f}", run.state]
                bar.update(task, completed=p.done + p.failed, total=p.total,
                           extra=" · ".join(part for part in shown if part))
                if run.state in FINAL or run.state == RunState.WAITING_APPROVAL:
                    return run
                await asyncio.sleep(0.5)

    return _with_store(watch)


@jobs_app.command()
def cancel(run_id: str) -> None:
    """Stop a run: no new effects start; in-flight ones finish."""
    async def work(_settings: Settings, store: Store) -> RunState:
        run = await store.find_run(run_id)
        return await store.request_cancel(run.id)

    state = _with_store(work)
    out.print("cancelled" if state == RunState.CANCELLED else
              f"cancel requested; the run is {state} and stops at its next step")


@jobs_app.command()
def resume(run_id: str) -> None:
    """Resume a run that waits for a person (budget, uncertain write) or lost its worker."""
    async def work(settings: Settings, store: Store) -> str:
        run = await store.find_run(run_id)
        if run.state in FINAL:
            return f"{run.id} is {run.state}; there is nothing to resume."
        if run.state == RunState.WAITING_APPROVAL:
            await store.resume_waiting(run.id, add_budget_usd=run.budget_usd or 0.0)
        redis = await connect(_redis_url(settings))
        try:
            await enqueue(redis, RUN_PROGRAM, RunProgramJob(run_id=run.id),
                          job_id=f"run:{run.id}:{run.attempts + 1}:cli")
        finally:
            await redis.aclose()
        return f"{run.id} queued to resume from its journal."

    out.print(_with_store(work))

