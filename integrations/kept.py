"""Connections kept open between catalogs: a worker's MCP servers and mail accounts.

Every plan, sample run and run builds the workspace's catalog. An MCP connection used to start
its server each time (a process, a handshake, the tool list: 1.3–1.5 s for a Python server, more
through `npx` or `uvx`) and stop it after; a mail account logged in to IMAP each time. A worker
now keeps each connection while catalogs use it and for `idle_s` after the last one is done
with it; the next catalog within that time finds it open, once it shows it still works (an MCP
server lists its tools again; an IMAP session logs in again by itself when its connection
dropped). Built once in the worker's `on_startup` (`Deps`) and closed at its shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)


class Connection(Protocol):
    """What can be kept: it can find out whether it still works, and be closed."""

    async def usable(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass
class _Kept:
    connection: Connection
    users: int = 0
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


class KeptConnections:
    """Open connections by key, shared by the catalogs that use them at once."""

    def __init__(self, *, idle_s: float) -> None:
        self.idle_s = idle_s
        self.opened = 0  # connections opened, for the record
        self._kept: dict[Hashable, _Kept] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def acquire(self, key: Hashable,
                      open_: Callable[[], Awaitable[Connection]]) -> tuple[Connection,
                                                                             Callable[[], None]]:
        """The connection kept under `key` (opened by `open_` when there is none that works)
        and the function that says this user is done with it."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            kept = self._kept.get(key)
            if kept is None or not await kept.connection.usable():
                if kept is not None:
                    self._retire(key, kept)
                kept = self._kept[key] = _Kept(await open_())
                self.opened += 1
            if kept.expiry is not None:
                kept.expiry.cancel()
                kept.expiry = None
            kept.users += 1
        return kept.connection, _once(lambda: self._release(key, kept))

    def _retire(self, key: Hashable, kept: _Kept) -> None:
        """Stop handing out `kept`; close it now if nobody uses it, else when its last user
        is done (a server slow to answer may be busy with another run's call)."""
        del self._kept[key]
        if kept.users == 0:
            self._close_later(kept)

    def _release(self, key: Hashable, kept: _Kept) -> None:
        kept.users -= 1
        if kept.users > 0:
            return
        if self._kept.get(key) is kept:
            kept.expiry = asyncio.get_running_loop().call_later(self.idle_s, self._expire,
                                                                 key, kept)
        else:  # retired while in use
            self._close_later(kept)

    def _expire(self, key: Hashable, kept: _Kept) -> None:
        if kept.users == 0 and self._kept.get(key) is kept:
            self._close_later(self._kept.pop(key))

    def _close_later(self, kept: _Kept) -> None:
        task = asyncio.create_task(_close(kept.connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close every kept connection, used or not (the worker is stopping)."""
        kept, self._kept = list(self._kept.values()), {}
        for each in kept:
            if each.expiry is not None:
                each.expiry.cancel()
            self._close_later(each)
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _close(connection: Connection) -> None:
    try:
        await connection.close()
    except Exception:  # closing is best effort: the server may be gone already
        logger.warning("a kept connection did not close cleanly", exc_info=True)


def _once(release: Callable[[], None]) -> Callable[[], None]:
    """`release`, callable any number of times but acting once."""
    done = False

    def release_once() -> None:
        nonlocal done
        if not done:
            done = True
            release()

    return release_once

