"""Scheduled automations: every worker looks for automations whose cron schedule came due.

ARCHITECTURE.md, "The flow" (triggers). Each due time is claimed once across all workers by a
conditional update of `last_fired_at`; missed times while every worker was down collapse to one
run (the latest), looking back at most a day. The clock is injectable so tests can move time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from core.automations import Automations
from core.cron import parse_cron
from core.errors import SluiceError
from core.types import utcnow
from workers.deps import Deps

log = logging.getLogger(__name__)
SCHEDULE_EVERY_S = 20.0


async def fire_due(deps: Deps, *, now: datetime) -> list[str]:
    """Trigger every automation whose schedule fired since it last ran; returns the run ids."""
    automations = Automations(deps.store)
    started = []
    for automation in await automations.scheduled():
        assert automation.schedule is not None
        due = parse_cron(automation.schedule).last_fire(
            automation.last_fired_at or automation.created_at, now)
        if due is None or not await automations.claim_fire(automation, due):
            continue
        try:
            triggered = await automations.trigger(automation, redis=deps.redis,
                                                  trigger="schedule", user="schedule",
                                                  idempotency_key=f"schedule:{due.isoformat()}")
        except SluiceError as exc:
            log.error("! automation %s could not start at %s: %s", automation.id, due,
                      exc.message)
            continue
        log.info("⏰ automation %s due at %s: run %s", automation.id, due, triggered.run.id)
        started.append(triggered.run.id)
    return started


async def schedule_forever(deps: Deps, *, every_s: float = SCHEDULE_EVERY_S,
                           clock: Callable[[], datetime] = utcnow) -> None:
    while True:
        try:
            await fire_due(deps, now=clock())
        except Exception:
            log.exception("schedule check failed; trying again in %.0f s", every_s)
        await asyncio.sleep(every_s)
