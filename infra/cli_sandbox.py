"""`sluice sandbox exec FILE.py`: run one program in the sandbox by hand, to debug it.

ARCHITECTURE.md, "Checks before running" and "The sandbox holds no secrets": the file is checked
with the sandbox policy first, then run in the same confined child process as a job's program,
with this machine's integrations (the local catalog from the settings) served from this process.
`infra.cli` registers the sub-app as `app.add_typer(sandbox_app, name="sandbox")`.

Exit codes: 0 when the program ran and succeeded, 1 when it was refused or failed, 2 for usage
and set-up problems (no such file, bad settings, a sandbox that cannot start).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from codegen.policy import PolicyViolation, check_program, render_violations
from core.errors import ConfigurationError, IntegrationError, SandboxError
from core.protocols import ChatMessage, Completion, ModelClient, TaskKind
from core.settings import Settings, load_settings
from integrations.base import EffectCall
from integrations.catalog import Catalog, build_local_catalog
from workers.sandbox import SandboxLimits, SandboxOutcome, run_sandboxed

__all__ = ["ExecReport", "sandbox_app"]

NO_MODEL = "no model configured: set SLUICE_MODEL_API_KEY or run `sluice up`"
_TABLE_ROWS_SHOWN = 20
_FAILURES_SHOWN = 10

sandbox_app = typer.Typer(help="Run programs in the sandbox by hand, to debug them.",
                          no_args_is_help=True, add_completion=False)


@sandbox_app.callback()
def _sandbox() -> None:
    """Run programs in the sandbox by hand, to debug them."""


class Violation(BaseModel):
    """One policy violation; `text` is the offending line with a caret under the spot."""

    line: int
    col: int
    rule: str
    message: str
    text: str


class ExecReport(BaseModel):
    """What `sandbox exec --json` prints: how the run went, or why it was refused."""

    ok: bool
    isolation: str | None = Field(description="None when the program was refused unrun.")
    output: str = ""
    error: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = Field(default_factory=list)
    table_csv: str | None = None
    calls: int = 0
    seconds: float = 0.0
    killed_reason: str | None = None
    violations: list[Violation] = Field(default_factory=list)

    @classmethod
    def refused(cls, source: str, violations: list[PolicyViolation]) -> ExecReport:
        """The report of a program the policy refuses; nothing ran."""
        listed = [Violation(line=v.line, col=v.col, rule=v.rule, message=v.message,
                            text=v.render(source)) for v in violations]
        error = {"type": "PolicyViolation", "line": violations[0].line,
                 "message": render_violations(source, violations)}
        return cls(ok=False, isolation=None, error=error, violations=listed)

    @classmethod
    def of(cls, outcome: SandboxOutcome) -> ExecReport:
        """The report of a run."""
        return cls(ok=outcome.ok, isolation=outcome.isolation, output=outcome.output,
                   error=outcome.error, failures=outcome.failures, table_csv=outcome.table_csv,
                   calls=outcome.calls, seconds=outcome.seconds,
                   killed_reason=outcome.killed_reason)


class _NoModel:
    """The `ModelClient` when none is configured: every `ai` action fails saying how to
    configure one. It raises IntegrationError rather than ModelError so that the catalog hands
    the program this message as it is (and logs no traceback for an expected failure)."""

    async def complete(
        self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
        json_schema: dict[str, object] | None = None,
    ) -> Completion:
        raise IntegrationError(NO_MODEL, kind=kind)


class _Handler:
    """Serves the program's calls from the catalog; in preview, records writes instead."""

    def __init__(self, catalog: Catalog, *, preview: bool) -> None:
        self.catalog = catalog
        self.preview = preview
        self.previewed: list[str] = []

    async def __call__(self, call: EffectCall) -> Any:
        if self.preview and self.catalog.effect_of(call) == "write":
            self.previewed.append(self.catalog.describe_action(call))
            return None
        return await self.catalog.dispatch(call)


@sandbox_app.command("exec")
def exec_program(
    file: Annotated[Path, typer.Argument(
        metavar="FILE.py", help="The program to run, a Python file.", exists=True,
        dir_okay=False, readable=True)],
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object instead of text.")] = False,
    sheets: Annotated[Path | None, typer.Option(
        help="Folder of CSV/XLSX sheets (default: SLUICE_SHEETS_DIR, else <home>/sheets).",
        exists=True, file_okay=False)] = None,
    preview: Annotated[bool, typer.Option(
        help="Record writes (emails, sheet updates) instead of performing them.")] = False,
    first: Annotated[int | None, typer.Option(
        min=1, help="each() visits only the first N items.")] = None,
    wall_s: Annotated[float | None, typer.Option(
        "--wall-s", min=0.1, help="Wall-clock limit in seconds (default: "
        "SLUICE_SANDBOX_WALL_S).")] = None,
) -> None:
    """Check FILE.py with the sandbox policy, run it in the sandbox, and show what happened."""
    logging.basicConfig(level=logging.WARNING)
    source = _read(file)
    violations = check_program(source)
    if violations:
        _show(ExecReport.refused(source, violations), [], json_output=json_output)
        raise typer.Exit(1)
    settings = _settings(sheets)
    limits = SandboxLimits.from_settings(settings)
    if wall_s is not None:
        limits = limits.model_copy(update={"wall_s": wall_s})
    try:
        outcome, previewed = asyncio.run(_execute(
            source, settings, limits=limits, preview=preview, first=first))
    except SandboxError as exc:
        _fail_setup(exc.message)
    _show(ExecReport.of(outcome), previewed, json_output=json_output)
    raise typer.Exit(0 if outcome.ok else 1)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(f"{file} is not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start})", param_hint="FILE") from None


