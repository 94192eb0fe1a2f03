"""Block Kit rendering stays inside Slack's limits and keeps mentions while escaping text."""

from __future__ import annotations

from bot.render import plan_buttons
from bot.slack.blocks import home_view, mrkdwn, plan_blocks, text_blocks
from core.types import Estimate, Plan, PlanStatus


def _plan(**changes: object) -> Plan:
    fields: dict[str, object] = {
        "request_id": "req_1", "thread_id": "thr_1", "summary": "Email the signups.",
        "program": "print(1)",
        "estimate": Estimate(items=7, write_lines=["send up to 7 emails"], cost_usd=0.01)}
    fields.update(changes)
    return Plan.model_validate(fields)


def test_text_is_escaped_but_mentions_are_kept() -> None:
    assert mrkdwn("a < b & <@U123> > <#C1|general> <!here>") == \
        "a &lt; b &amp; <@U123> &gt; <#C1|general> <!here>"


def test_long_texts_stay_inside_slack_limits() -> None:
    huge = "\n".join("x" * 500 for _ in range(1000)) + "y" * 10_000
    blocks = text_blocks(huge)
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks)
    plan = _plan(summary="s" * 10_000, program="p = 1\n" * 5_000,
                 estimate=Estimate(write_lines=[f"send mail {i}" for i in range(2_000)]))
    rendered = plan_blocks(plan, buttons=plan_buttons(plan))
    assert len(rendered) <= 50 and rendered[-1]["type"] == "actions"
    assert all(len(b["text"]["text"]) <= 3000 for b in rendered if "text" in b
               and b["type"] == "section")
    [program] = [b["text"]["text"] for b in rendered if "*Program*" in str(b)]
    assert program.endswith("```")
    assert "… and 1985 more" in str(rendered)


def test_plan_preview_shows_writes_estimate_and_the_choice() -> None:
    plan = _plan()
    rendered = plan_blocks(plan, buttons=plan_buttons(plan))
    text = str(rendered)
    assert "send up to 7 emails" in text and "up to 7 items" in text
    [actions] = [b for b in rendered if b["type"] == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == [
        "sluice:approve", "sluice:run_first", "sluice:cancel"]
    assert {e["value"] for e in actions["elements"]} == {plan.id}
    decided = plan_blocks(plan.model_copy(update={"status": PlanStatus.APPROVED}), buttons=[],
                          decided="Approved by <@U1> at 10:02 UTC")
    assert not [b for b in decided if b["type"] == "actions"]
    assert decided[-1]["elements"][0]["text"] == "Approved by <@U1> at 10:02 UTC"
    reads_only = plan_blocks(_plan(estimate=Estimate()), buttons=[])
    assert "nothing is written or sent" in str(reads_only)


def test_home_view_without_runs_says_how_to_start() -> None:
    view = home_view([])
    assert view["type"] == "home" and "Mention me" in str(view)
