"""The event stream from workers to surfaces: a Redis stream read by a consumer group.

Workers `publish` `JobEvent`s; each surface process reads them with `EventReader`, renders them,
then acknowledges. An event not acknowledged (the reader died mid-render) is claimed again on the
next start, so no progress, question or result is lost.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.types import JobEvent

log = logging.getLogger(__name__)

STREAM = "sluice:events"
GROUP = "surfaces"
MAX_LEN = 100_000


async def publish(redis: Redis, event: JobEvent) -> None:
    """Append `event` to the stream (the connection retries across a Redis restart)."""
    await redis.xadd(STREAM, {"event": event.model_dump_json()}, maxlen=MAX_LEN,
                     approximate=True)


class EventReader:
    """Reads events for rendering; `ack` after an event is rendered."""

    def __init__(self, redis: Redis, *, consumer: str | None = None, block_ms: int = 200) -> None:
        self.redis = redis
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.block_ms = block_ms

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self) -> AsyncIterator[tuple[str, JobEvent]]:
        """Yield (entry id, event): first any left pending by a dead reader, then new ones."""
        await self.ensure_group()
        async for item in self._claim_stale():
            yield item
        while True:
            batches = await self.redis.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=100,
                                                  block=self.block_ms)
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    event = await self._parse_or_ack(entry_id, fields)
                    if event is not None:
                        yield _id(entry_id), event

    async def ack(self, entry_id: str) -> None:
        await self.redis.xack(STREAM, GROUP, entry_id)

    async def _claim_stale(self) -> AsyncIterator[tuple[str, JobEvent]]:
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(STREAM, GROUP, self.consumer, min_idle_time=5000,
                                                start_id=start, count=100)
            start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                event = await self._parse_or_ack(entry_id, fields)
                if event is not None:
                    yield _id(entry_id), event
            if _id(start) == "0-0":
                return


    async def _parse_or_ack(self, entry_id: bytes | str,
                            fields: dict[bytes, bytes]) -> JobEvent | None:
        event = _parse(entry_id, fields)
        if event is None:  # unreadable: logged once, acknowledged so it is not retried forever
            await self.ack(_id(entry_id))
        return event


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse(entry_id: bytes | str, fields: dict[bytes, bytes]) -> JobEvent | None:
    raw = fields.get(b"event") or fields.get("event")  # type: ignore[call-overload]
    try:
        return JobEvent.model_validate_json(raw)
    except ValueError:
        log.error("dropping unreadable event %s on %s", _id(entry_id), STREAM)
        return None
