"""What every job needs, built once in arq's `on_startup` and passed down (STYLE.md rule 4)."""

from __future__ import annotations

from dataclasses import dataclass

from arq import ArqRedis

from codegen.models import LiteLLMModels
from core.db import engine_for, migrate
from core.jobs import connect
from core.protocols import ModelClient
from core.settings import Settings
from core.store import Store
from integrations.kept import KeptConnections


@dataclass
class Deps:
    settings: Settings
    store: Store
    redis: ArqRedis
    models: ModelClient
    kept: KeptConnections
    runs_going: int = 0  # run_program jobs in progress in this worker

    @classmethod
    async def create(cls, settings: Settings, *, redis: ArqRedis | None = None) -> Deps:
        engine = engine_for(settings)
        await migrate(engine)
        redis = redis or await connect(settings.require_redis_url())
        return cls(settings=settings, store=Store(engine), redis=redis,
                   models=LiteLLMModels.from_settings(settings),
                   kept=KeptConnections(idle_s=settings.keep_connections_s))

    async def close(self) -> None:
        await self.kept.aclose()
        aclose = getattr(self.models, "aclose", None)  # the direct transport's HTTP session
        if aclose is not None:
            await aclose()
        await self.store.engine.dispose()

