"""The Slack event renderer: keeps each Slack thread in step with its Sluice thread.

`bot/render.py` turns job events into thread messages in the database (what the console shows);
this module makes the Slack thread show the same messages. A change marks the thread dirty; one
task per thread then compares every message with what Slack last got (a digest) and posts the
new ones (`chat.postMessage` in the thread), edits the changed ones in place (`chat.update`, so
the status message is one message that moves) and uploads attachments (`files_upload_v2`).

Throttling follows Slack's rate tiers: writes into one channel are at least
`SLUICE_SLACK_MIN_INTERVAL_S` apart (chat.postMessage allows about one a second per channel),
and edits in one workspace at least 1.2 times that (chat.update is Tier 3, about 50 a minute);
progress that arrives meanwhile is folded into the next edit. A 429 is retried after its
`Retry-After` by the client's retry handler; since one task per thread does the writes in thread
order, every update lands, late but in order. Syncing is idempotent, so a redelivered event or a
restart changes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.blocks import message_payload
from bot.slack.clients import SlackTokens
from bot.slack.records import Mirrored, SlackLink, SlackRecords
from core.errors import SluiceError
from core.store import Store
from core.types import Message

log = logging.getLogger(__name__)
MAX_FAILURES = 5
UPDATES_PER_POST = 1.2  # Tier 3 (50/min per workspace) against ~1/s per channel


class _Pacer:
    """At least `interval` seconds between two writes into one channel."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def wait(self, channel: str) -> None:
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            delay = self._next.get(channel, 0.0) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next[channel] = loop.time() + self.interval


class SlackMirror:
    def __init__(self, store: Store, records: SlackRecords, tokens: SlackTokens, *,
                 min_interval_s: float) -> None:
        self.store = store
        self.records = records
        self.tokens = tokens
        self.pacer = _Pacer(min_interval_s)
        self.update_pacer = _Pacer(min_interval_s * UPDATES_PER_POST)
        self._dirty: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def thread_changed(self, thread_id: str) -> None:
        """Schedule a sync of `thread_id` if it lives in Slack (never raises, never waits)."""
        try:
            link = await self.records.link_of(thread_id)
        except Exception:
            log.exception("could not look up the Slack link of thread %s", thread_id)
            return
        if link is None:
            return
        self._dirty.add(thread_id)
        task = self._tasks.get(thread_id)
        if task is None or task.done():
            self._tasks[thread_id] = asyncio.create_task(self._drain(link))

    async def settled(self) -> None:
        """Wait until every scheduled sync is done (tests; shutdown)."""
        while any(not t.done() for t in self._tasks.values()):
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self, link: SlackLink) -> None:
        failures = 0
        while link.thread_id in self._dirty:
            self._dirty.discard(link.thread_id)
            try:
                await self.sync(link)
                failures = 0
            except (SlackApiError, SluiceError, OSError, aiohttp.ClientError,
                    TimeoutError) as exc:
                failures += 1
                log.warning("could not mirror thread %s to Slack (%s), attempt %d",
                            link.thread_id, _reason(exc), failures)
                if failures >= MAX_FAILURES:
                    return
                self._dirty.add(link.thread_id)
                await asyncio.sleep(min(30.0, 2.0 ** failures))
            except Exception:
                log.exception("mirroring thread %s to Slack failed; it resumes on the next "
                              "change", link.thread_id)
                return

    async def sync(self, link: SlackLink) -> None:
        """Post, edit and upload whatever the Slack thread lacks, in thread order."""
        thread = await self.store.get_thread(link.thread_id)
        mirrored = await self.records.mirrored(link.thread_id)
        client: AsyncWebClient | None = None
        for message in thread.messages:
            payload = await self._payload(message)
            digest = _digest(payload)
            seen = mirrored.get(message.id)
            if seen is not None and _up_to_date(seen, digest, message):
                continue
            client = client or await self.tokens.client(link.team_id)
            await self._mirror(client, link, message, payload, digest, seen)

    async def _mirror(self, client: AsyncWebClient, link: SlackLink, message: Message,
                      payload: dict[str, Any], digest: str, seen: Mirrored | None) -> None:
        if seen is None:
            await self.pacer.wait(link.channel)
            reply = await client.chat_postMessage(channel=link.channel,
                                                  thread_ts=link.thread_ts, **payload)
            seen = Mirrored(link.channel, str(reply["ts"]), digest, ())
            await self.records.save_mirrored(message.id, link.thread_id, channel=link.channel,
                                             ts=seen.ts, digest=digest)
        elif seen.digest not in (digest, "slack"):
            await self.update_pacer.wait(link.team_id)
            await self.pacer.wait(link.channel)
            await client.chat_update(channel=seen.channel, ts=seen.ts, **payload)
            await self.records.save_mirrored(message.id, link.thread_id, channel=seen.channel,
                                             ts=seen.ts, digest=digest)
        await self._upload(client, link, message, seen)

    async def _upload(self, client: AsyncWebClient, link: SlackLink, message: Message,
                      seen: Mirrored) -> None:
        done = list(seen.files)
        for attachment in message.attachments:
            if attachment.id in done:
                continue
            meta, data = await self.store.get_attachment(attachment.id)
            await self.pacer.wait(link.channel)
            await client.files_upload_v2(channel=link.channel, thread_ts=link.thread_ts,
                                         filename=meta.name, title=meta.name, content=data)
            done.append(attachment.id)
            await self.records.save_mirrored(message.id, link.thread_id, channel=seen.channel,
                                             ts=seen.ts, digest=seen.digest, files=done)

    async def _payload(self, message: Message) -> dict[str, Any]:
        plan = None
        if message.kind == "plan" and message.meta.get("plan_id"):
            plan = await self.store.get_plan(str(message.meta["plan_id"]))
        text, blocks = message_payload(message, plan=plan)
        return {"text": text, "blocks": blocks}


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _up_to_date(seen: Mirrored, digest: str, message: Message) -> bool:
    """Slack shows this message as it is now, with all its files ("slack": it came from there)."""
    return seen.digest in (digest, "slack") and set(seen.files) >= {
        a.id for a in message.attachments}


def _reason(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "error"))
    if isinstance(exc, SluiceError):
        return exc.message
    return type(exc).__name__
