"""The console API answers bad input with a 4xx that says what was wrong; nothing half-stored."""

from __future__ import annotations

from tests._stack import DEMO_REQUEST, Stack


async def test_malformed_json_is_rejected_and_stores_nothing(stack: Stack) -> None:
    status, body = await stack.call("POST", "/api/threads", raw=b'{"text": "hi"')
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = await stack.call("POST", "/api/threads", raw=b'["a list"]')
    assert status == 400 and "JSON object" in body["error"]["message"]
    assert await stack.ok("GET", "/api/threads") == []


async def test_invalid_fields_name_the_field(stack: Stack) -> None:
    thread_id = await stack.ask(DEMO_REQUEST)
    status, body = await stack.call("POST", f"/api/threads/{thread_id}/messages", {"text": ""})
    assert status == 422
    assert body["error"]["fields"][0]["field"] == "text"
    assert len(await stack.messages(thread_id)) == 2  # the first request and its ack only


async def test_unknown_thread_is_404(stack: Stack) -> None:
    status, body = await stack.call("POST", "/api/threads/thr_nope/messages", {"text": "hello"})
    assert status == 404 and "thr_nope" in body["error"]["message"]
    status, _ = await stack.call("GET", "/api/threads/thr_nope")
    assert status == 404
    assert await stack.redis.zcard("arq:queue") == 0  # nothing was enqueued


async def test_unknown_actions_and_buttons_are_refused(stack: Stack) -> None:
    thread_id = await stack.ask(DEMO_REQUEST)
    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    status, body = await stack.call("POST", "/api/actions", {
        "message_id": plan["id"], "action": "explode", "value": plan["buttons"][0]["value"]})
    assert status == 422 and body["error"]["fields"][0]["field"] == "action"
    status, body = await stack.call("POST", "/api/actions", {
        "message_id": "msg_nope", "action": "approve", "value": "plan_x"})
    assert status == 404
    status, body = await stack.call("POST", "/api/actions", {
        "message_id": plan["id"], "action": "approve", "value": "plan_other"})
    assert status == 400 and "Buttons:" in body["error"]["message"]
    assert (await stack.messages(thread_id, "plan"))[0]["buttons"] == plan["buttons"]


async def test_double_approval_starts_one_run(stack: Stack) -> None:
    thread_id = await stack.ask(DEMO_REQUEST)
    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    first, _ = await stack.click(plan, "approve")
    second, _ = await stack.click(plan, "approve")
    assert (first, second) == (200, 409)
    await stack.drain()
    assert len(await stack.messages(thread_id, "result")) == 1
    assert len(await stack.outbox_mails()) == 4
