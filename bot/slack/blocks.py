"""Thread messages as Slack Block Kit (https://api.slack.com/block-kit).

Every thread message becomes a fallback `text` plus `blocks`; the plan preview has its own layout
(`plan_blocks`), which is the one place to extend when plans carry more (a sample run's output,
a richer write preview). Buttons keep Sluice's action as `action_id` (`sluice:approve`) and the
plan or run id as `value`; which message was clicked comes from the Slack message itself.
"""

from __future__ import annotations

import re
from typing import Any

from bot.render import estimate_lines, plan_text, sample_lines
from core.types import Button, Message, Plan, PlanStatus, RunState

Block = dict[str, Any]

ACTION_PREFIX = "sluice:"
SECTION_LIMIT = 2900  # Slack allows 3,000 characters in a section's text
MAX_BLOCKS = 50  # per message
FALLBACK_LIMIT = 3500
PROGRAM_LIMIT = 2500
WRITE_LINES = 15
_MENTION = re.compile(r"(<[@#!][A-Za-z0-9^|_. -]+>)")


def mrkdwn(text: str) -> str:
    """Escape `&`, `<`, `>` as Slack asks, keeping user, channel and special mentions."""
    parts = _MENTION.split(text)
    return "".join(p if _MENTION.fullmatch(p) else
                   p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                   for p in parts)


def text_blocks(text: str) -> list[Block]:
    """`text` as sections of at most Slack's section length, split at line ends."""
    blocks: list[Block] = []
    chunk = ""
    for line in mrkdwn(text).splitlines() or [""]:
        while len(line) > SECTION_LIMIT:
            blocks.append(_section(line[:SECTION_LIMIT]))
            line = line[SECTION_LIMIT:]
        if len(chunk) + len(line) + 1 > SECTION_LIMIT:
            blocks.append(_section(chunk))
            chunk = ""
        chunk = f"{chunk}\n{line}" if chunk else line
    if chunk.strip():
        blocks.append(_section(chunk))
    return blocks


def buttons_block(buttons: list[Button]) -> list[Block]:
    if not buttons:
        return []
    elements = []
    for button in buttons:
        element: Block = {"type": "button", "action_id": ACTION_PREFIX + button.action,
                          "text": {"type": "plain_text", "text": button.label[:75]},
                          "value": button.value}
        if button.style != "default":
            element["style"] = button.style
        elements.append(element)
    return [{"type": "actions", "block_id": "sluice_buttons", "elements": elements}]


def plan_blocks(plan: Plan, *, buttons: list[Button], decided: str = "") -> list[Block]:
    """The plan preview: what it will do, what it will write, what it costs, and the choice.

    Args:
        plan: the plan as stored.
        buttons: the message's buttons (none once decided).
        decided: who decided and when ("Approved by <@U…> at 10:02 UTC"), shown instead.
    """
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Plan ready for approval"
                                    if plan.status == PlanStatus.AWAITING_APPROVAL else "Plan"}},
        _section(f"*{mrkdwn(plan.summary)}*"),
    ]
    if plan.sample is not None:  # what the sample run did, writes only previewed
        blocks += text_blocks(mrkdwn("\n".join(sample_lines(plan.sample))))[:1]
    blocks += _write_preview(plan)
    blocks.append(_context(estimate_lines(plan.estimate)[0]))
    blocks += [_context(f"Note: {note}") for note in plan.estimate.notes]
    blocks.append(_section(_program(plan.program)))
    if decided:
        blocks.append(_context(decided))
    return blocks[:MAX_BLOCKS - 1] + buttons_block(buttons)


def _write_preview(plan: Plan) -> list[Block]:
    lines = plan.estimate.write_lines
    if not lines:
        return [_section("_It only reads: nothing is written or sent._")]
    shown = [f"• {line[:300]}" for line in lines[:WRITE_LINES]]
    if len(lines) > WRITE_LINES:
        shown.append(f"• … and {len(lines) - WRITE_LINES} more")
    return text_blocks("It will:\n" + "\n".join(shown))[:1]


def _program(program: str) -> str:
    shown = mrkdwn(program).replace("```", "'''")
    if len(shown) > PROGRAM_LIMIT:
        shown = shown[:PROGRAM_LIMIT] + "\n…"
    return "*Program*\n```" + shown + "```"


def message_payload(message: Message, *, plan: Plan | None = None) -> tuple[str, list[Block]]:
    """(fallback text, blocks) for a thread message; `plan` for a plan preview."""
    fallback = message.text[:FALLBACK_LIMIT]
    if plan is not None:
        head = plan_text(plan)
        decided = message.text[len(head):].strip() if message.text.startswith(head) else ""
        return fallback, plan_blocks(plan, buttons=message.buttons, decided=decided)
    text = message.text
    if message.author == "user":
        text = f"{message.user or 'someone'} (from the console): {text}"
        fallback = text[:FALLBACK_LIMIT]
    return fallback, text_blocks(text)[:MAX_BLOCKS - 1] + buttons_block(message.buttons)


_STATE_EMOJI = {RunState.QUEUED: ":hourglass:", RunState.RUNNING: ":arrow_forward:",
                RunState.WAITING_APPROVAL: ":raised_hand:",
                RunState.SUCCEEDED: ":white_check_mark:", RunState.FAILED: ":x:",
                RunState.CANCELLED: ":no_entry_sign:"}


def home_view(lines: list[tuple[str, str, float, str]]) -> Block:
    """The App Home tab: (state, summary, spent, thread link) of the user's recent runs."""
    blocks: list[Block] = [{"type": "header", "text": {"type": "plain_text",
                                                       "text": "Your recent Sluice runs"}}]
    if not lines:
        blocks.append(_section("No runs yet. Mention me in a channel or write to me here "
                               "with what you need done."))
    for state, summary, spent, link in lines:
        where = f" · <{link}|thread>" if link else ""
        emoji = _STATE_EMOJI.get(RunState(state), "")
        blocks.append(_section(f"{emoji} *{state.replace('_', ' ')}* · ${spent:.4f}{where}\n"
                               f"{mrkdwn(summary[:300])}"))
    return {"type": "home", "blocks": blocks[:100]}


def _section(text: str) -> Block:
    if len(text) > SECTION_LIMIT:
        text = text[:SECTION_LIMIT] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text or " "}}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn(text)[:2000]}]}
