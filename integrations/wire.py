"""How values cross the sandbox boundary: plain JSON plus a few tagged types.

Both sides of the RPC channel (the worker and the sandboxed program) use `encode`/`decode`.
Tagged forms: rows `{"__row__": [id, values]}`, resource handles
`{"__handle__": [integration, type, key]}`, dates and datetimes `{"__date__": iso}` /
`{"__datetime__": iso}`, decimals `{"__decimal__": str}`, tuples become lists.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from integrations.base import Resource, Row

HandleFactory = Callable[[str, str, str], Any]


JSON_SCALARS = frozenset({str, int, float, bool, type(None)})  # passed as they are, by exact type


def encode(value: Any) -> Any:
    """A JSON-able form of `value`. Raises TypeError naming the type it cannot carry."""
    kind = type(value)
    if kind in JSON_SCALARS:  # the common case, by exact type: cheaper than isinstance
        return value
    if kind is list or kind is tuple:
        return [v if type(v) in JSON_SCALARS else encode(v) for v in value]
    if kind is dict:
        return {str(k): v if type(v) in JSON_SCALARS else encode(v) for k, v in value.items()}
    return _encode_other(value)


def _encode_other(value: Any) -> Any:
    """`encode` for the types that need more than an exact type check."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Row):
        return {"__row__": [value.id, {k: encode(v) for k, v in value.items()}]}
    if isinstance(value, Resource):
        owner = value.owner.name if value.owner is not None else getattr(value, "integration", "")
        return {"__handle__": [owner, type(value).__name__, value.key]}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [encode(v) for v in value]
    if isinstance(value, dt.datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, dt.date):
        return {"__date__": value.isoformat()}
    if isinstance(value, Decimal):
        return {"__decimal__": str(value)}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return encode(value.item())
    raise TypeError(f"a {type(value).__name__} cannot be passed to an integration; "
                    "use str, int, float, bool, None, date, list or dict")


def decode(value: Any, handle: HandleFactory | None = None) -> Any:
    """The inverse of `encode`; `handle(integration, type, key)` builds resource handles."""
    if isinstance(value, list):
        return [decode(v, handle) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        tag, body = next(iter(value.items()))
        if tag == "__row__":
            return Row(body[0], {k: decode(v, handle) for k, v in body[1].items()})
        if tag == "__handle__":
            if handle is None:
                raise ValueError("a resource handle arrived where none was expected")
            return handle(*body)
        if tag == "__date__":
            return dt.date.fromisoformat(body)
        if tag == "__datetime__":
            return dt.datetime.fromisoformat(body)
        if tag == "__decimal__":
            return Decimal(body)
    return {k: decode(v, handle) for k, v in value.items()}


def dumps(value: Any) -> bytes:
    return json.dumps(encode(value), separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes, handle: HandleFactory | None = None) -> Any:
    return decode(json.loads(data), handle)
