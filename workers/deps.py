"""What every job needs, built once in arq's `on_startup` and passed down (STYLE.md rule 4)."""

from __future__ import annotations

from dataclasses import dataclass

from arq import ArqRedis

from codegen.models import LiteLLMModels
from core.db import create_engine, migrate
from core.jobs import connect
from core.protocols import ChatMessage, Completion, ModelClient, TaskKind
from core.settings import Settings
from core.store import Store


@dataclass
class Deps:
    settings: Settings
    store: Store
    redis: ArqRedis
    models: ModelClient

    @classmethod
    async def create(cls, settings: Settings, *, redis: ArqRedis | None = None) -> Deps:
        engine = create_engine(settings.effective_database_url)
        await migrate(engine)
        redis = redis or await connect(settings.require_redis_url())
        return cls(settings=settings, store=Store(engine), redis=redis,
                   models=LiteLLMModels.from_settings(settings))

    async def close(self) -> None:
        await self.store.engine.dispose()


class MeteredModels:
    """A ModelClient that counts the calls and dollars going through it (for one run)."""

    def __init__(self, inner: ModelClient) -> None:
        self.inner = inner
        self.calls = 0
        self.tokens = 0
        self.cost_usd: float | None = 0.0

    async def complete(self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
                       json_schema: dict[str, object] | None = None) -> Completion:
        completion = await self.inner.complete(messages, kind=kind, json_schema=json_schema)
        self.calls += 1
        self.tokens += completion.prompt_tokens + completion.completion_tokens
        if self.cost_usd is not None:
            self.cost_usd = (None if completion.cost_usd is None
                             else self.cost_usd + completion.cost_usd)
        return completion
