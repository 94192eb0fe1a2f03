"""Tables and the database engine (ARCHITECTURE.md, "State outlives the process").

SQLite under `.sluice/` by default, Postgres with `DATABASE_URL`; the schema is managed by Alembic
(`core/migrations`), applied by `migrate()` at start-up by whoever opens the database first.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.types import Synchronous, utcnow

if TYPE_CHECKING:
    from alembic.config import Config

    from core.settings import Settings


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow)


class ThreadRow(Base):
    __tablename__ = "threads"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    surface: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(200), default="")
    external_ref: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    created_at: Mapped[datetime] = _now_column()


class MessageRow(Base):
    __tablename__ = "messages"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    author: Mapped[str] = mapped_column(String(20))  # "user" or "sluice"
    user: Mapped[str] = mapped_column(String(100), default="")
    kind: Mapped[str] = mapped_column(String(20), default="text")
    text: Mapped[str] = mapped_column(Text, default="")
    buttons: Mapped[list[Any]] = mapped_column(default=list)
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)


class RequestRow(Base):
    __tablename__ = "requests"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    surface: Mapped[str] = mapped_column(String(20))
    user: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class PlanRow(Base):
    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id"), index=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    summary: Mapped[str] = mapped_column(Text)
    program: Mapped[str] = mapped_column(Text)
    estimate: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sample: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(30))
    model_calls: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float | None] = mapped_column(nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = _now_column()


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), index=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    state: Mapped[str] = mapped_column(String(30))
    limit_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    isolation: Mapped[str | None] = mapped_column(String(20), nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    status_message_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    budget_usd: Mapped[float | None] = mapped_column(nullable=True)
    spent_usd: Mapped[float] = mapped_column(default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    waiting_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    waiting_path: Mapped[str | None] = mapped_column(String(300), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    only_items: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JournalRow(Base):
    """One effect of a run, keyed by its deterministic path (ARCHITECTURE.md, journal)."""

    __tablename__ = "journal"
    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    path: Mapped[str] = mapped_column(String(300), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # read | write | clock
    call: Mapped[str] = mapped_column(String(100))  # "mail.send", "Sheet.update", "runtime.now"
    request_hash: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(10))  # intent | done | failed
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cost_usd: Mapped[float] = mapped_column(default=0.0)
    seq: Mapped[int] = mapped_column(Integer, default=0)


class CheckFailureRow(Base):
    """A check a model's program failed while planning: which rules models break most."""

    __tablename__ = "check_failures"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(40), index=True)
    model: Mapped[str] = mapped_column(String(100), default="")
    stage: Mapped[str] = mapped_column(String(20))  # syntax | policy | types | sample
    rule: Mapped[str] = mapped_column(String(100), index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _now_column()


class ThreadStateRow(Base):
    """A variable a thread keeps between requests."""

    __tablename__ = "thread_state"
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON, as the sandbox encodes it
    summary: Mapped[str] = mapped_column(String(300), default="")
    updated_at: Mapped[datetime] = _now_column()


class AttachmentRow(Base):
    __tablename__ = "attachments"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _now_column()


class OutboxRow(Base):
    """Mail received by the local SMTP outbox: what Sluice 'sent' on embedded defaults."""

    __tablename__ = "outbox"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(300), unique=True)
    sender: Mapped[str] = mapped_column(String(300))
    recipients: Mapped[list[Any]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = _now_column()


class AutomationRow(Base):
    """A saved program that runs again on a trigger: webhook, schedule or email."""

    __tablename__ = "automations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source_run_id: Mapped[str] = mapped_column(String(40))
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    summary: Mapped[str] = mapped_column(Text)
    program: Mapped[str] = mapped_column(Text)
    estimate: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    budget_usd: Mapped[float] = mapped_column(default=1.0)
    policy: Mapped[str] = mapped_column(String(10), default="auto")  # auto | ask
    schedule: Mapped[str | None] = mapped_column(String(100), nullable=True)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(default=True)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    last_fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    created_at: Mapped[datetime] = _now_column()


class AutomationRunRow(Base):
    """A run an automation started: how it was triggered, and where its result goes."""

    __tablename__ = "automation_runs"
    __table_args__ = (UniqueConstraint("automation_id", "idempotency_key"),)
    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    automation_id: Mapped[str] = mapped_column(ForeignKey("automations.id"), index=True)
    trigger: Mapped[str] = mapped_column(String(20))  # webhook | schedule | email | cli
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    callback_status: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = _now_column()


class MailRow(Base):
    """Every email in or out of a thread, raw bytes kept, so nothing received is lost."""

    __tablename__ = "mail"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    direction: Mapped[str] = mapped_column(String(3))  # in | out
    thread_id: Mapped[str | None] = mapped_column(String(40), index=True, nullable=True)
    message_id: Mapped[str] = mapped_column(String(300), index=True, default="")
    sender: Mapped[str] = mapped_column(String(300), default="")
    recipients: Mapped[list[Any]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = _now_column()


class CredentialRow(Base):
    """A connection's credentials, encrypted at rest (integrations.vault); names, not values."""

    __tablename__ = "credentials"
    workspace: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    service: Mapped[str] = mapped_column(String(50))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)  # a Fernet token of the fields as JSON
    fields: Mapped[list[Any]] = mapped_column(default=list)  # the field names, for listings
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)


