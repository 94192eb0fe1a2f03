"""Near-miss matching of column names and option values (private to the SaaS connectors).

ARCHITECTURE.md, "AI-friendly integrations": near-miss values are coerced against the schema, and
an ambiguous or unknown value fails with an error listing the valid options. This is the SaaS
package's own minimal helper; the shared `integrations/coercion.py` is meant to replace it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from core.errors import IntegrationError

_NEAR_MISS = 0.8


def norm(text: str) -> str:
    """`"Qualified Lead"` -> `"qualifiedlead"`: case, spaces and punctuation do not count."""
    return re.sub(r"[\W_]+", "", str(text).casefold())


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def match_name(names: Sequence[str], wanted: str) -> str | None:
    """The name in `names` that `wanted` means: exact, then ignoring case/spacing, then a typo."""
    if wanted in names:
        return wanted
    key = norm(wanted)
    if not key:
        return None
    same = [name for name in names if norm(name) == key]
    if same:
        return same[0]
    scored = [
        (difflib.SequenceMatcher(None, key, norm(name)).ratio(), -i)
        for i, name in enumerate(names) if _digits(name) == _digits(wanted)
    ]
    if scored and max(scored)[0] >= _NEAR_MISS:
        return names[-max(scored)[1]]
    return None


def match_option(
    options: Sequence[tuple[str, str]], wanted: object, *, what: str
) -> str:
    """The option `wanted` means, given `(value, label)` pairs; else an error listing them.

    Matches the internal value or the label exactly, then ignoring case, spacing and punctuation
    ("Qualified Lead" -> `qualifiedlead`). Typos are not guessed: a wrong option is worse than a
    question.
    """
    text = str(wanted)
    for value, label in options:
        if text in (value, label):
            return value
    key = norm(text)
    found = {value for value, label in options if key and key in (norm(value), norm(label))}
    if len(found) == 1:
        return found.pop()
    raise no_option(options, text, what=what)


def no_option(options: Sequence[tuple[str, str]], wanted: str, *, what: str) -> IntegrationError:
    """The error for a value that is none of `options`, listing them for the model."""
    shown = ", ".join(_show(value, label) for value, label in options) or "(none)"
    labels = {label: value for value, label in options} | {value: value for value, _ in options}
    close = difflib.get_close_matches(wanted, list(labels), n=1, cutoff=0.6)
    hint = f" Did you mean '{labels[close[0]]}'?" if close else ""
    return IntegrationError(
        f"'{wanted}' is not a valid option for {what}. Valid options: {shown}.{hint}",
        value=wanted, options=[value for value, _ in options],
    )


def _show(value: str, label: str) -> str:
    return f"'{value}'" if value == label else f"'{value}' ({label})"
