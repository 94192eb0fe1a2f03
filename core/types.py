"""Domain types that cross a process, queue or network hop (STYLE.md rule 3).

See ARCHITECTURE.md, "The flow": a message on a surface becomes a `Request`; planning makes a
`Plan` with an `Estimate`; approval makes a `Run`; workers report back with `JobEvent`s.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# SQLite's `synchronous` in WAL mode (core.db, settings.sqlite_synchronous).
Synchronous = Literal["normal", "full"]


def new_id(prefix: str) -> str:
    """A short, sortable-enough, unguessable id such as `run_3f9c1a2b7d4e`."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Button(_Model):
    """A button under a message. `action` is what a click does; `value` names its target."""

    action: Literal["approve", "run_first", "cancel", "cancel_run", "raise_budget",
                    "resolve_done", "resolve_redo", "retry_failed", "save_automation"]
    label: str
    value: str
    style: Literal["primary", "danger", "default"] = "default"
    count: int | None = Field(default=None, ge=1, description="N for 'run the first N'.")


class Attachment(_Model):
    id: str
    name: str
    content_type: str
    size: int


class Request(_Model):
    """What someone asked for, on any surface."""

    id: str = Field(default_factory=lambda: new_id("req"))
    thread_id: str
    surface: Literal["console", "slack", "email", "webhook", "cli"] = "console"
    user: str
    text: str = Field(min_length=1, max_length=20_000)
    created_at: datetime = Field(default_factory=utcnow)


class WritePreview(_Model):
    """One write a sample run would have done: "email to ana@example.com: “Your budget”"."""

    action: str = Field(description='"mail.send", "Sheet.update"')
    text: str
    details: dict[str, Any] = Field(default_factory=dict)
    path: str = ""


class SampleRun(_Model):
    """The planner's trial of a program on the first few items, with writes only previewed."""

    items: int = Field(default=0, description="Items the main loop visited in the sample.")
    available: int | None = Field(default=None, description="Items a full run would visit.")
    failed: int = 0
    output: str = ""
    table: list[dict[str, Any]] = Field(default_factory=list, description="First result rows.")
    table_rows: int | None = None
    writes: list[WritePreview] = Field(default_factory=list)
    write_counts: dict[str, int] = Field(default_factory=dict)
    reads: dict[str, int] = Field(default_factory=dict)
    model_calls: int = 0
    tokens: int = 0
    cost_usd: float | None = Field(default=0.0, description="None when a price is unknown.")
    seconds: float = 0.0
    item_seconds: list[float] = Field(default_factory=list, description="Each item's time.")
    item_costs: list[float] = Field(default_factory=list)
    item_tokens: list[int] = Field(default_factory=list)
    item_model_calls: list[int] = Field(default_factory=list)
    fixed_seconds: float = Field(default=0.0, description="Time outside the items' work.")
    error: str | None = None
    failures: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class Estimate(_Model):
    """What a run will take: shown before approval, compared with the actual afterwards."""

    items: int | None = Field(default=None, description="Items the main loop will visit.")
    model_calls: int = 0
    tokens: int = 0
    cost_usd: float | None = Field(default=None, description="None when a price is unknown.")
    seconds: float = 0.0
    cost_range: tuple[float, float] | None = None
    seconds_range: tuple[float, float] | None = None
    measured: bool = Field(default=False, description="Refined by a sample run's figures.")
    writes: dict[str, int] = Field(default_factory=dict, description="action -> expected count")
    write_lines: list[str] = Field(default_factory=list, description='"send up to 7 emails"')
    notes: list[str] = Field(default_factory=list)


class PlanStatus(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Plan(_Model):
    id: str = Field(default_factory=lambda: new_id("plan"))
    request_id: str
    thread_id: str
    summary: str
    program: str
    estimate: Estimate
    sample: SampleRun | None = None
    model_calls: int = 0
    cost_usd: float | None = 0.0
    status: PlanStatus = PlanStatus.AWAITING_APPROVAL


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Progress(_Model):
    loop: str = "main"
    done: int = 0
    failed: int = 0
    total: int | None = None
    elapsed_s: float = 0.0
    cost_usd: float = 0.0
    price_unknown: bool = Field(default=False, description="A model's price is unknown, so "
                                "cost_usd counts only the priced calls.")
    per_item_s: float | None = None

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (elapsed time per finished item), when the total is
        known and an item has finished."""
        finished = self.done + self.failed
        if self.total is None or finished == 0:
            return None
        return self.elapsed_s / finished * max(self.total - finished, 0)


class RunResult(_Model):
    """What a finished program produced, in numbers a person cares about."""

    summary: str
    writes: dict[str, int] = Field(default_factory=dict)
    reads: dict[str, int] = Field(default_factory=dict)
    replayed: int = 0
    writes_checked: int = Field(default=0, description="Writes a crash left unconfirmed, looked "
                                "up with their integration on resume.")
    writes_confirmed: int = Field(default=0, description="Of those, found done (not done again).")
    writes_redone: int = Field(default=0, description="Unconfirmed writes done again without a "
                               "check: idempotent ones, or sends the server deduplicates.")
    saved_variables: list[str] = Field(default_factory=list)
    unsaved_variables: list[dict[str, str]] = Field(default_factory=list)
    model_calls: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    output: str = ""
    table: Attachment | None = None
    table_rows: int | None = None
    failures: list[dict[str, Any]] = Field(default_factory=list)
    estimate_vs_actual: str | None = Field(default=None, description="The plan's estimate "
                                           "next to what the run took.")


class Run(_Model):
    id: str = Field(default_factory=lambda: new_id("run"))
    plan_id: str
    thread_id: str
    state: RunState = RunState.QUEUED
    limit_items: int | None = None
    approved_by: str | None = None
    budget_usd: float | None = Field(default=None, description="Pause and ask above this spend.")
    spent_usd: float = 0.0
    cancel_requested: bool = False
    waiting_reason: str | None = None
    waiting_path: str | None = None
    attempts: int = 0
    retry_of: str | None = None
    only_items: dict[str, list[int]] | None = Field(
        default=None, description="each() loop path -> item indexes: a retry of failed items.")
    isolation: str | None = None
    progress: Progress = Field(default_factory=Progress)
    result: RunResult | None = None
    error: str | None = None


class EventKind(StrEnum):
    PLANNING = "planning"
    PLAN_READY = "plan_ready"
    PLAN_FAILED = "plan_failed"
    RUN_STARTED = "run_started"
    PROGRESS = "progress"
    RUN_FINISHED = "run_finished"
    RUN_FAILED = "run_failed"
    RUN_WAITING = "run_waiting"
    RUN_CANCELLED = "run_cancelled"


class JobEvent(_Model):
    """What workers tell surfaces. Carried on the Redis event stream as JSON."""

    id: str = Field(default_factory=lambda: new_id("evt"))
    kind: EventKind
    thread_id: str
    request_id: str | None = None
    plan_id: str | None = None
    run_id: str | None = None
    text: str = ""
    progress: Progress | None = None
    at: datetime = Field(default_factory=utcnow)


class Message(_Model):
    """One message in a thread, as every surface shows it."""

    id: str
    thread_id: str
    author: Literal["user", "sluice"]
    user: str = ""
    kind: str = "text"
    text: str = ""
    buttons: list[Button] = Field(default_factory=list)
    attachments: list[Attachment] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class Thread(_Model):
    id: str
    surface: str
    title: str = ""
    created_at: datetime
    messages: list[Message] = Field(default_factory=list)


class OutboxMail(_Model):
    message_id: str
    sender: str
    recipients: list[str]
    subject: str
    body: str
    received_at: datetime
