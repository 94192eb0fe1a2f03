"""`sluice eval SUITE_DIR`: run a suite of tasks with the configured models and score them.

A task is a folder with `task.yaml`: the request, fixture sheets, the scripted model's answers
(used when no model key is set) and the expected end state. Each task runs the real path in this
process: the planner (checks, sample run, estimate) with the configured models, approval, then
`run_program` in the sandbox against a fresh copy of the fixtures, a local SMTP outbox and an
embedded Redis. The report gives per task: success, model calls, tokens, cost and time; and per
task kind (plan, extract, write, classify, vision), each model's calls, cost and tasks passed,
and which did best per dollar.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codegen.model_config import needs_scripted_model
from core.db import create_engine, migrate
from core.errors import ConfigurationError
from core.jobs import connect
from core.protocols import ChatMessage, Completion, ModelClient, TaskKind
from core.settings import load_settings
from core.store import Store
from core.types import PlanStatus, Request, Run, RunState
from infra.outbox import start_outbox
from infra.redis import EmbeddedRedis
from infra.scripted_model import load_scenario, start_scripted_model
from workers.deps import Deps
from workers.planning import plan_for
from workers.running import run_program

__all__ = ["EvalReport", "KindScore", "TaskResult", "load_task", "run_suite"]


class RowCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    where: dict[str, str]
    equals: dict[str, str]


class Expectations(BaseModel):
    """The end state a task must reach. `{today}` in a value is today's ISO date."""

    model_config = ConfigDict(extra="forbid")

    emails: int | None = Field(default=None, description="Emails in the outbox.")
    recipients: list[str] | None = None
    sheets: dict[str, list[RowCheck]] = Field(default_factory=dict)
    output_contains: list[str] = Field(default_factory=list)


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request: str = Field(min_length=1)
    sheets: str | None = Field(default="sheets", description="Fixture sheets folder.")
    scripted: str | None = Field(default="scenario.yaml", description="Scripted answers.")
    run_first: int | None = Field(default=None, ge=1, description="Approve the first N only.")
    expect: Expectations = Field(default_factory=Expectations)


@dataclass
class Call:
    kind: TaskKind
    model: str
    tokens: int
    cost_usd: float | None


@dataclass
class TaskResult:
    name: str
    passed: bool
    problems: list[str]
    model_calls: int
    tokens: int
    cost_usd: float | None
    seconds: float
    calls: list[Call] = field(default_factory=list)


@dataclass
class KindScore:
    kind: str
    model: str
    calls: int
    cost_usd: float | None
    tasks: int
    passed: int

    @property
    def passed_per_dollar(self) -> float | None:
        if self.cost_usd is None or self.cost_usd <= 0:
            return None
        return self.passed / self.cost_usd


@dataclass
class EvalReport:
    tasks: list[TaskResult]
    kinds: list[KindScore]

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.tasks)

    def best_per_dollar(self) -> dict[str, str]:
        """Task kind -> the model with most tasks passed per dollar (free ones first)."""
        best: dict[str, str] = {}
        for kind in sorted({k.kind for k in self.kinds}):
            scores = [k for k in self.kinds if k.kind == kind and k.passed]
            if scores:
                winner = max(scores, key=lambda k: (k.cost_usd == 0,
                                                    k.passed_per_dollar or 0.0, k.passed))
                best[kind] = winner.model
        return best


class _Recording:
    """A ModelClient that notes each answer's task kind, model, tokens and cost."""

    def __init__(self, inner: ModelClient) -> None:
        self.inner = inner
        self.calls: list[Call] = []

    async def complete(self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
                       json_schema: dict[str, object] | None = None) -> Completion:
        answer = await self.inner.complete(messages, kind=kind, json_schema=json_schema)
        self.calls.append(Call(kind, answer.model, answer.prompt_tokens +
                               answer.completion_tokens, answer.cost_usd))
        return answer


def load_task(folder: Path) -> Task:
    """The task in `folder`/task.yaml. Raises ConfigurationError naming the file and problem."""
    path = folder / "task.yaml"
    try:
        return Task.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigurationError(f"The eval task {path} is not valid: {exc}") from None


def task_folders(suite: Path) -> list[Path]:
    """The suite's tasks: its subfolders with a task.yaml, by name."""
    if not suite.is_dir():
        raise ConfigurationError(f"{suite} is not a folder. Give a folder of tasks, each a "
                                 "subfolder with a task.yaml (see examples/eval).")
    folders = sorted(p for p in suite.iterdir() if (p / "task.yaml").is_file())
    if not folders:
        raise ConfigurationError(f"{suite} has no tasks: no subfolder holds a task.yaml.")
    return folders


async def run_suite(suite: Path, *, environ: dict[str, str]) -> EvalReport:
    """Run every task of `suite` with the models `environ` configures."""
    folders = task_folders(suite)
    tasks = [(folder.name, folder, load_task(folder)) for folder in folders]
    with tempfile.TemporaryDirectory(prefix="sluice-eval-") as scratch:
        redis = EmbeddedRedis(Path(scratch) / "redis", persist=False)
        redis.start()
        try:
            results = [await _run_task(name, folder, task, Path(scratch) / name,
                                       redis_url=redis.url, environ=environ)
                       for name, folder, task in tasks]
        finally:
            redis.stop()
    return EvalReport(tasks=results, kinds=_kind_scores(results))


