"""Type checks of a generated program against the integration stubs (ARCHITECTURE.md, "Checks
before running").

mypy checks the program as a module that star-imports the stubs (generated from the integration
classes, so a wrong argument name or type is caught before anything runs) with pandas-stubs
installed. Re-binding a name to a new type is allowed (`--allow-redefinition`): models do it
constantly and it is not a bug. mypy runs in-process against a cache shared across checks (and
across processes, by default in the user's cache folder), so a warm check takes about half a
second; `TypeChecker.warm()` pays the cold start (seconds, pandas' stubs) before the first plan.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["TypeChecker", "TypeProblem", "default_cache_dir"]

_STUB_MODULE: Final = "sluice_integrations"
_MAX_SHOWN_LINE: Final = 100
# Error codes that are not about the program being wrong, only unannotated: models leave `rows =
# []` unannotated all the time and the program is fine (a rule to change, not a rule to teach).
_IGNORED_CODES: Final = ("var-annotated", "import-untyped", "annotation-unchecked")
_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<level>error|note): "
                   r"(?P<message>.*?)(?:  \[(?P<code>[a-z0-9-]+)\])?$")
_lock = threading.Lock()  # mypy's in-process API is not made for concurrent builds


@dataclass(frozen=True)
class TypeProblem:
    """One mypy error in the program (`line` 1-based, `col` 0-based), with its notes."""

    line: int
    col: int
    code: str
    message: str
    notes: tuple[str, ...] = ()

    def render(self, source: str) -> str:
        """The offending line, a caret under the spot, then `type-check [code]: message`."""
        lines = source.splitlines()
        code = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        stripped = code.lstrip()
        col = max(0, self.col - (len(code) - len(stripped)))
        shown = stripped[:_MAX_SHOWN_LINE]
        prefix = f"line {self.line}: "
        caret = " " * (len(prefix) + min(col, len(shown))) + "^"
        text = f"{prefix}{shown}\n{caret}\ntype-check [{self.code}]: {self.message}"
        return text + "".join(f"\n  {note}" for note in self.notes[:3])


def default_cache_dir() -> Path:
    """Where mypy's cache lives by default: shared by every checkout on the machine."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluice" / "mypy"


class TypeChecker:
    """Checks programs against one set of stubs; cheap to build, warm after the first check."""

    def __init__(self, *, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir or default_cache_dir()

    async def check(self, program: str, *, stubs: str,
                    variables: Iterable[str] = ()) -> list[TypeProblem]:
        """mypy's errors in `program`, in source order; an empty list means it type-checks.

        Args:
            program: the generated source (it has already parsed and passed the policy).
            stubs: the integration stubs the program is written against.
            variables: names defined before the program runs (the thread's saved variables),
                typed as Any.
        """
        return await asyncio.to_thread(self.check_now, program, stubs=stubs,
                                       variables=tuple(variables))

    def check_now(self, program: str, *, stubs: str,
                  variables: tuple[str, ...] = ()) -> list[TypeProblem]:
        """`check`, blocking (for the CLI and for warming)."""
        header = _header(variables)
        offset = header.count("\n")
        with tempfile.TemporaryDirectory(prefix="sluice-typecheck-") as folder:
            root = Path(folder)
            (root / f"{_STUB_MODULE}.pyi").write_text(stubs)
            (root / "program.py").write_text(header + program)
            report = self._run_mypy(root)
        return _problems(report, offset=offset, last_line=len(program.splitlines()))

    def warm(self, *, stubs: str) -> None:
        """Run one check so the cache holds the standard library, pandas and numpy stubs."""
        self.check_now("import pandas as pd\nimport numpy as np\n", stubs=stubs)

    def _run_mypy(self, root: Path) -> str:
        from mypy import api

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        args = ["--python-version", "3.11", "--allow-redefinition", "--check-untyped-defs",
                "--no-error-summary", "--show-column-numbers", "--show-error-codes",
                "--no-color-output", "--hide-error-context", "--follow-imports", "silent",
                "--cache-dir", str(self.cache_dir), "--config-file", os.devnull,
                *(f"--disable-error-code={code}" for code in _IGNORED_CODES),
                str(root / "program.py")]
        with _lock:  # mypy finds the stub module next to the program
            stdout, _stderr, _status = api.run(args)
        return stdout


def _header(variables: tuple[str, ...]) -> str:
    """What precedes the program: the stubs' names, and the thread's variables as Any."""
    lines = [f"from {_STUB_MODULE} import *  # noqa"]
    if variables:
        lines.append("from typing import Any as _Any")
        lines += [f"{name}: _Any" for name in sorted(set(variables)) if name.isidentifier()]
    return "\n".join(lines) + "\n"


def _problems(report: str, *, offset: int, last_line: int) -> list[TypeProblem]:
    problems: list[TypeProblem] = []
    for raw in report.splitlines():
        match = _LINE.match(raw.strip())
        if match is None or not match["file"].endswith("program.py"):
            continue
        line = int(match["line"]) - offset
        if not 0 < line <= last_line:
            continue
        if match["level"] == "note":
            if problems and problems[-1].line == line:
                last = problems[-1]
                problems[-1] = TypeProblem(last.line, last.col, last.code, last.message,
                                           (*last.notes, match["message"]))
            continue
        problems.append(TypeProblem(line, max(0, int(match["col"]) - 1),
                                    match["code"] or "misc", match["message"]))
    return problems

