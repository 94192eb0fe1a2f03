"""The CodeAct planning loop end to end: checks with mypy, the sample run in preview mode, the
estimate, and model calls that do not grow with the data (issue 4)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from codegen.models import SCRIPTED_BACKUP_MODEL, LiteLLMModels
from codegen.prompt import SYSTEM
from core.types import Plan, Run, RunState
from infra.scripted_model import ScriptedRequest
from tests._stack import DEMO_REQUEST, Stack


def planner_calls(requests: list[ScriptedRequest]) -> list[ScriptedRequest]:
    """The model calls the planner made (the program's own ai.* calls have another prompt)."""
    return [r for r in requests if r.status == 200
            and str(r.messages[0]["content"]).startswith(SYSTEM[:40])]


def write_leads(sheets_dir: Path, rows: int) -> None:
    with (sheets_dir / "leads.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Name", "Email", "Stage"])
        for i in range(rows):
            writer.writerow([f"Lead {i}", f"lead{i}@example.com", "new" if i % 2 else ""])


STAGE_PROGRAM = """\
Count the leads by stage and mark the ones without a stage as "new".

```python
sheet = sheets.open("leads")
rows = sheet.rows()
blank = [row for row in rows if not row["Stage"]]

def mark(row):
    sheet.update(row, {"Stage": "new"})

each(blank, mark)
rows = len(rows)  # re-bound to another type: allowed
print(f"{rows} leads, {len(blank)} without a stage")
```
"""


async def runs_of(stack: Stack, thread_id: str) -> list[Run]:
    return [run for run in await stack.store.list_runs() if run.thread_id == thread_id]


async def plan_for(stack: Stack, text: str) -> tuple[str, Plan]:
    thread_id = await stack.ask(text)
    await stack.drain()
    [message] = await stack.messages(thread_id, "plan")
    return thread_id, await stack.store.get_plan(message["meta"]["plan_id"])


async def test_model_calls_do_not_grow_with_the_sheet(redis_server: Any, tmp_path: Path) -> None:
    scenario = {"rules": [{"match": "leads", "response": STAGE_PROGRAM}]}
    calls, items = [], []
    for rows in (10, 10_000):
        home = tmp_path / str(rows)
        async with Stack.running(redis_url=redis_server.url, home=home,
                                 scenario=scenario) as stack:
            write_leads(stack.sheets_dir, rows)
            _thread, plan = await plan_for(stack, "Mark the leads without a stage as new")
            calls.append(len(planner_calls(stack.model.requests)))
            items.append(plan.estimate.items)
            assert plan.sample is not None and plan.sample.items == 3
    assert calls == [2, 2]  # the program, then the review of its sample run
    assert items == [5, 5000]  # measured by the sample: the rows without a stage


TYPE_ERROR = """\
Ask every signup for a budget.

```python
sheet = sheets.open("signups")
for row in sheet.rows():
    sheet.update(row, "Budget", 5000)
```
"""
TYPE_FIXED = """\
Set the budget of every signup to 5000.

```python
sheet = sheets.open("signups")
for row in sheet.rows():
    sheet.update(row, {"Budget": 5000})
```
"""


async def test_a_type_error_goes_back_to_the_model_with_mypys_message(
        redis_server: Any, tmp_path: Path) -> None:
    scenario = {"rules": [{"match": "not accepted", "response": TYPE_FIXED},
                          {"match": "budget", "response": TYPE_ERROR}]}
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario) as stack:
        _thread, plan = await plan_for(stack, "Set every budget to 5000")
        asked = planner_calls(stack.model.requests)
        feedback = str(asked[1].messages[-1]["content"])
        assert 'line 3: sheet.update(row, "Budget", 5000)' in feedback
        assert "type-check [call-arg]: Too many arguments for \"update\" of \"Sheet\"" in feedback
        assert plan.program.strip() == TYPE_FIXED.split("```python\n")[1].split("```")[0].strip()
        broken = {(b["stage"], b["rule"]): b["count"]
                  for b in await stack.store.check_failure_counts()}
        assert broken == {("types", "call-arg"): 1, ("types", "arg-type"): 1}


async def test_a_name_re_bound_to_another_type_passes(redis_server: Any, tmp_path: Path) -> None:
    scenario = {"rules": [{"match": "leads", "response": STAGE_PROGRAM}]}
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario) as stack:
        write_leads(stack.sheets_dir, 10)
        _thread, plan = await plan_for(stack, "Mark the leads without a stage as new")
        assert "rows = len(rows)" in plan.program
        assert await stack.store.check_failure_counts() == []


