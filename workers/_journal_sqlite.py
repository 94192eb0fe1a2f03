"""The journal's SQLite store: one thread, one plain sqlite3 connection, one hop per commit.

Through SQLAlchemy's async engine a commit is five round trips to aiosqlite's thread (pool
checkout, BEGIN, executemany, COMMIT, the rollback on return to the pool), each woken through the
event loop; a 64-entry commit cost ~3 ms of CPU that way, mostly asyncio and SQLAlchemy. Here the
whole commit (executemany, then COMMIT) is one call on a thread of the journal's own, on a
connection opened through a sync SQLAlchemy engine on the same file with the same pragmas as the
worker's (`core.db.create_sync_sqlite_engine`: WAL, `synchronous=NORMAL`, busy timeout).
Durability is unchanged: `commit()` returns only once SQLite has committed the transaction.

The connection is opened, used and closed on that one thread only (sqlite3's rule). The thread is a
daemon: a process that exits mid-commit leaves no transaction behind (SQLite rolls it back), and
no commit is acknowledged before SQLite has made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import PoolProxiedConnection

from core.db import create_sync_sqlite_engine
from core.types import Synchronous

T = TypeVar("T")
# Rows per INSERT: one statement of many rows costs less CPU than executemany's row at a time,
# and lets go of the GIL once, not once a row. 99 rows of 10 values stay under the 999 values
# an SQLite before 3.32 accepts.
CHUNK = 99
Row = tuple[Any, ...]


class SqliteJournalStore:
    """Loads and commits journal rows of one SQLite database on a thread of its own."""

    def __init__(self, url: URL, *, upsert: Callable[[int], str], select: str,
                 synchronous: Synchronous = "normal") -> None:
        self._url = url
        self._synchronous = synchronous
        self._upsert = upsert  # the statement for n rows
        self._select = select
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._proxy: PoolProxiedConnection | None = None
        self._conn: sqlite3.Connection | None = None

    async def load(self, run_id: str) -> dict[str, Row]:
        """Every row of `run_id` as a plain tuple in `select`'s column order, by its path (the
        first column)."""
        return await self._submit(self._load, run_id)

    def commit(self, rows: Sequence[Row]) -> asyncio.Future[None]:
        """Start upserting `rows` in one transaction; the future resolves once committed."""
        return self._submit(self._commit, rows)

    async def close(self) -> None:
        if self._thread is None:
            return
        try:
            await self._submit(self._close)
        finally:
            self._jobs.put(None)
            self._thread = None

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on the store's thread, after the jobs already given (in order).

        A queue and `call_soon_threadsafe`, not an executor: this is the hop paid per commit,
        and `run_in_executor` costs several times more CPU.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=_serve, args=(self._jobs,), daemon=True,
                                            name="sluice-journal")
            self._thread.start()
        self._jobs.put((fn, args, loop, future))
        return future

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._engine = create_sync_sqlite_engine(self._url, synchronous=self._synchronous)
            self._proxy = self._engine.raw_connection()
            conn = self._proxy.driver_connection
            assert isinstance(conn, sqlite3.Connection)
            self._conn = conn
        return self._conn

    def _load(self, run_id: str) -> dict[str, Row]:
        return {row[0]: row for row in self._connection().execute(self._select, (run_id,))}

    def _commit(self, rows: Sequence[Row]) -> None:
        conn = self._connection()
        try:
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start:start + CHUNK]
                conn.execute(self._upsert(len(chunk)), list(itertools.chain.from_iterable(chunk)))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def _close(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        if self._engine is not None:
            self._engine.dispose()
        self._proxy = self._conn = self._engine = None


_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, asyncio.Future[Any]]


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """The store's thread: run each job, hand its outcome to the event loop that asked."""
    while (job := jobs.get()) is not None:
        fn, args, loop, future = job
        try:
            outcome, error = fn(*args), None
        except BaseException as exc:
            outcome, error = None, exc
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, future, outcome, error)


def _settle(future: asyncio.Future[Any], outcome: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(outcome)
    else:
        future.set_exception(error)
