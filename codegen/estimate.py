"""A first estimate from the program's shape (ARCHITECTURE.md, "Preview before spending").

`estimate_program` is static analysis: loops and `each()` over collections whose size the
integrations report (sheet row counts), the integration and AI calls inside them, and prices from
litellm's map. `refine_estimate` then combines it with the sample run's measured seconds,
tokens, model calls and dollars per item, into figures with a range.
"""

from __future__ import annotations

import ast
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from core.types import Estimate, SampleRun

_UNKNOWN_SIZE = "A loop goes over a collection whose size is unknown"
_AT_MOST = "At most"
_COUNT_NOTES = (_UNKNOWN_SIZE, _AT_MOST)
_PRICE_UNKNOWN = "The AI model's price is unknown, so the cost is unknown."
# Rough figures until a sample run measures them; stated in the estimate's notes.
TOKENS_IN_PER_AI_CALL = 600
TOKENS_OUT_PER_AI_CALL = 200
SECONDS_PER_AI_CALL = 1.5
SECONDS_PER_INTEGRATION_CALL = 0.05
SECONDS_TO_START = 1.0


@dataclass
class _Size:
    count: int | None
    source: str = ""
    filtered: bool = False


@dataclass
class _Calls:
    ai: int = 0
    other: int = 0
    writes: dict[str, int] = field(default_factory=dict)


class _Program:
    """What the estimate needs to know about names in the program."""

    def __init__(self, tree: ast.Module, effects: dict[str, str], sheets: dict[str, Any]) -> None:
        self.tree = tree
        self.effects = effects
        self.sheets = sheets
        self.assigned: dict[str, ast.expr] = {}
        self.functions: dict[str, ast.FunctionDef] = {}
        self.sheet_vars: dict[str, str] = {}
        for node in ast.walk(tree):
            self._note(node)

    def _note(self, node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef):
            self.functions[node.name] = node
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                self.assigned[target.id] = node.value
                opened = _opened_sheet(node.value)
                if opened is not None:
                    self.sheet_vars[target.id] = opened

    def size_of(self, expr: ast.expr, depth: int = 0) -> _Size:
        if depth > 8:
            return _Size(None)
        if isinstance(expr, ast.Name) and expr.id in self.assigned:
            return self.size_of(self.assigned[expr.id], depth + 1)
        if isinstance(expr, ast.List | ast.Tuple | ast.Set):
            return _Size(len(expr.elts), "a literal list")
        if isinstance(expr, ast.ListComp | ast.GeneratorExp | ast.SetComp):
            inner = self.size_of(expr.generators[0].iter, depth + 1)
            return _Size(inner.count, inner.source, inner.filtered or bool(expr.generators[0].ifs))
        if isinstance(expr, ast.Call):
            return self._size_of_call(expr, depth)
        return _Size(None)

    def _size_of_call(self, call: ast.Call, depth: int) -> _Size:
        func = call.func
        if isinstance(func, ast.Name) and func.id in {"list", "sorted", "reversed", "enumerate"}:
            return self.size_of(call.args[0], depth + 1) if call.args else _Size(None)
        if isinstance(func, ast.Attribute) and func.attr in {"rows", "find"}:
            name = self._sheet_name(func.value)
            if name is not None and name in self.sheets:
                rows = int(self.sheets[name].get("rows", 0))
                return _Size(rows, f"rows of '{name}'", filtered=func.attr == "find")
        return _Size(None)

    def _sheet_name(self, expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return self.sheet_vars.get(expr.id)
        return _opened_sheet(expr)

    def calls_in(self, nodes: list[ast.stmt] | ast.expr,
                 seen: frozenset[str] = frozenset()) -> _Calls:
        calls = _Calls()
        roots = nodes if isinstance(nodes, list) else [nodes]
        for root in roots:
            for node in ast.walk(root):
                if isinstance(node, ast.Call):
                    self._count(node, calls, seen)
        return calls

    def _count(self, call: ast.Call, calls: _Calls, seen: frozenset[str]) -> None:
        func = call.func
        if isinstance(func, ast.Name) and func.id in self.functions and func.id not in seen:
            inner = self.calls_in(self.functions[func.id].body, seen | {func.id})
            _add(calls, inner)
            return
        if not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
            return
        owner = "Sheet" if func.value.id in self.sheet_vars else func.value.id
        key = f"{owner}.{func.attr}"
        if key not in self.effects:
            return
        if owner == "ai":
            calls.ai += 1
        else:
            calls.other += 1
        if self.effects[key] == "write":
            calls.writes[key] = calls.writes.get(key, 0) + 1


def _opened_sheet(expr: ast.expr) -> str | None:
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "open" and isinstance(expr.func.value, ast.Name)
            and expr.func.value.id == "sheets" and expr.args
            and isinstance(expr.args[0], ast.Constant) and isinstance(expr.args[0].value, str)):
        return expr.args[0].value
    return None


