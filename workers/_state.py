"""A thread's variables between runs (ARCHITECTURE.md, "State outlives the process").

After a successful run the sandbox child encodes the variables the program bound with
`encode_state`, as JSON text, and describes each in a line (`summarize`, for the planner); the
worker saves the texts with the thread as they are, never parsing them, and the next run's child
gets them back, as strings in its start frame, with `decode_state`: only the child parses them, so
a text the program made cannot be more than a value there. Encoded forms are JSON: a DataFrame is
`{"__dataframe__": <its to_json(orient="split")>}`, everything else is `integrations.wire` form
(lists, dicts with string keys, strings, numbers, booleans, None, dates, datetimes, decimals,
rows). What cannot be kept this way (a generator, a resource handle, an object, more than the size
cap) is listed with the reason, so the person and the model know to rebuild it.

Imported by the sandbox child, so standard library, orjson and `integrations.wire` only at import
time; pandas is imported when a DataFrame is decoded.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import logging
import sys
import types
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from integrations import wire
from integrations.base import Resource, Row
from workers._journal_json import is_exact, plain_json

__all__ = ["MAX_STATE_BYTES", "decode_state", "encode_state", "summarize", "untagged_names"]

logger = logging.getLogger(__name__)

MAX_STATE_BYTES = 8 * 1024 * 1024
_MAX_DEPTH = 100
_DATAFRAME = "__dataframe__"
# Bound names that are code, not data: left out silently.
_CODE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
         functools.partial)
_PLAIN = (str, int, float, bool, dt.date, Decimal)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()  # the standard library's: exact for every text it or orjson wrote


class _Unsaveable(Exception):
    """`reason` says why a value cannot be kept, for the person and the model."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode_state(
    namespace: Mapping[str, Any], *, max_bytes: int = MAX_STATE_BYTES
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The variables of `namespace` that can be kept, encoded as JSON text, and those that cannot.

    Names starting with "_", modules, functions and classes are left out silently. Variables are
    kept in binding order until their encoded size reaches `max_bytes`; later ones that would go
    over are listed as unsaved.

    Returns:
        `({name: JSON text of its encoded form}, [{"name": ..., "reason": ...}])`.
    """
    variables: dict[str, str] = {}
    unsaved: list[dict[str, str]] = []
    used = 0
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, _CODE):
            continue
        try:
            encoded, size = _json_of(value)
        except _Unsaveable as exc:
            unsaved.append({"name": name, "reason": exc.reason})
            continue
        if used + size > max_bytes:
            reason = f"it would take the saved variables over {_size_text(max_bytes)}"
            unsaved.append({"name": name, "reason": reason})
            continue
        variables[name] = encoded
        used += size
    return variables, unsaved


def summarize(value: Any) -> str:
    """One line about a kept variable, for the planner: what it is and how big."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        return (f"a pandas DataFrame, {len(value)} rows, columns "
                f"{[str(c) for c in value.columns]}")[:300]
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"a dict with {len(value)} keys"
    return f"the value {str(value)[:60]!r}"


def untagged_names(texts: Mapping[str, Any]) -> list[str]:
    """The names of saved variables whose JSON text holds no tag (no key starting with "__"):
    those decode to the parsed JSON itself. A quote inside a string may look like a tag too;
    such a text is walked, to no harm."""
    return [name for name, text in texts.items() if isinstance(text, str) and '"__' not in text]


