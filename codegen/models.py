"""Model access through litellm's Router: task kinds become chains of deployments, priced.

See ARCHITECTURE.md, "Models are pluggable". `codegen.model_config` decides each task kind's chain
(a models file, `SLUICE_MODEL`, or the scripted model server); here each deployment of a chain is a
Router model group: `<kind>`, then `<kind>-fallback`, `<kind>-fallback-2`, …. A deployment that
fails on the provider's side (429, 5xx, timeout, lost connection) hands the same request to the
next one; a request the provider calls malformed (another 4xx) does not. With no key anywhere
every kind goes to the scripted model server (`infra/scripted_model.py`) over the same
OpenAI-compatible HTTP API, so tests and the offline demo run the real client path: HTTP,
retries, fallbacks, cooldowns and pricing.

A deployment the models file declares `transport: direct` is called through `codegen.direct`
instead of the Router (litellm's per-call CPU cost caps one process near 60 calls/s). A chain
with a direct deployment is walked here, one deployment at a time in the chain's order, by the
same rules: provider-side failures fall to the next deployment (cooling the failed one down
while a later one can answer), the last deployment gets the retries, and the person reads the
first failure. Chains of litellm deployments only are the Router's, as before.

litellm takes seconds to import, so it is imported inside functions, never at module import.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from codegen.direct import DirectDeployment, DirectError, DirectSession
from codegen.model_config import (
    SCRIPTED_BACKUP_MODEL,
    SCRIPTED_MODEL,
    TASK_KINDS,
    ModelRoute,
    ModelRoutes,
    model_routes,
    scripted_route,
)
from codegen.prices import (
    DeploymentPrices,
    cost_usd,
    price_per_token,
    register_prices,
)
from core.errors import ModelError
from core.protocols import ChatMessage, Completion, TaskKind
from core.settings import Settings

if TYPE_CHECKING:
    from litellm.router import Router
    from litellm.router_api import RoutingContext
    from litellm.types.utils import ModelResponse

__all__ = [
    "SCRIPTED_BACKUP_MODEL",
    "SCRIPTED_MODEL",
    "TASK_KINDS",
    "LiteLLMModels",
    "ModelRoute",
    "cost_usd",
    "price_per_token",
    "scripted_route",
]

_PROMPT_SHOWN: Final = 200
_DETAIL_SHOWN: Final = 200
_COOLDOWN_S: Final = 5.0  # litellm's default, so a failed direct deployment pauses alike
_BACKOFF_S: Final = 0.5
_MAX_WAIT_S: Final = 8.0
_PROVIDER_SIDE: Final = frozenset({401, 404, 408, 429})

_Gate = Callable[..., Awaitable[bool]]


@dataclass(frozen=True)
class _Step:
    """One deployment of a chain that has a direct one: its id, route, and, when direct, how to
    call it (else it is called as its own Router model group)."""

    group: str
    route: ModelRoute
    direct: DirectDeployment | None
    last: bool


class LiteLLMModels:
    """`core.protocols.ModelClient` on a litellm Router, with `transport: direct` deployments
    called over HTTP directly. Build it with `from_settings`."""

    def __init__(
        self,
        *,
        primary: ModelRoute | None = None,
        fallback: ModelRoute | None = None,
        chains: Mapping[TaskKind, Sequence[ModelRoute]] | None = None,
        timeout_s: float = 60.0,
        num_retries: int = 1,
        cooldown_s: float | None = None,
        scripted_scenario: Path | None = None,
    ) -> None:
        """Give either `chains` (kind → deployments, first tried first) or one `primary`
        (with an optional `fallback`) for every kind."""
        self._chains = _chains_of(chains, primary, fallback)
        self._timeout_s = timeout_s
        self._scenario = scripted_scenario
        self._routes = _routes_by_id(self._chains)
        self._num_retries = num_retries
        self._cooldown_s = cooldown_s
        self._built: Any = None
        self._building = threading.Lock()
        self._steps = _steps_of(self._chains, timeout_s=timeout_s)
        self._http = DirectSession()
        self._cooling_until: dict[str, float] = {}
        self._prices: dict[str, DeploymentPrices] = {}

    @property
    def _router(self) -> Any:
        """The litellm Router, built on first use: importing litellm takes seconds, and a
        worker that only replays a journal or runs programs without AI never needs it. Built
        once, whichever thread asks first (`warm` may run on another)."""
        if self._built is None:
            with self._building:
                if self._built is None:
                    self._built = _build_router(self._chains, timeout_s=self._timeout_s,
                                                num_retries=self._num_retries,
                                                cooldown_s=self._cooldown_s)
        return self._built

    async def _router_ready(self) -> Any:
        """`_router`, built on a thread when it is not yet: the event loop goes on meanwhile
        (a worker that has not warmed up yet still renews leases and serves other calls)."""
        if self._built is None:
            await asyncio.to_thread(getattr, self, "_router")
        return self._built

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        fallback_model: str | None = None,
        fallback_api_key: str | None = None,
        fallback_api_base: str | None = None,
        num_retries: int = 1,
    ) -> LiteLLMModels:
        """Models for `settings`: the models file, else `settings.model` with its key, else the
        scripted server (`codegen.model_config.model_routes` says which).

        Args:
            settings: read for the models file, model, keys, scripted server URL and timeout.
            fallback_model: a litellm model every kind falls back to when no models file is
                used; with the scripted server, a model name the server answers as
                (`SCRIPTED_BACKUP_MODEL` in tests).
            fallback_api_key: the fallback's key; litellm reads the provider's usual variable
                when it is None.
            fallback_api_base: the fallback's base URL, when not the provider's default.
            num_retries: retries within a deployment before falling back, unless the models
                file sets `num_retries`.

        Raises:
            ConfigurationError: a bad models file, or no model key and no
                SLUICE_SCRIPTED_MODEL_URL.
        """
        routes = model_routes(settings, fallback_model=fallback_model,
                              fallback_api_key=fallback_api_key,
                              fallback_api_base=fallback_api_base)
        return cls.from_routes(routes, num_retries=num_retries,
                               scripted_scenario=settings.scripted_scenario)

    @classmethod
    def from_routes(
        cls, routes: ModelRoutes, *, num_retries: int = 1, scripted_scenario: Path | None = None
    ) -> LiteLLMModels:
        """Models for chains already resolved (see `codegen.model_config.model_routes`)."""
        retries = num_retries if routes.num_retries is None else routes.num_retries
        return cls(chains=routes.chains, timeout_s=routes.timeout_s, num_retries=retries,
                   cooldown_s=routes.cooldown_s, scripted_scenario=scripted_scenario)

    def warm(self) -> None:
        """Import litellm, build the Router and look up the direct deployments' prices now
        (seconds), so the first request need not."""
        if any(not route.direct for route in self._routes.values()):
            _ = self._router
        for group, route in self._routes.items():
            if route.direct:
                self._prices_of(group, route)

    @property
    def priced_as(self) -> str:
        """The model whose prices the first `plan` deployment reports (for `price_per_token`)."""
        return self.priced_as_for("plan")

    def priced_as_for(self, kind: TaskKind) -> str:
        """The model whose prices the first deployment for `kind` reports."""
        return self._chains[kind][0].price_as

    @property
    def scripted(self) -> bool:
        """Whether every kind goes to the scripted model server."""
        return all(route.scripted for chain in self._chains.values() for route in chain)

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        kind: TaskKind = "plan",
        json_schema: dict[str, object] | None = None,
    ) -> Completion:
        """Answer `messages` with the model group for `kind`, falling back on provider failures.

        Raises:
            ModelError: after retries and fallbacks, with a message for the person in the thread.
        """
        started = time.perf_counter()
        steps = self._steps[kind]
        if steps is not None:
            return await self._walk(steps, messages, kind=kind, json_schema=json_schema,
                                    started=started)
        request: dict[str, Any] = {"model": kind, "messages": [m.model_dump() for m in messages]}
        if json_schema is not None:
            request["response_format"] = _response_format(json_schema)
        try:
            response = await (await self._router_ready()).acompletion(**request)
        except Exception as exc:  # litellm raises many unrelated types; each becomes a ModelError
            raise self._model_error(exc, kind=kind, messages=messages) from exc
        return self._completion(response, seconds=time.perf_counter() - started)

    def close(self) -> None:
        """Drop the Router's process-wide registrations (litellm callbacks) and close the direct
        transport's connections."""
        self._http.close()
        if self._built is not None:
            self._built.retire()

    async def aclose(self) -> None:
        """`close`, waiting for the direct transport's connections to close."""
        await self._http.aclose()
        self.close()

    async def _walk(self, steps: Sequence[_Step], messages: list[ChatMessage], *,
                    kind: TaskKind, json_schema: dict[str, object] | None,
                    started: float) -> Completion:
        """Try a chain with a direct deployment in order; the first failure is the one reported,
        as litellm's Router reports it."""
        response_format = None if json_schema is None else _response_format(json_schema)
        first: Exception | None = None
        for step in steps:
            try:
                if step.direct is not None:
                    return await self._direct(step, step.direct, messages, response_format,
                                              started=started)
                return await self._routed(step, messages, response_format, started=started)
            except Exception as exc:  # litellm's many types, or a DirectError
                first = first or exc
                if step.last or not _provider_side(exc):
                    raise self._model_error(first, kind=kind, messages=messages) from exc
        raise AssertionError("a chain has at least one deployment")  # pragma: no cover

    async def _direct(self, step: _Step, deployment: DirectDeployment,
                      messages: list[ChatMessage], response_format: dict[str, object] | None,
                      *, started: float) -> Completion:
        """One direct deployment: skipped while it cools down (unless it is the chain's last),
        retried only when it is the last, cooled down when it fails on the provider's side."""
        if not step.last and self._cooling_until.get(step.group, 0.0) > time.monotonic():
            raise DirectError(f"{step.route.model} failed moments ago", reason="cooling_down",
                              status_code=429)
        body = deployment.body(messages, response_format)
        attempts = 1 + (self._num_retries if step.last else 0)
        for attempt in range(attempts):
            try:
                answer = await self._http.post(deployment, body)
                break
            except DirectError as exc:
                if exc.provider_side:
                    self._cooling_until[step.group] = time.monotonic() + (
                        exc.retry_after or self._cooldown_s or _COOLDOWN_S)
                if not exc.provider_side or attempt == attempts - 1:
                    raise
                await asyncio.sleep(_wait(attempt, exc.retry_after))
        prices = self._prices.get(step.group)
        if prices is None:  # the first look reads litellm's price map: seconds, on a thread
            prices = await asyncio.to_thread(self._prices_of, step.group, step.route)
        return Completion(
            text=answer.text, model=step.route.model,
            prompt_tokens=answer.prompt_tokens or 0,
            completion_tokens=answer.completion_tokens or 0,
            cost_usd=prices.cost(answer.prompt_tokens, answer.completion_tokens),
            seconds=time.perf_counter() - started)

    async def _routed(self, step: _Step, messages: list[ChatMessage],
                      response_format: dict[str, object] | None, *, started: float) -> Completion:
        """One litellm deployment of a mixed chain, as its own Router group: retried only when it
        is the chain's last (before, the next deployment takes over at once)."""
        request: dict[str, Any] = {"model": step.group,
                                   "messages": [m.model_dump() for m in messages],
                                   "num_retries": self._num_retries if step.last else 0}
        if response_format is not None:
            request["response_format"] = response_format
        response = await (await self._router_ready()).acompletion(**request)
        return self._completion(response, seconds=time.perf_counter() - started)

    def _prices_of(self, group: str, route: ModelRoute) -> DeploymentPrices:
        prices = self._prices.get(group)
        if prices is None:
            prices = self._prices[group] = DeploymentPrices.of(route)
        return prices

    def _completion(self, response: ModelResponse, *, seconds: float) -> Completion:
        route = self._route_of(response)
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        message = response.choices[0].message
        return Completion(
            text=str(message.content or ""),
            model=route.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd(route.price_as, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens),
            seconds=seconds,
        )

    def _route_of(self, response: ModelResponse) -> ModelRoute:
        """The deployment that answered (after a fallback, not the one asked for); a response
        litellm did not tag is priced as no deployment (price unknown), never as the wrong one."""
        hidden: Mapping[str, object] = getattr(response, "_hidden_params", None) or {}
        route = self._routes.get(str(hidden.get("model_id")))
        if route is not None:
            return route
        return ModelRoute(model=str(getattr(response, "model", "") or "unknown"),
                          price_as="")

    def _model_error(
        self, exc: Exception, *, kind: TaskKind, messages: Sequence[ChatMessage]
    ) -> ModelError:
        status = _status_of(exc)
        if _provider_code(exc) == "no_scripted_match":
            return ModelError(self._no_match_message(messages), kind=kind, reason="no_match",
                              status=status)
        reason = _reason(exc, status)
        message = self._explain(reason, kind=kind, status=status, detail=self._detail(exc))
        return ModelError(message, kind=kind, reason=reason, status=status)

    def _no_match_message(self, messages: Sequence[ChatMessage]) -> str:
        prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
        shown = prompt[:_PROMPT_SHOWN] + ("…" if len(prompt) > _PROMPT_SHOWN else "")
        where = f" ({self._scenario})" if self._scenario else ""
        return (f"The scripted model has no answer for this prompt: {shown!r}. Add a rule to the "
                f"scenario file{where}, or set SLUICE_MODEL_API_KEY to use a real model.")

    def _explain(self, reason: str, *, kind: TaskKind, status: int | None, detail: str) -> str:
        first, *rest = self._chains[kind]
        model = first.model
        if first.scripted and reason == "unavailable":
            return (f"The scripted model server ({first.api_base}) did not answer the "
                    f"{kind} request (HTTP {status or 'no response'}). Start Sluice with "
                    "`sluice up`, or check SLUICE_SCRIPTED_MODEL_URL.")
        also = _also_failed(rest)
        messages = {
            "cooling_down": f"{model} failed moments ago and is paused{also}. Try again in a "
                            "minute.",
            "rate_limited": f"The model provider is rate-limiting requests to {model}{also}. "
                            "Try again in a minute.",
            "auth": f"The model provider refused the API key for {model}. Check "
                    f"{_key_names(self._chains[kind])}.",
            "timeout": f"{model} did not answer within {first.timeout_s or self._timeout_s:g} s"
                       f"{also}. Try again, or raise SLUICE_MODEL_TIMEOUT_S (or `timeout_s` in "
                       "the models file).",
            "too_long": f"The request is too long for {model}. Ask for less at once, or use a "
                        "model with a larger context window (SLUICE_MODEL or the models file).",
            "rejected": f"{model} refused the {kind} request (HTTP {status}): {detail}. "
                        "Rephrase the request, or report this if it keeps happening.",
            "malformed": f"{model} answered with something that is not an OpenAI chat "
                         f"completion ({detail}){also}. Check that its `api_base` "
                         f"({first.api_base or 'OpenAI'}) is an OpenAI-compatible server's /v1 "
                         "URL, or use `transport: litellm` for it in the models file.",
        }
        unavailable = (f"{model} is unavailable right now (HTTP {status or 'no response'}){also}."
                       " Try again in a few minutes.")
        return messages.get(reason, unavailable)

    def _detail(self, exc: Exception) -> str:
        """The provider's own error message, short, with any API key taken out."""
        body = getattr(exc, "body", None)
        text = body.get("message") if isinstance(body, dict) else None
        detail = str(text) if text else type(exc).__name__
        for route in self._routes.values():
            if route.api_key:
                detail = detail.replace(route.api_key, "[key]")
        return detail[:_DETAIL_SHOWN]


