"""The journal of a run's effects (ARCHITECTURE.md, "Durable execution by journal and replay").

Every effect is recorded under its deterministic path. On resume the whole journal of the run is
loaded once, and effects found there return their recorded result without calling out.

Writes are recorded durably: an `intent` committed before the call and `done` after it. Reads,
AI calls and clock readings are safe to redo, so they are committed in batches. Commits are
grouped: whatever is pending when a commit starts goes in one transaction, so 64 concurrent
items pay for one commit, not 64; while one commit runs, the next batch gathers.

On SQLite the rows go through `workers._journal_sqlite` (a thread and a plain sqlite3 connection
of the journal's own, one hop per commit); on any other database (Postgres with `DATABASE_URL`)
through the async engine, in the driver's own SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import sqlite_synchronous_of
from workers._journal_json import dump_result, parse_result
from workers._journal_sqlite import CHUNK, Row, SqliteJournalStore

log = logging.getLogger(__name__)
Status = Literal["intent", "done", "failed"]
BATCH_DELAY_S = 0.05
MAX_BATCH = 5000


@dataclass(slots=True)
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
        """The recorded result; for an entry loaded from the database, parsed afresh each time.

        Not kept once parsed: a resume replays each entry once, and 100,000 parsed results kept
        alive cost memory and make every garbage collection walk them.
        """
        if self.raw_result is not None:
            return parse_result(self.raw_result)
        return self.result


_COLUMNS = ("run_id", "path", "kind", "call", "request_hash", "status", "result", "error",
            "cost_usd", "seq")
_UPDATED = ("status", "result", "error", "cost_usd", "seq")
_EMPTY_IS_NULL = ("result", "error")
# A zero cost is loaded as NULL (None): a float object per row costs a large load ~0.5 µs a row,
# and most effects (everything but AI calls) cost nothing.
_LOADED = ("path", "kind", "call", "request_hash", "status", "result", "error",
           "NULLIF(cost_usd, 0)")
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "numeric_dollar": "${n}", "numeric": ":{n}"}


def upsert_sql(paramstyle: str, rows: int = 1) -> str:
    """One INSERT ... ON CONFLICT of `rows` rows, in the driver's own parameter style.

    Sent with the driver's executemany (one row) or execute (many): building an SQLAlchemy
    statement per commit cost more CPU than the commit itself.
    """
    mark, width = _PLACEHOLDERS[paramstyle], len(_COLUMNS)
    values = ", ".join(
        "(" + ", ".join(_value(column, mark.format(n=r * width + i + 1))
                        for i, column in enumerate(_COLUMNS)) + ")"
        for r in range(rows))
    updates = ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
    return (f"INSERT INTO journal ({', '.join(_COLUMNS)}) VALUES {values} "
            f"ON CONFLICT (run_id, path) DO UPDATE SET {updates}")


def _value(column: str, mark: str) -> str:
    """`result` and `error` are sent as '' for NULL: binding None costs Python's sqlite3 an
    adapter lookup that fails with an exception, ~1 µs a value; no result is '' (JSON) and an
    empty error reads back as none."""
    return f"NULLIF({mark}, '')" if column in _EMPTY_IS_NULL else mark


@functools.lru_cache(maxsize=256)
def _upsert_cached(paramstyle: str, rows: int) -> str:
    return upsert_sql(paramstyle, rows)


def sqlite_upsert(rows: int) -> str:
    return _upsert_cached("qmark", rows)


def select_sql(paramstyle: str) -> str:
    """The SELECT of a run's entries (`_LOADED` columns), in the driver's parameter style."""
    mark = _PLACEHOLDERS[paramstyle].format(n=1)
    return f"SELECT {', '.join(_LOADED)} FROM journal WHERE run_id = {mark}"


# SQLite walks the primary key's index in path order and looks each row up by rowid: a jump
# across the table per row. Asking for the rowids first reads the rows in table order (the order
# they were written), which halves the time of a large load.
SQLITE_SELECT = (f"SELECT {', '.join(_LOADED)} FROM journal "
                 "WHERE rowid IN (SELECT rowid FROM journal WHERE run_id = ?)")


class JournalStore(Protocol):
    """Where a journal's rows live: loaded once, committed in batches."""

    async def load(self, run_id: str) -> dict[str, Row]:
        """The run's rows (`_LOADED` columns) by path."""
        ...

    def commit(self, rows: Sequence[Row]) -> asyncio.Future[None]:
        """Start committing `rows` in one transaction; the future resolves once committed."""
        ...

    async def close(self) -> None: ...


