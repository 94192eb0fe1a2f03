"""Durable execution for real: a worker process killed with SIGKILL again and again.

ARCHITECTURE.md, "Durable execution by journal and replay". The run must end exactly as a
crash-free run would: one email per row, every row updated, every effect journaled once.
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import JournalRow, create_engine, migrate
from core.jobs import RUN_PROGRAM, RunProgramJob, connect, enqueue
from core.store import Store
from core.types import Estimate, Plan, Request, Run, RunState
from infra.outbox import start_outbox
from infra.redis import EmbeddedRedis

ITEMS = 2000
KILLS = 20
PROGRAM = """\
sheet = sheets.open("signups")
rows = sheet.rows()

def ask(row):
    mail.send(to=row["Email"], subject="Your budget", body=f"Hi {row['Name']}, your budget?")
    sheet.update(row, {"Asked": "yes"})

each(rows, ask, concurrency=8)
print(f"asked {len(rows)}")
"""


def write_sheet(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    with (folder / "signups.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Name", "Email", "Asked"])
        for i in range(n):
            writer.writerow([f"Person {i}", f"p{i}@example.com", ""])


class Workers:
    """Real `python -m workers` processes on the test's Redis and database."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self) -> None:
        self.started += 1
        log = (self.log_dir / f"worker-{self.started}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "workers"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and its sandbox child
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


async def setup_run(store: Store, redis_url: str, program: str) -> Run:
    thread = await store.create_thread(surface="cli", title="durability")
    request = Request(thread_id=thread.id, user="test", text="ask everyone")
    await store.add_user_request(request)
    plan = Plan(request_id=request.id, thread_id=thread.id, summary="ask", program=program,
                estimate=Estimate())
    await store.save_plan(plan)
    run = Run(plan_id=plan.id, thread_id=thread.id, approved_by="test")
    await store.create_run(run)
    redis = await connect(redis_url)
    await enqueue(redis, RUN_PROGRAM, RunProgramJob(run_id=run.id), job_id=f"run:{run.id}")
    await redis.aclose()
    return run


async def wait_for_state(store: Store, run_id: str, states: set[RunState],
                         timeout: float) -> Run:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        run = await store.get_run(run_id)
        if run.state in states:
            return run
        await asyncio.sleep(0.1)
    raise TimeoutError(f"run {run_id} did not reach {states} in {timeout:.0f} s")


def worker_env(home: Path, redis_url: str, db_url: str, smtp_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({"SLUICE_HOME": str(home), "SLUICE_REDIS_URL": redis_url,
                "SLUICE_DATABASE_URL": db_url, "SLUICE_SHEETS_DIR": str(home / "sheets"),
                "SLUICE_SMTP_PORT": str(smtp_port), "SLUICE_LEASE_TTL_S": "1.5",
                "SLUICE_SWEEP_EVERY_S": "0.3", "SLUICE_WORKER_POLL_DELAY_S": "0.05",
                "SLUICE_SCRIPTED_MODEL_URL": "http://127.0.0.1:9"})
    return env


@pytest.mark.slow
async def test_sigkill_twenty_times_loses_and_repeats_nothing(
        redis_server: EmbeddedRedis, tmp_path: Path, db_url: str) -> None:
    write_sheet(tmp_path / "sheets", ITEMS)
    engine = create_engine(db_url)
    await migrate(engine)
    store = Store(engine)
    redis = await connect(redis_server.url)
    await redis.flushdb()
    await redis.aclose()
    outbox = await start_outbox(store)
    workers = Workers(worker_env(tmp_path, redis_server.url, db_url, outbox.port), tmp_path)
    run = await setup_run(store, redis_server.url, PROGRAM)
    rng = random.Random(20261126)
    journal_sizes = [0]
    try:
        for _ in range(KILLS):
            workers.start()
            # Kill after a random amount of new work, so every kill lands mid-run.
            await grown_by(store, run.id, journal_sizes[-1] + rng.randint(30, 160))
            workers.kill()
            journal_sizes.append(await journal_size(store, run.id))
        workers.start()
        final = await wait_for_state(store, run.id, {RunState.SUCCEEDED, RunState.FAILED},
                                     timeout=240)
    finally:
        workers.stop()
        await outbox.stop()
    assert final.state == RunState.SUCCEEDED, final.error
    # The kills landed mid-run, at different points.
    assert journal_sizes == sorted(journal_sizes)  # replay never lost journaled work
    assert journal_sizes[-1] < 2 * ITEMS + 2  # the last kill was still mid-run
    assert len(set(journal_sizes)) == KILLS + 1

    mails = await store.list_outbox()
    per_recipient = Counter(r for m in mails for r in m.recipients)
    assert sorted(per_recipient) == sorted(f"p{i}@example.com" for i in range(ITEMS))
    assert set(per_recipient.values()) == {1}
    # A send a kill left unconfirmed was looked up in the outbox before it was sent again, so
    # no email reached the outbox twice (it would have stored one and counted the other).
    assert outbox.handler.duplicates == 0

    with (tmp_path / "sheets" / "signups.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == ITEMS and all(r["Asked"] == "yes" for r in rows)

    async with engine.connect() as conn:
        statuses = dict((await conn.execute(
            select(JournalRow.status, func.count()).where(JournalRow.run_id == run.id)
            .group_by(JournalRow.status))).all())
    assert statuses == {"done": 2 * ITEMS + 2}  # open + rows, then a send and an update per row
    await engine.dispose()


async def grown_by(store: Store, run_id: str, target: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and await journal_size(store, run_id) < target:
        await asyncio.sleep(0.02)


async def journal_size(store: Store, run_id: str) -> int:
    counts: dict[str, Any] = await store.journal_count(run_id)
    return sum(counts.values())


@pytest.mark.slow
async def test_redis_restart_in_the_middle_of_a_job(tmp_path: Path, db_url: str) -> None:
    redis = EmbeddedRedis(tmp_path / "redis", use_socket=False, persist=True)
    redis.start()
    items = 300
    write_sheet(tmp_path / "sheets", items)
    engine = create_engine(db_url)
    await migrate(engine)
    store = Store(engine)
    outbox = await start_outbox(store)
    workers = Workers(worker_env(tmp_path, redis.url, db_url, outbox.port), tmp_path)
    run = await setup_run(store, redis.url, PROGRAM)
    try:
        workers.start()
        await grown_by(store, run.id, items // 2)
        redis.kill()  # SIGKILL: whatever was not yet in the append-only file is gone
        await asyncio.sleep(1.0)
        redis.start()
        final = await wait_for_state(store, run.id, {RunState.SUCCEEDED, RunState.FAILED},
                                     timeout=120)
        assert workers.proc is not None and workers.proc.poll() is None  # the worker lived
    finally:
        workers.stop()
        await outbox.stop()
        redis.stop()
        await engine.dispose()
    assert final.state == RunState.SUCCEEDED, final.error
    mails = await store.list_outbox()
    assert len({r for m in mails for r in m.recipients}) == items == len(mails)