def _steps_of(chains: Mapping[TaskKind, Sequence[ModelRoute]], *,
              timeout_s: float) -> dict[TaskKind, tuple[_Step, ...] | None]:
    """Each kind's steps when its chain has a direct deployment; None for the Router's chains."""
    steps: dict[TaskKind, tuple[_Step, ...] | None] = {}
    for kind, chain in chains.items():
        if not any(route.direct for route in chain):
            steps[kind] = None
            continue
        steps[kind] = tuple(
            _Step(_group(kind, i), route,
                  DirectDeployment(route, timeout_s=timeout_s) if route.direct else None,
                  last=i == len(chain) - 1)
            for i, route in enumerate(chain))
    return steps


def _provider_side(exc: Exception) -> bool:
    """Whether the next deployment takes over after `exc`: litellm's cooldown rule (401, 404,
    408, 429, 5xx, no status: timeouts, lost connections, a deployment cooling down)."""
    if isinstance(exc, DirectError):
        return exc.provider_side
    status = _status_of(exc)
    return status is None or status in _PROVIDER_SIDE or status >= 500


def _wait(attempt: int, retry_after: float | None) -> float:
    """Before retrying the last deployment: the provider's Retry-After, else 0.5 s doubling."""
    wait = retry_after if retry_after is not None else _BACKOFF_S * 2**attempt
    return min(wait, _MAX_WAIT_S)


