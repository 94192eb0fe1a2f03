"""The `plan_request` job: a request becomes a checked program with an estimate, or a clear no."""

from __future__ import annotations

import logging
from typing import Any

from codegen.models import price_per_token
from codegen.planner import PlanningContext, make_plan
from core.events import publish
from core.jobs import PlanRequestJob
from core.types import EventKind, JobEvent
from integrations.catalog import Catalog
from integrations.registry import build_catalog
from workers.deps import Deps

log = logging.getLogger(__name__)


def effects_of(catalog: Catalog) -> dict[str, str]:
    """`integration.action` / `Resource.action` -> read|write, from the catalog's manifest."""
    manifest = catalog.manifest()
    effects: dict[str, str] = {}
    for section in ("integrations", "resources"):
        for owner, spec in manifest.get(section, {}).items():
            for action_name, effect in spec["actions"].items():
                effects[f"{owner}.{action_name}"] = effect
    return effects


async def planning_context(deps: Deps, catalog: Catalog, thread_id: str) -> PlanningContext:
    workspace = await catalog.describe()
    _values, summaries = await deps.store.thread_state(thread_id)
    if summaries:
        workspace["variables_from_earlier_requests_in_this_thread"] = summaries
    return PlanningContext(stubs=catalog.stubs(), effects=effects_of(catalog),
                           workspace=workspace, ai_prices=price_per_token(_ai_model(deps)),
                           previews=catalog.previews())


def _ai_model(deps: Deps) -> str:
    settings = deps.settings
    return settings.scripted_price_as if settings.using_scripted_model else settings.model


async def plan_request(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """arq job: plan one request and tell its thread."""
    deps: Deps = ctx["deps"]
    job = PlanRequestJob.model_validate(payload)
    request = await deps.store.get_request(job.request_id)
    log.info("→ plan_request %s (thread %s)", request.id, request.thread_id)
    catalog = await build_catalog(deps.settings, deps.models, engine=deps.store.engine,
                                  thread_id=request.thread_id)
    try:
        context = await planning_context(deps, catalog, request.thread_id)
    finally:
        await catalog.aclose()
    outcome = await make_plan(request, models=deps.models, context=context,
                              rounds=deps.settings.plan_rounds)
    if outcome.plan is None:
        log.info("← plan_request %s failed after %d model calls", request.id, outcome.model_calls)
        await publish(deps.redis, JobEvent(kind=EventKind.PLAN_FAILED, thread_id=request.thread_id,
                                           request_id=request.id, text=outcome.failure or ""))
        return "failed"
    await deps.store.save_plan(outcome.plan)
    log.info("← plan_request %s: plan %s", request.id, outcome.plan.id)
    await publish(deps.redis, JobEvent(kind=EventKind.PLAN_READY, thread_id=request.thread_id,
                                       request_id=request.id, plan_id=outcome.plan.id))
    return outcome.plan.id
