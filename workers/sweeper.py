"""Resuming runs whose worker died (ARCHITECTURE.md, "Durable execution by journal and replay").

arq re-runs a killed job only after its timeout, and long jobs need long timeouts. So a running
job renews a lease every few seconds, and every worker sweeps: a run whose lease expired is
re-enqueued under a new job id, and whichever worker picks it up replays its journal. With a
10 s lease and a 5 s sweep, a killed run resumes within about 15 s, whatever its length.
"""

from __future__ import annotations

import asyncio
import logging

from core.jobs import RUN_PROGRAM, RunProgramJob, enqueue
from workers.deps import Deps

log = logging.getLogger(__name__)
async def sweep_once(deps: Deps) -> int:
    """Re-enqueue every run whose lease expired; returns how many."""
    claimed = await deps.store.claim_expired(hold_s=3 * deps.settings.lease_ttl_s)
    for run_id, attempt in claimed:
        log.warning("↻ run %s lost its worker; resuming (attempt %d)", run_id, attempt)
        await enqueue(deps.redis, RUN_PROGRAM, RunProgramJob(run_id=run_id),
                      job_id=f"run:{run_id}:{attempt}")
    return len(claimed)


async def sweep_forever(deps: Deps, *, every_s: float) -> None:
    while True:
        try:
            await sweep_once(deps)
        except Exception:
            log.exception("lease sweep failed; trying again in %.0f s", every_s)
        await asyncio.sleep(every_s)
