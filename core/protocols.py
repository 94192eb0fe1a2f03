"""Seams between packages: what one side needs of another, without importing it.

`codegen` talks to models through `ModelClient`; `integrations.ai` uses the same protocol, and
`workers` hands both the litellm-backed implementation. `codegen` never executes generated code:
the planner's sample runs go through `ProgramExecutor`, which `workers` implements with the
sandbox in preview mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

if TYPE_CHECKING:
    from core.types import SampleRun

TaskKind = Literal["plan", "extract", "write", "classify", "vision"]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str
    images: list[str] = Field(default_factory=list, description="Images for the vision kind, "
                              "as data: URLs; dumped as OpenAI content parts after the text.")

    @model_serializer(mode="wrap")
    def _openai_form(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`{"role", "content"}`; with images, content is a list of text and image_url parts."""
        data: dict[str, Any] = handler(self)
        images = data.pop("images", None) or []
        if images:
            data["content"] = [{"type": "text", "text": self.content}] + [
                {"type": "image_url", "image_url": {"url": url}} for url in images]
        return data


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
