"""The durable runtime as a thread sees it: budgets, cancel, uncertain writes, determinism,
and state kept between requests. Real Redis, real burst worker, real sandbox, scripted model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from core.types import RunState
from integrations.base import EffectCall
from integrations.mail import LocalMail
from tests._stack import Stack
from workers.effects import call_key, request_hash
from workers.journal import Journal, JournalEntry


def scenario(program: str, *, extra_rules: list[dict[str, Any]] | None = None,
             match: str = "do it", delay_ms: int = 0) -> dict[str, Any]:
    rules = list(extra_rules or [])
    rules.append({"match": "", "match_system": "^You classify", "response": "warm",
                  "delay_ms": delay_ms})
    rules.append({"match": match, "response": f"The plan.\n\n```python\n{program}```\n"})
    return {"rules": rules}


CLASSIFY_EACH = """\
sheet = sheets.open("signups")
def label(row):
    return ai.classify(row["Company"], ["warm", "cold"])
labels = each(sheet.rows(), label)
print(labels.count("warm"), "warm")
"""


# These runs write nothing and cost little: without this the auto-approval policy would start
# them before the test could approve them with its own budget.
ASK_ALWAYS = {"SLUICE_AUTO_APPROVE_BELOW_USD": "0"}


async def approve(stack: Stack, thread_id: str, **extra: Any) -> dict[str, Any]:
    [plan] = await stack.messages(thread_id, "plan")
    button = next(b for b in plan["buttons"] if b["action"] == "approve")
    status, body = await stack.call("POST", "/api/actions", {
        "message_id": plan["id"], "action": "approve", "value": button["value"], "user": "ana",
        **extra})
    assert status == 200, body
    return dict(body["message"])


def classify_calls(stack: Stack) -> int:
    return sum(1 for r in stack.model.requests
               if r.status == 200 and str(r.messages[0]["content"]).startswith("You classify"))


async def test_budget_pauses_asks_and_resumes_without_redoing_work(
        redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(CLASSIFY_EACH), env=ASK_ALWAYS) as stack:
        thread_id = await stack.ask("do it")
        await stack.drain()
        sampled = classify_calls(stack)  # the planner's sample run classified the first rows
        await approve(stack, thread_id, budget_usd=0.0000001)
        await stack.drain()
        [question] = await stack.messages(thread_id, "question")
        assert "budget" in question["text"]
        run = await stack.store.get_run(question["meta"]["run_id"])
        assert run.state == RunState.WAITING_APPROVAL
        spent_at_pause = run.spent_usd
        assert spent_at_pause > 0 and classify_calls(stack) - sampled == 1

        status, _ = await stack.click(question, "raise_budget")
        assert status == 200
        await stack.drain()
        # Each resume spends one more call, then pauses again: keep allowing more.
        for _ in range(10):
            run = await stack.store.get_run(run.id)
            if run.state != RunState.WAITING_APPROVAL:
                break
            question = (await stack.messages(thread_id, "question"))[-1]
            await stack.click(question, "raise_budget")
            await stack.drain()
        run = await stack.store.get_run(run.id)
        assert run.state == RunState.SUCCEEDED, run.error
        # every row classified once by the run, none redone on resume
        assert classify_calls(stack) - sampled == 7
        assert run.spent_usd >= spent_at_pause  # spend counters are never reset
        [result] = await stack.messages(thread_id, "result")
        assert "7 warm" in result["text"]


LONG_EACH = CLASSIFY_EACH.replace("each(sheet.rows(), label)", "each(sheet.rows() * 20, label)")


async def start_long_run(stack: Stack) -> tuple[str, dict[str, Any], int, asyncio.Task[None]]:
    """Ask for the 140-item run, approve it and let a worker start it: (thread id, status
    message, model calls the sample made, the worker's task) once 3 items have been asked."""
    thread_id = await stack.ask("do it")
    await stack.drain()
    sampled = classify_calls(stack)
    status_msg = await approve(stack, thread_id)
    work = asyncio.create_task(stack.drain())
    while classify_calls(stack) - sampled < 3:
        await asyncio.sleep(0.05)
    return thread_id, status_msg, sampled, work


async def test_cancel_from_the_thread_stops_a_running_job(redis_server: Any,
                                                          tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(LONG_EACH, delay_ms=100), env=ASK_ALWAYS) as stack:
        thread_id, status_msg, sampled, work = await start_long_run(stack)
        status, body = await stack.click(status_msg, "cancel_run")
        assert status == 200 and "Cancelling" in body["message"]["text"]
        await work
        run = await stack.store.get_run(status_msg["meta"]["run_id"])
        assert run.state == RunState.CANCELLED
        assert classify_calls(stack) - sampled < 140  # it stopped long before the 140 items
        [result] = await stack.messages(thread_id, "result")
        assert result["text"].startswith("Cancelled.")


async def test_an_attempt_whose_lease_goes_to_another_steps_aside(redis_server: Any,
                                                                  tmp_path: Path) -> None:
    """A sweeper hands a run whose lease expired to a new attempt; the old attempt, still
    running (its database was slow, say), must stop asking for effects and leave the run, its
    state and its thread to the new one: two attempts never run one program at once."""
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(LONG_EACH, delay_ms=100), env=ASK_ALWAYS) as stack:
        thread_id, status_msg, sampled, work = await start_long_run(stack)
        run_id = status_msg["meta"]["run_id"]
        async with stack.store.engine.begin() as conn:  # what another attempt's acquire does
            await conn.execute(text("UPDATE runs SET lease_owner = 'another-attempt', "
                                    "lease_expires_at = :until WHERE id = :id"),
                               {"until": datetime.now(UTC) + timedelta(hours=1), "id": run_id})
        await work
        assert classify_calls(stack) - sampled < 140  # it stopped long before the 140 items
        run = await stack.store.get_run(run_id)
        assert run.state == RunState.RUNNING and run.result is None  # left to the other attempt
        assert await stack.messages(thread_id, "result") == []
        async with stack.store.engine.connect() as conn:
            owner = await conn.scalar(text("SELECT lease_owner FROM runs WHERE id = :id"),
                                      {"id": run_id})
        assert owner == "another-attempt"