class EngineJournalStore:
    """Rows through the async engine (Postgres, or SQLite held in memory)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._paramstyle = paramstyle = engine.dialect.paramstyle
        self._select = select_sql(paramstyle)

    async def load(self, run_id: str) -> dict[str, Row]:
        async with self.engine.connect() as conn:
            result = await conn.exec_driver_sql(self._select, (run_id,))
            return {row[0]: tuple(row) for row in result}

    def commit(self, rows: Sequence[Row]) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._commit(rows))

    async def _commit(self, rows: Sequence[Row]) -> None:
        async with self.engine.begin() as conn:
            for start in range(0, len(rows), CHUNK):  # one statement of many rows each
                chunk = rows[start:start + CHUNK]
                await conn.exec_driver_sql(self._upsert(len(chunk)),
                                           tuple(itertools.chain.from_iterable(chunk)))

    def _upsert(self, rows: int) -> str:
        return _upsert_cached(self._paramstyle, rows)

    async def close(self) -> None:
        return None


def open_store(engine: AsyncEngine) -> JournalStore:
    """The SQLite writer for a SQLite file, else the async engine itself."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and "memory" not in str(url.query.get("mode", "")):
        return SqliteJournalStore(url, upsert=sqlite_upsert, select=SQLITE_SELECT,
                                  synchronous=sqlite_synchronous_of(engine))
    return EngineJournalStore(engine)


