"""Real local services for the benchmarks: SQLite files, Postgres when configured, the scripted
model server in its own process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.db import create_engine, migrate
from core.types import Synchronous


@asynccontextmanager
async def sqlite_engine(folder: Path, name: str = "bench.db", *,
                        synchronous: Synchronous = "normal") -> AsyncIterator[AsyncEngine]:
    """A migrated SQLite database (WAL, as the worker opens it) in `folder`."""
    engine = create_engine(f"sqlite+aiosqlite:///{folder / name}",
                           sqlite_synchronous=synchronous)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


def postgres_url() -> str | None:
    """`DATABASE_URL` (or `SLUICE_DATABASE_URL`) when it names Postgres, in asyncpg form."""
    url = os.environ.get("DATABASE_URL") or os.environ.get("SLUICE_DATABASE_URL") or ""
    if not url.startswith(("postgres://", "postgresql")):
        return None
    scheme, rest = url.split("://", 1)
    return url if "+" in scheme else f"postgresql+asyncpg://{rest}"


@asynccontextmanager
async def postgres_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated, throwaway database on the Postgres server of `url`, dropped afterwards (the
    database `url` names is never touched)."""
    name = f"sluice_bench_{secrets.token_hex(6)}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine = create_engine(make_url(url).set(database=name).render_as_string(
            hide_password=False))
        try:
            await migrate(engine)
            yield engine
        finally:
            await engine.dispose()
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@contextmanager
def scripted_model_process(scenario: dict[str, Any], folder: Path) -> Iterator[str]:
    """`python -m infra.scripted_model` in its own process (as a provider would be, off the
    worker's CPU); yields its base URL."""
    path = folder / "scenario.json"
    path.write_text(json.dumps(scenario))
    proc = subprocess.Popen([sys.executable, "-m", "infra.scripted_model", "--scenario",
                             str(path), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the scripted model server did not start (exit {proc.poll()})")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system)."""
    times = os.times()
    return times.user + times.system


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