APPEND = 'sheet = sheets.open("signups")\nsheet.append({"Name": "Zoe", "Email": "zoe@z.example"})\n'


async def _journal_before(stack: Stack, run_id: str, path: str, call: EffectCall,
                          status: str) -> None:
    journal = Journal(stack.store.engine, run_id)
    await journal.record(JournalEntry(path=path, kind="write", call=call_key(call),
                                      request_hash=request_hash(call), status=status),  # type: ignore[arg-type]
                         durable=True)
    await journal.close()


async def test_unconfirmed_write_is_raised_to_a_person(redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(APPEND)) as stack:
        thread_id = await stack.ask("do it")
        await stack.drain()
        status_msg = await approve(stack, thread_id)
        run_id = status_msg["meta"]["run_id"]
        # A worker died after recording its intent to append, before confirming it.
        append = EffectCall(integration="sheets", action="append",
                            args=[{"Name": "Zoe", "Email": "zoe@z.example"}], kwargs={},
                            handle=("sheets", "Sheet", "signups"), path="call#2")
        await _journal_before(stack, run_id, "call#2", append, "intent")
        await stack.drain()
        [question] = await stack.messages(thread_id, "question")
        assert "can't tell whether" in question["text"] and "append" in question["text"]
        assert [b["action"] for b in question["buttons"]] == [
            "resolve_done", "resolve_redo", "cancel_run"]
        rows = (stack.sheets_dir / "signups.csv").read_text()
        assert "Zoe" not in rows  # nothing was repeated silently

        await stack.click(question, "resolve_redo")
        await stack.drain()
        run = await stack.store.get_run(run_id)
        assert run.state == RunState.SUCCEEDED, run.error
        assert (stack.sheets_dir / "signups.csv").read_text().count("Zoe") == 1


SEND = 'mail.send("ben@okafor.example", "Your budget", "What budget do you have in mind?")\n'
SENT = EffectCall(integration="mail", action="send",
                  args=["ben@okafor.example", "Your budget", "What budget do you have in mind?"],
                  kwargs={}, path="call#1")


async def _send_left_unconfirmed(stack: Stack, *, delivered: bool) -> tuple[str, str]:
    """A send approved, then its worker died after journaling the intent, and (`delivered`)
    after the outbox took the email: (thread id, run id)."""
    thread_id = await stack.ask("do it")
    await stack.drain()
    run_id = (await approve(stack, thread_id))["meta"]["run_id"]
    await _journal_before(stack, run_id, "call#1", SENT, "intent")
    if delivered:  # as the dead worker did, with the idempotency key the runtime gives it
        mail = LocalMail(smtp_host="127.0.0.1", smtp_port=stack.outbox.port,
                         sender=stack.settings.mail_from, mailbox=stack.sheets_dir)
        await mail.send(*SENT.args, idempotency_key=f"{run_id}/call#1")
    return thread_id, run_id