def decode_state(texts: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of a saved state (JSON text by name); one that cannot be parsed or decoded
    is left out (and logged). Those whose text holds no tag are the parsed JSON as it is, without
    a walk."""
    untagged = set(untagged_names(texts))
    variables: dict[str, Any] = {}
    for name, text in texts.items():
        try:
            if not isinstance(text, str):
                raise TypeError(f"a {type(text).__name__} where JSON text was expected")
            encoded = _DECODER.decode(text)
            variables[name] = encoded if name in untagged else decode_value(encoded)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            logger.warning("state: variable %r could not be decoded: %s", name, exc)
    return variables


def encode_value(value: Any) -> Any:
    """The JSON form of one variable. Raises _Unsaveable with the reason when there is none."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        try:
            return {_DATAFRAME: value.to_json(orient="split", date_format="iso")}
        except (TypeError, ValueError, OverflowError) as exc:
            raise _Unsaveable(f"the DataFrame cannot be written as JSON: {exc}") from None
    return _plain(value, 0)


def decode_value(encoded: Any) -> Any:
    """The inverse of `encode_value`."""
    if isinstance(encoded, dict) and len(encoded) == 1 and isinstance(encoded.get(_DATAFRAME), str):
        # Only runs that kept a DataFrame pay for the import. From pandas.io.json: the sandbox
        # child refuses pandas.read_json to programs (workers._sandbox_guards).
        from pandas.io.json import read_json

        # dtype=False: keep "0123" a string rather than guessing it is the number 123.
        return read_json(io.StringIO(encoded[_DATAFRAME]), orient="split", dtype=False)
    return wire.decode(encoded)


_SCALARS = wire.JSON_SCALARS  # kept as they are, by exact type


def _plain(value: Any, depth: int) -> Any:
    """The wire form of `value`. Plain lists and dicts of plain scalars, by far the most common
    variables, are copied by exact type checks without a call per element."""
    if depth > _MAX_DEPTH:
        raise _Unsaveable(f"it is nested more than {_MAX_DEPTH} levels deep")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return _plain_dict(value, depth)
    if kind is list or kind is tuple:
        scalars = _SCALARS
        return [item if type(item) in scalars else _plain(item, depth + 1) for item in value]
    return _plain_other(value, depth)


def _plain_other(value: Any, depth: int) -> Any:
    """`_plain` for the types that need more than an exact type check."""
    if value is None or isinstance(value, _PLAIN):
        return wire.encode(value)
    if isinstance(value, Row):
        return {"__row__": [value.id, _plain_dict(value, depth)]}
    if isinstance(value, dict):
        return _plain_dict(value, depth)
    if isinstance(value, list | tuple):
        return [_plain(item, depth + 1) for item in value]
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)):
        try:
            return _plain(value.item(), depth)  # a numpy scalar; an array's item() fails
        except ValueError:
            pass
    raise _Unsaveable(_reason(value))


def _plain_dict(value: dict[Any, Any], depth: int) -> dict[str, Any]:
    for key in value:
        if type(key) is not str and not isinstance(key, str):
            raise _Unsaveable("a dict whose keys are not all strings cannot be saved; "
                              "use string keys")
    scalars = _SCALARS
    return {key: item if type(item) in scalars else _plain(item, depth + 1)
            for key, item in value.items()}


def _reason(value: Any) -> str:
    kind = type(value).__name__
    if isinstance(value, types.GeneratorType) or hasattr(value, "__next__"):
        return f"a {kind} can be read only once and cannot be saved; keep list(...) of it instead"
    if isinstance(value, Resource):
        return f"a {kind} handle belongs to the run that opened it; open it again when needed"
    if isinstance(value, set | frozenset):
        return f"a {kind} cannot be saved; keep sorted(...) of it instead"
    if isinstance(value, dt.time | dt.timedelta):
        return f"a {kind} cannot be saved; keep it as a string or a number"
    if callable(getattr(value, "tolist", None)):
        return f"a {kind} cannot be saved; keep .tolist() of it, or a DataFrame"
    return (f"a {kind} object cannot be saved; keep plain data (DataFrames, lists, dicts, "
            "strings, numbers, dates)")


def _size_text(size: int) -> str:
    mib = 1024 * 1024
    return f"{size // mib} MiB" if size >= mib else f"{size} bytes"


def _json_of(value: Any) -> tuple[str, int]:
    """The JSON text of `value`'s encoded form, and the bytes it takes in a frame.

    A value made of JSON types only (lists, dicts with string keys, strings, numbers, booleans,
    None: most variables) is its own encoded form, written by orjson in one pass when that is
    exact (`workers._journal_json.is_exact`), else by the standard library without a copy.
    Anything else goes through `encode_value`, and so do values nested more than 254 levels,
    which orjson refuses (`encode_value` refuses more than 100)."""
    data = plain_json(value)
    if data is None:
        text = _ENCODER.encode(encode_value(value))
    elif is_exact(data, value):
        return data.decode(), len(data)
    else:  # NaN or ±Infinity, which orjson writes as null: the standard library's way
        text = _ENCODER.encode(value)
    return text, len(text.encode("utf-8", "replace"))
