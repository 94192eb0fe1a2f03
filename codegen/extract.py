"""Splitting a model's answer into the plan paragraph and the program."""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


@dataclass(frozen=True)
class Answer:
    summary: str
    program: str | None


def _unwrap(text: str) -> str:
    """Paragraphs joined back into lines: models hard-wrap prose that a chat window wraps."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def split_answer(text: str) -> Answer:
    """The first fenced code block is the program; the prose before it is the plan."""
    match = _FENCE.search(text)
    if match is None:
        return Answer(summary=text.strip(), program=None)
    summary = _unwrap(text[: match.start()]) or "(The model gave no plan text.)"
    return Answer(summary=summary, program=match.group(1).strip() + "\n")