def _also_failed(fallbacks: Sequence[ModelRoute]) -> str:
    if not fallbacks:
        return ""
    if len(fallbacks) == 1:
        return f", and the fallback {fallbacks[0].model} failed too"
    return f", and no fallback ({', '.join(r.model for r in fallbacks)}) could answer"


def _key_names(chain: Sequence[ModelRoute]) -> str:
    names = list(dict.fromkeys(r.key_env for r in chain if r.key_env))
    if not names:
        return "SLUICE_MODEL_API_KEY (and the fallback model's key)"
    return " and ".join(names)


def _chains_of(
    chains: Mapping[TaskKind, Sequence[ModelRoute]] | None,
    primary: ModelRoute | None,
    fallback: ModelRoute | None,
) -> dict[TaskKind, tuple[ModelRoute, ...]]:
    if chains is not None:
        out = {kind: tuple(chains.get(kind, ())) for kind in TASK_KINDS}
        empty = [kind for kind, chain in out.items() if not chain]
        if empty:
            raise ValueError(f"LiteLLMModels needs a deployment for every task kind: {empty}")
        return out
    if primary is None:
        raise ValueError("LiteLLMModels needs `chains` or a `primary` route")
    chain = (primary,) if fallback is None else (primary, fallback)
    return {kind: chain for kind in TASK_KINDS}