async def test_an_unconfirmed_send_the_outbox_holds_is_not_sent_again(
        redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(SEND)) as stack:
        thread_id, run_id = await _send_left_unconfirmed(stack, delivered=True)
        await stack.drain()
        run = await stack.store.get_run(run_id)
        assert run.state == RunState.SUCCEEDED, run.error
        assert run.result is not None and run.result.writes == {"mail.send": 1}
        assert (run.result.writes_checked, run.result.writes_confirmed,
                run.result.writes_redone) == (1, 1, 0)
        assert stack.outbox.handler.received == 1  # the outbox was asked, not sent to again
        assert [m["subject"] for m in await stack.outbox_mails()] == ["Your budget"]
        assert not await stack.messages(thread_id, "question")
        [result] = await stack.messages(thread_id, "result")
        assert "sent 1 email" in result["text"]
        assert ("of the 1 write it had left unconfirmed, 1 was found already done and not "
                "repeated.") in result["text"]


async def test_an_unconfirmed_send_the_outbox_lacks_is_sent_once(
        redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(SEND)) as stack:
        thread_id, run_id = await _send_left_unconfirmed(stack, delivered=False)
        await stack.drain()
        run = await stack.store.get_run(run_id)
        assert run.state == RunState.SUCCEEDED, run.error
        assert run.result is not None
        assert (run.result.writes_checked, run.result.writes_confirmed,
                run.result.writes_redone) == (1, 0, 0)
        [result] = await stack.messages(thread_id, "result")
        assert "1 was found not done and done now." in result["text"]
        assert stack.outbox.handler.received == 1
        assert len(await stack.outbox_mails()) == 1


@asynccontextmanager
async def _relay_resumed(redis_server: Any, tmp_path: Path, *,
                         dedups: bool) -> AsyncIterator[tuple[Stack, str, str]]:
    """A stack whose SMTP server is a relay (not the outbox Sluice can look in), with a send
    left unconfirmed and delivered, resumed: (stack, thread id, run id)."""
    relay = {"SLUICE_SMTP_IS_OUTBOX": "false",
             "SLUICE_SMTP_DEDUPS_MESSAGE_ID": "true" if dedups else "false"}
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, scenario=scenario(SEND),
                             env=relay) as stack:
        thread_id, run_id = await _send_left_unconfirmed(stack, delivered=True)
        await stack.drain()
        yield stack, thread_id, run_id


async def test_an_unconfirmed_send_through_a_relay_is_raised_to_a_person(
        redis_server: Any, tmp_path: Path) -> None:
    async with _relay_resumed(redis_server, tmp_path, dedups=False) as (stack, thread_id, _):
        [question] = await stack.messages(thread_id, "question")
        assert "can't tell whether" in question["text"] and "ben@okafor.example" in question["text"]
        assert stack.outbox.handler.received == 1  # nothing was repeated silently


async def test_an_unconfirmed_send_through_a_relay_that_drops_repeats_is_sent_again(
        redis_server: Any, tmp_path: Path) -> None:
    async with _relay_resumed(redis_server, tmp_path, dedups=True) as (stack, thread_id,
                                                                      run_id):
        run = await stack.store.get_run(run_id)
        assert run.state == RunState.SUCCEEDED, run.error
        assert run.result is not None and run.result.writes_redone == 1
        # Sent again under the same Message-ID, which the server dropped: stored once.
        assert (stack.outbox.handler.received, stack.outbox.handler.duplicates) == (2, 1)
        assert len(await stack.outbox_mails()) == 1
        [result] = await stack.messages(thread_id, "result")
        assert "1 was done again, which the service ignores when it is a repeat." in result["text"]


UPDATE = 'sheet = sheets.open("signups")\nsheet.update("row-2", {"Budget": 5000})\n'


