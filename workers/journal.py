"""The journal of a run's effects (ARCHITECTURE.md, "Durable execution by journal and replay").

Every effect is recorded under its deterministic path. On resume the whole journal of the run is
loaded once, and effects found there return their recorded result without calling out.

Writes are recorded durably: an `intent` committed before the call and `done` after it. Reads,
AI calls and clock readings are safe to redo, so they are committed in batches. Commits are
grouped: whatever is pending when the flusher runs goes in one transaction, so 64 concurrent
items pay for one commit, not 64.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import JournalRow

log = logging.getLogger(__name__)
Status = Literal["intent", "done", "failed"]
BATCH_DELAY_S = 0.05
MAX_BATCH = 5000


@dataclass
class JournalEntry:
    path: str
    kind: str
    call: str
    request_hash: str
    status: Status
    result: Any = None
    error: str | None = None
    cost_usd: float = 0.0
    raw_result: str | None = None  # as loaded: parsed only when the effect is replayed

    def value(self) -> Any:
        """The recorded result (parsed on first use, for entries loaded from the database)."""
        if self.raw_result is not None:
            self.result, self.raw_result = json.loads(self.raw_result), None
        return self.result


_COLUMNS = ("run_id", "path", "kind", "call", "request_hash", "status", "result", "error",
            "cost_usd", "seq")
_UPDATED = ("status", "result", "error", "cost_usd", "seq")
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "numeric_dollar": "${n}", "numeric": ":{n}"}


def upsert_sql(paramstyle: str) -> str:
    """One INSERT ... ON CONFLICT for a batch, in the driver's own parameter style.

    Sent with the driver's executemany: building an SQLAlchemy statement per commit cost more
    CPU than the commit itself.
    """
    mark = _PLACEHOLDERS[paramstyle]
    values = ", ".join(mark.format(n=i + 1) for i in range(len(_COLUMNS)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
    return (f"INSERT INTO journal ({', '.join(_COLUMNS)}) VALUES ({values}) "
            f"ON CONFLICT (run_id, path) DO UPDATE SET {updates}")


class Journal:
    """One run's journal: `load()` for replay, `record()` to append, `close()` to flush."""

    def __init__(self, engine: AsyncEngine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id
        self.entries: dict[str, JournalEntry] = {}
        self._pending: list[JournalEntry] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._seq = 0
        self.commits = 0

    async def load(self) -> int:
        """Read every recorded entry of this run; returns how many there are."""
        columns = (JournalRow.path, JournalRow.kind, JournalRow.call, JournalRow.request_hash,
                   JournalRow.status, JournalRow.result, JournalRow.error, JournalRow.cost_usd)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(*columns).where(
                JournalRow.run_id == self.run_id))).all()
        entries = self.entries
        for path, kind, call, fingerprint, status, raw, error, cost in rows:
            entries[path] = JournalEntry(path, kind, call, fingerprint, cast(Status, status),
                                         None, error, cost, raw)
        self._seq = len(rows)
        return len(rows)

    def recorded(self, path: str) -> JournalEntry | None:
        return self.entries.get(path)

    async def record(self, entry: JournalEntry, *, durable: bool) -> None:
        """Append `entry`; with `durable`, return only once it is committed."""
        self.entries[entry.path] = entry
        self._pending.append(entry)
        self._ensure_flusher()
        if not durable:
            if len(self._pending) >= MAX_BATCH:
                self._wake.set()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    async def close(self) -> None:
        """Commit everything pending and stop the flusher.

        The flusher is asked to stop, never cancelled: cancelling a commit half-way can leave
        an SQLite connection holding the write lock, and every other writer then waits.
        """
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
            self._flusher = None
        await self._flush()

    def _ensure_flusher(self) -> None:
        if not self._closing and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BATCH_DELAY_S):
                    await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        try:
            if batch:
                await self._commit(batch)
        except BaseException as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc if isinstance(exc, Exception) else
                                         RuntimeError("journal flush interrupted"))
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _commit(self, batch: list[JournalEntry]) -> None:
        latest = {e.path: e for e in batch}  # intent then done in one batch: keep the last
        rows = []
        for entry in latest.values():
            self._seq += 1
            rows.append((self.run_id, entry.path, entry.kind, entry.call, entry.request_hash,
                         entry.status, _dump(entry.value()), entry.error, entry.cost_usd,
                         self._seq))
        async with self.engine.begin() as conn:
            await conn.exec_driver_sql(upsert_sql(conn.dialect.paramstyle), rows)
        self.commits += 1


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))