async def test_preview_writes_nothing_and_lists_the_writes_the_run_does(
        redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path) as stack:
        before = (stack.sheets_dir / "signups.csv").read_bytes()
        thread_id, plan = await plan_for(stack, DEMO_REQUEST)
        assert await stack.outbox_mails() == []
        assert (stack.sheets_dir / "signups.csv").read_bytes() == before
        assert plan.sample is not None
        previewed_mail = [w.details for w in plan.sample.writes if w.action == "mail.send"]
        previewed_rows = [w.details for w in plan.sample.writes if w.action == "Sheet.update"]
        assert len(previewed_mail) == len(previewed_rows) == 3

        [message] = await stack.messages(thread_id, "plan")
        await stack.click(message, "approve")
        await stack.drain()
        sent = {m["recipients"][0]: m for m in await stack.outbox_mails()}
        for mail in previewed_mail:
            [to] = mail["to"]
            assert (sent[to]["subject"], sent[to]["body"].replace("\r\n", "\n").strip()) == \
                (mail["subject"], mail["body"].strip())
        with (stack.sheets_dir / "signups.csv").open(newline="") as f:
            rows = {f"row-{i}": row for i, row in enumerate(csv.DictReader(f), start=1)}
        for change in previewed_rows:
            for column, values in change["changes"].items():
                assert rows[change["row"]][column] == values["after"]
        [run] = await runs_of(stack, thread_id)
        assert run.result is not None
        assert run.result.writes == plan.estimate.writes == {"mail.send": 4, "Sheet.update": 4}


SLOW_AI = """\
Classify every lead's name.

```python
sheet = sheets.open("leads")

def label(row):
    return ai.classify(row["Name"], ["person", "company"])

labels = each(sheet.rows(), label)
print(labels.count("person"), "people")
```
"""


async def test_the_estimate_is_within_a_fifth_of_the_run(redis_server: Any,
                                                         tmp_path: Path) -> None:
    scenario = {"rules": [
        {"match": "Classify every", "response": SLOW_AI},
        {"match": "Lead \\d+", "response": "person", "delay_ms": 250},
    ]}
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario) as stack:
        write_leads(stack.sheets_dir, 30)
        thread_id, plan = await plan_for(stack, "Classify every lead")
        assert plan.estimate.measured and plan.estimate.items == 30
        assert plan.estimate.model_calls == 30
        [message] = await stack.messages(thread_id, "plan")
        if message["buttons"]:  # the auto-approval policy may have started it already
            await stack.click(message, "approve")
        await stack.drain()
        [run] = await runs_of(stack, thread_id)
        assert run.state == RunState.SUCCEEDED and run.result is not None
        assert run.result.model_calls == 30
        ratio = plan.estimate.seconds / run.result.seconds
        assert 0.8 <= ratio <= 1.2, (plan.estimate.seconds, run.result.seconds)
        low, high = plan.estimate.seconds_range or (0, 0)
        assert low <= plan.estimate.seconds <= high
        [result] = await stack.messages(thread_id, "result")
        assert f"Estimated ~{plan.estimate.seconds:.1f} s" in result["text"]
        assert f"it took {run.result.seconds:.1f} s" in result["text"]


async def test_a_failing_provider_falls_back_and_the_thread_shows_no_error(
        redis_server: Any, tmp_path: Path) -> None:
    scenario = {
        "rules": [{"match": "missing a budget", "model": SCRIPTED_BACKUP_MODEL,
                   "response": TYPE_FIXED}],
        "failures": [{"model": "scripted", "status": 500, "times": 1},
                     {"model": "scripted", "status": 429, "times": 1, "retry_after": 0}],
    }
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario) as stack:
        stack.deps.models = LiteLLMModels.from_settings(
            stack.settings, fallback_model=SCRIPTED_BACKUP_MODEL, num_retries=0)
        thread_id, plan = await plan_for(stack, DEMO_REQUEST)
        assert "Budget" in plan.program
        assert await stack.messages(thread_id, "error") == []
        statuses = [(r.model, r.status) for r in stack.model.requests]
        assert ("scripted", 500) in statuses
        assert (SCRIPTED_BACKUP_MODEL, 200) in statuses


async def test_a_model_without_a_known_price_is_never_shown_as_free(
        redis_server: Any, tmp_path: Path) -> None:
    scenario = {"rules": [
        {"match": "Classify every", "response": SLOW_AI},
        {"match": "Lead \\d+", "response": "person"},
    ]}
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, scenario=scenario,
                             env={"SLUICE_SCRIPTED_PRICE_AS": "a-model-nobody-priced"}) as stack:
        write_leads(stack.sheets_dir, 5)
        thread_id, plan = await plan_for(stack, "Classify every lead")
        assert plan.estimate.cost_usd is None
        [message] = await stack.messages(thread_id, "plan")
        assert "price unknown" in message["text"] and "$0.0000" not in message["text"]
        await stack.click(message, "approve")
        await stack.drain()
        [status] = await stack.messages(thread_id, "status")
        [result] = await stack.messages(thread_id, "result")
        assert "price unknown" in status["text"] and "$" not in status["text"]
        assert "5 AI calls (price unknown)" in result["text"]
