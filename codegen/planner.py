"""The CodeAct planning loop (ARCHITECTURE.md, "CodeAct, not ReAct", "Checks before running" and
"Preview before spending").

1. The model writes one program for the whole job.
2. Checks: parse, the sandbox policy, then mypy against the integration stubs. Each failure goes
   back to the model with line, caret and rule; a few rounds at most. Every failure is recorded,
   so the rules models break most can be seen (`sluice rules`).
3. A sample run on the first few items, in preview mode, through the `ProgramExecutor` the
   caller hands in (`codegen` never runs code itself). The model sees what it did and confirms
   or revises the program, once.
4. The plan: the model's paragraph, the program, the sample and an estimate combining static
   analysis with the sample's measured figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from codegen.estimate import estimate_program, refine_estimate
from codegen.extract import Answer, split_answer
from codegen.policy import check_program
from codegen.prompt import CONFIRM, build_messages, feedback, sample_review
from codegen.typecheck import TypeChecker
from core.errors import ModelError
from core.protocols import ChatMessage, Completion, ModelClient, ProgramExecutor
from core.types import Plan, Request, SampleRun

log = logging.getLogger(__name__)
_PROBLEMS_SHOWN = 5


@dataclass
class PlanningContext:
    """What the planner is given about the integrations (signatures, docs and schema only)."""

    stubs: str
    effects: dict[str, str]
    workspace: dict[str, Any]
    ai_prices: tuple[float, float] | None
    previews: dict[str, str] = field(default_factory=dict)  # "mail.send" -> "send {n} emails"
    variables: tuple[str, ...] = ()  # the thread's saved variables, defined before the program


@dataclass
class PlanningTools:
    """What the loop may use besides the model: a type checker and a sample-run executor."""

    checker: TypeChecker | None = None
    executor: ProgramExecutor | None = None
    sample_items: int = 3


@dataclass(frozen=True)
class CheckFailure:
    stage: str  # syntax | policy | types | sample
    rule: str
    message: str


@dataclass
class CheckReport:
    """The checks of one program: `problem` is what the model is told, None when it passed."""

    problem: str | None
    failures: list[CheckFailure] = field(default_factory=list)


@dataclass
class PlanningOutcome:
    plan: Plan | None
    failure: str | None = None
    model_calls: int = 0
    cost_usd: float | None = 0.0
    rejected: list[str] = field(default_factory=list)
    check_failures: list[CheckFailure] = field(default_factory=list)
    models_used: list[str] = field(default_factory=list)
    sample: SampleRun | None = None


async def check(program: str | None, *, context: PlanningContext,
                checker: TypeChecker | None) -> CheckReport:
    """Parse, policy and type checks of `program`, with the message for the model."""
    if program is None:
        return CheckReport("Your answer had no ```python block. Put the whole program in one "
                           "such block.", [CheckFailure("syntax", "no-program", "no code block")])
    violations = check_program(program)
    if violations:
        stage = "syntax" if violations[0].rule == "syntax" else "policy"
        return CheckReport(_joined([v.render(program) for v in violations]),
                           [CheckFailure(stage, v.rule, v.message) for v in violations])
    if checker is None:
        return CheckReport(None)
    problems = await checker.check(program, stubs=context.stubs, variables=context.variables)
    if not problems:
        return CheckReport(None)
    return CheckReport(_joined([p.render(program) for p in problems]),
                       [CheckFailure("types", p.code, p.message) for p in problems])


def _joined(parts: list[str]) -> str:
    shown = parts[:_PROBLEMS_SHOWN]
    if len(parts) > _PROBLEMS_SHOWN:
        shown.append(f"... and {len(parts) - _PROBLEMS_SHOWN} more like these.")
    return "\n\n".join(shown)


class _Loop:
    """One request's conversation with the model."""

    def __init__(self, request: Request, models: ModelClient, context: PlanningContext,
                 tools: PlanningTools) -> None:
        self.request = request
        self.models = models
        self.context = context
        self.tools = tools
        self.messages = build_messages(request, stubs=context.stubs, workspace=context.workspace)
        self.outcome = PlanningOutcome(plan=None)

    async def ask(self) -> Completion:
        completion = await self.models.complete(self.messages, kind="plan")
        self.outcome.model_calls += 1
        self.outcome.models_used.append(completion.model)
        total, more = self.outcome.cost_usd, completion.cost_usd
        self.outcome.cost_usd = None if total is None or more is None else total + more
        self.messages.append(ChatMessage(role="assistant", content=completion.text))
        return completion

    async def checked(self, answer: Answer) -> str | None:
        report = await check(answer.program, context=self.context, checker=self.tools.checker)
        self.outcome.check_failures += report.failures
        if report.problem is not None:
            log.info("request %s: program rejected: %s", self.request.id, report.problem[:200])
            self.outcome.rejected.append(report.problem)
        return report.problem

    async def write(self, rounds: int) -> Answer | None:
        """A program that passes the checks, in at most `rounds` model calls."""
        for _ in range(rounds):
            answer = split_answer((await self.ask()).text)
            problem = await self.checked(answer)
            if problem is None:
                return answer
            self.messages.append(ChatMessage(role="user", content=feedback(problem)))
        self.outcome.failure = (
            f"I could not write a program that passes the checks in {rounds} attempts. The last "
            f"problem was:\n{self.outcome.rejected[-1]}\n"
            "Try rephrasing the request, or name the sheet and columns to use.")
        return None

    async def sample(self, answer: Answer) -> SampleRun | None:
        executor, items = self.tools.executor, self.tools.sample_items
        if executor is None or items <= 0 or answer.program is None:
            return None
        return await executor.sample(answer.program, thread_id=self.request.thread_id,
                                     items=items)

    async def review(self, answer: Answer, sample: SampleRun) -> tuple[Answer, SampleRun]:
        """Show the model its sample; it confirms, or revises once (checked and sampled)."""
        items = self.tools.sample_items
        self.messages.append(ChatMessage(role="user", content=sample_review(sample, items=items)))
        reply = split_answer((await self.ask()).text)
        if reply.program is None or reply.program == answer.program:
            if sample.error is not None or CONFIRM not in reply.summary.upper():
                log.info("request %s: sample review answered without a program: %s",
                         self.request.id, reply.summary[:120])
            return answer, sample
        if await self.checked(reply) is not None:
            return answer, sample  # the revision broke a rule: keep the checked program
        revised = await self.sample(reply)
        return reply, revised if revised is not None else sample


