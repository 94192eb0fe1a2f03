"""Where the time goes: cProfile statistics summarised in a few lines for the results file."""

from __future__ import annotations

import cProfile
import pstats
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

_SITE = re.compile(r"site-packages/([^/]+)/")
_STDLIB = re.compile(r"/lib/python3\.\d+/([^/]+?)(?:\.py)?(?:/|$)")
_OURS = ("core", "integrations", "codegen", "workers", "infra", "tests")


def summary(stats: pstats.Stats | cProfile.Profile, *, top: int = 8) -> list[str]:
    """The areas (package, or C function) and functions with the most own time, with shares."""
    if isinstance(stats, cProfile.Profile):
        stats = pstats.Stats(stats)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values()) or 1.0
    areas: dict[str, float] = defaultdict(float)
    functions: list[tuple[float, int, str]] = []
    for (filename, line, name), (_cc, calls, own, _cum, _callers) in entries.items():
        areas[_area(filename, name)] += own
        functions.append((own, calls, _function(filename, line, name)))
    lines = [f"profiled {total:.2f} s of own time; by area:"]
    lines += [f"  {own / total:5.1%}  {area}" for area, own in _largest(areas.items(), top)]
    lines.append("top functions (own time, calls):")
    lines += [f"  {own / total:5.1%}  {calls:>9,}  {label}"
              for own, calls, label in sorted(functions, reverse=True)[:top]]
    return lines


def load(path: Path) -> pstats.Stats:
    return pstats.Stats(str(path))


def _largest(items: Iterable[tuple[str, float]], count: int) -> list[tuple[str, float]]:
    return sorted(items, key=lambda item: item[1], reverse=True)[:count]


def _area(filename: str, name: str) -> str:
    if filename == "~":
        return name  # a C function: its own area (epoll wait, os.read, json, pydantic-core, ...)
    site = _SITE.search(filename)
    if site:
        return site.group(1)
    for package in _OURS:
        if f"/{package}/" in filename:
            return f"{package} (ours)"
    stdlib = _STDLIB.search(filename)
    return f"stdlib {stdlib.group(1)}" if stdlib else Path(filename).name


def _function(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name
    parts = Path(filename).parts
    return f"{'/'.join(parts[-2:])}:{line}({name})"
