"""`sluice connect SERVICE` and `sluice connections list | remove`: the vault from the shell."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from core.db import create_engine, migrate
from core.settings import Settings
from infra.cli import app
from integrations.vault import Vault

SECRET = "pw-s3cret-value"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"SLUICE_HOME": str(tmp_path / "state"),
            "SLUICE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"}


@pytest.fixture
def crm(tmp_path: Path) -> str:
    """A SQLite database to connect to, with one table."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("create table deals (id integer primary key, title text)"))
    engine.dispose()
    return f"sqlite:///{tmp_path / 'crm.db'}"


def sluice(env: dict[str, str], *args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env, input=input)


def stored(env: dict[str, str]) -> dict[str, dict[str, str]]:
    async def read() -> dict[str, dict[str, str]]:
        engine = create_engine(env["SLUICE_DATABASE_URL"])
        await migrate(engine)
        settings = Settings(home=Path(env["SLUICE_HOME"]))
        try:
            return {c.name: dict(c) for c in
                    await Vault.from_settings(settings, engine).load_all("default")}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_connect_from_json_checks_stores_and_lists(env: dict[str, str], crm: str,
                                                   tmp_path: Path) -> None:
    fields = tmp_path / "crm.json"
    fields.write_text(json.dumps({"url": crm}))
    result = sluice(env, "connect", "sql", "--name", "crm", "--from-json", str(fields))
    assert result.exit_code == 0, result.output
    assert "Connected: deals" in result.output
    assert "Stored crm (sql) in workspace 'default'; programs use it as `crm`" in \
        " ".join(result.output.split())
    assert stored(env) == {"crm": {"url": crm}}
    key = Path(env["SLUICE_HOME"]) / "vault.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    listing = sluice(env, "connections", "list")
    assert listing.exit_code == 0 and "crm" in listing.output and "url" in listing.output
    assert crm not in listing.output

    assert sluice(env, "connections", "remove", "crm").exit_code == 0
    assert stored(env) == {}
    again = sluice(env, "connections", "remove", "crm")
    assert again.exit_code == 1 and "There is no connection 'crm'" in again.output


def test_connect_prompts_for_fields(env: dict[str, str], crm: str) -> None:
    result = sluice(env, "connect", "sql", input=f"{crm}\n")
    assert result.exit_code == 0, result.output
    assert crm not in result.output  # a secret field is read without echo
    assert stored(env) == {"sql": {"url": crm}}


def test_a_connection_that_does_not_work_is_not_stored(env: dict[str, str],
                                                       tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://bot:{SECRET}@127.0.0.1:1/crm"
    result = sluice(env, "connect", "sql", "--name", "crm", "--from-json", "-",
                    input=json.dumps({"url": url}))
    assert result.exit_code == 1
    assert "Could not reach sql with these settings" in result.output
    assert "Nothing was stored" in " ".join(result.output.split())
    assert SECRET not in result.output
    assert stored(env) == {}
    forced = sluice(env, "connect", "sql", "--name", "crm", "--no-check", "--from-json", "-",
                    input=json.dumps({"url": url}))
    assert forced.exit_code == 0 and stored(env) == {"crm": {"url": url}}


def test_bad_input_is_refused_with_the_fix(env: dict[str, str], tmp_path: Path) -> None:
    result = sluice(env, "connect", "sql", "--name", "sheets", "--from-json", "-",
                    input='{"url": "sqlite://"}')
    assert result.exit_code == 2 and "'sheets' is taken by Sluice itself" in result.output
    result = sluice(env, "connect", "sql", "--from-json", "-", input='{"uri": "sqlite://"}')
    assert result.exit_code == 2 and "sql has no field uri. Fields: url." in result.output
    result = sluice(env, "connect", "salesforce")
    assert result.exit_code == 2 and "There is no service 'salesforce' to connect" in \
        result.output
    result = sluice(env, "connect", "sql", "--from-json", "-", input="{url")
    assert result.exit_code == 2 and "is not JSON" in result.output
    assert stored(env) == {}
