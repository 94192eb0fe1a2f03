"""The planner's prompt (ARCHITECTURE.md, "CodeAct, not ReAct").

Static parts come first and are byte-stable between requests (system text, then the integration
stubs), so provider prompt caching applies; what changes per request (workspace data, thread
context, the request) comes last.
"""

from __future__ import annotations

import json
from typing import Any

from core.protocols import ChatMessage
from core.types import Request, SampleRun

SYSTEM = """\
You are Sluice, an agent that does real work in a team's apps by writing ONE short Python program
for the whole job. The program runs once, in a sandbox, against the integrations below; it cannot
see the network, files or environment variables, only these objects.

How to write the program:
- For many items, write a function that handles ONE item and hand it to `each(items, fn)`.
  `each` shows progress, runs "first N only" trials, and records a failing item instead of
  stopping the run. It returns fn's results in item order (None for an item that failed; a
  trial runs only the first few items), so report what was done from them, not from the input
  list. Never call a model once per item to decide what to do: decide in code, and
  use `ai.*` functions only for work that needs language understanding. When each item waits
  on something slow (an `ai.*` call, an email) or writes (a row update: writes made together
  share one save), pass `concurrency=8`.
- Every call is journaled: a run that is interrupted resumes where it stopped, so write the
  program straight through; do not add retries or checks for work already done.
- Address rows by identity and columns by header: `sheet.update(row, {"Column": value})`.
- Use `today()` and `now()` for dates; do not import time.
- Only these imports are allowed: json, math, re, datetime, collections, itertools, functools,
  statistics, decimal, fractions, string, textwrap, typing, dataclasses, random, pandas, numpy.
- No file, network, exec/eval, dunder attributes or introspection.
- To hand back a table, assign a pandas DataFrame or a list of dicts to `result`.
- Variables from earlier requests in this thread (listed in the workspace data) are already
  defined: use them by name. Your top-level variables are kept for the next request.
- `print()` short lines a person would want to read; keep it brief.

Answer with one short paragraph that says what the program will do (for the person approving
it), then the program in a single ```python block. Nothing after the block.
"""


def integration_section(stubs: str) -> str:
    return f"# The integrations your program can use (typed stubs)\n\n```python\n{stubs}```\n"


def workspace_section(workspace: dict[str, Any]) -> str:
    data = json.dumps(workspace, indent=1, sort_keys=True, default=str)
    return f"# Workspace data (what the integrations hold now)\n```json\n{data}\n```\n"


def request_section(request: Request) -> str:
    return f"{request.text}\n\n(Request from {request.user}.)"


def build_messages(request: Request, *, stubs: str,
                   workspace: dict[str, Any]) -> list[ChatMessage]:
    """The first messages: static system text and stubs, the workspace, then the request.

    The request is a message of its own, last, so a person reading a transcript (or a scripted
    scenario matching on it) sees exactly what was asked.
    """
    return [
        ChatMessage(role="system", content=SYSTEM + "\n" + integration_section(stubs)),
        ChatMessage(role="user", content=workspace_section(workspace)),
        ChatMessage(role="user", content=request_section(request)),
    ]


def feedback(problems: str) -> str:
    """The message that sends a rejected program back to the model."""
    return ("Your program was not accepted:\n\n" + problems +
            "\n\nFix it and answer again with the short paragraph and the whole program in one "
            "```python block.")


SAMPLE_REVIEW_HEADING = "# Sample run"
CONFIRM = "CONFIRM"
_OUTPUT_SHOWN = 1500
_WRITES_SHOWN = 10


def sample_review(sample: SampleRun, *, items: int) -> str:
    """What the model is shown of its program's sample run, and what it may answer."""
    parts = [f"{SAMPLE_REVIEW_HEADING}\n\nYour program ran on the first {items} items, in "
             "preview mode: reads and ai.* calls happened, writes were recorded, not done."]
    if sample.error:
        parts.append(f"It stopped with an error:\n{sample.error}")
    if sample.output.strip():
        parts.append("Printed:\n" + _shorten(sample.output.strip(), _OUTPUT_SHOWN))
    if sample.writes:
        lines = [f"- {w.text}" for w in sample.writes[:_WRITES_SHOWN]]
        more = sum(sample.write_counts.values()) - len(lines)
        lines += [f"- … and {more} more"] if more > 0 else []
        parts.append("Writes it would do:\n" + "\n".join(lines))
    else:
        parts.append("Writes it would do: none.")
    if sample.failures:
        lines = [f"- item {f.get('index')}: {f.get('error')}" for f in sample.failures[:5]]
        parts.append("Items that failed:\n" + "\n".join(lines))
    if sample.table:
        parts.append("First rows of `result`:\n" + _shorten(
            json.dumps(sample.table[:3], default=str, indent=1), _OUTPUT_SHOWN))
    parts.append(f"If this is what the request asks for, answer with the single word {CONFIRM}. "
                 "Otherwise answer with the short paragraph and the whole corrected program in "
                 "one ```python block.")
    return "\n\n".join(parts)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n…"
