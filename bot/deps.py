"""What the bot's handlers need, built once in `create_app` (STYLE.md rule 4)."""

from __future__ import annotations

from dataclasses import dataclass

from arq import ArqRedis

from core.settings import Settings
from core.store import Store


@dataclass
class BotDeps:
    settings: Settings
    store: Store
    redis: ArqRedis
