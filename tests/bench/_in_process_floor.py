"""The least that instrumenting the glue program can cost in CPython on this machine.

Not Sluice's runtime: the smallest instrumentation that still does what the issue asks of every
call, run in this process beside plain `exec` of the same program, best of a few interleaved
runs. There is no sandbox here, no process boundary, no start-up and no thread state:

- "intercepted": the integration call goes through one object that counts a deterministic path
  (a counter) and answers from a dict (as a journal's results would), and the top-level loop
  ticks through a generator that counts iterations;
- "journaled": the same, and each call's path and arguments are also recorded, and the records
  are encoded once at the end (orjson) as a journal would need them.

The ratios these give are what the sandbox overhead goal is set against: an implementation that
journals every call pays at least about the "journaled" figure here, whatever else it does.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

REPEATS = 7


def _quiet(*values: Any) -> None:
    """The program's print, here and in plain exec alike."""


def _plain_namespace() -> tuple[dict[str, Any], Callable[[], None]]:
    def lookup(label: str) -> str:
        return "active"

    return {"crm": types.SimpleNamespace(lookup=lookup), "print": _quiet}, lambda: None


def _instrumented_namespace(rows: int, *,
                            journal: bool) -> tuple[dict[str, Any], Callable[[], None]]:
    results = {index: "active" for index in range(1, rows + 1)}
    records: list[tuple[int, tuple[Any, ...]]] = []
    answer, record = results.pop, records.append
    count = 0

    class Action:
        __slots__ = ()

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal count
            count += 1
            if journal:
                record((count, args))
            return answer(count)

    def tick(iterable: Iterable[Any]) -> Iterator[Any]:
        for _iteration, item in enumerate(iterable):  # the path's iteration number
            yield item

    def finish() -> None:
        if journal:
            orjson.dumps(records)

    namespace = {"crm": types.SimpleNamespace(lookup=Action()), "tick": tick, "print": _quiet}
    return namespace, finish


def _timed(code: types.CodeType, make: Callable[[], tuple[dict[str, Any], Callable[[], None]]]
           ) -> float:
    namespace, finish = make()
    start = time.perf_counter()
    exec(code, namespace)
    finish()
    return time.perf_counter() - start


def measure(program: str, rows: int) -> dict[str, float]:
    """The ratios of `program` (its loop written `for row in rows:`) instrumented both ways to
    plain exec, best of `REPEATS` each."""
    plain = compile(program, "<program>", "exec")
    ticked = compile(program.replace("for row in rows:", "for row in tick(rows):"),
                     "<program>", "exec")
    variants: dict[str, tuple[types.CodeType, Callable[[], Any]]] = {
        "plain": (plain, _plain_namespace),
        "intercepted": (ticked, lambda: _instrumented_namespace(rows, journal=False)),
        "journaled": (ticked, lambda: _instrumented_namespace(rows, journal=True)),
    }
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(REPEATS):
        for name, (code, make) in variants.items():
            best[name] = min(best[name], _timed(code, make))
    return {
        "in_process_plain_s": round(best["plain"], 3),
        "in_process_intercepted_ratio": round(best["intercepted"] / best["plain"], 2),
        "in_process_journaled_ratio": round(best["journaled"] / best["plain"], 2),
        "in_process_journaled_us_per_call": round(
            (best["journaled"] - best["plain"]) / rows * 1e6, 2),
    }
