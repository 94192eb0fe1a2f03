"""What the bot's handlers need, built once in `create_app` (STYLE.md rule 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from arq import ArqRedis

from core.settings import Settings
from core.store import Store


class ThreadMirror(Protocol):
    """A surface that shows threads elsewhere (Slack) and must hear when one changed."""

    async def thread_changed(self, thread_id: str) -> None: ...


@dataclass
class BotDeps:
    settings: Settings
    store: Store
    redis: ArqRedis
    mirrors: list[ThreadMirror] = field(default_factory=list)

    async def thread_changed(self, thread_id: str) -> None:
        """Tell every mirroring surface that `thread_id` has new or edited messages."""
        for mirror in self.mirrors:
            await mirror.thread_changed(thread_id)