class SlackThreadRow(Base):
    """A Sluice thread that lives in a Slack thread: workspace, channel and the root's ts."""

    __tablename__ = "slack_threads"
    __table_args__ = (UniqueConstraint("team_id", "channel", "thread_ts"),)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(40))
    thread_ts: Mapped[str] = mapped_column(String(40))
    user: Mapped[str] = mapped_column(String(40), default="")  # who started it (U…)
    created_at: Mapped[datetime] = _now_column()


class SlackMessageRow(Base):
    """Where a thread message was mirrored in Slack, and what was sent last (to edit on change)."""

    __tablename__ = "slack_messages"
    message_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    channel: Mapped[str] = mapped_column(String(40))
    ts: Mapped[str] = mapped_column(String(40), index=True)
    digest: Mapped[str] = mapped_column(String(64), default="")
    files: Mapped[list[Any]] = mapped_column(default=list)  # attachment ids uploaded


class SlackSeenRow(Base):
    """Slack deliveries already taken (event ids, message keys): a retry starts nothing new."""

    __tablename__ = "slack_seen"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime] = _now_column()


_SYNCHRONOUS = "sluice_sqlite_synchronous"  # an execution option of the engines made here


def create_engine(url: str, *, sqlite_synchronous: Synchronous = "normal") -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout so several processes can share it,
    and `sqlite_synchronous` (see `sqlite_synchronous_of`)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30},
                                     execution_options={_SYNCHRONOUS: sqlite_synchronous})
        event.listen(engine.sync_engine, "connect",
                     functools.partial(_sqlite_pragmas, synchronous=sqlite_synchronous))
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def engine_for(settings: Settings) -> AsyncEngine:
    """`create_engine` for the configured database, with the configured SQLite `synchronous`."""
    return create_engine(settings.effective_database_url,
                         sqlite_synchronous=settings.sqlite_synchronous)


def sqlite_synchronous_of(engine: AsyncEngine) -> Synchronous:
    """The `synchronous` mode `engine`'s SQLite connections use, for other connections to the
    same file (the journal's writer) to use too."""
    mode = engine.get_execution_options().get(_SYNCHRONOUS)
    return "full" if mode == "full" else "normal"


def create_sync_sqlite_engine(url: str | URL, *, synchronous: Synchronous = "normal") -> Engine:
    """A sync (pysqlite) engine on the SQLite file of `url`, with `create_engine`'s pragmas.

    For code that writes from a thread of its own (the journal's writer, workers.journal).
    """
    engine = create_sync_engine(make_url(url).set(drivername="sqlite"),
                                connect_args={"timeout": 30})
    event.listen(engine, "connect", functools.partial(_sqlite_pragmas, synchronous=synchronous))
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, synchronous: Synchronous) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL survives any crash of a process (what the journal guards against);
    # only a power loss may drop the last commits: FULL (an fsync per commit) or Postgres
    # where that matters.
    cursor.execute("PRAGMA synchronous=FULL" if synchronous == "full" else
                   "PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r"""^(revision|down_revision)\b[^=\n]*=\s*['"]([^'"\n]+)['"]""",
                       re.MULTILINE)


def alembic_config() -> Config:
    from alembic.config import Config  # Alembic takes 0.4 s to import: only when migrating

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision (safe to call from several processes).
    A database already there is only looked at: every process start opens the database."""
    if await _at_head(engine):
        return

    def upgrade(conn: Connection) -> None:
        from alembic import command

        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


@functools.cache
def head_revisions() -> frozenset[str]:
    """The newest revisions of `core/migrations`, read from its files without Alembic: those no
    other names as its `down_revision`. A merge (a tuple of parents) is not read, which leaves
    several heads, and `migrate` then asks Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_MIGRATIONS / "versions").glob("*.py"):
        found = {m.group(1): m.group(2) for m in _REVISION.finditer(path.read_text())}
        if "revision" in found:
            revisions.add(found["revision"])
        if "down_revision" in found:
            parents.add(found["down_revision"])
    return frozenset(revisions - parents)


async def _at_head(engine: AsyncEngine) -> bool:
    heads = head_revisions()
    if len(heads) != 1:
        return False
    try:
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    except SQLAlchemyError:  # no such table yet
        return False
    return {row[0] for row in stored} == heads
