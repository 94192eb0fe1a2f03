"""The `plan_request` job: a request becomes a checked program with an estimate, or a clear no."""

from __future__ import annotations

import logging
from typing import Any

from codegen.models import LiteLLMModels, price_per_token
from codegen.planner import PlanningContext, PlanningOutcome, PlanningTools, make_plan
from codegen.typecheck import TypeChecker
from core.events import publish
from core.jobs import PlanRequestJob
from core.protocols import ModelClient
from core.settings import Settings
from core.store import Store
from core.types import EventKind, JobEvent, Request
from integrations.catalog import Catalog
from integrations.kept import KeptConnections
from integrations.registry import build_catalog
from workers.deps import Deps
from workers.sampling import SandboxExecutor

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


async def planning_context(settings: Settings, store: Store, catalog: Catalog,
                           thread_id: str | None, *,
                           models: ModelClient | None = None) -> PlanningContext:
    """What the planner is told: stubs, effects, workspace data and the thread's variables."""
    workspace = await catalog.describe()
    summaries: dict[str, str] = {}
    if thread_id is not None:
        _values, summaries = await store.thread_state(thread_id)
    if summaries:
        workspace["variables_from_earlier_requests_in_this_thread"] = summaries
    if isinstance(models, LiteLLMModels):  # what the first deployment for ai.* calls costs
        ai_model = models.priced_as_for("write")
    else:
        ai_model = settings.scripted_price_as if settings.using_scripted_model else settings.model
    return PlanningContext(stubs=catalog.stubs(), effects=effects_of(catalog),
                           workspace=workspace, ai_prices=price_per_token(ai_model),
                           previews=catalog.previews(), variables=tuple(summaries))


def planning_tools(settings: Settings, store: Store, models: ModelClient, *,
                   kept: KeptConnections | None = None) -> PlanningTools:
    """The type checker and the sandbox's sample runs, as the settings ask."""
    checker = TypeChecker(cache_dir=settings.typecheck_cache_dir) if settings.plan_typecheck \
        else None
    executor = SandboxExecutor(settings=settings, store=store, models=models, kept=kept)
    return PlanningTools(checker=checker, executor=executor,
                         sample_items=settings.plan_sample_items)


async def plan_for(deps: Deps, request: Request) -> PlanningOutcome:
    """Plan `request` with the workspace's integrations, recording the checks that failed."""
    catalog = await build_catalog(deps.settings, deps.models, engine=deps.store.engine,
                                  thread_id=request.thread_id, kept=deps.kept)
    try:
        context = await planning_context(deps.settings, deps.store, catalog, request.thread_id,
                                         models=deps.models)
    finally:
        await catalog.aclose()
    tools = planning_tools(deps.settings, deps.store, deps.models, kept=deps.kept)
    outcome = await make_plan(request, models=deps.models, context=context, tools=tools,
                              rounds=deps.settings.plan_rounds)
    await _record_checks(deps, request.id, outcome)
    return outcome


async def plan_request(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    """arq job: plan one request and tell its thread."""
    deps: Deps = ctx["deps"]
    job = PlanRequestJob.model_validate(payload)
    request = await deps.store.get_request(job.request_id)
    log.info("→ plan_request %s (thread %s)", request.id, request.thread_id)
    outcome = await plan_for(deps, request)
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


async def _record_checks(deps: Deps, request_id: str, outcome: PlanningOutcome) -> None:
    model = outcome.models_used[-1] if outcome.models_used else ""
    await deps.store.record_check_failures(
        request_id, model=model,
        failures=[(f.stage, f.rule, f.message) for f in outcome.check_failures])
