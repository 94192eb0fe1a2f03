"""JSON for the journal: a result as stored text, and the exact bytes a request fingerprint hashes.

orjson writes JSON four to five times faster than the standard library, which the journal pays once
a result and once a fingerprint. It is used only where it says exactly what the standard library
says (ARCHITECTURE.md, "Durable execution": a replayed result and a fingerprint must not lose what
was asked or answered). orjson differs in three places, and those values go the standard way:
- it writes NaN and ±Infinity as `null`, like None: output holding `null` is used only when it
  reads back equal to the value (every `null` was None; NaN reads back as None, unequal);
- it refuses integers beyond 64 bits, dict keys that are not strings and lone surrogates (a
  `TypeError`);
- it writes some types the standard library refuses (dataclasses, datetimes, enums, UUIDs): the
  values here are wire-form JSON values (`integrations.wire`), and dataclasses, datetimes and
  subclasses of the JSON types are passed through (refused) all the same.
A result orjson wrote ends with a newline (`OPT_APPEND_NEWLINE`: JSON allows the whitespace, so
any JSON reader still reads it) and is read back by orjson; any other text, the standard library's
and every result written before orjson was used, by the standard library. orjson reads integers
beyond 64 bits as floats, which text orjson wrote never holds.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps builds one per call
_DECODER = json.JSONDecoder()
# Passed through to a `default` there is none of: refused, so written the standard way.
_REFUSED = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_SUBCLASS)
_MARKED = _REFUSED | orjson.OPT_APPEND_NEWLINE


def exact_json(value: Any, *, marked: bool = False) -> bytes | None:
    """`value` as compact JSON by orjson (ending with a newline if `marked`), or None where that
    would not be exact (see above)."""
    data = plain_json(value, marked=marked)
    return data if data is not None and is_exact(data, value) else None


def is_exact(data: bytes, value: Any) -> bool:
    """Whether `data`, orjson's JSON of `value`, says exactly what it holds: it has no `null`,
    or it reads back equal to `value`, so every `null` was None. A NaN or ±Infinity reads back
    as None and compares unequal; so does a tuple holding a None (read back as a list), which
    is then written the standard way, to the same JSON. Reading back costs a third of the
    standard library's writing, and results with None in them are common (empty cells)."""
    # `find`, not `in`: for bytes it is about twice as fast (measured, Python 3.11).
    return data.find(b"null") < 0 or bool(orjson.loads(data) == value)


def plain_json(value: Any, *, marked: bool = False) -> bytes | None:
    """`value` as compact JSON by orjson when it holds JSON types only (exact, but for NaN and
    ±Infinity written as `null`), else None."""
    try:
        return orjson.dumps(value, option=_MARKED if marked else _REFUSED)
    except TypeError:  # orjson.JSONEncodeError
        return None


def dump_result(value: Any) -> str:
    """`value` as JSON text, or '' (stored as NULL) for None; raises TypeError for a value JSON
    cannot hold."""
    if value is None:
        return ""
    data = exact_json(value, marked=True)
    return _ENCODER.encode(value) if data is None else data.decode()


def parse_result(raw: str) -> Any:
    """A result as stored (JSON text), parsed, by whichever reader is exact for it (see above);
    `raw_decode` is the standard library's C scanner without `json.loads`' wrappers."""
    if raw.endswith("\n"):
        return orjson.loads(raw)
    return _DECODER.raw_decode(raw)[0]
