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

import contextlib
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
    """The current iteration of one instrumented `for` loop, as a thread's scope.

    One object serves every iteration of the loop: its Scope (path prefix
    `<loop>/iter#<index>/`) is built only when the iteration asks for an effect, so iterations
    that ask for none cost no allocation.
    """

    __slots__ = ("_scope", "head", "in_item", "index")

    def __init__(self, head: str, *, in_item: bool) -> None:
        self.head = head
        self.in_item = in_item
        self.index = 0
        self._scope: Scope | None = None

    def at(self, index: int) -> Iteration:
        """This loop, now at iteration `index`."""
        self.index, self._scope = index, None
        return self

    def scope(self) -> Scope:
        if self._scope is None:
            self._scope = Scope(f"{self.head}{self.index}/", in_item=self.in_item)
        return self._scope


def item_scope(loop: str, index: int) -> Scope:
    """The scope of item `index` of the each() loop whose path is `loop`."""
    return Scope(f"{loop}/item#{index}/", in_item=True)


class Scopes:
    """The current scope of each thread; the top-level scope where none was entered."""

    def __init__(self) -> None:
        self.top = Scope()
        self.local = threading.local()  # .scope: the thread's scope, when it entered one

    def current(self) -> Scope:
        """This thread's scope."""
        scope: Scope | Iteration | None = getattr(self.local, "scope", None)
        if scope is None:
            return self.top
        return scope.scope() if type(scope) is Iteration else scope  # type: ignore[return-value]

    def set(self, scope: Scope) -> None:
        """Make `scope` this thread's scope."""
        self.local.scope = scope

    @contextlib.contextmanager
    def entered(self, scope: Scope) -> Iterator[None]:
        """`scope` is this thread's scope inside the block."""
        previous = self.current()
        self.set(scope)
        try:
            yield
        finally:
            self.set(previous)


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
        """Report unless a report went out less than `_TICK_S` ago."""
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
        self._changed = threading.Condition()
        self._next = 0
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
        if self.progress is not None:
            self.progress.final(self.loop, self._done, self._failed, len(self.order),
                                self.available)
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
        with self._changed:
            if self.error is not None or self._next >= len(self.order):
                return None
            self._next += 1
            return self.order[self._next - 1]

    def _visit(self, index: int) -> None:
        item = self.items[index]
        ok = True
        with self.scopes.entered(item_scope(self.loop, index)):
            try:
                self.results[index] = self.fn(item)
            except Exception as exc:
                ok = False
                self.record(self.loop, index, item, exc)
        with self._changed:
            if ok:
                self._done += 1
            else:
                self._failed += 1
            done, failed = self._done, self._failed
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
    thread's scope is set directly, an iteration's Scope is built only when it is used, and
    progress is checked without taking its lock.
    """
    outer = scopes.current()
    local = scopes.local
    iteration = Iteration(f"{outer.prefix}{loop}/iter#", in_item=outer.in_item)
    total = length(iterable)
    done = 0
    try:
        local.scope = outer
        for item in iterable:
            local.scope = iteration.at(done)
            yield item
            done += 1
            local.scope = outer
            if time.monotonic() - progress.last >= _TICK_S:
                progress.tick(loop, done, 0, total)
    finally:
        local.scope = outer
        progress.final(loop, done, 0, total)


def length(items: Any) -> int | None:
    """`len(items)`, or None when it has none."""
    try:
        return len(items)
    except Exception:
        return None
