"""Webhook triggers on the bot's aiohttp server (ARCHITECTURE.md, "The flow": webhook).

`POST /hooks/{automation_id}/runs` starts a run of a saved automation. The caller signs with the
automation's secret: header `Sluice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`, accepted within 5 minutes. `Idempotency-Key` makes a retried call return the first
run. The answer is `202` with the run id and a status URL; `GET /runs/{id}` gives the run's state,
progress, cost and result. A `callback_url` in the body gets the result, signed the same way.
Unknown automation (404), bad or stale signature (401), invalid body (422): nothing starts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from bot.console import DEPS
from bot.deps import BotDeps
from core.automations import Automations
from core.errors import InvalidInputError, NotFoundError
from core.types import JobEvent, Run, RunState

log = logging.getLogger(__name__)
MAX_HOOK_BODY = 64 * 1024
WINDOW_S = 300
SIGNATURE_HEADER = "Sluice-Signature"
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("webhook_clock", Callable[[], float])  # type: ignore[arg-type]
FINAL = {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED}


class HookCall(BaseModel):
    model_config = {"extra": "forbid"}

    inputs: dict[str, Any] = Field(default_factory=dict, description="Variables for the program.")
    callback_url: str | None = Field(default=None, max_length=2000,
                                     pattern=r"^https?://[^\s]+$")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Sluice-Signature` header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def _unauthorized(message: str) -> web.Response:
    return web.json_response({"error": {"code": "unauthorized", "message": message}},
                             status=401)


def _too_large() -> web.Response:
    return web.json_response({"error": {
        "code": "too_large", "message": f"The body is larger than {MAX_HOOK_BODY // 1024} KiB; "
        "send smaller inputs (or a link to the data)."}}, status=413)


def check_signature(secret: str, header: str, body: bytes, now: float) -> str | None:
    """None when `header` signs `body` within the window, else what is wrong."""
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return (f"The {SIGNATURE_HEADER} header is missing or malformed; send "
                "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>' with the secret>.")
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, fields.get("v1", "")):
        return "The signature does not match the body; sign '<t>.<body>' with this " \
               "automation's secret (`sluice automations show ID`)."
    if abs(now - timestamp) > WINDOW_S:
        return (f"The signature's timestamp is {abs(now - timestamp):.0f} s away from now; "
                f"sign within {WINDOW_S // 60} minutes of sending (check the clock).")
    return None


async def post_run(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    if request.content_length is not None and request.content_length > MAX_HOOK_BODY:
        return _too_large()
    automations = Automations(deps.store)
    automation = await automations.get(request.match_info["automation_id"])
    if not automation.enabled:
        raise NotFoundError(f"Automation {automation.id} is disabled.")
    body = await request.read()
    if len(body) > MAX_HOOK_BODY:
        return _too_large()
    now = request.app[CLOCK]() if CLOCK in request.app else time.time()
    problem = check_signature(automation.webhook_secret,
                              request.headers.get(SIGNATURE_HEADER, ""), body, now)
    if problem:
        return _unauthorized(problem)
    call = _hook_call(body)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidInputError("The Idempotency-Key header must be 1-200 characters.")
    triggered = await automations.trigger(automation, redis=deps.redis, trigger="webhook",
                                          user="webhook", inputs=call.inputs,
                                          idempotency_key=key, callback_url=call.callback_url)
    run = triggered.run if not triggered.duplicate else await deps.store.get_run(
        triggered.run.id)
    return web.json_response({"run_id": run.id, "state": run.state,
                              "status_url": f"{deps.settings.effective_public_url}/runs/{run.id}",
                              "duplicate": triggered.duplicate}, status=202)


def _hook_call(body: bytes) -> HookCall:
    """The body as a HookCall; bad JSON or fields raise ValidationError (422 with fields)."""
    return HookCall.model_validate_json(body or b"{}")


def run_status(deps: BotDeps, run: Run) -> dict[str, Any]:
    """What `GET /runs/{id}` and the callback say about a run."""
    result = run.result
    table = result.table if result else None
    return {
        "run_id": run.id, "state": run.state, "thread_id": run.thread_id,
        "progress": run.progress.model_dump(mode="json"), "cost_usd": run.spent_usd,
        "waiting_reason": run.waiting_reason, "error": run.error,
        "result": None if result is None else {
            "summary": result.summary, "writes": result.writes, "output": result.output[-2000:],
            "table_url": f"{deps.settings.effective_public_url}/api/attachments/{table.id}"
            if table else None, "failures": len(result.failures)},
    }


async def get_run(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    run = await deps.store.get_run(request.match_info["run_id"])
    return web.json_response(run_status(deps, run))


async def send_callback(deps: BotDeps, event: JobEvent) -> None:
    """POST a finished run's status to its callback URL, signed, once."""
    if event.run_id is None:
        return
    automations = Automations(deps.store)
    record = await automations.automation_run(event.run_id)
    if record is None or not record.callback_url or record.callback_status:
        return
    run = await deps.store.get_run(event.run_id)
    if run.state not in FINAL:
        return
    automation = await automations.get(record.automation_id)
    body = json.dumps(run_status(deps, run)).encode()
    headers = {"Content-Type": "application/json",
               SIGNATURE_HEADER: sign(automation.webhook_secret, int(time.time()), body)}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
                http.post(record.callback_url, data=body, headers=headers) as resp:
            status = f"http {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        status = f"failed: {type(exc).__name__}"
    await automations.set_callback_status(run.id, status)
    log.info("callback for run %s to %s: %s", run.id, record.callback_url, status)


def add_webhook_routes(app: web.Application) -> None:
    app.router.add_post("/hooks/{automation_id}/runs", post_run)
    app.router.add_get("/runs/{run_id}", get_run)
