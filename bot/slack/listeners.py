"""What Slack deliveries do: requests from mentions, DMs and `/sluice`, button clicks, App Home.

Each listener acknowledges at once and hands the work to a task the surface tracks (Slack wants
an answer within 3 s); the task stores the request and enqueues planning by name through
`bot.conversation`, the same code the console uses. The bot's own and other bots' messages are
ignored; a delivery seen before (same event id, same message, same click) starts nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse

from bot.conversation import RUN_ACTIONS, AlreadyDecidedError, Decision, decide, receive_request
from bot.deps import BotDeps
from bot.slack.blocks import ACTION_PREFIX, home_view
from bot.slack.clients import SlackTokens
from bot.slack.files import download_files
from bot.slack.records import SlackLink, SlackRecords
from core.errors import SluiceError
from core.types import Attachment, Message, Request

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], None]
HELP = ("Tell me what to do, for example: _for every signup missing a budget, email them and "
        "note the date in the sheet_. I'll plan it, show what it will do and cost, and ask "
        "before running it.")
_TAKEN_SUBTYPES = {None, "file_share", "thread_broadcast"}


def mention(user_id: str) -> str:
    """How Sluice records a Slack user: the mention Slack renders as their name."""
    return f"<@{user_id}>"


class SlackListeners:
    def __init__(self, deps: BotDeps, records: SlackRecords, tokens: SlackTokens,
                 spawn: Spawn) -> None:
        self.deps = deps
        self.records = records
        self.tokens = tokens
        self.spawn = spawn
        self._workspace_urls: dict[str, str] = {}

    def register(self, app: AsyncApp) -> None:
        app.middleware(self.once_per_event)
        app.event("app_mention")(self.on_mention)
        app.event("message")(self.on_message)
        app.event("app_home_opened")(self.on_home)
        app.command("/sluice")(self.on_command)
        app.action(re.compile("^" + re.escape(ACTION_PREFIX)))(self.on_action)

    # Deliveries -------------------------------------------------------------------------------

    async def once_per_event(self, body: dict[str, Any],
                             next: Callable[[], Awaitable[None]]) -> BoltResponse | None:
        """A retried (`X-Slack-Retry-Num`) or replayed event id is answered 200 and dropped."""
        event_id = body.get("event_id")
        if event_id and not await self.records.first_time(f"event:{event_id}"):
            log.info("Slack event %s was delivered before; ignored", event_id)
            return BoltResponse(status=200, body="")
        await next()
        return None

    async def on_mention(self, event: dict[str, Any], context: dict[str, Any]) -> None:
        await self._take(event, context)

    async def on_message(self, event: dict[str, Any], context: dict[str, Any]) -> None:
        if event.get("channel_type") == "im":  # in channels only mentions ask for work
            await self._take(event, context)

    async def on_command(self, ack: Callable[..., Awaitable[None]], command: dict[str, Any],
                         context: dict[str, Any],
                         respond: Callable[..., Awaitable[Any]]) -> None:
        text = str(command.get("text") or "").strip()
        if not text:
            await ack(text=HELP)
            return
        await ack()
        if await self.records.first_time(f"command:{command.get('trigger_id')}"):
            self.spawn(self._command(str(context.get("team_id") or command.get("team_id")),
                                     command["channel_id"], command["user_id"], text, respond))

    async def on_action(self, ack: Callable[[], Awaitable[None]], body: dict[str, Any],
                        context: dict[str, Any]) -> None:
        await ack()
        container = body.get("container") or {}
        action = (body.get("actions") or [{}])[0]
        self.spawn(self._click(str(context.get("team_id")), str(container.get("channel_id")),
                               str(container.get("message_ts")), str(body["user"]["id"]),
                               str(action.get("action_id", ""))[len(ACTION_PREFIX):],
                               str(action.get("value", ""))))

    async def on_home(self, event: dict[str, Any], context: dict[str, Any]) -> None:
        if event.get("tab", "home") == "home":
            self.spawn(self._publish_home(str(context.get("team_id")), str(event["user"])))

    # Work, in tracked tasks -------------------------------------------------------------------

    async def _take(self, event: dict[str, Any], context: dict[str, Any]) -> None:
        if _from_a_bot(event, context.get("bot_user_id")):
            return
        team_id = str(context.get("team_id") or event.get("team"))
        key = f"message:{team_id}:{event.get('channel')}:{event.get('ts')}"
        if await self.records.first_time(key):  # a mention also arrives as a message event
            self.spawn(self._request(team_id, event, str(context.get("bot_user_id") or "")))

    async def _request(self, team_id: str, event: dict[str, Any], bot_user_id: str) -> None:
        root = str(event.get("thread_ts") or event["ts"])
        try:
            await self._take_request(team_id, event, bot_user_id)
        except Exception as exc:
            log.error("Slack request %s in %s failed: %s", event.get("ts"), event.get("channel"),
                      type(exc).__name__, exc_info=not isinstance(exc, SluiceError))
            await self._reply(team_id, str(event["channel"]), root, _failed(exc))

    async def _take_request(self, team_id: str, event: dict[str, Any], bot_user_id: str) -> None:
        text = _without_mention(str(event.get("text") or ""), bot_user_id)
        channel, ts = str(event["channel"]), str(event["ts"])
        root = str(event.get("thread_ts") or ts)
        if not text:
            await self._reply(team_id, channel, root, HELP)
            return
        link = await self.records.open_thread(team_id=team_id, channel=channel, thread_ts=root,
                                              user=str(event["user"]), title=text[:80])
        files = await self._files(team_id, link, list(event.get("files") or []))
        await self._ask(link, event["user"], text, ts=ts, files=files)

    async def _command(self, team_id: str, channel: str, user_id: str, text: str,
                       respond: Callable[..., Awaitable[Any]]) -> None:
        try:
            await self._take_command(team_id, channel, user_id, text)
        except Exception as exc:
            log.error("/sluice in %s failed: %s", channel, type(exc).__name__,
                      exc_info=not isinstance(exc, SluiceError))
            await respond(text=_failed(exc), response_type="ephemeral")

    async def _take_command(self, team_id: str, channel: str, user_id: str, text: str) -> None:
        client = await self.tokens.client(team_id)
        root = await client.chat_postMessage(channel=channel,
                                             text=f"{mention(user_id)} asked: {text}")
        link = await self.records.open_thread(team_id=team_id, channel=channel,
                                              thread_ts=str(root["ts"]), user=user_id,
                                              title=text[:80])
        await self._ask(link, user_id, text, ts=str(root["ts"]), files=[])

    async def _ask(self, link: SlackLink, user_id: str, text: str, *, ts: str,
                   files: list[Attachment]) -> None:
        if files:
            text += "\n\nFiles shared with this request: " + ", ".join(f.name for f in files)
        request = Request(thread_id=link.thread_id, surface="slack", user=mention(user_id),
                          text=text[:20_000])
        message = await receive_request(self.deps, request, attachments=files)
        await self.records.save_mirrored(message.id, link.thread_id, channel=link.channel, ts=ts,
                                         digest="slack", files=[f.id for f in files])
        await self.deps.thread_changed(link.thread_id)

    async def _files(self, team_id: str, link: SlackLink,
                     files: list[dict[str, Any]]) -> list[Attachment]:
        if not files:
            return []
        return await download_files(self.deps.settings, self.deps.store,
                                    thread_id=link.thread_id,
                                    token=await self.tokens.bot_token(team_id), files=files)

    async def _click(self, team_id: str, channel: str, ts: str, user_id: str, action: str,
                     value: str) -> None:
        message_id = await self.records.message_at(channel, ts)
        if message_id is None:
            await self._ephemeral(team_id, channel, user_id, "I no longer know this message.")
            return
        message = await self.deps.store.get_message(message_id)
        if not await self._may_decide(user_id, action, value):
            await self._ephemeral(team_id, channel, user_id, await self._refusal(action, value),
                                  thread_ts=await self._root(message))
            return
        try:
            await decide(self.deps, Decision(action=action, message_id=message_id, value=value,
                                             user=mention(user_id)))
        except AlreadyDecidedError as exc:
            log.info("click on %s by %s changed nothing: already decided", message_id, user_id)
            await self._ephemeral(team_id, channel, user_id, exc.message,
                                  thread_ts=await self._root(message))
        except SluiceError as exc:
            await self._ephemeral(team_id, channel, user_id, exc.message,
                                  thread_ts=await self._root(message))
        await self.deps.thread_changed(message.thread_id)

    async def _may_decide(self, user_id: str, action: str, value: str) -> bool:
        if user_id in self.deps.settings.slack_approver_ids:
            return True
        return mention(user_id) == await self._requester(action, value)

    async def _requester(self, action: str, value: str) -> str:
        if action in RUN_ACTIONS:
            return await self.records.requester(run_id=value)
        return await self.records.requester(plan_id=value)

    async def _refusal(self, action: str, value: str) -> str:
        who = await self._requester(action, value) or "the person who asked"
        return (f"Not allowed: only {who} or an approver (SLUICE_SLACK_APPROVERS) can decide "
                "this. Nothing changed.")

    async def _root(self, message: Message) -> str | None:
        link = await self.records.link_of(message.thread_id)
        return link.thread_ts if link else None

    async def _publish_home(self, team_id: str, user_id: str) -> None:
        client = await self.tokens.client(team_id)
        runs = await self.records.recent_runs(mention(user_id))
        base = await self._workspace_url(team_id)
        lines = [(r.state.value, r.summary, r.spent_usd,
                  _permalink(base, r.link) if r.link and base else "") for r in runs]
        await client.views_publish(user_id=user_id, view=home_view(lines))

    async def _workspace_url(self, team_id: str) -> str:
        if team_id not in self._workspace_urls:
            auth = await (await self.tokens.client(team_id)).auth_test()
            self._workspace_urls[team_id] = str(auth.get("url") or "")
        return self._workspace_urls[team_id]

    async def _reply(self, team_id: str, channel: str, thread_ts: str, text: str) -> None:
        client = await self.tokens.client(team_id)
        await client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text)

    async def _ephemeral(self, team_id: str, channel: str, user_id: str, text: str, *,
                         thread_ts: str | None = None) -> None:
        client = await self.tokens.client(team_id)
        await client.chat_postEphemeral(channel=channel, user=user_id, text=text,
                                        thread_ts=thread_ts)


def _without_mention(text: str, bot_user_id: str) -> str:
    """The request without the app's own mention (other people's mentions stay)."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", "", text)
    return text.strip()


def _failed(exc: Exception) -> str:
    if isinstance(exc, SluiceError):
        return f"{exc.message} Nothing was started."
    return ("Something went wrong on my side and nothing was started. Please ask again in a "
            "minute; if it keeps happening, tell whoever runs Sluice (the bot log has details).")


def _from_a_bot(event: dict[str, Any], bot_user_id: object) -> bool:
    return bool(event.get("bot_id") or event.get("subtype") not in _TAKEN_SUBTYPES
                or not event.get("user") or event.get("user") == bot_user_id)


def _permalink(base: str, link: SlackLink) -> str:
    return f"{base.rstrip('/')}/archives/{link.channel}/p{link.thread_ts.replace('.', '')}"