def _group(kind: str, position: int) -> str:
    """The Router model group (and deployment id) of a chain's `position`-th deployment."""
    if position == 0:
        return kind
    return f"{kind}-fallback" if position == 1 else f"{kind}-fallback-{position}"


def _routes_by_id(chains: Mapping[TaskKind, Sequence[ModelRoute]]) -> dict[str, ModelRoute]:
    """Deployment id → route: `<kind>`, `<kind>-fallback`, `<kind>-fallback-2`, … in order."""
    return {_group(kind, i): route for kind, chain in chains.items()
            for i, route in enumerate(chain)}


def _earlier_groups(chains: Mapping[TaskKind, Sequence[ModelRoute]]) -> dict[str, tuple[str, ...]]:
    """Each fallback group → the group it takes over from (the one before it in its chain)."""
    return {_group(kind, i): (_group(kind, i - 1),)
            for kind, chain in chains.items() for i in range(1, len(chain))}


def _build_router(
    chains: Mapping[TaskKind, Sequence[ModelRoute]], *, timeout_s: float, num_retries: int,
    cooldown_s: float | None,
) -> Router:
    """One model group per deployment (the group's name is its id), each chain's groups falling
    back in order: `<kind>` → `<kind>-fallback` → `<kind>-fallback-2` → …, one hop at a time
    (each group's only fallback is the next), so the gate judges every hop by the group that
    just failed.

    `allowed_fails=0` puts a deployment in cooldown on its first provider-side failure, for
    Retry-After seconds when the provider sent one, else `cooldown_s` (litellm's default when
    None). The fallback gate relies on that.
    """
    from litellm.router import Router

    routes = {group: route for group, route in _routes_by_id(chains).items() if not route.direct}
    register_prices(routes)
    model_list = [
        {"model_name": group, "litellm_params": route.litellm_params(timeout_s=timeout_s),
         "model_info": {"id": group}}
        for group, route in routes.items()
    ]
    # A chain with a direct deployment is walked by `LiteLLMModels`, each of its litellm
    # deployments a group without fallbacks.
    fallbacks = [{_group(kind, i - 1): [_group(kind, i)]}
                 for kind, chain in chains.items() if not any(r.direct for r in chain)
                 for i in range(1, len(chain))]
    optional: dict[str, Any] = {} if cooldown_s is None else {"cooldown_time": cooldown_s}
    longest = max(len(chain) for chain in chains.values())
    router: Router = Router(
        model_list=model_list,
        fallbacks=fallbacks,
        fallback_access_check=_fallback_gate(_earlier_groups(chains)),
        allowed_fails=0,
        max_fallbacks=max(5, longest),
        num_retries=num_retries,
        timeout=timeout_s,
        **optional,
    )
    return router


