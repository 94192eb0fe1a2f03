"""What the Slack surface remembers: thread links, mirrored messages, deliveries already taken.

A Slack thread (workspace, channel, root `ts`) maps to one Sluice thread; each thread message
mirrored to Slack keeps its `ts` and a digest of what was sent, so a changed message is edited in
place and an unchanged one is left alone. Deliveries (event ids, message keys) are inserted once:
a retried or replayed delivery finds its key taken and starts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from core.db import (
    MessageRow,
    PlanRow,
    RequestRow,
    RunRow,
    SlackMessageRow,
    SlackSeenRow,
    SlackThreadRow,
)
from core.store import Store
from core.types import RunState, utcnow


@dataclass(frozen=True)
class SlackLink:
    thread_id: str
    team_id: str
    channel: str
    thread_ts: str


@dataclass(frozen=True)
class Mirrored:
    channel: str
    ts: str
    digest: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class RunLine:
    """One line of the App Home: a run the user asked for."""

    run_id: str
    state: RunState
    summary: str
    spent_usd: float
    link: SlackLink | None


class SlackRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def first_time(self, key: str) -> bool:
        """Record a delivery key; False when it was seen before (a retry or a replay)."""
        try:
            async with self.store.session() as s, s.begin():
                s.add(SlackSeenRow(key=key[:200]))
        except IntegrityError:
            return False
        return True

    async def forget_seen(self, *, days: float = 7) -> None:
        """Drop delivery keys older than Slack ever retries (minutes), to keep the table small."""
        async with self.store.session() as s, s.begin():
            await s.execute(delete(SlackSeenRow).where(
                SlackSeenRow.seen_at < utcnow() - timedelta(days=days)))

    async def find_thread(self, team_id: str, channel: str, thread_ts: str) -> SlackLink | None:
        async with self.store.session() as s:
            row = await s.scalar(select(SlackThreadRow).where(
                SlackThreadRow.team_id == team_id, SlackThreadRow.channel == channel,
                SlackThreadRow.thread_ts == thread_ts))
        return _link(row) if row else None

    async def link_of(self, thread_id: str) -> SlackLink | None:
        async with self.store.session() as s:
            row = await s.get(SlackThreadRow, thread_id)
        return _link(row) if row else None

    async def open_thread(self, *, team_id: str, channel: str, thread_ts: str, user: str,
                          title: str) -> SlackLink:
        """The Sluice thread for a Slack thread, created on first use."""
        found = await self.find_thread(team_id, channel, thread_ts)
        if found:
            return found
        thread = await self.store.create_thread(
            surface="slack", title=title, external_ref=f"slack:{team_id}/{channel}/{thread_ts}")
        try:
            async with self.store.session() as s, s.begin():
                s.add(SlackThreadRow(thread_id=thread.id, team_id=team_id, channel=channel,
                                     thread_ts=thread_ts, user=user))
        except IntegrityError:  # someone linked it first: use theirs
            found = await self.find_thread(team_id, channel, thread_ts)
            assert found is not None
            return found
        return SlackLink(thread.id, team_id, channel, thread_ts)

    async def recently_changed(self, *, hours: float = 24) -> list[str]:
        """Slack-linked threads with a message changed in the last `hours` (to resync)."""
        since = utcnow() - timedelta(hours=hours)
        async with self.store.session() as s:
            rows = await s.scalars(select(SlackThreadRow.thread_id).distinct().join(
                MessageRow, MessageRow.thread_id == SlackThreadRow.thread_id).where(
                    MessageRow.updated_at >= since))
            return list(rows)

    async def mirrored(self, thread_id: str) -> dict[str, Mirrored]:
        async with self.store.session() as s:
            rows = (await s.scalars(select(SlackMessageRow).where(
                SlackMessageRow.thread_id == thread_id))).all()
        return {r.message_id: Mirrored(r.channel, r.ts, r.digest, tuple(r.files)) for r in rows}

    async def save_mirrored(self, message_id: str, thread_id: str, *, channel: str, ts: str,
                            digest: str, files: list[str] | None = None) -> None:
        async with self.store.session() as s, s.begin():
            row = await s.get(SlackMessageRow, message_id)
            if row is None:
                s.add(SlackMessageRow(message_id=message_id, thread_id=thread_id,
                                      channel=channel, ts=ts, digest=digest, files=files or []))
                return
            await s.execute(update(SlackMessageRow).where(
                SlackMessageRow.message_id == message_id).values(
                    digest=digest, files=files if files is not None else row.files))

    async def message_at(self, channel: str, ts: str) -> str | None:
        """The thread message shown at Slack message (`channel`, `ts`)."""
        async with self.store.session() as s:
            return await s.scalar(select(SlackMessageRow.message_id).where(
                SlackMessageRow.channel == channel, SlackMessageRow.ts == ts))

    async def requester(self, *, plan_id: str | None = None, run_id: str | None = None) -> str:
        """Who asked for the plan (or the run's plan): the `user` of its request."""
        async with self.store.session() as s:
            if run_id is not None:
                plan_id = await s.scalar(select(RunRow.plan_id).where(RunRow.id == run_id))
            user = await s.scalar(select(RequestRow.user).join(
                PlanRow, PlanRow.request_id == RequestRow.id).where(PlanRow.id == plan_id))
        return user or ""

    async def recent_runs(self, user: str, *, limit: int = 10) -> list[RunLine]:
        """Runs of plans that `user` asked for, newest first."""
        async with self.store.session() as s:
            rows = (await s.execute(
                select(RunRow, PlanRow.summary, SlackThreadRow)
                .join(PlanRow, PlanRow.id == RunRow.plan_id)
                .join(RequestRow, RequestRow.id == PlanRow.request_id)
                .outerjoin(SlackThreadRow, SlackThreadRow.thread_id == RunRow.thread_id)
                .where(RequestRow.user == user)
                .order_by(RunRow.created_at.desc()).limit(limit))).all()
        return [RunLine(run.id, RunState(run.state), summary, run.spent_usd,
                        _link(link) if link else None) for run, summary, link in rows]


def _link(row: SlackThreadRow) -> SlackLink:
    return SlackLink(row.thread_id, row.team_id, row.channel, row.thread_ts)