class Journal:
    """One run's journal: `load()` for replay, `record()` to append, `close()` to flush.

    Group commit: one commit at a time. A durable entry recorded while none runs starts one
    after the current turn of the event loop (the records made in that turn join it); entries
    recorded while one runs gather and go together in the next, started as soon as that one
    ends. Entries that need not be durable wait up to `BATCH_DELAY_S` (or
    `MAX_BATCH` of them) unless a durable one takes them along.
    """

    def __init__(self, engine: AsyncEngine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id
        self.entries: dict[str, JournalEntry] = {}  # recorded here, not yet committed as is
        # Committed (`_LOADED` columns): as loaded, and entries of this process once committed.
        self._loaded: dict[str, Row] = {}
        self._store = open_store(engine)
        self._pending: list[JournalEntry] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._committing: asyncio.Future[None] | None = None
        self._starting = False  # a gathered commit is about to start (`_start_gathered`)
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._seq = 0
        self.commits = 0

    async def load(self) -> int:
        """Read every recorded entry of this run; returns how many there are.

        The rows are kept as the driver gave them (plain tuples of strings and numbers, which
        the garbage collector stops tracking); `recorded()` makes an entry of one when asked.
        """
        self._loaded = await self._store.load(self.run_id)
        self._seq = len(self._loaded)
        return len(self._loaded)

    def recorded(self, path: str) -> JournalEntry | None:
        """The entry at `path`: recorded by this process, else loaded, else None."""
        entry = self.entries.get(path)
        if entry is None and (row := self._loaded.get(path)) is not None:
            _, kind, call, fingerprint, status, raw, error, cost = row
            return JournalEntry(path, kind, call, fingerprint, status, None, error, cost or 0.0,
                                raw)
        return entry

    def loaded(self, path: str) -> Row | None:
        """The committed row at `path` (`_LOADED` columns), unless an entry recorded since waits
        for its commit: the replay's hot path reads it without making an entry of it."""
        row = self._loaded.get(path)
        return None if row is None or path in self.entries else row

    def done_results(self) -> dict[str, str]:
        """The loaded effects that were done, their results as JSON text, by path: what a
        resumed program gets back without asking (`run_sandboxed`'s `replay`)."""
        return {path: row[5] or "null" for path, row in self._loaded.items() if row[4] == "done"}

    def cost_usd(self) -> float:
        """What the recorded effects cost, each path counted once."""
        entries = self.entries
        loaded = sum(row[7] or 0.0 for path, row in self._loaded.items() if path not in entries)
        return float(loaded) + sum(e.cost_usd for e in entries.values())

    async def record(self, entry: JournalEntry, *, durable: bool) -> None:
        """Append `entry`; with `durable`, return only once it is committed."""
        self.entries[entry.path] = entry
        self._pending.append(entry)
        if not durable:
            if len(self._pending) >= MAX_BATCH:
                self._commit_soon()
            elif self._timer is None and not self._closing:
                self._timer = asyncio.get_running_loop().call_later(
                    BATCH_DELAY_S, self._commit_soon)
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        if self._committing is None and not self._starting:
            self._starting = True
            loop.call_soon(self._start_gathered)
        await waiter

    async def close(self) -> None:
        """Commit everything pending and release the store; a commit in flight is awaited,
        never abandoned half-way."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            while self._committing is not None:
                with contextlib.suppress(Exception):  # its failure went to its waiters
                    await asyncio.shield(self._committing)
                await asyncio.sleep(0)  # its callback may have started the next one
            if self._pending:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                self._start_commit()
                await waiter
        finally:
            await self._store.close()

    def _commit_soon(self) -> None:
        """The batching delay is over (or the batch is full): commit unless one is running,
        in which case its end starts the next."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._committing is None and self._pending:
            self._start_commit()

    def _start_gathered(self) -> None:
        """Start the commit the first durable record asked for, once the records made in the
        same turn of the event loop have joined it.

        Measured on SQLite with 64 writers: starting at once split them into two groups taking
        turns (commits of 32), which cost ~20 % more CPU per effect than one group (64) whose
        commit runs while the event loop has nothing else to do; on Postgres, where a commit
        waits for an fsync, half-size commits halved the throughput.
        """
        self._starting = False
        if self._committing is None and self._pending:
            self._start_commit()

    def _start_commit(self) -> None:
        batch, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        try:
            rows = self._rows(batch)
            committing = self._committing = self._store.commit(rows)
        except Exception as exc:  # a result JSON cannot hold: the writers hear it, none hangs
            self._fail(waiters, exc, len(batch))
            return
        committing.add_done_callback(lambda done: self._committed(done, waiters, rows))

    def _committed(self, done: asyncio.Future[None], waiters: list[asyncio.Future[None]],
                   rows: list[Row]) -> None:
        """A commit ended: acknowledge its waiters (or hand them its failure), start the next."""
        self._committing = None
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self._fail(waiters, error if isinstance(error, Exception) else RuntimeError(
                "the journal commit was interrupted"), len(rows))
        else:
            self.commits += 1
            self._keep_as_loaded(rows)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if self._waiters or len(self._pending) >= MAX_BATCH:
            self._start_commit()

    def _keep_as_loaded(self, rows: list[Row]) -> None:
        """Keep the entries just committed as rows, the way `load()` would read them back.

        A row is a tuple of strings and numbers, which the garbage collector stops tracking; an
        entry and its result would be walked by every full collection for the rest of the run
        (measured: ~3 µs of CPU an effect with 64 writers, and the memory of every result of a
        long job). An entry recorded again since it was sent (its status changed: the `done`
        of an `intent`) stays an entry.
        """
        entries, loaded = self.entries, self._loaded
        for _, path, kind, call, fingerprint, status, raw, error, cost, _seq in rows:
            entry = entries.get(path)
            if entry is not None and entry.status == status:
                del entries[path]
                loaded[path] = (path, kind, call, fingerprint, status, raw or None, error or None,
                                cost or None)

    def _fail(self, waiters: list[asyncio.Future[None]], error: Exception, count: int) -> None:
        log.warning("! journal %s: a batch of %d entries was not committed: %r",
                    self.run_id, count, error)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def _rows(self, batch: list[JournalEntry]) -> list[Row]:
        latest = {e.path: e for e in batch}  # intent then done in one batch: keep the last
        rows = []
        run_id, seq, dump = self.run_id, self._seq, dump_result
        for entry in latest.values():
            seq += 1
            raw = entry.raw_result if entry.raw_result is not None else dump(entry.result)
            rows.append((run_id, entry.path, entry.kind, entry.call, entry.request_hash,
                         entry.status, raw, entry.error or "", entry.cost_usd, seq))
        self._seq = seq
        return rows
