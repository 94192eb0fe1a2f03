"""What happens after an event is rendered in its thread, on surfaces other than the console.

Email threads get the new messages by email (and one halfway note per run); runs started by a
webhook with a callback URL get their result POSTed when they end. A failing follow-up is logged
and does not stop the event from being acknowledged.
"""

from __future__ import annotations

import logging

from bot.deps import BotDeps
from bot.email.mirror import mirror_thread, progress_milestone
from bot.webhooks import send_callback
from core.types import EventKind, JobEvent

log = logging.getLogger(__name__)
ENDINGS = {EventKind.RUN_FINISHED, EventKind.RUN_FAILED, EventKind.RUN_CANCELLED}


async def follow_up(deps: BotDeps, event: JobEvent) -> None:
    try:
        if event.kind == EventKind.PROGRESS:
            await progress_milestone(deps, event)
        else:
            await mirror_thread(deps, event.thread_id)
        if event.kind in ENDINGS:
            await send_callback(deps, event)
    except Exception:
        log.exception("follow-up of event %s (%s) in thread %s failed", event.id, event.kind,
                      event.thread_id)
