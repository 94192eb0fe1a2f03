"""Benchmark outcomes, their goals, the results file and the printed table."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Figure = float | int | str | bool | None
_OPS = {
    "<": lambda value, target: value < target,
    "<=": lambda value, target: value <= target,
    ">=": lambda value, target: value >= target,
}
_SHOWN_OPS = {"<": "<", "<=": "≤", ">=": "≥"}


@dataclass(frozen=True)
class Goal:
    """`figures[figure] op target`, e.g. `Goal("ratio", "<=", 1.3)`."""

    figure: str
    op: str
    target: float

    def text(self) -> str:
        return f"{self.figure} {_SHOWN_OPS[self.op]} {self.target:g}"

    def met(self, figures: dict[str, Figure]) -> bool:
        value = figures.get(self.figure)
        return isinstance(value, int | float) and _OPS[self.op](value, self.target)


@dataclass
class Outcome:
    """What one benchmark measured. `headline` names the figure shown in the table."""

    name: str
    title: str
    headline: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    analysis: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.skipped is not None:
            return "skipped"
        if not self.goals:
            return "measured"  # figures for reference, with no goal of their own
        return "pass" if all(goal.met(self.figures) for goal in self.goals) else "fail"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "status": self.status,
            "skipped": self.skipped, "error": self.error, "figures": self.figures,
            "goals": [{"goal": g.text(), "pass": g.met(self.figures)} for g in self.goals],
            "analysis": self.analysis, "notes": self.notes,
        }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "memory_gb": _memory_gb(), "python": sys.version.split()[0]}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages * size / 2**30, 1)


def write_results(path: Path, outcomes: list[Outcome], options: dict[str, Any], *,
                  keep_others: bool = False) -> None:
    """The results file: machine, python, date, options and every outcome, each with the date it
    was measured. With `keep_others`, outcomes of benchmarks not run now stay as they were."""
    info = machine()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    fresh = [{**outcome.to_json(), "measured_at": now} for outcome in outcomes]
    names = {entry["name"] for entry in fresh}
    kept = [entry for entry in _previous(path) if entry.get("name") not in names] \
        if keep_others else []
    data = {"machine": info, "python": info["python"], "date": now, "options": options,
            "benchmarks": kept + fresh}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _previous(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(path.read_text()).get("benchmarks", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [entry for entry in entries if isinstance(entry, dict)]


def table(outcomes: list[Outcome]) -> str:
    """A short plain-text table: benchmark, headline figure, goals, status."""
    rows = [("benchmark", "measured", "goal", "status")]
    for outcome in outcomes:
        measured = outcome.error or outcome.skipped or _shown(
            outcome.headline, outcome.figures.get(outcome.headline))
        goals = "; ".join(goal.text() for goal in outcome.goals) or "-"
        rows.append((outcome.name, measured, goals, outcome.status.upper()))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _shown(name: str, value: Figure) -> str:
    if isinstance(value, float):
        value = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:,}"
    return f"{name} = {value}"
