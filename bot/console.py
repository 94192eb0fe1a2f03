"""The local console surface: a plain web page and a JSON API on the bot's aiohttp server.

`POST /api/threads`, `POST /api/threads/{id}/messages`, `GET /api/threads/{id}`,
`POST /api/actions` (button clicks), `GET /api/outbox`, `GET /api/attachments/{id}`.
Bad input gets a 4xx whose body says what was wrong and what to send instead; nothing is stored
until the input has been validated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from bot.conversation import AlreadyDecidedError, Decision, decide, receive_request
from bot.deps import BotDeps
from core.errors import InvalidInputError, NotFoundError, SluiceError
from core.types import Request

log = logging.getLogger(__name__)
DEPS: web.AppKey[BotDeps] = web.AppKey("deps", BotDeps)
MAX_BODY = 256 * 1024
PAGE = Path(__file__).parent / "static" / "console.html"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NewThread(BaseModel):
    title: str = Field(default="", max_length=200)
    text: str | None = Field(default=None, min_length=1, max_length=20_000)
    user: str = Field(default="you", min_length=1, max_length=100)


class NewMessage(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    user: str = Field(default="you", min_length=1, max_length=100)


class Click(BaseModel):
    message_id: str = Field(min_length=1, max_length=40)
    action: Literal["approve", "run_first", "cancel", "cancel_run", "raise_budget",
                    "resolve_done", "resolve_redo", "retry_failed", "save_automation"]
    value: str = Field(min_length=1, max_length=40)
    user: str = Field(default="you", min_length=1, max_length=100)
    count: int | None = Field(default=None, ge=1, le=1_000_000)
    budget_usd: float | None = Field(default=None, ge=0, le=100_000,
                                     description="Spend at which the run pauses and asks.")


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}},
                             status=status)


_STATUS = {NotFoundError: 404, InvalidInputError: 400, AlreadyDecidedError: 409}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes JSON that says what was wrong and what to do."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ValidationError as exc:
        fields = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]}
                  for e in exc.errors()]
        return _error(422, "invalid_body", "Some fields are missing or wrong; see `fields`.",
                      fields=fields)
    except SluiceError as exc:
        status = next((s for t, s in _STATUS.items() if isinstance(exc, t)), 500)
        if status == 500:
            log.exception("console request %s failed", request.path)
        return _error(status, exc.code, exc.message)


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidInputError(f"The body is larger than {MAX_BODY // 1024} KiB.")
    raw = await request.read()
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"The body is not valid JSON ({exc}). Send a JSON object, for "
                                'example {"text": "..."}.') from None
    if not isinstance(data, dict):
        raise InvalidInputError('The body must be a JSON object, for example {"text": "..."}.')
    return model.model_validate(data)


async def index(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(PAGE)


async def status(request: web.Request) -> web.Response:
    """Whether plans come from the scripted model: `sluice up` starts the scripted model server,
    and sets its URL, only when no models file or key gives a real model."""
    settings = request.app[DEPS].settings
    scripted = settings.scripted_model_url is not None
    return web.json_response({"scripted_model": scripted,
                              "model": None if scripted else settings.model})


async def list_threads(request: web.Request) -> web.Response:
    threads = await request.app[DEPS].store.list_threads()
    return web.json_response([t.model_dump(mode="json") for t in threads])


async def create_thread(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    body: NewThread = await _body(request, NewThread)
    title = body.title or (body.text or "New thread")[:80]
    thread = await deps.store.create_thread(surface="console", title=title)
    if body.text:
        await receive_request(deps, Request(thread_id=thread.id, user=body.user, text=body.text))
    full = await deps.store.get_thread(thread.id)
    return web.json_response(full.model_dump(mode="json"), status=201)


async def get_thread(request: web.Request) -> web.Response:
    thread = await request.app[DEPS].store.get_thread(request.match_info["thread_id"])
    return web.json_response(thread.model_dump(mode="json"))


async def post_message(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    thread_id = request.match_info["thread_id"]
    body: NewMessage = await _body(request, NewMessage)
    req = Request(thread_id=thread_id, user=body.user, text=body.text)
    message = await receive_request(deps, req)
    await deps.thread_changed(thread_id)
    return web.json_response({"message": message.model_dump(mode="json"), "request_id": req.id},
                             status=202)


async def post_action(request: web.Request) -> web.Response:
    body: Click = await _body(request, Click)
    decision = Decision(action=body.action, message_id=body.message_id, value=body.value,
                        user=body.user, count=body.count, budget_usd=body.budget_usd)
    message = await decide(request.app[DEPS], decision)
    await request.app[DEPS].thread_changed(message.thread_id)
    return web.json_response({"ok": True, "message": message.model_dump(mode="json")})


async def list_outbox(request: web.Request) -> web.Response:
    mails = await request.app[DEPS].store.list_outbox()
    return web.json_response([m.model_dump(mode="json") for m in mails])


async def get_attachment(request: web.Request) -> web.Response:
    meta, data = await request.app[DEPS].store.get_attachment(request.match_info["attachment_id"])
    return web.Response(body=data, content_type=meta.content_type,
                        headers={"Content-Disposition": f'attachment; filename="{meta.name}"'})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/threads", list_threads)
    app.router.add_post("/api/threads", create_thread)
    app.router.add_get("/api/threads/{thread_id}", get_thread)
    app.router.add_post("/api/threads/{thread_id}/messages", post_message)
    app.router.add_post("/api/actions", post_action)
    app.router.add_get("/api/outbox", list_outbox)
    app.router.add_get("/api/attachments/{attachment_id}", get_attachment)
