"""Seams between packages: what one side needs of another, without importing it.

`codegen` talks to models through `ModelClient`; `integrations.ai` uses the same protocol, and
`workers` hands both the litellm-backed implementation. `codegen` never executes generated code;
the sample runs of the planner (a later issue) will be handed an executor protocol defined here
and implemented by `workers` with the sandbox.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field

TaskKind = Literal["plan", "extract", "write", "classify", "vision"]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Completion(BaseModel):
    """One model answer with what it cost."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = Field(default=0.0, description="None when the price is unknown.")
    seconds: float = 0.0


class ModelClient(Protocol):
    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        kind: TaskKind = "plan",
        json_schema: dict[str, object] | None = None,
    ) -> Completion:
        """Answer `messages` with the model group for `kind`.

        Raises:
            core.errors.ModelError: after retries and fallbacks, with a message for the thread.
        """
        ...
