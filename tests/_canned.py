"""A `ModelClient` for tests that need one but never ask it anything that matters."""

from __future__ import annotations

from core.protocols import ChatMessage, Completion, TaskKind


class CannedModel:
    """Answers every prompt with "ok"."""

    async def complete(self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
                       json_schema: dict[str, object] | None = None) -> Completion:
        return Completion(text="ok", model="canned")
