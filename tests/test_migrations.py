"""`core.db.migrate`: a new database gets the schema, one behind is brought up to date, and one
already there is only looked at (every process start opens the database; Alembic alone takes
0.4 s to import)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from core.db import (
    alembic_config,
    create_engine,
    create_sync_sqlite_engine,
    head_revisions,
    migrate,
)

OPEN_TWICE = """
import asyncio, sys
from core.db import create_engine, migrate

async def main(url):
    engine = create_engine(url)
    await migrate(engine)
    await engine.dispose()
    print("alembic" in sys.modules)

asyncio.run(main(sys.argv[1]))
"""


def test_the_newest_revision_read_from_the_files_is_alembics() -> None:
    assert head_revisions() == set(ScriptDirectory.from_config(alembic_config()).get_heads())


def opened(url: str) -> str:
    done = subprocess.run([sys.executable, "-c", OPEN_TWICE, url], capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_a_new_database_is_migrated_and_one_up_to_date_is_only_looked_at(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"
    assert opened(url) == "True"  # a new database: Alembic makes the schema
    assert opened(url) == "False"  # then it is at the newest revision: Alembic is not loaded
    with create_sync_sqlite_engine(url).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() in \
            head_revisions()


async def test_a_database_one_revision_behind_is_brought_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"
    engine = create_engine(url)
    await migrate(engine)
    sync = create_sync_sqlite_engine(url)
    with sync.begin() as conn:
        before = set(inspect(conn).get_table_names())
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "-1")
        assert set(inspect(conn).get_table_names()) < before
    await migrate(engine)
    with sync.connect() as conn:
        assert set(inspect(conn).get_table_names()) == before
        assert {conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()} == \
            head_revisions()
    await engine.dispose()
    sync.dispose()
