"""The Slack surface end to end: a local Slack Web API, the real AsyncWebClient pointed at it,
real signed requests into the real Bolt app, the real worker and the scripted model."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.types import PlanStatus, RunState
from infra.scripted_model import load_scenario
from tests._slack_api import BOT_ID, BOT_USER_ID
from tests._slack_harness import (
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    SlackHarness,
    block_text,
    buttons,
)
from tests._stack import DEMO_REQUEST
from tests.test_spine import MISSING


@pytest.fixture
async def slack(redis_server: Any, tmp_path: Path) -> AsyncIterator[SlackHarness]:
    async with SlackHarness.running(redis_url=redis_server.url, home=tmp_path) as harness:
        yield harness


async def planned(slack: SlackHarness) -> tuple[str, Any]:
    """Mention the app with the demo request and plan it: (thread root ts, plan message)."""
    root = await slack.mention(DEMO_REQUEST)
    await slack.work()
    return root, slack.plan_message(root)


async def threads(slack: SlackHarness) -> list[Any]:
    return await slack.stack.store.list_threads()


async def test_mention_preview_run_all_progress_and_file_in_one_thread(
        slack: SlackHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root = await slack.mention(DEMO_REQUEST)
    [ack] = slack.thread(root)
    assert "writing a program" in ack.text

    await slack.work()
    plan = slack.plan_message(root)
    shown = block_text(plan)
    assert "update 4 rows" in shown and "send 4 emails" in shown
    assert "Estimate: 4 items" in shown and "Budget asked on" in shown  # estimate and program
    # The sample run: the first 3 of the 4 rows, writes only previewed.
    assert "Tried on the first 3 of 4 items" in shown
    assert "email to ben@okafor.example" in shown
    choices = buttons(plan)
    assert list(choices) == ["approve", "run_first", "cancel"]
    assert len(set(choices.values())) == 1 and choices["approve"].startswith("plan_")
    assert await slack.stack.outbox_mails() == []

    assert await slack.click(plan.ts, "approve", choices["approve"]) == 200
    await slack.work()

    plan = slack.plan_message(root)
    assert buttons(plan) == {} and "Approved by <@UANA> at" in block_text(plan)
    texts = [m.text for m in slack.thread(root)]
    [status] = [m for m in slack.thread(root) if m.text.startswith("Finished:")]
    assert status.text.startswith("Finished: 4/4 done, 0 failed")
    assert status.edits, "the status message is edited in place, not posted again"
    assert not any(t.startswith(("Queued", "Running")) for t in texts)  # no stale copies
    [result] = [m for m in slack.thread(root) if "sent 4 emails" in m.text]
    assert "updated 4 rows" in result.text

    [upload] = slack.fake.uploads.values()
    assert (upload.channel, upload.thread_ts) == (CHANNEL, root)
    table = list(csv.DictReader(io.StringIO(upload.data.decode())))
    assert sorted(r["Email"] for r in table) == MISSING
    assert sorted(r for m in await slack.stack.outbox_mails() for r in m["recipients"]) == MISSING

    posted = slack.fake.called("chat.postMessage")
    assert posted and all(p["channel"] == CHANNEL and p["thread_ts"] == root for p in posted)
    assert BOT_TOKEN not in caplog.text and SIGNING_SECRET not in caplog.text


async def test_run_first_n_runs_n_items(slack: SlackHarness) -> None:
    root, plan = await planned(slack)
    [actions] = [b for b in plan.blocks if b["type"] == "actions"]
    assert actions["elements"][1]["text"]["text"] == "Run first 3"
    await slack.click(plan.ts, "run_first", buttons(plan)["run_first"])
    await slack.work()
    assert len(await slack.stack.outbox_mails()) == 3
    assert any("sent 3 emails" in m.text for m in slack.thread(root))


async def test_cancel_runs_nothing(slack: SlackHarness) -> None:
    root, plan = await planned(slack)
    await slack.click(plan.ts, "cancel", buttons(plan)["cancel"])
    await slack.work()
    assert await slack.stack.outbox_mails() == []
    assert "Cancelled by <@UANA>" in block_text(slack.plan_message(root))
    assert any(m.text == "Cancelled. Nothing was run." for m in slack.thread(root))
    assert slack.fake.uploads == {}
    assert await slack.stack.store.list_runs() == []


async def test_unauthorised_click_is_refused_and_changes_nothing(slack: SlackHarness) -> None:
    root, plan = await planned(slack)
    plan_id = buttons(plan)["approve"]
    updates = len(slack.fake.called("chat.update"))
    await slack.click(plan.ts, "approve", plan_id, user="UEVE")
    await slack.settled()
    [refusal] = slack.fake.called("chat.postEphemeral")
    assert refusal["user"] == "UEVE" and refusal["thread_ts"] == root
    assert "Not allowed" in refusal["text"] and "<@UANA>" in refusal["text"]
    assert len(slack.fake.called("chat.update")) == updates
    assert buttons(slack.plan_message(root)) == buttons(plan)
    assert (await slack.stack.store.get_plan(plan_id)).status == PlanStatus.AWAITING_APPROVAL
    await slack.stack.drain()
    assert await slack.stack.store.list_runs() == []

    # A configured approver (SLUICE_SLACK_APPROVERS) may decide someone else's plan.
    await slack.click(plan.ts, "approve", plan_id, user="UBOSS")
    await slack.work()
    assert "Approved by <@UBOSS>" in block_text(slack.plan_message(root))
    assert len(await slack.stack.outbox_mails()) == 4


async def test_retried_and_duplicate_deliveries_start_nothing_new(slack: SlackHarness) -> None:
    event = slack.mention_event(DEMO_REQUEST)
    assert await slack.event(event, event_id="Ev0001") == 200
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert await slack.event(event, event_id="Ev0001", headers=retry) == 200
    # The same message again under another event id (as `message.channels` delivers it).
    as_message = {**event, "type": "message", "channel_type": "channel"}
    assert await slack.event(as_message, event_id="Ev0002") == 200
    await slack.work()
    [thread] = await threads(slack)
    requests = [m for m in (await slack.stack.store.get_thread(thread.id)).messages
                if m.kind == "request"]
    assert len(requests) == 1
    root = str(event["ts"])
    plan = slack.plan_message(root)

    value = buttons(plan)["approve"]
    await slack.click(plan.ts, "approve", value)
    await slack.click(plan.ts, "approve", value)  # a double click, or a replayed payload
    await slack.work()
    assert len(await slack.stack.store.list_runs()) == 1
    assert len(await slack.stack.outbox_mails()) == 4
    assert len([m for m in slack.thread(root) if "sent 4 emails" in m.text]) == 1


async def test_bad_signature_and_stale_timestamp_get_401(slack: SlackHarness) -> None:
    event = slack.mention_event(DEMO_REQUEST)
    assert await slack.event(event, secret="not-the-secret") == 401
    stale = int(time.time()) - 6 * 60
    assert await slack.event(event, timestamp=stale) == 401
    assert await slack.click("1700000000.000001", "approve", "plan_x") == 200  # control
    status = await slack.post("{}", content_type="application/json", secret="nope")
    assert status == 401
    await slack.settled()
    assert await threads(slack) == []
    assert slack.fake.called("chat.postMessage") == []
    assert await slack.stack.redis.zcard("arq:queue") == 0


async def test_rate_limited_updates_all_land_late_but_in_order(slack: SlackHarness) -> None:
    root, plan = await planned(slack)
    slack.fake.rate_limit("chat.update", 2, retry_after=1)
    slack.fake.rate_limit("chat.postMessage", 1, retry_after=1)
    await slack.click(plan.ts, "approve", buttons(plan)["approve"])
    await slack.work()
    assert sorted(slack.fake.limited()) == ["chat.postMessage", "chat.update", "chat.update"]

    thread = await slack.stack.store.get_thread((await threads(slack))[0].id)
    shown = slack.thread(root)
    sluice = [m for m in thread.messages if m.author == "sluice"]
    assert [m.text[:40] for m in shown] == [m.text[:40] for m in sluice]  # all landed, in order
    [status] = [m for m in shown if m.text.startswith("Finished")]
    done = [int(t.split(": ")[1].split("/")[0]) for t in status.edits if "/" in t]
    assert done == sorted(done), status.edits  # progress never goes backwards
    assert "Approved by <@UANA>" in block_text(slack.plan_message(root))


async def test_bot_messages_never_start_runs(slack: SlackHarness) -> None:
    dm = {"type": "message", "channel": "D0ANA", "channel_type": "im", "text": DEMO_REQUEST}
    assert await slack.event({**dm, "user": BOT_USER_ID, "ts": slack.next_ts()}) == 200
    assert await slack.event({**dm, "bot_id": "B0OTHER", "user": "U0OTHERBOT",
                              "ts": slack.next_ts()}) == 200
    assert await slack.event({**dm, "subtype": "bot_message", "bot_id": BOT_ID,
                              "ts": slack.next_ts()}) == 200
    assert await slack.event({**dm, "subtype": "message_changed", "user": "UANA",
                              "ts": slack.next_ts()}) == 200
    other_bot = slack.mention_event(DEMO_REQUEST, user="U0OTHERBOT", bot_id="B0OTHER")
    assert await slack.event(other_bot) == 200
    await slack.settled()
    assert await threads(slack) == []
    assert await slack.stack.redis.zcard("arq:queue") == 0

    # A person's DM does start one.
    assert await slack.event({**dm, "user": "UANA", "ts": slack.next_ts()}) == 200
    await slack.settled()
    assert len(await threads(slack)) == 1


async def test_slash_command_starts_a_thread(slack: SlackHarness) -> None:
    assert await slack.command(DEMO_REQUEST) == 200
    await slack.work()
    [root_post, *_] = slack.fake.called("chat.postMessage")
    assert root_post["text"] == f"<@UANA> asked: {DEMO_REQUEST}" and "thread_ts" not in root_post
    root = next(ts for (ch, ts), m in slack.fake.messages.items() if m.thread_ts is None)
    assert "writing a program" in slack.thread(root)[0].text
    assert buttons(slack.plan_message(root))["approve"].startswith("plan_")


async def test_shared_files_become_thread_attachments(slack: SlackHarness) -> None:
    content = b"Email,Budget\nana@example.com,5000\n"
    slack.fake.files["F0CSV/budgets.csv"] = content
    shared = {"id": "F0CSV", "name": "budgets.csv", "mimetype": "text/csv",
              "size": len(content),
              "url_private_download": f"{slack.fake.base_url}/files/F0CSV/budgets.csv"}
    await slack.mention(DEMO_REQUEST, files=[shared], subtype="file_share")
    [thread] = await threads(slack)
    [request] = [m for m in (await slack.stack.store.get_thread(thread.id)).messages
                 if m.kind == "request"]
    [attachment] = request.attachments
    assert attachment.name == "budgets.csv" and "budgets.csv" in request.text
    _meta, data = await slack.stack.store.get_attachment(attachment.id)
    assert data == content
    assert slack.fake.downloads == [f"Bearer {BOT_TOKEN}"]

    # A file address on a host Slack does not serve from gets no token and a plain reply.
    elsewhere = {**shared, "url_private_download": "https://files.example.org/x.csv"}
    root = await slack.mention(DEMO_REQUEST, files=[elsewhere], subtype="file_share")
    [reply] = slack.thread(root)
    assert "no download address I trust" in reply.text
    assert slack.fake.downloads == [f"Bearer {BOT_TOKEN}"]


async def test_app_home_lists_recent_runs(slack: SlackHarness) -> None:
    root, plan = await planned(slack)
    await slack.click(plan.ts, "approve", buttons(plan)["approve"])
    await slack.work()
    assert await slack.event({"type": "app_home_opened", "user": "UANA", "channel": "D0ANA",
                              "tab": "home"}) == 200
    await slack.settled()
    view = slack.fake.views["UANA"]
    text = json.dumps(view)
    assert view["type"] == "home" and RunState.SUCCEEDED.value in text
    link = f"https://sluice-test.slack.com/archives/{CHANNEL}/p{root.replace('.', '')}"
    assert link in text


async def test_follow_up_in_the_thread_continues_it(slack: SlackHarness) -> None:
    root, plan = await planned(slack)
    await slack.click(plan.ts, "cancel", buttons(plan)["cancel"])
    await slack.mention("now only the ones from Germany, cc <@UBEN>", thread_ts=root)
    [thread] = await threads(slack)
    requests = [m.text for m in (await slack.stack.store.get_thread(thread.id)).messages
                if m.kind == "request"]
    assert requests == [DEMO_REQUEST, "now only the ones from Germany, cc <@UBEN>"]
    assert [m.text for m in slack.thread(root)].count(
        "Got it. I'm writing a program for this; the plan and its estimate will follow here."
    ) == 2


async def test_requester_cancels_a_queued_run_from_its_status_message(
        slack: SlackHarness) -> None:
    root, plan = await planned(slack)
    await slack.click(plan.ts, "approve", buttons(plan)["approve"])
    await slack.settled()
    [status] = [m for m in slack.thread(root) if m.text.startswith("Queued")]
    run_id = buttons(status)["cancel_run"]
    await slack.click(status.ts, "cancel_run", run_id, user="UEVE")  # not theirs
    await slack.settled()
    assert "Not allowed" in slack.fake.called("chat.postEphemeral")[-1]["text"]
    await slack.click(status.ts, "cancel_run", run_id)
    await slack.work()
    assert (await slack.stack.store.get_run(run_id)).state == RunState.CANCELLED
    assert await slack.stack.outbox_mails() == []
    assert any(m.text.startswith("Cancelled. Nothing more will run.") for m in slack.thread(root))


async def test_failures_reach_the_user_as_plain_words(slack: SlackHarness) -> None:
    slack.fake.closed_channels.add("C0PRIVATE")
    assert await slack.command(DEMO_REQUEST, channel="C0PRIVATE") == 200
    await slack.settled()
    [answer] = slack.fake.responses
    assert answer["response_type"] == "ephemeral" and "nothing was started" in answer["text"]
    assert BOT_TOKEN not in json.dumps(answer)
    assert await threads(slack) == []

    root = await slack.mention("")  # a bare mention
    [help_reply] = slack.thread(root)
    assert "Tell me what to do" in help_reply.text
    assert await threads(slack) == []


async def test_a_console_click_on_a_slack_thread_shows_in_slack(slack: SlackHarness) -> None:
    root, _plan = await planned(slack)
    [thread] = await threads(slack)
    [console_plan] = await slack.stack.messages(thread.id, "plan")
    status, _ = await slack.stack.click(console_plan, "approve", user="ops")
    assert status == 200
    await slack.settled()
    shown = slack.plan_message(root)
    assert buttons(shown) == {} and "Approved by ops at" in block_text(shown)
    assert any(m.text.startswith("Queued") for m in slack.thread(root))


TOTAL_PROGRAM = """\
I'll add up the Budget column of the attached file.

```python
rows = files.read_rows("budgets.csv")
total = sum(float(row["Budget"]) for row in rows)
print(f"{len(rows)} budgets, {total:.0f} in all")
```
"""


async def test_a_file_shared_in_slack_is_an_input_of_the_program(slack: SlackHarness) -> None:
    slack.stack.model.set_scenario(load_scenario(
        {"rules": [{"match": "Total the budgets", "response": TOTAL_PROGRAM}]}))
    content = b"Email,Budget\nana@example.com,5000\nben@example.com,1200\n"
    slack.fake.files["F0CSV/budgets.csv"] = content
    shared = {"id": "F0CSV", "name": "budgets.csv", "mimetype": "text/csv",
              "size": len(content),
              "url_private_download": f"{slack.fake.base_url}/files/F0CSV/budgets.csv"}
    root = await slack.mention("Total the budgets in this file", files=[shared],
                               subtype="file_share")
    await slack.work()  # it reads only and costs nothing: the policy starts it at once
    await slack.work()
    assert any("2 budgets, 6200 in all" in m.text for m in slack.thread(root))
