"""Helpers for tests that talk to the scripted model server, directly or through litellm.

conftest.py belongs to the whole suite; these are plain async context managers instead of
fixtures, so a test states its scenario where it uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from core.protocols import ChatMessage
from core.settings import Settings, load_settings
from infra.scripted_model import ScenarioSource, ScriptedModelServer, scripted_model

if TYPE_CHECKING:
    from codegen.models import LiteLLMModels


def scripted_settings(url: str | None, **environ: str) -> Settings:
    """Settings for the scripted model at `url`, read from these variables alone (no .env)."""
    env = {"SLUICE_SCRIPTED_MODEL_URL": url} if url else {}
    return load_settings({**env, **environ}, env_file=False)


def user(text: str, *, system: str | None = None) -> list[ChatMessage]:
    """A prompt: an optional system message, then one user message."""
    prompt = [ChatMessage(role="system", content=system)] if system else []
    return [*prompt, ChatMessage(role="user", content=text)]


@asynccontextmanager
async def scripted_models(
    scenario: ScenarioSource,
    *,
    fallback: bool = True,
    num_retries: int = 1,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[ScriptedModelServer, LiteLLMModels]]:
    """A scripted server and `LiteLLMModels` built from settings that point at it.

    With `fallback`, every kind falls back to the scripted model "scripted-backup".
    """
    from codegen.models import SCRIPTED_BACKUP_MODEL, LiteLLMModels

    async with scripted_model(scenario) as server:
        settings = scripted_settings(server.url, **(environ or {}))
        models = LiteLLMModels.from_settings(
            settings, fallback_model=SCRIPTED_BACKUP_MODEL if fallback else None,
            num_retries=num_retries,
        )
        try:
            yield server, models
        finally:
            models.close()
