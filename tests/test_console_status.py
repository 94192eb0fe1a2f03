"""The console status: the scripted-model banner shows exactly when plans come from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from core.settings import load_settings
from infra.redis import EmbeddedRedis


async def status(redis_server: EmbeddedRedis, home: Path, env: dict[str, str]) -> Any:
    settings = load_settings({"SLUICE_HOME": str(home), "SLUICE_REDIS_URL": redis_server.url,
                              "SLUICE_EMAIL_INBOUND": "false", **env}, env_file=False)
    async with TestClient(TestServer(create_app(settings))) as client:
        response = await client.get("/api/status")
        assert response.status == 200
        return await response.json()


async def test_the_scripted_model_is_reported_when_its_server_is_what_plans_come_from(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    answer = await status(redis_server, tmp_path,
                          {"SLUICE_SCRIPTED_MODEL_URL": "http://127.0.0.1:9/v1"})
    assert answer == {"scripted_model": True, "model": None}


async def test_a_models_file_with_real_keys_is_not_reported_as_the_scripted_model(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("kinds:\n  plan: [{model: openai/gpt-4o-mini, api_key_env: OPENAI_KEY}]\n")
    answer = await status(redis_server, tmp_path, {"SLUICE_MODELS_FILE": str(models),
                                                   "OPENAI_KEY": "sk-test"})
    assert answer["scripted_model"] is False
