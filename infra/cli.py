"""The `sluice` command line: `up`, `demo`, `doctor`, `plan`, `rules`, `jobs`, `sandbox`.

This module is the composition root: it may start every part of Sluice. Settings are read once
here, from the environment and `.env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from codegen.model_config import describe_models, needs_scripted_model
from core.errors import ConfigurationError
from core.settings import Settings, load_settings
from infra.cli_automations import automations_app
from infra.cli_connect import connect_command, connections_app
from infra.cli_email import email_app
from infra.cli_jobs import jobs_app
from infra.cli_plan import eval_command, plan_command, rules_command
from infra.cli_sandbox import sandbox_app
from infra.demo import check_demo, drive_demo, prepare_demo, thread_text
from infra.stack import LocalStack

app = typer.Typer(help="Sluice: one short program per job, run durably.", no_args_is_help=True,
                  add_completion=False)
app.add_typer(jobs_app, name="jobs")
app.add_typer(sandbox_app, name="sandbox")
app.command("plan")(plan_command)
app.command("rules")(rules_command)
app.command("eval")(eval_command)
app.add_typer(automations_app, name="automations")
app.add_typer(email_app, name="email")
app.command("connect")(connect_command)
app.add_typer(connections_app, name="connections")
out = Console()
err = Console(stderr=True)


def _environ(**overrides: str) -> dict[str, str]:
    return {**os.environ, **overrides}


def _settings(**overrides: str) -> Settings:
    try:
        return load_settings(_environ(**overrides))
    except ConfigurationError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


def _stack(scenario: Path | None = None, **overrides: str) -> LocalStack:
    _settings(**overrides)  # fail early, with the message, on bad settings
    return LocalStack(_environ(**overrides), scenario=scenario)


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@app.command()
def up(demo: Annotated[bool, typer.Option(help="Load the bundled signups demo and ask it.")]
       = False) -> None:
    """Start Redis, the database, the SMTP outbox, a worker and the console; Ctrl-C stops all."""
    logging.basicConfig(level=logging.WARNING)
    overrides: dict[str, str] = {}
    files = None
    if demo:
        files = prepare_demo(_settings().home)
        overrides["SLUICE_SHEETS_DIR"] = str(files.sheets_dir)
    stack = _stack(files.scenario if files else None, **overrides)

    async def main() -> None:
        await stack.start()
        out.print(f"[green]Sluice is up[/green]: console at [bold]{stack.console_url}[/bold] "
                  f"(logs in {stack.log_dir})")
        if needs_scripted_model(stack.settings):
            out.print("No model key is set: plans come from the scripted model.")
        if stack.settings.email_inbound:
            s = stack.settings
            out.print(f"Email in: SMTP on {s.email_host}:{s.email_port} for {s.mail_from} "
                      f"(allowed senders: {s.email_allow or 'none yet; set SLUICE_EMAIL_ALLOW'})")
        if stack.settings.slack_enabled:
            out.print(_slack_line(stack))
        if files is not None:
            task = asyncio.create_task(_ask_demo(stack, files.request))
        out.print("Press Ctrl-C to stop everything.")
        await _until_interrupted()
        if files is not None:
            task.cancel()

    _run(main(), stack)


def _slack_line(stack: LocalStack) -> str:
    if stack.settings.slack_app_token is not None:
        return "Slack: connected over Socket Mode."
    return (f"Slack: events at {stack.console_url}/slack/events; give Slack a public HTTPS "
            "address that forwards there (README, 'Connect to Slack').")


async def _ask_demo(stack: LocalStack, request: str) -> None:
    thread_id = await drive_demo(stack.console_url, request, approve=False)
    out.print(f"Demo request asked. Open [bold]{stack.console_url}/?thread={thread_id}[/bold] "
              "to see the plan and approve it.")


@app.command("demo")
def demo_command(headless: Annotated[bool, typer.Option(
        help="Run without a browser, approve automatically, print the thread and check it.")]
        = False) -> None:
    """Run the bundled signups demo end to end."""
    if not headless:
        up(demo=True)
        return
    logging.basicConfig(level=logging.WARNING)
    base = _settings()
    files = prepare_demo(base.home)
    original = files.sheets_dir.parent / "signups.original.csv"
    original.write_bytes(files.sheet.read_bytes())
    stack = _stack(files.scenario, SLUICE_SHEETS_DIR=str(files.sheets_dir))

    async def main() -> int:
        await stack.start()
        assert stack.store is not None
        # Only this run's mail counts: the outbox keeps what earlier demos sent.
        earlier = {m.message_id for m in await stack.store.list_outbox()}
        thread_id = await drive_demo(stack.console_url, files.request)
        print(await thread_text(stack.console_url, thread_id), flush=True)
        outbox = [m.model_dump() for m in await stack.store.list_outbox()
                  if m.message_id not in earlier]
        problems = check_demo(original, files.sheet, outbox, date.today())
        for problem in problems:
            err.print(f"[red]✗ {problem}[/red]")
        if not problems:
            out.print(f"\n[green]✓ demo passed[/green]: {len(outbox)} emails sent to the "
                      f"outbox, sheet updated ({files.sheet})")
        return 1 if problems else 0

    raise typer.Exit(_run(main(), stack))


def _run(coro: object, stack: LocalStack) -> int:
    async def wrapped() -> int:
        try:
            result = await coro  # type: ignore[misc]
            return int(result or 0)
        finally:
            await stack.stop()

    try:
        return asyncio.run(wrapped())
    except ConfigurationError as exc:
        err.print(f"[red]{exc.message}[/red]")
        return 2
    except KeyboardInterrupt:
        return 130


@app.command()
def doctor() -> None:
    """Say what this machine gives Sluice: sandbox isolation, Redis, database, model."""
    from infra.redis import redis_server_binary
    from workers._isolation import describe
    from workers.sandbox import detect_isolation

    settings = _settings()
    rows = [
        ("sandbox isolation", describe(detect_isolation(settings.sandbox_isolation))),
        ("redis", settings.redis_url or f"embedded ({redis_server_binary()})"),
        ("database", settings.effective_database_url),
        ("python", sys.version.split()[0]),
    ]
    rows += describe_models(settings)
    for name, value in rows:
        out.print(f"{name:>18}: {value}")


def main() -> None:  # pragma: no cover - console script entry
    with contextlib.suppress(KeyboardInterrupt):
        app()


if __name__ == "__main__":
    app()


__all__ = ["Path", "app"]