@asynccontextmanager
async def _task_services(home: Path, folder: Path, task: Task, *, redis_url: str,
                         environ: dict[str, str]) -> AsyncIterator[Deps]:
    sheets = home / "sheets"
    if task.sheets and (folder / task.sheets).is_dir():
        shutil.copytree(folder / task.sheets, sheets)
    else:
        sheets.mkdir(parents=True)
    engine = create_engine(f"sqlite+aiosqlite:///{home / 'sluice.db'}")
    await migrate(engine)
    store = Store(engine)
    outbox = await start_outbox(store)
    overrides = {"SLUICE_HOME": str(home), "SLUICE_SHEETS_DIR": str(sheets),
                 "SLUICE_SMTP_PORT": str(outbox.port), "SLUICE_REDIS_URL": redis_url,
                 "SLUICE_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'sluice.db'}"}
    settings = load_settings({**environ, **overrides}, env_file=False)
    server = None
    if needs_scripted_model(settings):
        scenario = load_scenario(folder / task.scripted) if task.scripted else load_scenario({})
        server = await start_scripted_model(scenario)
        settings = settings.model_copy(update={"scripted_model_url": server.url})
    redis = await connect(redis_url)
    deps = await Deps.create(settings, redis=redis)
    try:
        yield deps
    finally:
        await deps.close()
        await redis.aclose()
        await outbox.stop()
        if server is not None:
            await server.stop()
        await engine.dispose()


async def _run_task(name: str, folder: Path, task: Task, home: Path, *, redis_url: str,
                    environ: dict[str, str]) -> TaskResult:
    started = time.monotonic()
    async with _task_services(home, folder, task, redis_url=redis_url, environ=environ) as deps:
        recording = _Recording(deps.models)
        deps.models = recording
        problems = await _plan_and_run(deps, task)
        if not problems:
            problems = await _check_end_state(deps, task.expect, home / "sheets")
    calls = recording.calls
    costs = [c.cost_usd for c in calls]
    return TaskResult(name=name, passed=not problems, problems=problems,
                      model_calls=len(calls), tokens=sum(c.tokens for c in calls),
                      cost_usd=None if None in costs else sum(c or 0.0 for c in costs),
                      seconds=round(time.monotonic() - started, 2), calls=calls)


async def _plan_and_run(deps: Deps, task: Task) -> list[str]:
    thread = await deps.store.create_thread(surface="cli", title=task.request[:80])
    request = Request(thread_id=thread.id, surface="cli", user="eval", text=task.request)
    await deps.store.add_user_request(request)
    outcome = await plan_for(deps, request)
    if outcome.plan is None:
        return [f"no plan: {outcome.failure}"]
    await deps.store.save_plan(outcome.plan)
    await deps.store.decide_plan(outcome.plan.id, status=PlanStatus.APPROVED, user="eval")
    run = Run(plan_id=outcome.plan.id, thread_id=thread.id, limit_items=task.run_first,
              approved_by="eval", budget_usd=deps.settings.run_budget_usd)
    await deps.store.create_run(run)
    await run_program({"deps": deps}, {"run_id": run.id})
    finished = await deps.store.get_run(run.id)
    if finished.state != RunState.SUCCEEDED:
        return [f"the run ended {finished.state}: {finished.error or ''}".strip()]
    output = finished.result.output if finished.result else ""
    return [f"the output does not contain {text!r}"
            for text in task.expect.output_contains if text not in output]


async def _check_end_state(deps: Deps, expect: Expectations, sheets: Path) -> list[str]:
    problems: list[str] = []
    mails = await deps.store.list_outbox()
    if expect.emails is not None and len(mails) != expect.emails:
        problems.append(f"{len(mails)} emails were sent, not {expect.emails}")
    if expect.recipients is not None:
        sent = sorted(r for m in mails for r in m.recipients)
        if sent != sorted(expect.recipients):
            problems.append(f"emails went to {sent}, not {sorted(expect.recipients)}")
    for name, checks in expect.sheets.items():
        problems += _check_sheet(sheets / f"{name}.csv", checks)
    return problems


def _check_sheet(path: Path, checks: list[RowCheck]) -> list[str]:
    if not path.is_file():
        return [f"the sheet {path.stem} is missing"]
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    today = date.today().isoformat()
    problems = []
    for check in checks:
        found = [r for r in rows if all(r.get(k) == v for k, v in check.where.items())]
        if len(found) != 1:
            problems.append(f"{path.stem}: {len(found)} rows where {check.where}, not 1")
            continue
        for column, wanted in check.equals.items():
            value, expected = found[0].get(column), wanted.replace("{today}", today)
            if value != expected:
                problems.append(f"{path.stem} where {check.where}: {column} is {value!r}, "
                                f"not {expected!r}")
    return problems


def _kind_scores(results: list[TaskResult]) -> list[KindScore]:
    scores: dict[tuple[str, str], KindScore] = {}
    for result in results:
        seen: set[tuple[str, str]] = set()
        for call in result.calls:
            key = (call.kind, call.model)
            score = scores.setdefault(key, KindScore(call.kind, call.model, 0, 0.0, 0, 0))
            score.calls += 1
            score.cost_usd = None if score.cost_usd is None or call.cost_usd is None \
                else score.cost_usd + call.cost_usd
            if key not in seen:
                seen.add(key)
                score.tasks += 1
                score.passed += result.passed
    return sorted(scores.values(), key=lambda s: (s.kind, s.model))


def report_json(report: EvalReport) -> dict[str, Any]:
    return {
        "passed": report.passed, "tasks": len(report.tasks),
        "results": [{"task": t.name, "passed": t.passed, "problems": t.problems,
                     "model_calls": t.model_calls, "tokens": t.tokens, "cost_usd": t.cost_usd,
                     "seconds": t.seconds} for t in report.tasks],
        "kinds": [{"kind": k.kind, "model": k.model, "calls": k.calls, "cost_usd": k.cost_usd,
                   "tasks": k.tasks, "passed": k.passed,
                   "passed_per_dollar": k.passed_per_dollar} for k in report.kinds],
        "best_per_dollar": report.best_per_dollar(),
    }
