"""Settings are read once from a mapping; a bad value names the variable and the fix."""

from __future__ import annotations

import pytest

from core.errors import ConfigurationError
from core.settings import load_settings


def test_conventional_urls_and_prefixed_names_are_read() -> None:
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0",
                              "DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1/db",
                              "SLUICE_CONSOLE_PORT": "9100"}, env_file=False)
    assert settings.redis_url == "redis://127.0.0.1:1/0"
    assert settings.effective_database_url.startswith("postgresql+asyncpg://")
    assert settings.console_port == 9100
    assert settings.using_scripted_model


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"SLUICE_CONSOLE_PORT": "eighty"}, env_file=False)
    assert "SLUICE_CONSOLE_PORT" in caught.value.message
    assert "eighty" in caught.value.message


def test_sqlite_synchronous_is_normal_unless_set_to_full() -> None:
    assert load_settings({}, env_file=False).sqlite_synchronous == "normal"
    full = load_settings({"SLUICE_SQLITE_SYNCHRONOUS": "full"}, env_file=False)
    assert full.sqlite_synchronous == "full"
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"SLUICE_SQLITE_SYNCHRONOUS": "extra"}, env_file=False)
    assert "SLUICE_SQLITE_SYNCHRONOUS" in caught.value.message


def test_missing_redis_says_how_to_get_one() -> None:
    settings = load_settings({}, env_file=False)
    with pytest.raises(ConfigurationError) as caught:
        settings.require_redis_url()
    assert "sluice up" in caught.value.message and "REDIS_URL" in caught.value.message


def test_dotenv_is_read(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    (tmp_path / ".env").write_text("SLUICE_SMTP_PORT=2525\n")  # type: ignore[operator]
    assert load_settings({}).smtp_port == 2525
