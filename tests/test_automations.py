"""Saved automations: webhooks (real signed HTTP), schedules (injected clock), approval policy."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.webhooks import sign
from core.automations import Automation, Automations
from core.errors import InvalidInputError
from core.types import RunState
from infra.redis import EmbeddedRedis
from tests._stack import DEMO_REQUEST, Stack
from workers.schedules import fire_due


async def succeeded_run(stack: Stack) -> str:
    thread_id = await stack.ask(DEMO_REQUEST)
    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    await stack.click(plan, "approve")
    await stack.drain()
    [result] = await stack.messages(thread_id, "result")
    return str(result["meta"]["run_id"])


@pytest.fixture
async def saved(stack: Stack) -> AsyncIterator[tuple[Stack, Automation]]:
    run_id = await succeeded_run(stack)
    automation = await Automations(stack.store).save_from_run(run_id, user="ana",
                                                              name="Ask for budgets")
    yield stack, automation


async def hook(stack: Stack, automation: Automation, payload: Any, *,
               key: str | None = None, at: float | None = None, secret: str | None = None,
               raw: bytes | None = None) -> tuple[int, Any]:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json",
               "Sluice-Signature": sign(secret or automation.webhook_secret,
                                        int(at if at is not None else time.time()), body)}
    if key:
        headers["Idempotency-Key"] = key
    async with stack.http.post(f"{stack.base_url}/hooks/{automation.id}/runs", data=body,
                               headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def run_count(stack: Stack) -> int:
    return len(await stack.store.list_runs(limit=1000))


async def test_save_requires_a_succeeded_run(stack: Stack) -> None:
    thread_id = await stack.ask(DEMO_REQUEST)
    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    await stack.click(plan, "run_first", count=1)
    [status] = await stack.messages(thread_id, "status")
    run_id = status["meta"]["run_id"]
    with pytest.raises(InvalidInputError, match="only a run that succeeded"):
        await Automations(stack.store).save_from_run(run_id, user="ana")
    await stack.drain()
    with pytest.raises(InvalidInputError, match="cron expression has 5"):
        await Automations(stack.store).save_from_run(run_id, user="ana", schedule="0 9 *")


async def test_webhook_starts_a_run_without_the_planner(
        saved: tuple[Stack, Automation]) -> None:
    stack, automation = saved
    planner_calls = len(stack.model.requests)
    status, data = await hook(stack, automation, {"inputs": {"batch": "november"}}, key="k-1")
    assert status == 202, data
    assert data["state"] == "queued" and data["duplicate"] is False
    assert data["status_url"].endswith(f"/runs/{data['run_id']}")
    again, dup = await hook(stack, automation, {"inputs": {"batch": "november"}}, key="k-1")
    assert again == 202 and dup["run_id"] == data["run_id"] and dup["duplicate"] is True
    await stack.drain()
    assert len(stack.model.requests) == planner_calls  # the saved program, no planning
    status, run = await stack.call("GET", f"/runs/{data['run_id']}")
    assert status == 200 and run["state"] == "succeeded"
    assert "sent 4 emails" in run["result"]["summary"]
    assert run["result"]["table_url"].endswith(".csv") or "/api/attachments/" in \
        run["result"]["table_url"]
    results = await stack.messages(automation.thread_id, "result")
    assert len(results) == 2  # the original run and the webhook's, in the same thread
    variables, _ = await stack.store.thread_state(automation.thread_id)
    assert json.loads(variables["inputs"]) == {"batch": "november"}


async def test_bad_calls_start_nothing(saved: tuple[Stack, Automation]) -> None:
    stack, automation = saved
    before = await run_count(stack)
    status, data = await hook(stack, automation, {}, secret="wrong-secret")
    assert status == 401 and "does not match" in data["error"]["message"]
    status, data = await hook(stack, automation, {}, at=time.time() - 600)
    assert status == 401 and "5 minutes" in data["error"]["message"]
    async with stack.http.post(f"{stack.base_url}/hooks/{automation.id}/runs",
                               data=b"{}") as resp:
        assert resp.status == 401  # no signature at all
    status, data = await hook(stack, automation, {"inputs": "not an object", "extra": 1})
    assert status == 422
    assert {f["field"] for f in data["error"]["fields"]} == {"inputs", "extra"}
    status, data = await hook(stack, automation, None, raw=b"{not json")
    assert status == 422
    status, data = await hook(stack, automation.model_copy(update={"id": "auto_nothere"}), {})
    assert status == 404
    status, data = await hook(stack, automation, {"inputs": {"x": "y" * 70_000}})
    assert status == 413
    assert await run_count(stack) == before
    assert await stack.redis.zcard("arq:queue") == 0
    await Automations(stack.store).set_enabled(automation.id, False)
    status, _ = await hook(stack, automation, {})
    assert status == 404
    status, _ = await stack.call("GET", "/runs/run_nothere")
    assert status == 404


async def test_callback_gets_the_signed_result(saved: tuple[Stack, Automation]) -> None:
    stack, automation = saved
    received: list[tuple[bytes, str]] = []

    async def callback(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["Sluice-Signature"]))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/done", callback)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        status, data = await hook(stack, automation,
                                  {"callback_url": f"http://127.0.0.1:{port}/done"})
        assert status == 202
        await stack.drain()
    finally:
        await runner.cleanup()
    [(body, signature)] = received
    result = json.loads(body)
    assert result["run_id"] == data["run_id"] and result["state"] == "succeeded"
    fields = dict(p.split("=", 1) for p in signature.split(","))
    expected = hmac.new(automation.webhook_secret.encode(), f"{fields['t']}.".encode() + body,
                        hashlib.sha256).hexdigest()
    assert fields["v1"] == expected
    record = await Automations(stack.store).automation_run(data["run_id"])
    assert record is not None and record.callback_status == "http 200"


async def test_schedule_fires_once_per_due_time(saved: tuple[Stack, Automation]) -> None:
    stack, automation = saved
    automations = Automations(stack.store)
    run = await stack.store.get_run(automation.source_run_id)
    soon = (automation.created_at + timedelta(minutes=5)).replace(second=0, microsecond=0)
    scheduled = await automations.save_from_run(run.id, user="ana",
                                                schedule=f"{soon.minute} {soon.hour} * * *")
    assert await fire_due(stack.deps, now=soon - timedelta(minutes=2)) == []  # not yet due
    due = await fire_due(stack.deps, now=soon + timedelta(seconds=30))
    assert len(due) == 1
    assert await fire_due(stack.deps, now=soon + timedelta(minutes=10)) == []  # claimed
    await stack.drain()
    finished = await stack.store.get_run(due[0])
    assert finished.state == RunState.SUCCEEDED and finished.approved_by == \
        f"automation {scheduled.id}"
    # three days later: the missed times collapse into one run
    later = await fire_due(stack.deps, now=soon + timedelta(days=3, minutes=1))
    assert len(later) == 1
    await automations.set_enabled(scheduled.id, False)
    assert await fire_due(stack.deps, now=soon + timedelta(days=5, minutes=1)) == []


async def test_over_budget_or_ask_policy_waits_for_approval(
        saved: tuple[Stack, Automation]) -> None:
    stack, automation = saved
    automations = Automations(stack.store)
    asking = await automations.save_from_run(automation.source_run_id, user="ana",
                                             policy="ask")
    status, data = await hook(stack, asking, {})
    assert status == 202 and data["state"] == "waiting_approval"
    await stack.drain()
    assert await stack.messages(asking.thread_id, "result") != []  # only the first run's
    questions = [m for m in await stack.messages(asking.thread_id, "question")
                 if m["meta"]["run_id"] == data["run_id"]]
    [question] = questions
    assert "approval policy is to ask" in question["text"]
    status, _ = await stack.click(question, "raise_budget")
    assert status == 200
    await stack.drain()
    status, run = await stack.call("GET", f"/runs/{data['run_id']}")
    assert run["state"] == "succeeded"


async def test_cron_expressions() -> None:
    from datetime import UTC, datetime

    from core.cron import parse_cron

    spec = parse_cron("*/15 9-17 * * 1-5")
    monday = datetime(2026, 11, 23, 9, 45, tzinfo=UTC)
    assert spec.matches(monday) and not spec.matches(monday.replace(minute=50))
    assert not spec.matches(datetime(2026, 11, 22, 9, 45, tzinfo=UTC))  # Sunday
    assert parse_cron("0 0 * * 7").matches(datetime(2026, 11, 22, 0, 0, tzinfo=UTC))
    with pytest.raises(InvalidInputError, match="outside 0-59"):
        parse_cron("61 * * * *")
    with pytest.raises(InvalidInputError, match="not a number"):
        parse_cron("a * * * *")


@pytest.mark.parametrize("policy", ["sometimes"])
async def test_unknown_policy_is_refused(redis_server: EmbeddedRedis, tmp_path: Path,
                                         policy: str) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path) as stack:
        run_id = await succeeded_run(stack)
        with pytest.raises(InvalidInputError, match="approval policy"):
            await Automations(stack.store).save_from_run(run_id, user="ana", policy=policy)


async def test_save_as_automation_button_on_the_result(stack: Stack) -> None:
    run_id = await succeeded_run(stack)
    [result] = [m for m in await stack.messages((await stack.store.get_run(run_id)).thread_id,
                                                "result")]
    assert [b["action"] for b in result["buttons"]] == ["save_automation"]
    status, body = await stack.click(result, "save_automation")
    assert status == 200, body
    assert "Saved as automation auto_" in body["message"]["text"]
    assert "sluice+auto_" in body["message"]["text"]
    [automation] = await Automations(stack.store).all()
    assert automation.source_run_id == run_id and automation.created_by == "ana"
    again, _ = await stack.click(result, "save_automation")
    assert again == 409  # the button is gone: saved once
