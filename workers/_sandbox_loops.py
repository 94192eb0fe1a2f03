"""Loops of a sandboxed program and the paths of its effects (ARCHITECTURE.md, "Durable execution
by journal and replay").

Runs inside the sandbox child only. Every effect gets a path from the scope it is asked for in,
never from the order in which effects complete, so that a re-run asks for the same effects at the
same paths. The top level is the scope with prefix "": its calls are `call#1, call#2, …` and its
each() loops `each#1, each#2, …`. Item i of loop `each#K` is the scope `each#K/item#i/` with its
own counters, so a nested loop's call is `each#1/item#3/each#1/item#0/call#1`. An iteration n of
the top-level `for` loop on line L is the scope `for@L/iter#n/`. The current scope is per thread.

`each()` runs up to N items at once in threads (the calling thread is one of them); results keep
the items' order and a failing item is recorded, not raised.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

MAX_THREADS = 64  # item threads in the whole child (4 MiB stacks): each() items mostly wait
_TICK_S = 0.2
_WAIT_S = 0.5  # waits wake up this often, so that the main thread's signal handlers run

Send = Callable[[dict[str, Any]], None]
RecordFailure = Callable[[str, int, Any, Exception], None]


class Scope:
    """Where effects are being asked for: a path prefix with its own call and loop counters."""

    __slots__ = ("_calls", "_loops", "in_item", "prefix")

    def __init__(self, prefix: str = "", *, in_item: bool = False) -> None:
        self.prefix = prefix
        self.in_item = in_item  # inside an each() item: its loops report no progress
        self._calls = itertools.count(1)  # next() on a count is atomic under the GIL
        self._loops = itertools.count(1)

    def next_call(self) -> str:
        """The path of the next call asked for in this scope."""
        return f"{self.prefix}call#{next(self._calls)}"

    def next_loop(self) -> str:
        """The path of the next each() loop started in this scope."""
        return f"{self.prefix}each#{next(self._loops)}"


class Iteration:
    """The iterations of one instrumented top-level `for` loop, as the thread's scope for the
    whole loop.

    `index` is the current iteration, or -1 while the loop's iterable is advanced, which happens
    in the enclosing scope (`outer`). An iteration's counters start afresh when the index
    changes, so a loop costs no allocation per iteration and only its main thread uses it.
    """

    __slots__ = ("_at", "_calls", "_loops", "head", "in_item", "index", "outer")

    def __init__(self, head: str, outer: Scope | Iteration) -> None:
        self.head = head  # `<loop>/iter#`
        self.outer = outer
        self.in_item: bool = outer.in_item
        self.index = -1
        self._at = -1  # the iteration the counters count for
        self._calls = 0
        self._loops = 0

    @property
    def prefix(self) -> str:
        return f"{self.head}{self.index}/" if self.index >= 0 else self.outer.prefix

    def next_call(self) -> str:
        """The path of the next call asked for in the current iteration."""
        if self.index < 0:
            return self.outer.next_call()
        self._calls = self._counters()[0] + 1
        return f"{self.head}{self.index}/call#{self._calls}"

    def next_loop(self) -> str:
        """The path of the next each() loop started in the current iteration."""
        if self.index < 0:
            return self.outer.next_loop()
        self._loops = self._counters()[1] + 1
        return f"{self.head}{self.index}/each#{self._loops}"

    def _counters(self) -> tuple[int, int]:
        """The current iteration's calls and loops so far (none when it has just begun)."""
        if self.index != self._at:
            self._at, self._calls, self._loops = self.index, 0, 0
        return self._calls, self._loops


def item_scope(loop: str, index: int) -> Scope:
    """The scope of item `index` of the each() loop whose path is `loop`."""
    return Scope(f"{loop}/item#{index}/", in_item=True)


class Scopes:
    """The current scope of each thread; the top-level scope where none was entered."""

    def __init__(self) -> None:
        self.top = Scope()
        self.local = threading.local()  # .scope: the thread's scope, when it entered one

    def current(self) -> Scope | Iteration:
        """This thread's scope."""
        return getattr(self.local, "scope", None) or self.top

    def set(self, scope: Scope | Iteration) -> None:
        """Make `scope` this thread's scope."""
        self.local.scope = scope


class ThreadBudget:
    """How many more item threads may start, shared by all loops (nested ones included)."""

    def __init__(self, limit: int = MAX_THREADS) -> None:
        self._left = limit
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        """Up to `wanted` threads; 0 when none are left (the caller then works alone)."""
        with self._lock:
            granted = max(0, min(wanted, self._left))
            self._left -= granted
            return granted

    def give(self) -> None:
        """Give one thread back."""
        with self._lock:
            self._left += 1


class Progress:
    """Progress frames, at most one per `_TICK_S` plus each loop's final one."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.last = 0.0  # when the last report went out (time.monotonic)
        self._lock = threading.Lock()

    def tick(self, loop: str, done: int, failed: int, total: int | None,
             available: int | None = None) -> None:
        """Report unless a report went out less than `_TICK_S` ago. Checked first without the
        lock: each() items tick as they finish, and threads queueing on the lock for every item
        took half the time of a resumed run's replayed items."""
        if time.monotonic() - self.last < _TICK_S:
            return
        with self._lock:
            now = time.monotonic()
            if now - self.last < _TICK_S:
                return
            self.last = now
        self._frame(loop, done, failed, total, available)

    def final(self, loop: str, done: int, failed: int, total: int | None,
              available: int | None = None) -> None:
        """Report a loop's last counts."""
        with self._lock:
            self.last = time.monotonic()
        self._frame(loop, done, failed, total, available)

    def _frame(self, loop: str, done: int, failed: int, total: int | None,
               available: int | None) -> None:
        self._send({"op": "progress", "loop": loop, "done": done, "failed": failed,
                    "total": total, "available": total if available is None else available})


