"""`sluice jobs`: list, show, cancel and resume runs from the command line."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.db import create_engine, migrate
from core.jobs import connect
from core.store import Store
from core.types import Estimate, Plan, Progress, Request, Run, RunState
from infra.cli import app
from infra.redis import EmbeddedRedis


async def _make_runs(url: str) -> tuple[str, str]:
    engine = create_engine(url)
    await migrate(engine)
    store = Store(engine)
    thread = await store.create_thread(surface="cli")
    request = Request(thread_id=thread.id, user="ana", text="do it")
    await store.add_user_request(request)
    plan = Plan(request_id=request.id, thread_id=thread.id, summary="s", program="print(1)\n",
                estimate=Estimate())
    await store.save_plan(plan)
    queued = Run(plan_id=plan.id, thread_id=thread.id, budget_usd=0.5)
    waiting = Run(plan_id=plan.id, thread_id=thread.id, budget_usd=0.5)
    for run in (queued, waiting):
        await store.create_run(run)
    await store.update_run(waiting.id, state=RunState.WAITING_APPROVAL, spent_usd=0.5,
                           waiting_reason="The run has spent $0.5000 of its $0.5000 budget.")
    await engine.dispose()
    return queued.id, waiting.id


@pytest.fixture
def env(tmp_path: Path, redis_server: EmbeddedRedis) -> dict[str, Any]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"
    queued, waiting = asyncio.run(_make_runs(url))
    return {"SLUICE_DATABASE_URL": url, "SLUICE_REDIS_URL": redis_server.url,
            "SLUICE_HOME": str(tmp_path), "queued": queued, "waiting": waiting}


def sluice(env: dict[str, Any], *args: str) -> Any:
    variables = {k: v for k, v in env.items() if k.startswith("SLUICE_")}
    return CliRunner().invoke(app, list(args), env=variables)


def test_an_empty_list_says_how_to_start_a_run(tmp_path: Path) -> None:
    listed = sluice({"SLUICE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'new.db'}",
                     "SLUICE_HOME": str(tmp_path)}, "jobs", "list")
    assert listed.exit_code == 0
    assert listed.stdout.startswith("No runs yet in this database. Ask for one in the console")


def test_list_and_show(env: dict[str, Any]) -> None:
    listed = sluice(env, "jobs", "list")
    assert listed.exit_code == 0
    assert env["queued"] in listed.stdout and "waiting_approval" in listed.stdout
    shown = sluice(env, "jobs", "show", env["waiting"][:10])
    assert shown.exit_code == 0
    assert "waiting for a person: The run has spent $0.5000" in shown.stdout


def test_cancel_a_queued_run_at_once(env: dict[str, Any]) -> None:
    done = sluice(env, "jobs", "cancel", env["queued"])
    assert done.exit_code == 0 and "cancelled" in done.stdout
    again = sluice(env, "jobs", "resume", env["queued"])
    assert "nothing to resume" in again.stdout


def test_resume_a_waiting_run_requeues_it_with_more_budget(env: dict[str, Any]) -> None:
    done = sluice(env, "jobs", "resume", env["waiting"])
    assert done.exit_code == 0 and "queued to resume" in done.stdout
    shown = " ".join(sluice(env, "jobs", "show", env["waiting"]).stdout.split())  # unwrapped
    assert "queued" in shown and "budget $1.00" in shown

    async def queued_jobs() -> list[str]:
        redis = await connect(env["SLUICE_REDIS_URL"])
        try:
            members = await redis.zrange("arq:queue", 0, -1)
            return [m.decode() for m in members if env["waiting"] in m.decode()]
        finally:
            await redis.aclose()

    [job] = asyncio.run(queued_jobs())
    assert job.startswith(f"run:{env['waiting']}:")


def test_unknown_run_says_how_to_find_ids(env: dict[str, Any]) -> None:
    done = sluice(env, "jobs", "show", "run_nope")
    assert done.exit_code == 1 and "sluice jobs list" in done.output


async def _set_run(url: str, run_id: str, **values: Any) -> None:
    engine = create_engine(url)
    await Store(engine).update_run(run_id, **values)
    await engine.dispose()


def test_show_says_how_the_run_was_confined_and_which_attempt_it_is(
        env: dict[str, Any]) -> None:
    asyncio.run(_set_run(env["SLUICE_DATABASE_URL"], env["queued"], state=RunState.RUNNING,
                         isolation="rlimits", attempts=2))
    shown = " ".join(sluice(env, "jobs", "show", env["queued"]).stdout.split())  # unwrapped
    assert ("sandbox: rlimits (resource limits only: the program's process could reach the "
            "network and the worker's files; install bubblewrap for more); attempt 2") in shown
    assert "sandbox:" not in sluice(env, "jobs", "show", env["waiting"]).stdout  # not run yet


def test_a_running_run_shows_its_time_and_the_time_left(env: dict[str, Any]) -> None:
    running = Progress(done=5, failed=1, total=24, elapsed_s=12.0)
    asyncio.run(_set_run(env["SLUICE_DATABASE_URL"], env["queued"], state=RunState.RUNNING,
                         progress=running))
    shown = sluice(env, "jobs", "show", env["queued"])
    assert shown.exit_code == 0
    assert "running  (5/24 done, 1 failed, 12 s, about 36 s left" in shown.stdout


def test_follow_shows_the_run_until_it_ends(env: dict[str, Any]) -> None:
    url = env["SLUICE_DATABASE_URL"]
    asyncio.run(_set_run(url, env["queued"], state=RunState.RUNNING,
                         progress=Progress(done=2, total=24, elapsed_s=3.0)))
    finished = Progress(done=24, total=24, elapsed_s=31.0)
    ends = threading.Timer(1.0, lambda: asyncio.run(_set_run(
        url, env["queued"], state=RunState.SUCCEEDED, progress=finished)))
    ends.start()
    try:
        followed = sluice(env, "jobs", "show", env["queued"], "--follow")
    finally:
        ends.join()
    assert followed.exit_code == 0
    assert "24/24" in followed.stdout and "31 s" in followed.stdout
    assert f"{env['queued']}  succeeded  (24/24 done, 0 failed, 31 s, $0.0000 spent" in \
        followed.stdout
