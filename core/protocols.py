"""Seams between packages: what one side needs of another, without importing it.

`codegen` talks to models through `ModelClient`; `integrations.ai` uses the same protocol, and
`workers` hands both the litellm-backed implementation. `codegen` never executes generated code:
the planner's sample runs go through `ProgramExecutor`, which `workers` implements with the
sandbox in preview mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from core.types import SampleRun

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


class ProgramExecutor(Protocol):
    async def sample(self, program: str, *, thread_id: str | None, items: int) -> SampleRun:
        """Run `program` on the first `items` items of its loops in preview mode: reads and AI
        calls happen, writes are described instead of done. Failures are in the result.
        `thread_id` names the thread whose saved variables the program starts with."""
        ...
