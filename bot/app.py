"""The bot process: surfaces on one aiohttp server, plus the event renderer.

`create_app(settings)` builds the dependencies once (database, Redis) and starts a background
task that reads the worker event stream and renders each event into its thread. With Slack
settings it also serves the Slack surface (`bot/slack/`), which mirrors changed threads to Slack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from bot.console import DEPS, add_routes, errors_middleware
from bot.deps import BotDeps
from bot.email.imap import poll_forever
from bot.email.inbound import InboundServer, start_inbound
from bot.email.links import add_link_routes
from bot.followups import follow_up
from bot.render import render
from bot.slack import SlackSurface
from bot.webhooks import add_webhook_routes
from core.db import engine_for, migrate
from core.events import EventReader
from core.jobs import connect
from core.settings import Settings
from core.store import Store

log = logging.getLogger(__name__)
INBOUND: web.AppKey[InboundServer] = web.AppKey("inbound", InboundServer)
SLACK: web.AppKey[SlackSurface] = web.AppKey("slack", SlackSurface)


async def render_events(deps: BotDeps, reader: EventReader) -> None:
    """Render events until cancelled; a failing render is logged and retried on restart."""
    async for entry_id, event in reader.read():
        try:
            await render(deps, event)
        except Exception:
            log.exception("could not render event %s (%s) for thread %s", event.id, event.kind,
                          event.thread_id)
            continue
        await follow_up(deps, event)
        await deps.thread_changed(event.thread_id)
        await reader.ack(entry_id)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=1024 * 1024)
    add_routes(app)
    add_webhook_routes(app)
    add_link_routes(app)
    slack = SlackSurface(settings) if settings.slack_enabled else None
    if slack is not None:
        slack.add_routes(app)
        app[SLACK] = slack

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engine = engine_for(settings)
        await migrate(engine)
        redis = await connect(settings.require_redis_url())
        deps = BotDeps(settings=settings, store=Store(engine), redis=redis)
        app[DEPS] = deps
        if slack is not None:
            await slack.start(deps)
        task = asyncio.create_task(render_events(deps, EventReader(redis)))
        if settings.email_inbound:
            app[INBOUND] = await start_inbound(deps, host=settings.email_host,
                                               port=settings.email_port)
        imap = asyncio.create_task(poll_forever(deps)) if settings.imap_host else None
        yield
        if imap is not None:  # a poll unwinds within seconds (bot.email.imap._settled)
            imap.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await imap
        if INBOUND in app:
            await app[INBOUND].stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if slack is not None:
            await slack.stop()
        await redis.aclose()
        await engine.dispose()

    app.cleanup_ctx.append(lifecycle)
    return app