async def test_an_unconfirmed_update_the_sheet_shows_done_is_not_written_again(
        redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(UPDATE)) as stack:
        thread_id = await stack.ask("do it")
        await stack.drain()
        run_id = (await approve(stack, thread_id))["meta"]["run_id"]
        update = EffectCall(integration="sheets", action="update",
                            args=["row-2", {"Budget": 5000}], kwargs={},
                            handle=("sheets", "Sheet", "signups"), path="call#2")
        await _journal_before(stack, run_id, "call#2", update, "intent")
        # The worker died after the sheet was written, before the write was journaled done.
        path = stack.sheets_dir / "signups.csv"
        path.write_text(path.read_text().replace("Ben Okafor,ben@okafor.example,Okafor "
                                                 "Logistics,Business,,", "Ben Okafor,ben@okafor."
                                                 "example,Okafor Logistics,Business,5000,"))
        written = path.stat().st_mtime_ns
        await stack.drain()
        run = await stack.store.get_run(run_id)
        assert run.state == RunState.SUCCEEDED, run.error
        assert run.result is not None
        assert (run.result.writes_confirmed, run.result.writes_redone) == (1, 0)
        assert path.stat().st_mtime_ns == written  # looked at, not written again
        assert "Business,5000," in path.read_text()


async def test_a_different_effect_at_a_journaled_path_stops_the_run(redis_server: Any,
                                                                    tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(APPEND)) as stack:
        thread_id = await stack.ask("do it")
        await stack.drain()
        status_msg = await approve(stack, thread_id)
        other = EffectCall(integration="sheets", action="open", args=["leads"], kwargs={},
                           path="call#1")
        await _journal_before(stack, status_msg["meta"]["run_id"], "call#1", other, "done")
        await stack.drain()
        [error] = await stack.messages(thread_id, "error")
        assert "not deterministic" in error["text"]
        assert "Zoe" not in (stack.sheets_dir / "signups.csv").read_text()


FIRST = """\
sheet = sheets.open("signups")
missing = [row["Email"] for row in sheet.rows() if not row["Budget"]]
print(len(missing), "missing")
"""
SECOND = """\
print("still missing:", ", ".join(sorted(missing)))
"""


async def test_a_follow_up_in_the_thread_starts_with_its_variables(redis_server: Any,
                                                                   tmp_path: Path) -> None:
    rules = [{"match": "^now list them", "response": f"List.\n\n```python\n{SECOND}```\n"}]
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(FIRST, extra_rules=rules), env=ASK_ALWAYS) as stack:
        thread_id = await stack.ask("do it")
        await stack.drain()
        await approve(stack, thread_id)
        await stack.drain()
        await stack.ok("POST", f"/api/threads/{thread_id}/messages",
                       {"text": "now list them", "user": "ana"})
        await stack.drain()
        planning = [r for r in stack.model.requests if "now list them" in
                    str(r.messages[-1]["content"])]
        workspace = str(planning[0].messages[-2]["content"])
        assert "missing" in workspace and "a list of 4 items" in workspace
        plans = await stack.messages(thread_id, "plan")
        await stack.click(plans[-1], "approve")
        await stack.drain()
        results = await stack.messages(thread_id, "result")
        assert "still missing: ben@okafor.example, chloe@martin.example" in results[-1]["text"]
        values, _ = await stack.store.thread_state(thread_id)
        assert values["missing"].count("@") == 4  # the saved JSON text


CHECK_BUDGETS = """\
sheet = sheets.open("signups")
def check(row):
    if not row["Budget"]:
        raise ValueError(f"{row['Name']} has no budget yet")
    sheet.update(row, {"Checked": "yes"})
each(sheet.rows(), check)
"""


async def test_retry_the_failed_ones_runs_just_those(redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(CHECK_BUDGETS)) as stack:
        thread_id = await stack.ask("do it")
        await stack.drain()
        await approve(stack, thread_id)
        await stack.drain()
        [result] = await stack.messages(thread_id, "result")
        assert "7 items processed, 4 failed" in result["text"]
        assert "Ben Okafor has no budget yet" in result["text"]
        [retry] = [b for b in result["buttons"] if b["action"] == "retry_failed"]
        assert retry["label"] == "Retry the 4 failed"

        sheet = stack.sheets_dir / "signups.csv"
        sheet.write_text(sheet.read_text().replace(",,", ",5000,"))  # the budgets came in
        status, body = await stack.click(result, "retry_failed")
        assert status == 200 and "retrying the 4 failed" in body["message"]["text"]
        await stack.drain()
        results = await stack.messages(thread_id, "result")
        assert "4 items processed, none failed" in results[-1]["text"]
        assert "updated 4 rows" in results[-1]["text"]
        retried = await stack.store.get_run(body["message"]["meta"]["run_id"])
        assert retried.retry_of == result["meta"]["run_id"]
        assert retried.progress.total == 4