async def make_plan(request: Request, *, models: ModelClient, context: PlanningContext,
                    tools: PlanningTools | None = None, rounds: int = 3) -> PlanningOutcome:
    """Plan `request`: a checked program, tried on a sample, with an estimate; or a clear no.

    Model calls per job do not depend on the number of items: at most `rounds` to write a
    program that passes the checks, one to review the sample run, and the revision's.
    """
    loop = _Loop(request, models, context, tools or PlanningTools())
    try:
        answer = await loop.write(rounds)
        if answer is None:
            return loop.outcome
        sample = await loop.sample(answer)
        if sample is not None:
            answer, sample = await loop.review(answer, sample)
        loop.outcome.sample = sample
    except ModelError as exc:
        loop.outcome.failure = exc.message
        return loop.outcome
    if sample is not None and sample.error is not None:
        loop.outcome.check_failures.append(CheckFailure("sample", "error", sample.error))
        loop.outcome.failure = (
            f"The program failed when I tried it on the first {loop.tools.sample_items} items:"
            f"\n{sample.error}\nNothing was changed. Try rephrasing the request, or check that "
            "the sheet and columns it names exist.")
        return loop.outcome
    loop.outcome.plan = plan_of(request, answer, sample, context, loop.outcome)
    return loop.outcome


def plan_of(request: Request, answer: Answer, sample: SampleRun | None,
            context: PlanningContext, outcome: PlanningOutcome) -> Plan:
    """The plan for an accepted program: its estimate refined by the sample when there is one."""
    program = answer.program or ""
    estimate = estimate_program(program, effects=context.effects, workspace=context.workspace,
                                prices=context.ai_prices, previews=context.previews)
    if sample is not None:
        estimate = refine_estimate(estimate, sample, program=program, previews=context.previews)
    return Plan(request_id=request.id, thread_id=request.thread_id, summary=answer.summary,
                program=program, estimate=estimate, sample=sample,
                model_calls=outcome.model_calls, cost_usd=outcome.cost_usd)
