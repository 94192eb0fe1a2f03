"""The planning loop: ask the model for one program, check it, send problems back, a few rounds.

ARCHITECTURE.md, "CodeAct, not ReAct" and "Checks before running". `codegen` never runs the
program: checks here are static (parse and sandbox policy); running is the workers' business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from codegen.estimate import estimate_program
from codegen.extract import split_answer
from codegen.policy import check_program
from codegen.prompt import build_messages, feedback
from core.errors import ModelError
from core.protocols import ChatMessage, ModelClient
from core.types import Plan, Request

log = logging.getLogger(__name__)


@dataclass
class PlanningContext:
    """What the planner is given about the integrations (signatures, docs and schema only)."""

    stubs: str
    effects: dict[str, str]
    workspace: dict[str, Any]
    ai_prices: tuple[float, float] | None
    previews: dict[str, str] = field(default_factory=dict)  # "mail.send" -> "send {n} emails"


@dataclass
class PlanningOutcome:
    plan: Plan | None
    failure: str | None = None
    model_calls: int = 0
    cost_usd: float | None = 0.0
    rejected: list[str] = field(default_factory=list)


def problems_with(program: str | None) -> str | None:
    """The message for the model when `program` cannot run, or None when it passes."""
    if program is None:
        return "Your answer had no ```python block. Put the whole program in one such block."
    violations = check_program(program)
    if not violations:
        return None
    return "\n\n".join(v.render(program) for v in violations[:5])


async def make_plan(request: Request, *, models: ModelClient, context: PlanningContext,
                    rounds: int = 3) -> PlanningOutcome:
    """Plan `request`: at most `rounds` model calls, each rejected program sent back."""
    messages = build_messages(request, stubs=context.stubs, workspace=context.workspace)
    outcome = PlanningOutcome(plan=None)
    for _ in range(rounds):
        try:
            completion = await models.complete(messages, kind="plan")
        except ModelError as exc:
            outcome.failure = exc.message
            return outcome
        outcome.model_calls += 1
        outcome.cost_usd = _add_cost(outcome.cost_usd, completion.cost_usd)
        answer = split_answer(completion.text)
        problem = problems_with(answer.program)
        if problem is None and answer.program is not None:
            outcome.plan = _plan(request, answer.summary, answer.program, context, outcome)
            return outcome
        log.info("request %s: program rejected: %s", request.id, (problem or "")[:200])
        outcome.rejected.append(problem or "")
        messages += [ChatMessage(role="assistant", content=completion.text),
                     ChatMessage(role="user", content=feedback(problem or ""))]
    outcome.failure = (f"I could not write a program that passes the checks in {rounds} "
                       f"attempts. The last problem was:\n{outcome.rejected[-1]}\n"
                       "Try rephrasing the request, or name the sheet and columns to use.")
    return outcome


def _plan(request: Request, summary: str, program: str, context: PlanningContext,
          outcome: PlanningOutcome) -> Plan:
    estimate = estimate_program(program, effects=context.effects, workspace=context.workspace,
                                prices=context.ai_prices, previews=context.previews)
    return Plan(request_id=request.id, thread_id=request.thread_id, summary=summary,
                program=program, estimate=estimate, model_calls=outcome.model_calls,
                cost_usd=outcome.cost_usd)


def _add_cost(total: float | None, more: float | None) -> float | None:
    return None if total is None or more is None else total + more