def _settings(sheets: Path | None) -> Settings:
    environ = dict(os.environ)
    if sheets is not None:
        environ["SLUICE_SHEETS_DIR"] = str(sheets.resolve())
    try:
        return load_settings(environ)
    except ConfigurationError as exc:
        _fail_setup(exc.message)


def _fail_setup(message: str) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(message, style="red", markup=False)
    raise typer.Exit(2)


async def _execute(
    source: str, settings: Settings, *, limits: SandboxLimits, preview: bool, first: int | None
) -> tuple[SandboxOutcome, list[str]]:
    """Run `source` against the local catalog; the outcome and the writes previewed."""
    with _models(settings) as models:
        catalog = build_local_catalog(settings, models)
        handler = _Handler(catalog, preview=preview)
        try:
            outcome = await run_sandboxed(
                source, manifest=catalog.manifest(), handler=handler, limits=limits,
                preview=preview, limit_items=first, isolation=settings.sandbox_isolation)
        finally:
            await catalog.aclose()
    return outcome, handler.previewed


@contextlib.contextmanager
def _models(settings: Settings) -> Iterator[ModelClient]:
    """litellm models when a key or a scripted model server is configured, else `_NoModel`."""
    if not (settings.model_api_key or settings.scripted_model_url):
        yield _NoModel()
        return
    from codegen.models import LiteLLMModels  # litellm takes seconds to import

    models = LiteLLMModels.from_settings(settings)
    try:
        yield models
    finally:
        models.close()


# Showing the report.


def _show(report: ExecReport, previewed: list[str], *, json_output: bool) -> None:
    if json_output:
        typer.echo(report.model_dump_json())
        return
    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    if report.violations:
        err.print("The sandbox policy refuses this program; nothing ran.", style="red")
        err.print(report.error["message"] if report.error else "", markup=False)
        return
    if report.output:
        out.print(report.output, markup=False, end="" if report.output.endswith("\n") else "\n")
    _show_table(out, report.table_csv)
    _show_previewed(out, previewed)
    _show_failures(err, report.failures)
    _show_error(err, report)
    status = "[green]ok[/green]" if report.ok else "[red]failed[/red]"
    out.print(f"{status} · isolation {report.isolation} · {report.seconds:g} s · "
              f"{report.calls} integration calls", style="dim")


def _show_table(out: Console, table_csv: str | None) -> None:
    if table_csv is None:
        return
    rows = list(csv.reader(io.StringIO(table_csv)))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    table = Table(*header, title=f"result: {len(body)} rows", title_justify="left")
    for row in body[:_TABLE_ROWS_SHOWN]:
        table.add_row(*row)
    out.print(table)
    if len(body) > _TABLE_ROWS_SHOWN:
        out.print(f"... and {len(body) - _TABLE_ROWS_SHOWN} more rows (--json has them all)")


def _show_previewed(out: Console, previewed: list[str]) -> None:
    if previewed:
        out.print(f"Previewed {len(previewed)} writes (not performed):", style="yellow")
        for line in previewed:
            out.print(f"  would {line}", markup=False)


def _show_failures(err: Console, failures: list[dict[str, Any]]) -> None:
    if not failures:
        return
    err.print(f"{len(failures)} items failed:", style="yellow")
    for failure in failures[:_FAILURES_SHOWN]:
        where = f" (line {failure['line']})" if failure.get("line") else ""
        err.print(f"  {failure.get('loop')} item {failure.get('index')}{where}: "
                  f"{failure.get('error')}", markup=False)
    if len(failures) > _FAILURES_SHOWN:
        err.print(f"  ... and {len(failures) - _FAILURES_SHOWN} more")


def _show_error(err: Console, report: ExecReport) -> None:
    error = report.error
    if error is None:
        return
    where = f" at line {error['line']}" if error.get("line") else ""
    err.print(f"The program failed{where}: {error.get('type')}: {error.get('message')}",
              style="red", markup=False)
    if report.killed_reason:
        err.print(f"Stopped: {report.killed_reason}.", markup=False)
    traceback = str(error.get("traceback") or "")
    for line in traceback.splitlines()[:-1]:  # the last line repeats the message
        err.print(f"  {line}", markup=False)