def _add(total: _Calls, more: _Calls, times: int = 1) -> None:
    total.ai += more.ai * times
    total.other += more.other * times
    for key, n in more.writes.items():
        total.writes[key] = total.writes.get(key, 0) + n * times


def _loops(program: _Program) -> list[tuple[_Size, _Calls]]:
    """Each top-level `for` loop and `each()` call with its item count and per-item calls."""
    found: list[tuple[_Size, _Calls]] = []
    for stmt in program.tree.body:
        if isinstance(stmt, ast.For):
            found.append((program.size_of(stmt.iter), program.calls_in(stmt.body)))
            continue
        for node in ast.walk(stmt):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "each" and len(node.args) >= 2):
                found.append((program.size_of(node.args[0]), _per_item(program, node.args[1])))
    return found


def _per_item(program: _Program, fn: ast.expr) -> _Calls:
    if isinstance(fn, ast.Name) and fn.id in program.functions:
        return program.calls_in(program.functions[fn.id].body, frozenset({fn.id}))
    if isinstance(fn, ast.Lambda):
        return program.calls_in(fn.body)
    return _Calls()


def estimate_program(source: str, *, effects: dict[str, str], workspace: dict[str, Any],
                     prices: tuple[float, float] | None,
                     previews: dict[str, str] | None = None) -> Estimate:
    """Estimate items, model calls, tokens, cost and time of `source` before running it.

    Args:
        effects: "integration.action" (or "Resource.action") -> "read" | "write".
        workspace: integrations' `describe()` output; `workspace["sheets"]` gives row counts.
        prices: ($ per input token, $ per output token) of the model behind `ai.*`, or None.
        previews: "integration.action" -> how n writes read, e.g. "send {n} emails".
    """
    tree = ast.parse(source)
    program = _Program(tree, effects, dict(workspace.get("sheets", {})))
    total = _Calls()
    items: int | None = None
    notes: list[str] = []
    loops = _loops(program)
    for size, per_item in loops:
        n = size.count if size.count is not None else 0
        _add(total, per_item, n)
        items = n if items is None else max(items, n)
        if size.count is None:
            notes.append(f"{_UNKNOWN_SIZE} before the run.")
        elif size.filtered:
            notes.append(f"{_AT_MOST} {size.count} items: {size.source}, before the filter.")
    _add(total, _outside_loops(program))
    tokens = total.ai * (TOKENS_IN_PER_AI_CALL + TOKENS_OUT_PER_AI_CALL)
    cost = None if prices is None else total.ai * (
        TOKENS_IN_PER_AI_CALL * prices[0] + TOKENS_OUT_PER_AI_CALL * prices[1])
    if total.ai and prices is None:
        notes.append(_PRICE_UNKNOWN)
    seconds = (SECONDS_TO_START + total.ai * SECONDS_PER_AI_CALL
               + total.other * SECONDS_PER_INTEGRATION_CALL)
    lines = [(previews or {}).get(key, f"{key} ×{{n}}").format(n=f"up to {n}")
             for key, n in sorted(total.writes.items())]
    return Estimate(items=items, model_calls=total.ai, tokens=tokens, cost_usd=cost,
                    seconds=round(seconds, 1), writes=total.writes, write_lines=lines,
                    notes=notes)


