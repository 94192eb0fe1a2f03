"""The "Save as automation" button under a result: the run's program becomes an automation.

See `core.automations`. The thread gets a message saying how to trigger it (webhook, email,
command line); the button goes, so a second click cannot save it twice.
"""

from __future__ import annotations

from typing import Final

from bot.deps import BotDeps
from core.automations import Automations
from core.types import Button, Message

SAVE_ACTION: Final = "save_automation"


def save_automation_button(run_id: str) -> Button:
    return Button(action=SAVE_ACTION, label="Save as automation", value=run_id)


async def save_from_button(deps: BotDeps, message: Message, user: str, run_id: str) -> Message:
    """Save the run named by the button (the caller checked the message has it)."""
    automation = await Automations(deps.store).save_from_run(run_id, user=user)
    await deps.store.update_message(message.id, buttons=[
        b for b in message.buttons if b.action != SAVE_ACTION])
    settings = deps.settings
    local, _, domain = settings.mail_from.partition("@")
    text = "\n".join([
        f"Saved as automation {automation.id} “{automation.name}” (budget "
        f"${automation.budget_usd:.2f}; runs without asking while its estimate is within it).",
        f"- webhook: POST {settings.effective_public_url}/hooks/{automation.id}/runs, signed "
        f"with its secret (`sluice automations show {automation.id}`)",
        f"- email: write to {local}+{automation.id}@{domain}",
        f"- now: `sluice automations run {automation.id}`",
        f"- on a schedule: `sluice automations save {run_id} --schedule '0 9 * * 1-5'`",
    ])
    return await deps.store.add_message(message.thread_id, author="sluice", kind="decision",
                                        text=text, meta={"automation_id": automation.id,
                                                         "run_id": run_id})
