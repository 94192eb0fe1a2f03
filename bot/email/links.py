"""Signed console links in emails: approve, run the first N, or cancel, in two clicks.

`GET /email/decide?message=…&action=…&value=…&for=…&until=…&sig=…` shows the decision and a
button; only the button's `POST` (the same fields) decides. Mail scanners and link previews open
every link in an email, so a link that decided on `GET` could approve a plan nobody read. The
signature is an HMAC-SHA256 with `SLUICE_SIGNING_KEY` over the decision, the person the email
went to (the decision is theirs) and when the link expires (`SLUICE_LINK_DAYS`, see
`mirror.signed_link`), so a link cannot be edited into another decision, another person or a
longer life. Each page says what happened and what to do.
"""

from __future__ import annotations

import datetime as dt
import hmac
import html
import time
from collections.abc import Mapping

from aiohttp import web

from bot.console import DEPS
from bot.conversation import AlreadyDecidedError, Decision, decide
from bot.deps import BotDeps
from bot.email.mirror import link_signature, mirror_thread
from core.errors import InvalidInputError, NotFoundError
from core.types import Button, Message

_FIELDS = ("message", "action", "value", "for", "until")
_VERBS = {"approve": "Approve the plan", "run_first": "Run the plan on its first items",
          "cancel": "Cancel the plan", "raise_budget": "Raise the budget and go on",
          "resolve_done": "Mark it done and go on", "cancel_run": "Stop the run"}


def _page(status: int, text: str, form: str = "") -> web.Response:
    body = f"<!doctype html><title>Sluice</title><p>{html.escape(text)}</p>{form}"
    return web.Response(text=body, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                 # No other site may frame the button to have it clicked.
                                 "Content-Security-Policy": "frame-ancestors 'none'",
                                 "X-Frame-Options": "DENY"})


def _checked(deps: BotDeps, fields: Mapping[str, str]) -> web.Response | None:
    """None when the link's fields are as signed and it has not expired, else the page saying
    why not."""
    key = deps.settings.signing_key
    values = [fields.get(name, "") for name in _FIELDS]
    expected = link_signature(key, *values) if key else ""
    if not key or not hmac.compare_digest(expected, fields.get("sig", "")):
        return _page(403, "This link is not valid (it was changed, or it comes from an older "
                          "email). Reply to the email instead.")
    until = int(fields["until"]) if fields["until"].isdigit() else 0
    if until < time.time():
        ended = dt.datetime.fromtimestamp(until, dt.UTC).strftime("%d %b %Y %H:%M UTC")
        return _page(410, f"This link expired on {ended}. Reply to the email with your "
                          "decision instead.")
    return None


async def show_decision(request: web.Request) -> web.Response:
    """The decision a link stands for, with a button that makes it: nothing is decided yet."""
    deps = request.app[DEPS]
    fields = request.query
    refused = _checked(deps, fields)
    if refused is not None:
        return refused
    try:
        message = await deps.store.get_message(fields["message"])
    except NotFoundError as exc:
        return _page(404, exc.message)
    button = _button(message, fields)
    if button is None:
        return _page(409, "This was decided already: see the latest email in the thread.")
    hidden = "".join(f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
                     for name, value in fields.items() if name in (*_FIELDS, "sig"))
    form = (f'<form method="post">{hidden}<button type="submit">'
            f"{html.escape(button.label)}</button></form>")
    verb = _VERBS.get(button.action, button.label)
    return _page(200, f"{verb} in “{await _title(deps, message.thread_id)}”, as "
                      f"{fields['for']}?", form)


async def decide_by_link(request: web.Request) -> web.Response:
    """The button on the page of `show_decision`: the decision, made for the link's person."""
    deps = request.app[DEPS]
    form = await request.post()
    fields = {name: str(form.get(name, "")) for name in (*_FIELDS, "sig")}
    refused = _checked(deps, fields)
    if refused is not None:
        return refused
    try:
        message = await deps.store.get_message(fields["message"])
        button = _button(message, fields)
        reply = await decide(deps, Decision(
            action=fields["action"], message_id=fields["message"], value=fields["value"],
            user=fields["for"], count=button.count if button else None))
    except (AlreadyDecidedError, InvalidInputError, NotFoundError) as exc:
        return _page(409, exc.message)
    await mirror_thread(deps, message.thread_id)
    return _page(200, reply.text)


def _button(message: Message, fields: Mapping[str, str]) -> Button | None:
    """The button of `message` the link stands for, or None once it was decided."""
    return next((b for b in message.buttons
                 if b.action == fields["action"] and b.value == fields["value"]), None)


async def _title(deps: BotDeps, thread_id: str) -> str:
    thread = await deps.store.find_thread(thread_id)
    return thread.title if thread is not None else thread_id


def add_link_routes(app: web.Application) -> None:
    app.router.add_get("/email/decide", show_decision)
    app.router.add_post("/email/decide", decide_by_link)
