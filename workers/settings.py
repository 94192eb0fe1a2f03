"""arq worker settings built from Sluice settings (JSON payloads, never pickle)."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Callable
from typing import Any

from arq.worker import Worker

from codegen.typecheck import TypeChecker
from core.jobs import deserialize, redis_settings, serialize
from core.protocols import ModelClient
from core.settings import Settings
from integrations.catalog import build_local_catalog
from workers.deps import Deps
from workers.planning import plan_request
from workers.running import run_program
from workers.schedules import schedule_forever
from workers.sweeper import sweep_forever

log = logging.getLogger(__name__)
JOB_TIMEOUT_S = 24 * 3600


def build_worker(settings: Settings, *, burst: bool = False, deps: Deps | None = None,
                 poll_delay: float | None = None) -> Worker:
    """A worker for our jobs; `deps` may be given (tests share one), else built at start-up."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["deps"] = deps or await Deps.create(settings, redis=ctx["redis"])
        if not burst:
            started: Deps = ctx["deps"]
            warm = getattr(started.models, "warm", None)
            if warm is not None:  # importing litellm takes seconds: do it before a request asks
                ctx["warming"] = asyncio.create_task(_when_idle(started, warm, "the models"))
            if settings.plan_typecheck:  # mypy's first check loads pandas' stubs: seconds
                ctx["warming_types"] = asyncio.create_task(_when_idle(
                    started, functools.partial(_warm_type_checker, settings, started.models),
                    "the type checker"))
            ctx["freezing"] = asyncio.create_task(_freeze_after(
                [ctx[name] for name in ("warming", "warming_types") if name in ctx]))
            ctx["sweeper"] = asyncio.create_task(
                sweep_forever(ctx["deps"], every_s=settings.sweep_every_s))
            ctx["schedules"] = asyncio.create_task(schedule_forever(ctx["deps"]))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "sweeper" in ctx:
            ctx["sweeper"].cancel()
        if "schedules" in ctx:
            ctx["schedules"].cancel()
        if deps is None and "deps" in ctx:
            await ctx["deps"].close()

    return Worker(
        functions=[plan_request, run_program],
        redis_settings=redis_settings(settings.require_redis_url()),
        job_serializer=serialize, job_deserializer=deserialize,
        on_startup=on_startup, on_shutdown=on_shutdown,
        burst=burst, poll_delay=settings.worker_poll_delay_s if poll_delay is None else poll_delay,
        job_timeout=JOB_TIMEOUT_S, max_jobs=10, keep_result=3600,
        handle_signals=not burst,
    )


async def _when_idle(deps: Deps, work: Callable[[], object], what: str, *,
                     quiet_s: float = 2.0, every_s: float = 0.25) -> None:
    """Do `work` on a thread once no run has been going in this worker for `quiet_s`. Warming
    up is seconds of CPU holding the GIL in turn with the event loop: beside a run, it halved the
    run's pace (a 2,000-row sheet job took 8.7-9.1 s instead of 4.0-4.4 s just after a start).
    A run queued at start-up is picked up within the quiet time; one resumed when its lease
    expires (up to `lease_ttl_s` after its worker died) may start beside a warm-up already under
    way. A planning job that comes first imports what it needs itself, on a thread too."""
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while deps.runs_going or loop.time() - quiet_since < quiet_s:
        if deps.runs_going:
            quiet_since = loop.time()
        await asyncio.sleep(every_s)
    log.info("warming up %s (no run is going)", what)
    await asyncio.to_thread(work)


async def _freeze_after(warming: list[asyncio.Task[Any]]) -> None:
    """Once the imports are warm, move every object alive into the collector's permanent
    generation (`gc.freeze`): the ~470,000 objects of litellm, pandas and mypy are then never
    scanned again, where each full collection used to walk them all (0.1-0.15 ms of CPU per AI
    call at 1,000 calls a second, measured in tests/bench/each_ai.py)."""
    await asyncio.gather(*warming, return_exceptions=True)
    gc.collect()
    gc.freeze()


def _warm_type_checker(settings: Settings, models: ModelClient) -> None:
    catalog = build_local_catalog(settings, models)
    TypeChecker(cache_dir=settings.typecheck_cache_dir).warm(stubs=catalog.stubs())
