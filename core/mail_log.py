"""Every email into or out of a thread, with its raw bytes (nothing received is ever lost).

Rows are keyed: `in:<Message-ID>` for a received message (an SMTP retry is stored once),
`out:<message id>` for the email that mirrors one thread message, and free-form keys for
one-off replies (`denied:<address>`), so each reply is sent once.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from core.db import MailRow
from core.store import Store
from core.types import utcnow


class MailRecord(BaseModel):
    key: str
    direction: str
    thread_id: str | None
    message_id: str
    sender: str
    recipients: list[str] = Field(default_factory=list)
    subject: str
    error: str | None = None
    created_at: datetime


class MailLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, *, key: str, direction: str, message_id: str, sender: str,
                  recipients: list[str], subject: str, raw: bytes,
                  thread_id: str | None = None, error: str | None = None) -> bool:
        """Store one mail; False when `key` is already there."""
        try:
            async with self.store.session() as s, s.begin():
                s.add(MailRow(key=key[:300], direction=direction, thread_id=thread_id,
                              message_id=message_id[:300], sender=sender[:300],
                              recipients=recipients, subject=subject, raw=raw, error=error,
                              created_at=utcnow()))
        except IntegrityError:
            return False
        return True

    async def has(self, key: str) -> bool:
        async with self.store.session() as s:
            return await s.scalar(select(MailRow.seq).where(MailRow.key == key)) is not None

    async def update(self, key: str, *, thread_id: str | None = None,
                     error: str | None = None) -> None:
        values = {k: v for k, v in (("thread_id", thread_id), ("error", error)) if v is not None}
        async with self.store.session() as s, s.begin():
            await s.execute(update(MailRow).where(MailRow.key == key).values(values))

    async def of_thread(self, thread_id: str) -> list[MailRecord]:
        async with self.store.session() as s:
            rows = (await s.scalars(select(MailRow).where(MailRow.thread_id == thread_id)
                                    .order_by(MailRow.seq))).all()
        return [_record(r) for r in rows]

    async def thread_of(self, message_ids: list[str]) -> str | None:
        """The thread an email with one of `message_ids` (In-Reply-To, References) belongs to."""
        ids = [m for m in message_ids if m][:50]
        if not ids:
            return None
        async with self.store.session() as s:
            return await s.scalar(select(MailRow.thread_id).where(
                MailRow.message_id.in_(ids), MailRow.thread_id.is_not(None))
                .order_by(MailRow.seq.desc()).limit(1))

    async def raw(self, key: str) -> bytes | None:
        async with self.store.session() as s:
            return await s.scalar(select(MailRow.raw).where(MailRow.key == key))


def _record(row: MailRow) -> MailRecord:
    return MailRecord(key=row.key, direction=row.direction, thread_id=row.thread_id,
                      message_id=row.message_id, sender=row.sender, recipients=row.recipients,
                      subject=row.subject, error=row.error, created_at=row.created_at)