class Batch:
    """One each() loop: items taken in order by up to 1 + `helpers` threads.

    A failing item (an `Exception`) is recorded and its result is None. Anything else an item
    raises (the run was stopped, the CPU limit, the channel closed) stops the loop: no more
    items are taken, and the calling thread raises it without waiting for items still running.
    """

    def __init__(self, loop: str, fn: Callable[[Any], Any], items: list[Any], *,
                 scopes: Scopes, progress: Progress | None, record: RecordFailure,
                 visit: list[int] | None = None, available: int | None = None) -> None:
        self.loop = loop
        self.available = available  # items before a "first N" limit, when they can be counted
        self.fn = fn
        self.items = items
        # The indexes to visit, in order: all of them, or those of a "retry the failed ones".
        self.order = list(range(len(items))) if visit is None else \
            [i for i in visit if 0 <= i < len(items)]
        self.results: list[Any] = [None] * len(items)
        self.scopes = scopes
        self.progress = progress
        self.record = record
        self.error: BaseException | None = None
        self._changed = threading.Condition()  # helpers ending, the loop's error
        # Taken and counted without the lock: next() on a list iterator or a count is atomic
        # under the GIL, and items that finish at once queued on a lock for every item.
        self._pending = iter(self.order)
        self._dones = itertools.count(1)
        self._fails = itertools.count(1)
        self._done = 0
        self._failed = 0
        self._helpers = 0

    def run(self, helpers: int, budget: ThreadBudget) -> list[Any]:
        """Visit every item with `helpers` threads taken from `budget` besides this one."""
        for number in range(helpers):
            self._start_helper(number, budget)
        try:
            self._work()
            self._wait_for_helpers()
        except BaseException as exc:  # e.g. the CPU limit, raised in this (the main) thread
            self._stop(exc)
            raise
        if self.error is not None:
            raise self.error
        if self.progress is not None:  # every item is done: the counts are final
            done, failed = next(self._dones) - 1, next(self._fails) - 1
            self.progress.final(self.loop, done, failed, len(self.order), self.available)
        return self.results

    def _start_helper(self, number: int, budget: ThreadBudget) -> None:
        def helper() -> None:
            try:
                self._work()
            finally:
                self._helper_ended(budget)

        with self._changed:
            self._helpers += 1
        thread = threading.Thread(target=helper, name=f"sluice-{self.loop}-{number}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no room for another thread (memory, processes): work with fewer
            self._helper_ended(budget)

    def _helper_ended(self, budget: ThreadBudget) -> None:
        budget.give()
        with self._changed:
            self._helpers -= 1
            self._changed.notify_all()

    def _work(self) -> None:
        while (index := self._take()) is not None:
            try:
                self._visit(index)
            except BaseException as exc:
                self._stop(exc)
                return

    def _take(self) -> int | None:
        if self.error is not None:
            return None
        return next(self._pending, None)

    def _visit(self, index: int) -> None:
        item = self.items[index]
        ok = True
        scopes = self.scopes
        outer = scopes.current()
        scopes.set(item_scope(self.loop, index))
        try:
            self.results[index] = self.fn(item)
        except Exception as exc:
            ok = False
            self.record(self.loop, index, item, exc)
        finally:
            scopes.set(outer)
        # The counts a tick shows may be a moment old; the final ones are exact.
        if ok:
            self._done = done = next(self._dones)
            failed = self._failed
        else:
            self._failed = failed = next(self._fails)
            done = self._done
        if self.progress is not None:
            self.progress.tick(self.loop, done, failed, len(self.order), self.available)

    def _stop(self, exc: BaseException) -> None:
        with self._changed:
            if self.error is None:
                self.error = exc
            self._changed.notify_all()

    def _wait_for_helpers(self) -> None:
        with self._changed:
            while self._helpers and self.error is None:
                self._changed.wait(_WAIT_S)


def track(iterable: Iterable[Any], loop: str, *, scopes: Scopes,
          progress: Progress) -> Iterator[Any]:
    """What an instrumented top-level `for` loop iterates: the items, each iteration in its own
    scope (the iterable itself is advanced in the loop's scope), with progress.

    Runs once per iteration of the program's loops, so it is kept to the bare minimum: the
    thread's scope is the loop's `Iteration` from start to end, which takes the index as an
    attribute, and progress is checked without taking its lock.
    """
    outer = scopes.current()
    iteration = Iteration(f"{outer.prefix}{loop}/iter#", outer)
    total = length(iterable)
    clock = time.monotonic
    done = 0
    scopes.set(iteration)
    try:
        for item in iterable:
            iteration.index = done
            yield item
            done += 1
            iteration.index = -1
            if clock() - progress.last >= _TICK_S:
                progress.tick(loop, done, 0, total)
    finally:
        scopes.set(outer)
        progress.final(loop, done, 0, total)


def length(items: Any) -> int | None:
    """`len(items)`, or None when it has none."""
    try:
        return len(items)
    except Exception:
        return None
