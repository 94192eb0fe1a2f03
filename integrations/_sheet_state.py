"""One local sheet file as a run knows it: read once, changed in memory, written in groups.

Part of `integrations.sheets`. Before, every `update` read, parsed and rewrote the whole file, one
at a time: a job updating each of n rows did O(n²) work (16 ms per update at 2,000 rows, about a
second per update at 100,000). Here the file is parsed once and kept with its signature (inode,
size, modification time); changes are made to the table in memory and written together: while
one write is on its way to disk, the changes that arrive meanwhile (the other items of an each()
loop) wait for the next, which takes them all. A change still returns only once the file holding
it is on disk (fsync), so a journaled write is never marked done before it is durable.

A file changed by someone else is read again: before a change when no write is pending, and
when a write finds it changed. A write checks, under an advisory lock on the folder that every
writer takes (another run or worker may share the file), that the file is still as read; if
not, the changes waiting are made again on the new content (one that no longer applies, say to
a row deleted meanwhile, fails alone) and written then.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import IntegrationError
from integrations._sheet_files import _load_with_schema, _save, _Table
from integrations.base import Row

Change = Callable[[_Table], int]  # changes the table in place; the index of the row it addressed
Signature = tuple[int, int, int]


def applied(old: _Table, change: Change) -> tuple[_Table, int, bool]:
    """`change` made to a copy of `old` (which stays as it was): the copy, the row it
    addressed, and whether the sheet differs from `old`."""
    new = old.copy()
    index = change(new)
    return new, index, (new.header, new.rows) != (old.header, old.rows)


@dataclass
class _Waiting:
    change: Change
    row: Row  # the row as the change left it (again, when the file was read anew)
    written: asyncio.Future[Row]


class SheetFile:
    """The table in one file, the changes not yet written, and the task writing them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._disk: _Table | None = None  # as on disk when it had `_signature`
        self._signature: Signature | None = None
        self._view: _Table | None = None  # `_disk` with every waiting change made
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None

    async def read(self) -> _Table:
        """The sheet with every change accepted so far. Callers must not change it in place
        (`applied` works on a copy)."""
        async with self._lock:
            return await self._current()

    async def change(self, change: Change) -> Row:
        """Make `change` and return the row it addressed once the file holding it is on disk.
        A change that raises leaves the sheet as it was; one that changes nothing returns at
        once unless a write is under way."""
        async with self._lock:
            view = await self._current()
            new, index, changed = applied(view, change)
            row = new.to_row(index)
            if not changed and self._writer is None:
                return row
            waiting = _Waiting(change, row, asyncio.get_running_loop().create_future())
            waiting.written.add_done_callback(_retrieved)
            self._view = new
            self._waiting.append(waiting)
            if self._writer is None:
                self._writer = asyncio.create_task(self._write_all(), name=f"write {self.path}")
        # Shielded: a caller cancelled while its change is on the way leaves it to land.
        return await asyncio.shield(waiting.written)

    async def _current(self) -> _Table:
        """The view, read from disk first when the file is new to us or was changed by someone
        else (checked only while no write of ours is under way; the writer checks then)."""
        if self._writer is None and (self._view is None or _signature(self.path) !=
                                     self._signature):
            await self._reload()
        assert self._view is not None
        return self._view

    async def _reload(self) -> None:
        """Read the file and make the waiting changes again on it; one that no longer applies
        fails its caller and is dropped."""
        signature = _signature(self.path)
        try:
            disk = await asyncio.to_thread(_load_with_schema, self.path)
        except OSError as exc:
            raise _file_error(self.path, "read", exc) from exc
        view, kept = disk, []
        for waiting in self._waiting:
            try:
                view, index, _ = applied(view, waiting.change)
            except Exception as exc:
                waiting.written.set_exception(exc)
                continue
            waiting.row = view.to_row(index)
            kept.append(waiting)
        self._disk, self._signature, self._view, self._waiting = disk, signature, view, kept

    async def _reloaded(self) -> bool:
        """`_reload`, for the writer: when the file cannot be read, every waiting change fails
        with the reason and the view is dropped (the next change reads the file again)."""
        try:
            await self._reload()
        except Exception as exc:
            for waiting in self._waiting:
                waiting.written.set_exception(exc)
            self._waiting, self._view, self._signature = [], None, None
            return False
        return True

    async def _write_all(self) -> None:
        """Write the waiting changes, in groups, until none are left."""
        try:
            while await self._write_group():
                pass
        finally:
            self._writer = None
            for waiting in self._waiting:  # only when cancelled (the loop is closing)
                if not waiting.written.done():
                    waiting.written.cancel()

    async def _write_group(self) -> bool:
        """Write the changes waiting now, and tell their callers; False when none were left
        (or the file could not be read)."""
        async with self._lock:  # whether someone else wrote the file is checked as it is written
            group, self._waiting = self._waiting, []
            base, target, expected = self._disk, self._view, self._signature
        if not group:
            return False
        assert base is not None and target is not None
        written: Signature | None = expected
        try:
            if (target.header, target.rows) != (base.header, base.rows):
                written = await asyncio.to_thread(_write_if_unchanged, self.path, base, target,
                                                  expected)
        except Exception as exc:
            failure = _file_error(self.path, "written", exc) if isinstance(exc, OSError) else exc
            for waiting in group:
                waiting.written.set_exception(failure)
            async with self._lock:  # the later changes were made on top of the group's
                return await self._reloaded()
        if written is None:  # someone else wrote the file after we looked: make them again
            async with self._lock:
                self._waiting = group + self._waiting
                return await self._reloaded()
        self._disk, self._signature = target, written
        for waiting in group:
            waiting.written.set_result(waiting.row)
        return True


def _write_if_unchanged(path: Path, base: _Table, target: _Table,
                        expected: Signature | None) -> Signature | None:
    """Write `target` over the file (read as `base`) if it still has the signature `expected`:
    its new signature, else None. The check and the write hold an advisory lock on the folder,
    which every Sluice process and run writing a sheet there takes too, so two writers cannot
    both find the file unchanged and the second overwrite the first's change."""
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if _signature(path) != expected:
            return None
        _save(path, base, target)
        return _signature(path)
    finally:
        os.close(folder)  # and with it the lock


def _retrieved(written: asyncio.Future[Row]) -> None:
    """Mark a failure as seen: a caller cancelled while its change waited is not there to see
    it, and asyncio would log it as never retrieved."""
    if not written.cancelled():
        written.exception()


def _signature(path: Path) -> Signature | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _file_error(path: Path, verb: str, exc: OSError) -> IntegrationError:
    reason = exc.strerror or type(exc).__name__
    return IntegrationError(f"The sheet file '{path.name}' could not be {verb} ({reason}); "
                            "nothing was changed. Check the sheets folder, then retry.",
                            sheet=path.stem)
