"""The frames a sandbox child sends, as the parent validates them on arrival (STYLE.md rule 3;
see `workers.sandbox` for the conversation and `workers._channel` for the framing)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, Field, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from integrations.base import EffectCall
from workers._channel import FrameError

__all__ = ["FRAMES", "Call", "Done", "End", "Error", "Print", "Progress", "Ready", "Replayed",
           "effect_call"]


class Ready(BaseModel):
    op: Literal["ready"]


class CallBody(BaseModel):
    path: str
    integration: str
    action: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    handle: tuple[str, str, str] | None = None


class Call(CallBody):
    op: Literal["call"]
    id: int


class ReplayedCall(TypedDict):
    """A call in a "replayed" frame: validated as a dict, without a model per call (a resumed
    run sends one per journaled call)."""

    path: str
    integration: str
    action: str
    args: NotRequired[list[Any]]
    kwargs: NotRequired[dict[str, Any]]
    handle: NotRequired[tuple[str, str, str] | None]


class Replayed(BaseModel):
    """Calls the child answered from the journal's results, for the handler to check."""

    op: Literal["replayed"]
    calls: list[ReplayedCall]


class Print(BaseModel):
    op: Literal["print"]
    text: str


class Progress(BaseModel):
    op: Literal["progress"]
    loop: str
    done: int
    failed: int = 0
    total: int | None = None
    available: int | None = None


class Done(BaseModel):
    op: Literal["done"]
    table_csv: str | None = None
    table_rows: int | None = None
    failures: list[dict[str, Any]] = Field(default_factory=list)
    variables: dict[str, str] = Field(default_factory=dict)  # JSON text, never parsed here
    summaries: dict[str, str] = Field(default_factory=dict)
    unsaved: list[dict[str, str]] = Field(default_factory=list)


class Error(BaseModel):
    op: Literal["error"]
    type: str
    message: str
    line: int | None = None
    traceback: str = ""
    failures: list[dict[str, Any]] = Field(default_factory=list)


class End:
    """The child's output ended; `error` when its framing broke."""

    def __init__(self, error: FrameError | None) -> None:
        self.error = error


Frame = Annotated[Ready | Call | Replayed | Print | Progress | Done | Error,
                   Field(discriminator="op")]
FRAMES: TypeAdapter[Frame] = TypeAdapter(Frame)


def effect_call(body: ReplayedCall) -> EffectCall:
    """The EffectCall of a call in a "replayed" frame."""
    return EffectCall(integration=body["integration"], action=body["action"],
                      args=body.get("args") or [], kwargs=body.get("kwargs") or {},
                      handle=body.get("handle"), path=body["path"])
