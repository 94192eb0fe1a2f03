"""The Slack surface: a Bolt app on the bot's aiohttp server, or over Socket Mode.

HTTP mode serves `POST /slack/events` (events, interactivity and the slash command share it;
Bolt verifies signature v0 and the 5-minute window and answers 401 otherwise), plus
`/slack/install` and `/slack/oauth_redirect` when installing by OAuth. With `SLACK_APP_TOKEN`
set it also connects over Socket Mode. Listeners acknowledge and return; the work runs in tasks
tracked here, and `settled()` waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings

from bot.deps import BotDeps
from bot.slack.clients import BOT_SCOPES, SlackTokens, web_client
from bot.slack.listeners import SlackListeners
from bot.slack.mirror import SlackMirror
from bot.slack.records import SlackRecords
from core.errors import ConfigurationError
from core.settings import Settings

log = logging.getLogger(__name__)
INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"


class SlackSurface:
    def __init__(self, settings: Settings) -> None:
        if not settings.slack_signing_secret and not settings.slack_app_token:
            raise ConfigurationError(
                "SLACK_SIGNING_SECRET is not set. Copy it from the Slack app's Basic Information "
                "page, or set SLACK_APP_TOKEN to use Socket Mode instead of HTTP.")
        self.settings = settings
        self.bolt: AsyncApp | None = None
        self.mirror: SlackMirror | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/slack/events", self._events)
        if self.settings.slack_bot_token is None:
            app.router.add_get(INSTALL_PATH, self._oauth)
            app.router.add_get(REDIRECT_PATH, self._oauth)

    async def start(self, deps: BotDeps) -> None:
        tokens = SlackTokens(self.settings, deps.store)
        records = SlackRecords(deps.store)
        self.mirror = SlackMirror(deps.store, records, tokens,
                                  min_interval_s=self.settings.slack_min_interval_s)
        deps.mirrors.append(self.mirror)
        self.bolt = self._bolt_app(tokens)
        SlackListeners(deps, records, tokens, self.spawn).register(self.bolt)
        await records.forget_seen()
        for thread_id in await records.recently_changed():  # what changed while we were down
            await self.mirror.thread_changed(thread_id)
        if self.settings.slack_app_token is not None:
            self._socket = AsyncSocketModeHandler(
                self.bolt, self.settings.slack_app_token.get_secret_value(),
                web_client=web_client(self.settings))
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
        log.info("Slack surface ready (%s, %s)",
                 "Socket Mode" if self._socket else "HTTP at /slack/events",
                 "one workspace" if self.settings.slack_bot_token else "OAuth installs")

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.mirror is not None:
            await self.mirror.close()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after the listener returned; failures are logged, never raised to Slack."""
        task = asyncio.create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Wait until every listener's work and every Slack thread sync is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.mirror is not None:
            await self.mirror.settled()

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("Slack work failed: %s: %s", type(exc).__name__, exc)

    def _bolt_app(self, tokens: SlackTokens) -> AsyncApp:
        secret = self.settings.slack_signing_secret
        common: dict[str, Any] = {
            "signing_secret": secret.get_secret_value() if secret else "",
            "process_before_response": True,  # listeners only ack and spawn: fast enough
        }
        if self.settings.slack_bot_token is not None:
            token = self.settings.slack_bot_token.get_secret_value()
            return AsyncApp(client=web_client(self.settings, token), **common)
        assert self.settings.slack_client_secret is not None
        oauth = AsyncOAuthSettings(
            client_id=self.settings.slack_client_id,
            client_secret=self.settings.slack_client_secret.get_secret_value(),
            scopes=BOT_SCOPES, install_path=INSTALL_PATH, redirect_uri_path=REDIRECT_PATH,
            installation_store=tokens.installations, state_store=tokens.states,
            authorization_url=_authorize_url(self.settings.slack_api_url))
        return AsyncApp(client=web_client(self.settings), oauth_settings=oauth,
                        installation_store=tokens.installations, **common)

    async def _events(self, request: web.Request) -> web.Response:
        if self.bolt is None:
            return web.Response(status=503, text="Slack surface is starting")
        response = await self.bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def _oauth(self, request: web.Request) -> web.Response:
        if self.bolt is None or self.bolt.oauth_flow is None:
            return web.Response(status=503, text="Slack surface is starting")
        bolt_request = await to_bolt_request(request)
        if request.path == INSTALL_PATH:
            return await to_aiohttp_response(
                await self.bolt.oauth_flow.handle_installation(bolt_request))
        return await to_aiohttp_response(await self.bolt.oauth_flow.handle_callback(bolt_request))


def _authorize_url(api_url: str) -> str:
    """Slack's authorize page next to the Web API (`…/api/` → `…/oauth/v2/authorize`)."""
    base = api_url.rstrip("/")
    base = base[:-len("/api")] if base.endswith("/api") else base
    return base + "/oauth/v2/authorize"
