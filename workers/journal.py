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
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
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
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(JournalRow).where(
                JournalRow.run_id == self.run_id))).mappings().all()
        for row in rows:
            self.entries[row["path"]] = JournalEntry(
                path=row["path"], kind=row["kind"], call=row["call"],
                request_hash=row["request_hash"], status=row["status"],
                result=json.loads(row["result"]) if row["result"] is not None else None,
                error=row["error"], cost_usd=row["cost_usd"])
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
            rows.append({"run_id": self.run_id, "path": entry.path, "kind": entry.kind,
                         "call": entry.call, "request_hash": entry.request_hash,
                         "status": entry.status, "result": _dump(entry.result),
                         "error": entry.error, "cost_usd": entry.cost_usd, "seq": self._seq})
        async with self.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(JournalRow)
            stmt = stmt.on_conflict_do_update(
                index_elements=["run_id", "path"],
                set_={c: stmt.excluded[c] for c in ("status", "result", "error", "cost_usd",
                                                    "seq")})
            await conn.execute(stmt, rows)
        self.commits += 1


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))
