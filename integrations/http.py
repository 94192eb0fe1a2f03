"""Retries, rate limits and pagination inside connectors, never in generated code.

See ARCHITECTURE.md, "AI-friendly integrations". A connector wraps each service call:

    result = await with_retries(lambda: client.get(...), idempotent=True, classify=by_status)

`classify` turns what a call raised into a `Retry` (with the server's `Retry-After`, if it sent
one) or None when the failure is final. Whatever the client library, connectors share the rules:

- a rate limit (429) is retried for every call: the server did not act on the request;
- other transient failures (408, 500, 502, 503, 504, a dropped connection) are retried only for
  calls that are safe to repeat (reads, and writes the service deduplicates by idempotency key);
- the wait is the server's `Retry-After` when it gives one (seconds or an HTTP date), else an
  exponential back-off with jitter, and a wait longer than `RetryPolicy.max_wait_s` fails at once
  with a message saying when to try again.

`pages()` walks cursor-paginated listings so that actions return whole lists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import IntegrationError

logger = logging.getLogger(__name__)
T = TypeVar("T")

RATE_LIMITED = 429
TRANSIENT = frozenset({408, 500, 502, 503, 504})


@dataclass(frozen=True)
class Retry:
    """A failure worth trying again: after `after_s` seconds when the server said so."""

    after_s: float | None = None
    rate_limited: bool = False
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 0.5
    max_backoff_s: float = 30.0
    max_wait_s: float = 120.0  # a longer Retry-After fails now instead of holding the run


def retry_after_seconds(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def classify_status(status: int | None, headers: Mapping[str, str] | None = None, *,
                    reason: str = "") -> Retry | None:
    """The `Retry` for an HTTP status (None when it is final); reads `Retry-After`."""
    after = None
    if headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        after = retry_after_seconds(lowered.get("retry-after"))
    if status == RATE_LIMITED:
        return Retry(after_s=after, rate_limited=True, reason=reason or "rate limited (429)")
    if status in TRANSIENT:
        return Retry(after_s=after, reason=reason or f"HTTP {status}")
    return None


def classify_connection(exc: BaseException) -> Retry | None:
    """Connection failures (refused, reset, timed out) are transient."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return Retry(reason=type(exc).__name__)
    return None


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    classify: Callable[[BaseException], Retry | None] = classify_connection,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    what: str = "the call",
) -> T:
    """`await call()`, retried by the rules in this module's docstring.

    `sleep` is how to wait (tests pass one that records the waits). The last failure is raised
    as it was when retries run out or the failure is final.

    Raises:
        IntegrationError: the server asked to wait longer than `policy.max_wait_s`.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            retry = classify(exc)
            if retry is None or attempt >= policy.attempts or not (
                    idempotent or retry.rate_limited):
                raise
            wait = _wait_s(retry, attempt, policy, what)
            logger.info("%s: %s; retry %d of %d in %.1f s", what, retry.reason, attempt,
                        policy.attempts - 1, wait)
        await sleep(wait)


def _wait_s(retry: Retry, attempt: int, policy: RetryPolicy, what: str) -> float:
    if retry.after_s is not None:
        if retry.after_s > policy.max_wait_s:
            raise IntegrationError(
                f"{what} is rate limited: the service asks to wait {retry.after_s:.0f} s, "
                f"longer than {policy.max_wait_s:.0f} s. Try again later or with fewer calls.",
                retry_after_s=retry.after_s) from None
        return retry.after_s
    backoff = min(policy.max_backoff_s, policy.base_s * float(2 ** (attempt - 1)))
    return backoff * (0.5 + random.random() / 2)  # jitter


async def pages(
    fetch: Callable[[Any], Awaitable[tuple[list[T], Any]]],
    *,
    first: Any = None,
    limit: int | None = None,
) -> AsyncIterator[T]:
    """Every item of a cursor-paginated listing, page after page.

    `fetch(cursor)` returns (items, next cursor), the next cursor None (or "") after the last
    page; the first call gets `first`. Stops after `limit` items when given. A service that
    hands back the same cursor twice is a bug that would loop forever: it raises instead.
    """
    cursor, seen, count = first, set(), 0
    while True:
        items, cursor = await fetch(cursor)
        for item in items:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item
        if cursor is None or cursor == "":
            return
        marker = repr(cursor)
        if marker in seen:
            raise IntegrationError(f"The service returned the page cursor {marker} twice; "
                                   "stopping instead of looping.")
        seen.add(marker)


async def collect(iterator: AsyncIterator[T]) -> list[T]:
    """The items of an async iterator as a list."""
    return [item async for item in iterator]