def _outside_loops(program: _Program) -> _Calls:
    """AI calls made once, outside any loop (a summary at the end, say)."""
    calls = _Calls()
    for stmt in program.tree.body:
        if isinstance(stmt, ast.For | ast.FunctionDef):
            continue
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "each"
               for n in ast.walk(stmt)):
            continue
        _add(calls, program.calls_in([stmt]))
    return calls


def refine_estimate(static: Estimate, sample: SampleRun, *, program: str,
                    previews: dict[str, str] | None = None) -> Estimate:
    """Combine the static estimate with what a sample run measured per item.

    Items come from the sample (the loop's real length) or else the static count; seconds,
    model calls, tokens and dollars per item are the sample's means, with a range from its
    fastest and slowest (cheapest and dearest) items. Items run `concurrency` at a time when the
    program's each() says so; the sample's time outside items' work is counted once.
    """
    items = sample.available if sample.available is not None else static.items
    visited = len(sample.item_seconds)
    if not sample.ok or items is None or visited == 0:
        return static
    waves = math.ceil(items / _concurrency(program))
    fixed = sample.fixed_seconds
    seconds = fixed + waves * statistics.fmean(sample.item_seconds)
    low_s = fixed + waves * min(sample.item_seconds) * (1 - _MARGIN)
    high_s = fixed + waves * max(sample.item_seconds) * (1 + _MARGIN)
    once_calls = sample.model_calls - sum(sample.item_model_calls)
    once_tokens = sample.tokens - sum(sample.item_tokens)
    calls = once_calls + round(items * statistics.fmean(sample.item_model_calls))
    tokens = once_tokens + round(items * statistics.fmean(sample.item_tokens))
    cost, cost_range = _cost(sample, items)
    writes = {key: round(n * items / visited) for key, n in sample.write_counts.items()}
    lines = [(previews or {}).get(key, f"{key} ×{{n}}").format(n=n)
             for key, n in sorted(writes.items())]
    # The sample counted the items, so notes about counting them before the run are moot; and
    # when its AI calls were priced, so is the static guess's unknown price.
    notes = [n for n in static.notes if not n.startswith(_COUNT_NOTES)
             and not (cost is not None and n == _PRICE_UNKNOWN)]
    notes.append(f"Measured on {visited} sample item{'s' if visited != 1 else ''}: "
                 f"{_per_item_text(statistics.fmean(sample.item_seconds))} per item.")
    return static.model_copy(update={
        "items": items, "model_calls": calls, "tokens": tokens, "cost_usd": cost,
        "cost_range": cost_range, "seconds": round(seconds, 1),
        "seconds_range": (round(low_s, 1), round(high_s, 1)), "writes": writes or static.writes,
        "write_lines": lines or static.write_lines, "notes": notes, "measured": True})


_MARGIN = 0.1


def _per_item_text(seconds: float) -> str:
    """An item's measured time: "1.25 s", "40 ms", or "under 1 ms" (not "0.00 s")."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.0005 else "under 1 ms"


def _cost(sample: SampleRun, items: int) -> tuple[float | None, tuple[float, float] | None]:
    if sample.cost_usd is None or not sample.item_costs:
        return None, None
    once = max(0.0, sample.cost_usd - sum(sample.item_costs))
    mean = once + items * statistics.fmean(sample.item_costs)
    low = once + items * min(sample.item_costs) * (1 - _MARGIN)
    high = once + items * max(sample.item_costs) * (1 + _MARGIN)
    return mean, (low, high)


def _concurrency(program: str) -> int:
    """The largest `concurrency=` a top-level each() asks for, as a literal; else 1."""
    found = 1
    for node in ast.walk(ast.parse(program)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "each":
            for keyword in node.keywords:
                value = keyword.value
                if keyword.arg == "concurrency" and isinstance(value, ast.Constant) \
                        and isinstance(value.value, int) and value.value > 0:
                    found = max(found, min(value.value, _MAX_CONCURRENCY))
    return found


_MAX_CONCURRENCY = 64  # what each() runs at once at most (workers._sandbox_loops.MAX_THREADS)
