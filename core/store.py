"""Reading and writing Sluice's records: threads, messages, requests, plans, runs, files, outbox.

Every surface and worker goes through `Store`; it returns the pydantic types of `core.types`.
State transitions that people can race (two clicks on Approve) are single conditional UPDATEs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db import (
    AttachmentRow,
    CheckFailureRow,
    JournalRow,
    MessageRow,
    OutboxRow,
    PlanRow,
    RequestRow,
    RunRow,
    ThreadRow,
    ThreadStateRow,
)
from core.errors import NotFoundError
from core.types import (
    Attachment,
    Button,
    Estimate,
    Message,
    OutboxMail,
    Plan,
    PlanStatus,
    Progress,
    Request,
    Run,
    RunResult,
    RunState,
    SampleRun,
    Thread,
    new_id,
    utcnow,
)


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self._session()

    # Threads and messages -------------------------------------------------------------------

    async def create_thread(self, *, surface: str, title: str = "",
                            external_ref: str | None = None) -> Thread:
        row = ThreadRow(id=new_id("thr"), surface=surface, title=title[:200],
                        external_ref=external_ref, created_at=utcnow())
        async with self.session() as s, s.begin():
            s.add(row)
        return Thread(id=row.id, surface=row.surface, title=row.title, created_at=row.created_at)

    async def find_thread(self, thread_id: str) -> Thread | None:
        async with self.session() as s:
            row = await s.get(ThreadRow, thread_id)
            if row is None:
                return None
            msgs = (await s.scalars(select(MessageRow).where(MessageRow.thread_id == thread_id)
                                    .order_by(MessageRow.seq))).all()
        return Thread(id=row.id, surface=row.surface, title=row.title, created_at=row.created_at,
                      messages=[_message(m) for m in msgs])

    async def get_thread(self, thread_id: str) -> Thread:
        thread = await self.find_thread(thread_id)
        if thread is None:
            raise NotFoundError(f"There is no thread {thread_id!r}.", thread_id=thread_id)
        return thread

    async def list_threads(self, *, limit: int = 100) -> list[Thread]:
        async with self.session() as s:
            rows = (await s.scalars(select(ThreadRow).order_by(ThreadRow.created_at.desc())
                                    .limit(limit))).all()
        return [Thread(id=r.id, surface=r.surface, title=r.title, created_at=r.created_at)
                for r in rows]

    async def add_message(self, thread_id: str, *, author: str, text: str, kind: str = "text",
                          user: str = "", buttons: list[Button] | None = None,
                          attachments: list[Attachment] | None = None,
                          meta: dict[str, Any] | None = None) -> Message:
        now = utcnow()
        row = MessageRow(id=new_id("msg"), thread_id=thread_id, author=author, user=user,
                         kind=kind, text=text,
                         buttons=[b.model_dump() for b in buttons or []],
                         attachments=[a.model_dump() for a in attachments or []],
                         meta=meta or {}, created_at=now, updated_at=now)
        async with self.session() as s, s.begin():
            s.add(row)
        return _message(row)

    async def update_message(self, message_id: str, *, text: str | None = None,
                             buttons: list[Button] | None = None,
                             meta: dict[str, Any] | None = None) -> None:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if text is not None:
            values["text"] = text
        if buttons is not None:
            values["buttons"] = [b.model_dump() for b in buttons]
        if meta is not None:
            values["meta"] = meta
        async with self.session() as s, s.begin():
            await s.execute(update(MessageRow).where(MessageRow.id == message_id).values(values))

    async def get_message(self, message_id: str) -> Message:
        async with self.session() as s:
            row = await s.scalar(select(MessageRow).where(MessageRow.id == message_id))
        if row is None:
            raise NotFoundError(f"There is no message {message_id!r}.", message_id=message_id)
        return _message(row)

    # Requests ---------------------------------------------------------------------------------

    async def add_user_request(self, request: Request, *,
                               attachments: list[Attachment] | None = None) -> Message:
        """Store a person's message and the request it makes, in one transaction.

        `attachments` are files shared with the request (already stored with the thread).
        """
        now = utcnow()
        msg = MessageRow(id=new_id("msg"), thread_id=request.thread_id, author="user",
                         user=request.user, kind="request", text=request.text, buttons=[],
                         attachments=[a.model_dump() for a in attachments or []],
                         meta={"request_id": request.id}, created_at=now,
                         updated_at=now)
        async with self.session() as s, s.begin():
            s.add(msg)
            s.add(RequestRow(id=request.id, thread_id=request.thread_id, message_id=msg.id,
                             surface=request.surface, user=request.user, text=request.text,
                             created_at=request.created_at))
        return _message(msg)

    async def get_request(self, request_id: str) -> Request:
        async with self.session() as s:
            row = await s.get(RequestRow, request_id)
        if row is None:
            raise NotFoundError(f"There is no request {request_id!r}.", request_id=request_id)
        return Request(id=row.id, thread_id=row.thread_id, surface=row.surface,  # type: ignore[arg-type]
                       user=row.user, text=row.text, created_at=row.created_at)

    # Plans ------------------------------------------------------------------------------------

    async def save_plan(self, plan: Plan) -> None:
        async with self.session() as s, s.begin():
            s.add(PlanRow(id=plan.id, request_id=plan.request_id, thread_id=plan.thread_id,
                          summary=plan.summary, program=plan.program,
                          estimate=plan.estimate.model_dump(mode="json"), status=plan.status,
                          sample=plan.sample.model_dump(mode="json") if plan.sample else None,
                          model_calls=plan.model_calls, cost_usd=plan.cost_usd))

    async def get_plan(self, plan_id: str) -> Plan:
        async with self.session() as s:
            row = await s.get(PlanRow, plan_id)
        if row is None:
            raise NotFoundError(f"There is no plan {plan_id!r}.", plan_id=plan_id)
        return Plan(id=row.id, request_id=row.request_id, thread_id=row.thread_id,
                    summary=row.summary, program=row.program,
                    estimate=Estimate.model_validate(row.estimate), model_calls=row.model_calls,
                    sample=SampleRun.model_validate(row.sample) if row.sample else None,
                    cost_usd=row.cost_usd, status=PlanStatus(row.status))

    async def record_check_failures(self, request_id: str, *, model: str,
                                    failures: list[tuple[str, str, str]]) -> None:
        """Note the checks a model's program failed: (stage, rule, message) each."""
        if not failures:
            return
        async with self.session() as s, s.begin():
            s.add_all([CheckFailureRow(request_id=request_id, model=model, stage=stage,
                                       rule=rule[:100], message=message[:2000])
                       for stage, rule, message in failures])

    async def check_failure_counts(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """The rules models broke most, most often first: stage, rule, count, an example."""
        counted = func.count().label("count")
        query = (select(CheckFailureRow.stage, CheckFailureRow.rule, counted,
                        func.max(CheckFailureRow.message).label("example"))
                 .group_by(CheckFailureRow.stage, CheckFailureRow.rule)
                 .order_by(counted.desc(), CheckFailureRow.rule).limit(limit))
        async with self.session() as s:
            rows = (await s.execute(query)).all()
        return [{"stage": r[0], "rule": r[1], "count": int(r[2]), "example": r[3]}
                for r in rows]

    async def plan_message_id(self, plan_id: str) -> str | None:
        async with self.session() as s:
            return await s.scalar(select(PlanRow.message_id).where(PlanRow.id == plan_id))

    async def set_plan_message(self, plan_id: str, message_id: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(update(PlanRow).where(PlanRow.id == plan_id)
                            .values(message_id=message_id))

    async def decide_plan(self, plan_id: str, *, status: PlanStatus, user: str) -> bool:
        """Move a plan out of `awaiting_approval`; False when someone already decided it."""
        async with self.session() as s, s.begin():
            result = await s.execute(
                update(PlanRow)
                .where(PlanRow.id == plan_id, PlanRow.status == PlanStatus.AWAITING_APPROVAL)
                .values(status=status, decided_by=user, decided_at=utcnow()))
        return bool(getattr(result, "rowcount", 0))

    # Runs -------------------------------------------------------------------------------------

    async def create_run(self, run: Run) -> None:
        async with self.session() as s, s.begin():
            s.add(RunRow(id=run.id, plan_id=run.plan_id, thread_id=run.thread_id,
                         state=run.state, limit_items=run.limit_items,
                         approved_by=run.approved_by, progress=run.progress.model_dump(),
                         budget_usd=run.budget_usd, retry_of=run.retry_of,
                         only_items=run.only_items))

    async def get_run(self, run_id: str) -> Run:
        async with self.session() as s:
            row = await s.get(RunRow, run_id)
        if row is None:
            raise NotFoundError(f"There is no run {run_id!r}.", run_id=run_id)
        return _run(row)

    async def run_status_message(self, run_id: str) -> str | None:
        async with self.session() as s:
            return await s.scalar(select(RunRow.status_message_id).where(RunRow.id == run_id))

    async def update_run(self, run_id: str, **values: Any) -> None:
        """Set columns of a run; pydantic values are stored as JSON."""
        stored = {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v
                  for k, v in values.items()}
        async with self.session() as s, s.begin():
            await s.execute(update(RunRow).where(RunRow.id == run_id).values(stored))

    async def list_runs(self, *, limit: int = 50) -> list[Run]:
        async with self.session() as s:
            rows = (await s.scalars(select(RunRow).order_by(RunRow.created_at.desc())
                                    .limit(limit))).all()
        return [_run(r) for r in rows]

    async def find_run(self, prefix: str) -> Run:
        """A run by id or unique id prefix (for the command line)."""
        async with self.session() as s:
            rows = (await s.scalars(select(RunRow).where(RunRow.id.startswith(prefix))
                                    .limit(2))).all()
        if len(rows) != 1:
            found = "no run" if not rows else "more than one run"
            raise NotFoundError(f"There is {found} with id {prefix!r}. `sluice jobs list` "
                                "shows the ids.")
        return _run(rows[0])

    async def acquire_lease(self, run_id: str, *, owner: str, ttl_s: float) -> bool:
        """Take the run's lease if it is free, expired or already ours."""
        now = utcnow()
        async with self.session() as s, s.begin():
            result = await s.execute(
                update(RunRow)
                .where(RunRow.id == run_id,
                       RunRow.state.in_([RunState.QUEUED, RunState.RUNNING]),
                       or_(RunRow.lease_owner.is_(None), RunRow.lease_owner == owner,
                           RunRow.lease_expires_at < now))
                .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl_s)))
        return bool(getattr(result, "rowcount", 0))

    async def cancel_requested(self, run_id: str) -> bool:
        async with self.session() as s:
            return bool(await s.scalar(select(RunRow.cancel_requested)
                                       .where(RunRow.id == run_id)))

    async def renew_lease(self, run_id: str, *, owner: str, ttl_s: float) -> bool:
        async with self.session() as s, s.begin():
            result = await s.execute(
                update(RunRow).where(RunRow.id == run_id, RunRow.lease_owner == owner)
                .values(lease_expires_at=utcnow() + timedelta(seconds=ttl_s)))
        return bool(getattr(result, "rowcount", 0))

    async def release_lease(self, run_id: str, *, owner: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(update(RunRow).where(RunRow.id == run_id, RunRow.lease_owner == owner)
                            .values(lease_owner=None, lease_expires_at=None))

    async def claim_expired(self, *, hold_s: float, limit: int = 50) -> list[tuple[str, int]]:
        """Runs whose worker stopped renewing their lease: (run id, new attempt number).

        Each is claimed once across every sweeper by bumping `attempts` conditionally, and held
        for `hold_s` so that the job re-enqueued for it can start before anyone claims it again.
        """
        now = utcnow()
        async with self.session() as s:
            rows = (await s.execute(select(RunRow.id, RunRow.attempts).where(
                RunRow.state == RunState.RUNNING, RunRow.lease_expires_at < now).limit(limit)
            )).all()
        claimed = []
        for run_id, attempts in rows:
            async with self.session() as s, s.begin():
                result = await s.execute(
                    update(RunRow).where(RunRow.id == run_id, RunRow.attempts == attempts,
                                         RunRow.lease_expires_at < now)
                    .values(attempts=attempts + 1, lease_owner=None,
                            lease_expires_at=now + timedelta(seconds=hold_s)))
            if getattr(result, "rowcount", 0):
                claimed.append((run_id, attempts + 1))
        return claimed

    async def request_cancel(self, run_id: str) -> RunState:
        """Ask a run to stop; a run not yet running is cancelled at once. Returns its state."""
        async with self.session() as s, s.begin():
            await s.execute(update(RunRow).where(
                RunRow.id == run_id,
                RunRow.state.in_([RunState.QUEUED, RunState.WAITING_APPROVAL]))
                .values(state=RunState.CANCELLED, finished_at=utcnow()))
            await s.execute(update(RunRow).where(RunRow.id == run_id)
                            .values(cancel_requested=True))
        return (await self.get_run(run_id)).state

    async def resume_waiting(self, run_id: str, *, add_budget_usd: float = 0.0) -> bool:
        """Move a run waiting for a person back to the queue; False if it was not waiting."""
        async with self.session() as s, s.begin():
            result = await s.execute(
                update(RunRow).where(RunRow.id == run_id,
                                     RunRow.state == RunState.WAITING_APPROVAL)
                .values(state=RunState.QUEUED, waiting_reason=None, waiting_path=None,
                        budget_usd=RunRow.budget_usd + add_budget_usd,
                        attempts=RunRow.attempts + 1))
        return bool(getattr(result, "rowcount", 0))

    async def resolve_journal_entry(self, run_id: str, path: str, *, done: bool) -> None:
        """A person settled an uncertain write: mark it done, or forget it so it is redone."""
        async with self.session() as s, s.begin():
            target = (JournalRow.run_id == run_id) & (JournalRow.path == path)
            if done:
                await s.execute(update(JournalRow).where(target).values(status="done"))
            else:
                await s.execute(delete(JournalRow).where(target))

    async def journal_count(self, run_id: str) -> dict[str, int]:
        async with self.session() as s:
            rows = (await s.execute(select(JournalRow.status, func.count()).where(
                JournalRow.run_id == run_id).group_by(JournalRow.status))).all()
        return {status: int(n) for status, n in rows}

    # Thread state -----------------------------------------------------------------------------

    async def save_thread_state(self, thread_id: str, texts: Mapping[str, str],
                                summaries: Mapping[str, str]) -> None:
        """Keep variables for the thread's next runs: the JSON text of each one's encoded form
        (workers._state), stored as it is, and a line about it."""
        async with self.session() as s, s.begin():
            for name, text in texts.items():
                await s.merge(ThreadStateRow(thread_id=thread_id, name=name, value=text,
                                             summary=summaries.get(name, "")[:300],
                                             updated_at=utcnow()))

    async def save_thread_values(self, thread_id: str, values: Mapping[str, Any],
                                 summaries: Mapping[str, str]) -> None:
        """`save_thread_state` for plain JSON values (an email, an automation's inputs)."""
        await self.save_thread_state(
            thread_id, {name: json.dumps(value) for name, value in values.items()}, summaries)

    async def thread_state(self, thread_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(name -> JSON text of the encoded value, name -> one-line summary) of what the thread
        keeps; the texts are not parsed (the sandbox child does that)."""
        async with self.session() as s:
            rows = (await s.scalars(select(ThreadStateRow).where(
                ThreadStateRow.thread_id == thread_id))).all()
        return {r.name: r.value for r in rows}, {r.name: r.summary for r in rows}

    # Attachments ------------------------------------------------------------------------------

    async def add_attachment(self, thread_id: str, *, name: str, content_type: str,
                             data: bytes) -> Attachment:
        row = AttachmentRow(id=new_id("att"), thread_id=thread_id, name=name,
                            content_type=content_type, data=data)
        async with self.session() as s, s.begin():
            s.add(row)
        return Attachment(id=row.id, name=name, content_type=content_type, size=len(data))

    async def get_attachment(self, attachment_id: str) -> tuple[Attachment, bytes]:
        async with self.session() as s:
            row = await s.get(AttachmentRow, attachment_id)
        if row is None:
            raise NotFoundError(f"There is no attachment {attachment_id!r}.")
        meta = Attachment(id=row.id, name=row.name, content_type=row.content_type,
                          size=len(row.data))
        return meta, row.data

    # Outbox -----------------------------------------------------------------------------------

    async def add_outbox(self, mails: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Store mails the local outbox received (dicts of message_id, sender, recipients,
        subject, body, raw), in order and in one transaction; for each, False when its
        Message-ID was stored already (before, or earlier in `mails`)."""
        fresh: dict[str, Mapping[str, Any]] = {}
        for mail in mails:
            fresh.setdefault(mail["message_id"], mail)
        if not fresh:
            return []
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                  else sqlite.insert)
        statement = (insert(OutboxRow).values(list(fresh.values()))
                     .on_conflict_do_nothing(index_elements=["message_id"])
                     .returning(OutboxRow.message_id))
        async with self.engine.begin() as conn:
            stored = set((await conn.execute(statement)).scalars())
        answers = []
        for mail in mails:
            answers.append(mail["message_id"] in stored)
            stored.discard(mail["message_id"])  # a repeat later in `mails` is not stored
        return answers

    async def outbox_has(self, message_id: str) -> bool:
        """Whether the local outbox received a mail with this Message-ID."""
        async with self.session() as s:
            found = await s.scalar(select(OutboxRow.seq).where(OutboxRow.message_id == message_id))
        return found is not None

    async def list_outbox(self) -> list[OutboxMail]:
        async with self.session() as s:
            rows = (await s.scalars(select(OutboxRow).order_by(OutboxRow.seq))).all()
        return [OutboxMail(message_id=r.message_id, sender=r.sender, recipients=r.recipients,
                           subject=r.subject, body=r.body, received_at=r.received_at)
                for r in rows]


def _message(row: MessageRow) -> Message:
    return Message(id=row.id, thread_id=row.thread_id, author=row.author,  # type: ignore[arg-type]
                   user=row.user, kind=row.kind, text=row.text,
                   buttons=[Button.model_validate(b) for b in row.buttons],
                   attachments=[Attachment.model_validate(a) for a in row.attachments],
                   meta=row.meta, created_at=row.created_at, updated_at=row.updated_at)


def _run(row: RunRow) -> Run:
    return Run(id=row.id, plan_id=row.plan_id, thread_id=row.thread_id,
               state=RunState(row.state), limit_items=row.limit_items,
               approved_by=row.approved_by, isolation=row.isolation,
               progress=Progress.model_validate(row.progress or {}),
               result=RunResult.model_validate(row.result) if row.result else None,
               error=row.error, budget_usd=row.budget_usd, spent_usd=row.spent_usd,
               cancel_requested=row.cancel_requested, waiting_reason=row.waiting_reason,
               waiting_path=row.waiting_path, attempts=row.attempts, retry_of=row.retry_of,
               only_items=row.only_items)
