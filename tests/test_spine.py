"""One request travels the whole spine through the console API, on real local services."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from core.events import publish
from core.types import EventKind, JobEvent
from tests._stack import DEMO_REQUEST, Stack

MISSING = ["ben@okafor.example", "chloe@martin.example", "eva@novak.example",
           "grace@kim.example"]


def sheet_rows(sheets_dir: Path) -> list[dict[str, str]]:
    with (sheets_dir / "signups.csv").open(newline="") as f:
        return list(csv.DictReader(f))


async def test_request_is_planned_previewed_run_and_reported(stack: Stack) -> None:
    thread_id = await stack.ask(DEMO_REQUEST)
    first = await stack.messages(thread_id)
    assert [m["kind"] for m in first] == ["request", "ack"]

    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    assert "Budget asked on" in plan["meta"]["program"]
    # The sample run tried the first 3 of the 4 rows missing a budget, writes only previewed.
    assert "Tried on the first 3 of 4 items" in plan["text"]
    # What the sample printed and returned counts the 3 items it tried, not the 4 it will.
    assert "> Asked 3 people for their budget." in plan["text"]
    assert "Result: a table of 3 rows on the sample." in plan["text"]
    assert "email to ben@okafor.example: “Your budget for Okafor Logistics”" in plan["text"]
    assert "update signups row-2: Budget asked on: empty → " in plan["text"]
    assert "Estimate: 4 items · 0 AI calls · no AI cost" in plan["text"]
    assert "It will update 4 rows, send 4 emails." in plan["text"]
    assert [b["action"] for b in plan["buttons"]] == ["approve", "run_first", "cancel"]
    assert await stack.outbox_mails() == []  # nothing is sent before approval

    status, _ = await stack.click(plan, "approve")
    assert status == 200
    await stack.drain()

    [result] = await stack.messages(thread_id, "result")
    assert "sent 4 emails" in result["text"] and "updated 4 rows" in result["text"]
    assert "4 items processed, none failed" in result["text"]
    assert "Asked 4 people for their budget." in result["text"]
    [status_msg] = await stack.messages(thread_id, "status")
    assert status_msg["text"].startswith("Finished: 4/4 done, 0 failed")
    [plan] = await stack.messages(thread_id, "plan")
    assert plan["buttons"] == [] and "Approved by ana" in plan["text"]

    mails = await stack.outbox_mails()
    assert sorted(r for m in mails for r in m["recipients"]) == MISSING
    assert all("budget" in m["body"].lower() for m in mails)
    today = date.today().isoformat()
    for row in sheet_rows(stack.sheets_dir):
        assert row["Budget asked on"] == (today if row["Email"] in MISSING else "")

    # An event delivered again (a surface died before acknowledging it) changes nothing.
    finished = JobEvent(kind=EventKind.RUN_FINISHED, thread_id=thread_id,
                        run_id=result["meta"]["run_id"])
    await publish(stack.redis, finished)
    await publish(stack.redis, JobEvent(kind=EventKind.PLAN_READY, thread_id=thread_id,
                                        plan_id=plan["meta"]["plan_id"]))
    await stack.settled()
    assert [m["kind"] for m in await stack.messages(thread_id)] == [
        "request", "ack", "plan", "status", "result"]

    [attachment] = result["attachments"]
    async with stack.http.get(f"{stack.base_url}/api/attachments/{attachment['id']}") as resp:
        table = list(csv.DictReader(io.StringIO(await resp.text())))
    assert sorted(r["Email"] for r in table) == MISSING


async def test_run_first_n_runs_only_n_items(stack: Stack) -> None:
    thread_id = await stack.ask(DEMO_REQUEST)
    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    status, _ = await stack.click(plan, "run_first", count=2)
    assert status == 200
    await stack.drain()
    [result] = await stack.messages(thread_id, "result")
    assert "sent 2 emails" in result["text"]
    assert len(await stack.outbox_mails()) == 2


async def test_cancel_runs_nothing_and_says_so(stack: Stack) -> None:
    before = sheet_rows(stack.sheets_dir)
    thread_id = await stack.ask(DEMO_REQUEST)
    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    status, body = await stack.click(plan, "cancel")
    assert status == 200
    assert body["message"]["text"] == "Cancelled. Nothing was run."
    await stack.drain()
    assert await stack.messages(thread_id, "result") == []
    assert await stack.outbox_mails() == []
    assert sheet_rows(stack.sheets_dir) == before
    again, body = await stack.click(plan, "approve")
    assert again == 409 and "already cancelled" in body["error"]["message"]


BAD_THEN_GOOD = {
    "rules": [
        {"match": "not accepted", "response": "Fixed: no imports of os.\n\n```python\n"
         "sheet = sheets.open('signups')\nprint(len(sheet.rows()))\n```\n"},
        {"match": "missing a budget", "response": "Count the rows.\n\n```python\nimport os\n"
         "print(os.environ)\n```\n"},
    ]
}


@pytest.mark.parametrize("scenario", [BAD_THEN_GOOD])
async def test_policy_violation_goes_back_to_the_model(redis_server: Any, tmp_path: Path,
                                                       scenario: dict[str, Any]) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario) as stack:
        thread_id = await stack.ask(DEMO_REQUEST)
        await stack.drain()
        asked = [r for r in stack.model.requests if r.status == 200]
        assert len(asked) == 3  # the program, the fixed program, the sample review
        feedback = str(asked[1].messages[-1]["content"])
        assert "line 1" in feedback.lower() and "os" in feedback
        review = str(asked[2].messages[-1]["content"])
        assert review.startswith("# Sample run") and "Printed:\n7" in review
        [plan] = await stack.messages(thread_id, "plan")
        assert "import os" not in plan["meta"]["program"]
        # It writes nothing and costs nothing: the auto-approval policy started it at once.
        assert plan["buttons"] == [] and "Started at once" in plan["text"]
        await stack.drain()
        [result] = await stack.messages(thread_id, "result")
        assert "7" in result["text"]  # the program printed the row count


async def test_unmatched_prompt_ends_with_a_clear_message(redis_server: Any,
                                                          tmp_path: Path) -> None:
    scenario = {"rules": [{"match": "something else entirely", "response": "no"}]}
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario) as stack:
        thread_id = await stack.ask("Summarise my inbox")
        await stack.drain()
        [error] = await stack.messages(thread_id, "error")
        assert "I could not plan this request" in error["text"]
        assert "Summarise my inbox" in error["text"]
        assert await stack.messages(thread_id, "plan") == []
