"""The database a test runs on: SQLite in its temporary folder, or a fresh Postgres database.

Set `SLUICE_TEST_POSTGRES_URL=postgresql+asyncpg://user@127.0.0.1/postgres` to run the suite's
database-backed tests on Postgres: each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

ADMIN_URL = os.environ.get("SLUICE_TEST_POSTGRES_URL")


@asynccontextmanager
async def database_url(folder: Path) -> AsyncIterator[str]:
    if not ADMIN_URL:
        yield f"sqlite+aiosqlite:///{folder / 'sluice.db'}"
        return
    name = f"sluice_test_{secrets.token_hex(6)}"
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