def _fallback_gate(earlier: Mapping[str, tuple[str, ...]]) -> _Gate:
    """A gate that falls back to a chain's next deployment only when the one before it is
    cooling down.

    litellm falls back on every error, a 400 included, but a request the provider calls malformed
    (or the scripted model cannot answer) fails the same way elsewhere and should reach the person
    at once. With `allowed_fails=0` litellm cools a deployment down on its first 401/404/408/429,
    5xx, timeout or lost connection, never on another 4xx: so the cooldown tells the two apart.
    The gate runs right after the failed attempt, before the fallback is called, so a 400 from
    the second deployment stops there too.
    """

    async def gate(*, model: str, request_kwargs: Mapping[str, object],
                   ctx: RoutingContext) -> bool:
        before = earlier.get(model, ())
        if not before:
            return True
        cooling = await ctx.health().cooldowns.async_get_active_cooldowns(
            model_ids=list(before), parent_otel_span=None
        )
        return {model_id for model_id, _ in cooling} >= set(before)

    return gate


def _response_format(json_schema: dict[str, object]) -> dict[str, object]:
    """OpenAI's structured-output request; the schema's name must be a short identifier."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(json_schema.get("title") or "answer"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}


def _status_of(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def _provider_code(exc: Exception) -> str | None:
    """The machine-readable `error.code` of an OpenAI-style error body, if any."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else None


def _reason(exc: Exception, status: int | None) -> str:
    """A stable word for what went wrong, from litellm's exception types and the HTTP status."""
    if isinstance(exc, DirectError):
        return exc.reason
    if "litellm" in sys.modules:  # else it is not litellm's, and importing it takes seconds
        from litellm.exceptions import ContextWindowExceededError, Timeout
        from litellm.types.router import RouterRateLimitError

        if isinstance(exc, RouterRateLimitError):  # every deployment of the group cools down
            return "cooling_down"
        if isinstance(exc, Timeout):
            return "timeout"
        if isinstance(exc, ContextWindowExceededError):
            return "too_long"
    if status == 408:
        return "timeout"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status is not None and 400 <= status < 500:
        return "rejected"
    return "unavailable"
