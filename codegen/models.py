"""Model access through litellm's Router: task kinds become chains of deployments, priced.

See ARCHITECTURE.md, "Models are pluggable". `codegen.model_config` decides each task kind's chain
(a models file, `SLUICE_MODEL`, or the scripted model server); here each deployment of a chain is a
Router model group: `<kind>`, then `<kind>-fallback`, `<kind>-fallback-2`, …. A deployment that
fails on the provider's side (429, 5xx, timeout, lost connection) hands the same request to the
next one; a request the provider calls malformed (another 4xx) does not. With no key anywhere
every kind goes to the scripted model server (`infra/scripted_model.py`) over the same
OpenAI-compatible HTTP API, so tests and the offline demo run the real client path: HTTP,
retries, fallbacks, cooldowns and pricing.

litellm takes seconds to import, so it is imported inside functions, never at module import.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from codegen.model_config import (
    SCRIPTED_BACKUP_MODEL,
    SCRIPTED_MODEL,
    TASK_KINDS,
    ModelRoute,
    ModelRoutes,
    model_routes,
    scripted_route,
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

_Gate = Callable[..., Awaitable[bool]]


def _litellm_ready() -> None:
    """Call before importing litellm: it would otherwise fetch its price list from the network at
    import. The bundled list matches the pinned version, so prices are reproducible offline."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


class LiteLLMModels:
    """`core.protocols.ModelClient` on a litellm Router. Build it with `from_settings`."""

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

    @property
    def _router(self) -> Any:
        """The litellm Router, built on first use: importing litellm takes seconds, and a
        worker that only replays a journal or runs programs without AI never needs it."""
        if self._built is None:
            self._built = _build_router(self._chains, timeout_s=self._timeout_s,
                                        num_retries=self._num_retries,
                                        cooldown_s=self._cooldown_s)
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
        """Import litellm and build the Router now (seconds), so the first request need not."""
        _ = self._router

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
        request: dict[str, Any] = {"model": kind, "messages": [m.model_dump() for m in messages]}
        if json_schema is not None:
            request["response_format"] = _response_format(json_schema)
        started = time.perf_counter()
        try:
            response = await self._router.acompletion(**request)
        except Exception as exc:  # litellm raises many unrelated types; each becomes a ModelError
            raise self._model_error(exc, kind=kind, messages=messages) from exc
        return self._completion(response, seconds=time.perf_counter() - started)

    def close(self) -> None:
        """Drop the Router's process-wide registrations (litellm callbacks)."""
        if self._built is not None:
            self._built.retire()

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


def price_per_token(model: str) -> tuple[float, float] | None:
    """Input and output prices in $/token for `model` from litellm's price list; None if unknown.

    `model` may carry a provider prefix ("openai/gpt-4o-mini").
    """
    _litellm_ready()
    import litellm

    key = _price_key(model, litellm.model_cost)
    if key is None:
        return None
    info = litellm.model_cost[key]
    prices = (info.get("input_cost_per_token"), info.get("output_cost_per_token"))
    if not all(isinstance(p, int | float) for p in prices):
        return None
    return float(prices[0]), float(prices[1])


def cost_usd(price_as: str, *, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What the tokens cost at `price_as`'s prices, in dollars; None when the price is unknown."""
    _litellm_ready()
    import litellm

    key = _price_key(price_as, litellm.model_cost)
    if key is None or price_per_token(key) is None:
        return None
    prompt_cost, completion_cost = litellm.cost_per_token(
        model=key, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    return prompt_cost + completion_cost


def _price_key(model: str, model_cost: Mapping[str, object]) -> str | None:
    """The key of `model` in litellm's price list: as given, or without its provider prefix."""
    for key in (model, model.split("/", 1)[-1]):
        if key in model_cost:
            return key
    return None


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


def _register_prices(routes: Mapping[str, ModelRoute]) -> None:
    """Put the models file's price overrides into litellm's price list (process-wide)."""
    import litellm

    for route in routes.values():
        if route.price is None:
            continue
        provider = route.model.split("/", 1)[0] if "/" in route.model else "openai"
        litellm.register_model({route.price_as: {
            "input_cost_per_token": route.price[0], "output_cost_per_token": route.price[1],
            "litellm_provider": provider, "mode": "chat"}})


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
    _litellm_ready()
    from litellm.router import Router

    routes = _routes_by_id(chains)
    _register_prices(routes)
    model_list = [
        {"model_name": group, "litellm_params": route.litellm_params(timeout_s=timeout_s),
         "model_info": {"id": group}}
        for group, route in routes.items()
    ]
    fallbacks = [{_group(kind, i - 1): [_group(kind, i)]}
                 for kind, chain in chains.items() for i in range(1, len(chain))]
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
    from litellm.exceptions import ContextWindowExceededError, Timeout
    from litellm.types.router import RouterRateLimitError

    if isinstance(exc, RouterRateLimitError):  # every deployment of the group is cooling down
        return "cooling_down"
    if isinstance(exc, Timeout) or status == 408:
        return "timeout"
    if isinstance(exc, ContextWindowExceededError):
        return "too_long"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status is not None and 400 <= status < 500:
        return "rejected"
    return "unavailable"
