"""The credentials vault, the service registry and the workspace catalog built from them."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import ConfigurationError, IntegrationError, InvalidInputError, NotFoundError
from core.settings import Settings
from integrations.base import EffectCall, Integration, action
from integrations.registry import (
    CredentialField,
    Service,
    build_catalog,
    check_connection_name,
    named,
    register,
    service,
)
from integrations.vault import Credentials, Vault
from tests._canned import CannedModel

TOKEN = "tok-9f8e7d6c5b4a"
PASSWORD = "pw-hunter2-secret"


class Helpdesk(Integration):
    """A test service whose errors quote its credentials, as careless SDKs do."""

    name = "helpdesk"

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    @action("read")
    async def whoami(self) -> str:
        """The account the token belongs to."""
        raise IntegrationError(f"token {self.credentials['token']} was refused by "
                               f"{self.credentials['site']}")

    @action("write")
    async def crash(self) -> None:
        """Fails with an unexpected error."""
        raise RuntimeError(f"POST https://admin:{PASSWORD}@{self.credentials['site']}/x failed "
                           f"with {self.credentials['token']}")

    async def describe(self) -> dict[str, Any]:
        return {"site": self.credentials["site"], "queues": ["support"]}


HELPDESK = Service(
    name="helpdesk", summary="A test helpdesk.",
    fields=(CredentialField("site", "Site host"), CredentialField("token", "API token",
                                                                  secret=True)),
    factory=lambda creds, settings: named(Helpdesk, creds.name)(creds),
)




@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "state")


async def test_credentials_are_encrypted_at_rest_with_a_private_key_file(
    engine: AsyncEngine, settings: Settings,
) -> None:
    vault = Vault.from_settings(settings, engine)
    key_file = settings.home / "vault.key"
    assert not key_file.exists()
    await vault.put("default", "desk", "helpdesk", {"site": "desk.example", "token": TOKEN})
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with engine.connect() as conn:
        raw = (await conn.execute(sa.text("select sealed, fields from credentials"))).one()
    assert TOKEN.encode() not in bytes(raw[0]) and b"desk.example" not in bytes(raw[0])
    assert json.loads(raw[1]) == ["site", "token"] if isinstance(raw[1], str) else raw[1]
    got = await vault.get("default", "desk")
    assert got == {"site": "desk.example", "token": TOKEN} and got.service == "helpdesk"
    assert TOKEN not in repr(got)
    infos = await vault.list("default")
    assert [(i.name, i.service, i.fields) for i in infos] == [("desk", "helpdesk",
                                                               ["site", "token"])]
    assert await vault.list("other-team") == []
    assert await vault.remove("default", "desk") is True
    assert await vault.remove("default", "desk") is False
    with pytest.raises(NotFoundError, match="no connection 'desk' in workspace 'default'"):
        await vault.get("default", "desk")


async def test_the_wrong_key_is_a_clear_error(engine: AsyncEngine, settings: Settings) -> None:
    await Vault.from_settings(settings, engine).put("default", "desk", "helpdesk",
                                                    {"site": "a", "token": TOKEN})
    other = settings.model_copy(update={"vault_key": Fernet.generate_key().decode()})
    with pytest.raises(ConfigurationError) as info:
        await Vault.from_settings(other, engine).get("default", "desk")
    assert "cannot be decrypted with this vault key" in info.value.message
    assert "sluice connect helpdesk --name desk" in info.value.message
    bad = settings.model_copy(update={"vault_key": "not-a-key"})
    with pytest.raises(ConfigurationError, match="SLUICE_VAULT_KEY is not a vault key"):
        await Vault.from_settings(bad, engine).put("default", "x", "helpdesk", {})
    (settings.home / "vault.key").chmod(0o644)
    with pytest.raises(ConfigurationError, match="can be read by other users"):
        await Vault.from_settings(settings, engine).get("default", "desk")


def test_service_fields_and_names_are_checked() -> None:
    register("helpdesk", "tests.test_vault:HELPDESK")
    spec = service("helpdesk")
    assert spec.check({"site": "a", "token": "b"}) == {"site": "a", "token": "b"}
    with pytest.raises(InvalidInputError, match=r"helpdesk needs token\. Fields: site, token\."):
        spec.check({"site": "a"})
    with pytest.raises(InvalidInputError, match="helpdesk has no field tokn"):
        spec.check({"site": "a", "tokn": "b"})
    with pytest.raises(InvalidInputError, match=r"no service 'hubspotx' to connect\. Services: "):
        service("hubspotx")
    assert check_connection_name("crm_2") == "crm_2"
    for bad in ("my-crm", "class", "sheets", "_x"):
        with pytest.raises(InvalidInputError):
            check_connection_name(bad)


async def test_connections_become_integrations_whose_secrets_never_show(
    engine: AsyncEngine, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    register("helpdesk", "tests.test_vault:HELPDESK")
    database = tmp_path / "crm.db"
    sync = sa.create_engine(f"sqlite:///{database}")
    with sync.begin() as conn:
        conn.execute(sa.text("create table deals (id integer primary key, title text)"))
    sync.dispose()
    vault = Vault.from_settings(settings, engine)
    await vault.put("default", "desk", "helpdesk", {"site": "desk.example", "token": TOKEN})
    await vault.put("default", "crm", "sql", {"url": f"sqlite:///{database}"})
    await vault.put("other-team", "theirs", "sql", {"url": "sqlite://"})

    catalog = await build_catalog(settings, CannedModel(), engine=engine)
    try:
        assert list(catalog.integrations) == ["sheets", "mail", "ai", "files", "crm", "desk"]
        stubs = catalog.stubs()
        assert stubs.endswith("ai: AI\nfiles: Files\ncrm: SQL\ndesk: Helpdesk\n")
        assert "def whoami(self) -> str:" in stubs and "def query(self, statement: str, /" in stubs
        described = await catalog.describe()
        assert described["crm"]["deals"]["columns"] == ["id", "title"]
        assert described["desk"]["site"] == "desk.example"  # not a secret field: shown
        everything = stubs + json.dumps(catalog.manifest()) + json.dumps(described, default=str)
        assert TOKEN not in everything and str(database) not in stubs

        with caplog.at_level(logging.WARNING):
            with pytest.raises(IntegrationError) as refused:
                await catalog.dispatch(EffectCall("desk", "whoami", [], {}))
            with pytest.raises(IntegrationError) as crashed:
                await catalog.dispatch(EffectCall("desk", "crash", [], {}))
        assert refused.value.message == "token *** was refused by desk.example"
        assert crashed.value.message == ("desk.crash failed (RuntimeError); the details are "
                                         "in the worker's log.")
        assert TOKEN not in caplog.text and PASSWORD not in caplog.text
        assert "desk.crash failed" in caplog.text
        rows = await catalog.dispatch(EffectCall("crm", "query", ["select count(*) as n from "
                                                                  "deals"], {}))
        assert rows == [{"n": 0}]
    finally:
        await catalog.aclose()


async def test_a_broken_connection_is_left_out_not_fatal(
    engine: AsyncEngine, settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    vault = Vault.from_settings(settings, engine)
    await vault.put("default", "warehouse", "sql", {"url": "nodriver+nothing://x"})
    await vault.put("default", "gone", "no-such-service", {"token": TOKEN})
    with caplog.at_level(logging.WARNING):
        catalog = await build_catalog(settings, CannedModel(), engine=engine)
    assert list(catalog.integrations) == ["sheets", "mail", "ai", "files"]
    assert "connection 'warehouse' (sql) left out" in caplog.text
    assert "connection 'gone' (no-such-service) left out" in caplog.text
    assert TOKEN not in caplog.text
