"""JSON for the journal: a result as stored text, and the exact bytes a request fingerprint hashes.

orjson writes JSON four to five times faster than the standard library, which the journal pays once
a result and once a fingerprint. It is used only where it says exactly what the standard library
says (ARCHITECTURE.md, "Durable execution": a replayed result and a fingerprint must not lose what
was asked or answered). orjson differs in three places, and those values go the standard way:
- it writes NaN and ±Infinity as `null`, like None: output holding `null` is not used;
- it refuses integers beyond 64 bits, dict keys that are not strings and lone surrogates (a
  `TypeError`);
- it writes some types the standard library refuses (dataclasses, datetimes, enums, UUIDs): the
  values here are wire-form JSON values (`integrations.wire`), and dataclasses, datetimes and
  subclasses of the JSON types are passed through (refused) all the same.
Results are read back with the standard library, which reads both writers' text exactly.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps builds one per call
_DECODER = json.JSONDecoder()
_REFUSED = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_SUBCLASS)  # no `default`: refused, so written the standard way


def exact_json(value: Any) -> bytes | None:
    """`value` as compact JSON by orjson, or None where that would not be exact (see above)."""
    try:
        data = orjson.dumps(value, option=_REFUSED)
    except TypeError:  # orjson.JSONEncodeError
        return None
    return None if b"null" in data else data


def dump_result(value: Any) -> str:
    """`value` as JSON text, or '' (stored as NULL) for None; raises TypeError for a value JSON
    cannot hold."""
    if value is None:
        return ""
    data = exact_json(value)
    return _ENCODER.encode(value) if data is None else data.decode()


def parse_result(raw: str) -> Any:
    """A result as stored (JSON text), parsed: `raw_decode` is the C scanner without
    `json.loads`' wrappers, which a resume pays once per replayed effect."""
    return _DECODER.raw_decode(raw)[0]
