"""Signed console links in emails: one click approves, runs the first N, or cancels.

`GET /email/decide?message=…&action=…&value=…&sig=…`; the signature is an HMAC-SHA256 with
`SLUICE_SIGNING_KEY` over message, action and value (see `mirror.signed_link`), so a link cannot
be edited into another decision. The page says what happened.
"""

from __future__ import annotations

import hmac
import html

from aiohttp import web

from bot.console import DEPS
from bot.conversation import AlreadyDecidedError, Decision, decide
from bot.email.mirror import link_signature, mirror_thread
from core.errors import InvalidInputError, NotFoundError


def _page(status: int, text: str) -> web.Response:
    body = f"<!doctype html><title>Sluice</title><p>{html.escape(text)}</p>"
    return web.Response(text=body, content_type="text/html", status=status)


async def decide_by_link(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    key = deps.settings.signing_key
    query = request.query
    message_id, action, value = (query.get("message", ""), query.get("action", ""),
                                 query.get("value", ""))
    expected = link_signature(key, message_id, action, value) if key else ""
    if not key or not hmac.compare_digest(expected, query.get("sig", "")):
        return _page(403, "This link is not valid (it was changed or has expired). Reply to "
                          "the email instead.")
    message = await deps.store.get_message(message_id)
    button = next((b for b in message.buttons if b.action == action and b.value == value), None)
    try:
        reply = await decide(deps, Decision(action=action, message_id=message_id, value=value,
                                            user="email link",
                                            count=button.count if button else None))
    except (AlreadyDecidedError, InvalidInputError, NotFoundError) as exc:
        return _page(409, exc.message)
    await mirror_thread(deps, message.thread_id)
    return _page(200, reply.text)


def add_link_routes(app: web.Application) -> None:
    app.router.add_get("/email/decide", decide_by_link)
