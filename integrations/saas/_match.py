"""Near-miss matching of column names and option values (private to the SaaS connectors).

ARCHITECTURE.md, "AI-friendly integrations": near-miss values are coerced against the schema, and
an ambiguous or unknown value fails with an error listing the valid options. This is the SaaS
package's option matching; names are matched by `integrations.coercion.match_name`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from core.errors import IntegrationError
from integrations.coercion import match_name as name_index
from integrations.coercion import normalized

norm = normalized  # `"Qualified Lead"` -> `"qualifiedlead"`


def match_name(names: Sequence[str], wanted: str) -> str | None:
    """The name in `names` that `wanted` means: exact, then ignoring case/spacing, then a typo."""
    index = name_index(names, wanted)
    return None if index is None else names[index]


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
