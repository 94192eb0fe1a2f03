"""Drive the real Bolt app with real signed HTTP requests, as Slack does.

Signature v0: `v0=` + HMAC-SHA256(signing secret, `v0:{timestamp}:{body}`), sent with
`X-Slack-Request-Timestamp` (https://api.slack.com/authentication/verifying-requests-from-slack).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bot.app import SLACK
from bot.slack import SlackSurface
from tests._slack_api import BOT_USER_ID, TEAM_ID, FakeSlack
from tests._stack import Stack

BOT_TOKEN = "xoxb-test-" + "9" * 24
SIGNING_SECRET = "signing-" + "7" * 24
CHANNEL = "C0SIGNUPS"
APP_TOKEN = "xapp-1-test-" + "3" * 20
CLIENT_ID = "1234.5678"
CLIENT_SECRET = "client-secret-" + "5" * 20


def sign(body: str, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class SlackHarness:
    stack: Stack
    fake: FakeSlack
    ts_seq: int = 0

    @classmethod
    @asynccontextmanager
    async def running(cls, *, redis_url: str, home: Path, environ: dict[str, str] | None = None,
                      oauth_codes: dict[str, str] | None = None) -> AsyncIterator[SlackHarness]:
        """The stack with Slack on; with `oauth_codes` (code -> bot token) installs by OAuth."""
        fake = FakeSlack(token=BOT_TOKEN, oauth=oauth_codes, app_token=APP_TOKEN)
        await fake.start()
        tokens = {"SLACK_CLIENT_ID": CLIENT_ID, "SLACK_CLIENT_SECRET": CLIENT_SECRET} \
            if oauth_codes is not None else {"SLACK_BOT_TOKEN": BOT_TOKEN}
        env = {**tokens, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
               "SLACK_API_URL": fake.api_url, "SLUICE_SLACK_MIN_INTERVAL_S": "0",
               "SLUICE_SLACK_APPROVERS": "UBOSS", **(environ or {})}
        try:
            async with Stack.running(redis_url=redis_url, home=home, env=env) as stack:
                yield cls(stack=stack, fake=fake)
        finally:
            await fake.stop()

    @property
    def surface(self) -> SlackSurface:
        assert self.stack.app is not None
        return self.stack.app[SLACK]

    # Requests into the app --------------------------------------------------------------------

    async def post(self, body: str, *, content_type: str, timestamp: int | None = None,
                   secret: str = SIGNING_SECRET, headers: dict[str, str] | None = None,
                   path: str = "/slack/events") -> int:
        stamp = int(time.time()) if timestamp is None else timestamp
        sent = {"Content-Type": content_type, "X-Slack-Request-Timestamp": str(stamp),
                "X-Slack-Signature": sign(body, stamp, secret), **(headers or {})}
        async with self.stack.http.post(self.stack.base_url + path, data=body.encode(),
                                        headers=sent) as resp:
            await resp.read()
            return resp.status

    async def event(self, event: dict[str, Any], *, event_id: str | None = None,
                    headers: dict[str, str] | None = None, **kwargs: Any) -> int:
        envelope = self.event_callback(event, event_id=event_id)
        return await self.post(json.dumps(envelope), content_type="application/json",
                               headers=headers, **kwargs)

    def event_callback(self, event: dict[str, Any], *,
                       event_id: str | None = None) -> dict[str, Any]:
        """The body Slack sends for `event` (Events API)."""
        return {"token": "legacy-verification", "team_id": TEAM_ID, "api_app_id": "A0SLUICE",
                "type": "event_callback", "event": event,
                "event_id": event_id or "Ev" + secrets.token_hex(5).upper(),
                "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID,
                                    "is_bot": True, "enterprise_id": None}]}

    def next_ts(self) -> str:
        self.ts_seq += 1
        return f"1700000000.{self.ts_seq:06d}"

    def mention_event(self, text: str, *, user: str = "UANA", ts: str | None = None,
                      thread_ts: str | None = None, **extra: Any) -> dict[str, Any]:
        event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER_ID}> {text}",
                 "ts": ts or self.next_ts(), "channel": CHANNEL, "event_ts": ts or "",
                 "team": TEAM_ID, **extra}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    async def mention(self, text: str, **kwargs: Any) -> str:
        """Mention the app in the channel; returns the message's ts (the thread's root)."""
        event = self.mention_event(text, **kwargs)
        assert await self.event(event) == 200
        await self.settled()
        return str(event["ts"])

    async def click(self, message_ts: str, action: str, value: str, *, user: str = "UANA",
                    channel: str = CHANNEL) -> int:
        payload = {"type": "block_actions", "team": {"id": TEAM_ID, "domain": "sluice-test"},
                   "user": {"id": user, "team_id": TEAM_ID}, "api_app_id": "A0SLUICE",
                   "token": "legacy-verification", "trigger_id": secrets.token_hex(8),
                   "container": {"type": "message", "message_ts": message_ts,
                                 "channel_id": channel, "is_ephemeral": False},
                   "channel": {"id": channel}, "message": {"ts": message_ts, "type": "message"},
                   "response_url": f"{self.fake.base_url}/response",
                   "actions": [{"type": "button", "action_id": f"sluice:{action}",
                                "block_id": "sluice_buttons", "value": value,
                                "action_ts": str(time.time())}]}
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, content_type="application/x-www-form-urlencoded")

    async def command(self, text: str, *, user: str = "UANA", channel: str = CHANNEL) -> int:
        body = urlencode({"token": "legacy-verification", "team_id": TEAM_ID,
                          "channel_id": channel, "user_id": user, "command": "/sluice",
                          "text": text, "api_app_id": "A0SLUICE",
                          "trigger_id": secrets.token_hex(8),
                          "response_url": f"{self.fake.base_url}/response"})
        return await self.post(body, content_type="application/x-www-form-urlencoded")

    # Waiting ------------------------------------------------------------------------------------

    async def settled(self) -> None:
        await self.surface.settled()

    async def work(self) -> None:
        """Run the queued jobs, render their events, and mirror the threads to Slack."""
        await self.settled()
        await self.stack.drain()
        await self.settled()

    # Reading Slack ------------------------------------------------------------------------------

    def thread(self, root: str, channel: str = CHANNEL) -> list[Any]:
        return self.fake.thread(channel, root)

    def plan_message(self, root: str) -> Any:
        [plan] = [m for m in self.thread(root) if any(b.get("type") == "header"
                                                      for b in m.blocks)]
        return plan


def buttons(message: Any) -> dict[str, str]:
    """action -> value of a Slack message's buttons."""
    return {e["action_id"].removeprefix("sluice:"): e["value"] for b in message.blocks
            if b["type"] == "actions" for e in b["elements"]}


def block_text(message: Any) -> str:
    parts = []
    for block in message.blocks:
        if "text" in block:
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            if element.get("type") == "mrkdwn":
                parts.append(element["text"])
    return "\n".join(parts)
