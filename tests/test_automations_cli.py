"""`sluice automations save | list | show | disable | enable | run` from the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.automations import Automations
from core.db import create_engine, migrate
from core.jobs import connect
from core.store import Store
from core.types import Estimate, Plan, Request, Run, RunResult, RunState
from infra.cli import app
from infra.redis import EmbeddedRedis


async def _make_runs(url: str) -> tuple[str, str]:
    engine = create_engine(url)
    await migrate(engine)
    store = Store(engine)
    thread = await store.create_thread(surface="console")
    request = Request(thread_id=thread.id, user="ana", text="count the rows")
    await store.add_user_request(request)
    plan = Plan(request_id=request.id, thread_id=thread.id, summary="Count the rows.",
                program="print(1)\n", estimate=Estimate(cost_usd=0.01))
    await store.save_plan(plan)
    done = Run(plan_id=plan.id, thread_id=thread.id, budget_usd=1.0)
    failed = Run(plan_id=plan.id, thread_id=thread.id, budget_usd=1.0)
    for run in (done, failed):
        await store.create_run(run)
    await store.update_run(done.id, state=RunState.SUCCEEDED,
                           result=RunResult(summary="1 row", cost_usd=0.02))
    await store.update_run(failed.id, state=RunState.FAILED)
    await engine.dispose()
    return done.id, failed.id


async def _automations(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        return await Automations(Store(engine)).all()
    finally:
        await engine.dispose()


async def _queued(redis_url: str) -> int:
    redis = await connect(redis_url)
    try:
        return int(await redis.zcard("arq:queue"))
    finally:
        await redis.flushdb()
        await redis.aclose()


@pytest.fixture
def env(tmp_path: Path, redis_server: EmbeddedRedis) -> dict[str, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"
    done, failed = asyncio.run(_make_runs(url))
    return {"SLUICE_DATABASE_URL": url, "SLUICE_REDIS_URL": redis_server.url,
            "SLUICE_HOME": str(tmp_path), "done": done, "failed": failed}


def sluice(env: dict[str, str], *args: str) -> Any:
    variables = {k: v for k, v in env.items() if k.startswith("SLUICE_")}
    return CliRunner().invoke(app, list(args), env=variables)


def test_save_list_show_disable_run(env: dict[str, str]) -> None:
    refused = sluice(env, "automations", "save", env["failed"])
    assert refused.exit_code == 1 and "only a run that succeeded" in refused.stderr
    bad = sluice(env, "automations", "save", env["done"], "--schedule", "every day")
    assert bad.exit_code == 1 and "cron expression has 5" in bad.stderr

    saved = sluice(env, "automations", "save", env["done"], "--name", "Row count",
                   "--schedule", "0 9 * * 1-5", "--inputs", '{"sheet": "signups"}')
    assert saved.exit_code == 0, saved.output
    [automation] = asyncio.run(_automations(env["SLUICE_DATABASE_URL"]))
    assert automation.name == "Row count" and automation.inputs == {"sheet": "signups"}
    assert automation.budget_usd == pytest.approx(1.0)  # the run's budget beats 2× its cost
    assert f"/hooks/{automation.id}/runs" in saved.stdout
    assert f"sluice+{automation.id}@localhost" in saved.stdout

    listed = sluice(env, "automations", "list")
    assert listed.exit_code == 0 and automation.id in listed.stdout
    shown = sluice(env, "automations", "show", automation.id[:10])
    assert shown.exit_code == 0
    assert automation.webhook_secret in shown.stdout and "print(1)" in shown.stdout

    ran = sluice(env, "automations", "run", automation.id)
    assert ran.exit_code == 0 and "queued" in ran.stdout
    assert asyncio.run(_queued(env["SLUICE_REDIS_URL"])) == 1

    assert sluice(env, "automations", "disable", automation.id).exit_code == 0
    refused_run = sluice(env, "automations", "run", automation.id)
    assert refused_run.exit_code == 1 and "disabled" in refused_run.stderr
    assert asyncio.run(_queued(env["SLUICE_REDIS_URL"])) == 0
    missing = sluice(env, "automations", "show", "auto_nope")
    assert missing.exit_code == 1 and "no automation" in missing.stderr
