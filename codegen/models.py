"""Model access through litellm's Router: task kinds become model groups with fallbacks, priced.

See ARCHITECTURE.md, "Models are pluggable". Each task kind (plan, extract, write, classify,
vision) is a Router model group; with a fallback model configured, `<kind>` falls back to
`<kind>-fallback`. With no `SLUICE_MODEL_API_KEY` every group points at the scripted model server
(`infra/scripted_model.py`) over the same OpenAI-compatible HTTP API, so tests and the offline demo
run the real client path: HTTP, retries, fallbacks, cooldowns and pricing.

litellm takes seconds to import, so it is imported inside functions, never at module import.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from core.errors import ConfigurationError, ModelError
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

TASK_KINDS: Final[tuple[TaskKind, ...]] = ("plan", "extract", "write", "classify", "vision")
SCRIPTED_MODEL: Final = "scripted"
SCRIPTED_BACKUP_MODEL: Final = "scripted-backup"
_SCRIPTED_KEY: Final = "scripted"
_PROMPT_SHOWN: Final = 200
_DETAIL_SHOWN: Final = 200


def _litellm_ready() -> None:
    """Call before importing litellm: it would otherwise fetch its price list from the network at
    import. The bundled list matches the pinned version, so prices are reproducible offline."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


@dataclass(frozen=True)
class ModelRoute:
    """One deployment: a litellm model name, how to reach it, and which model's prices it costs."""

    model: str
    price_as: str
    api_key: str | None = field(default=None, repr=False)
    api_base: str | None = None
    scripted: bool = False

    def litellm_params(self, *, timeout_s: float) -> dict[str, object]:
        params: dict[str, object] = {"model": self.model, "timeout": timeout_s}
        if self.api_key:
            params["api_key"] = self.api_key
        if self.api_base:
            params["api_base"] = self.api_base
        return params


def scripted_route(url: str, name: str, *, price_as: str) -> ModelRoute:
    """The scripted model server at `url` serving model `name` (for example "scripted")."""
    bare = name.removeprefix("openai/")
    return ModelRoute(model=f"openai/{bare}", price_as=price_as, api_key=_SCRIPTED_KEY,
                      api_base=f"{url.rstrip('/')}/v1", scripted=True)


class LiteLLMModels:
    """`core.protocols.ModelClient` on a litellm Router. Build it with `from_settings`."""

    def __init__(
        self,
        *,
        primary: ModelRoute,
        fallback: ModelRoute | None = None,
        timeout_s: float = 60.0,
        num_retries: int = 1,
        scripted_scenario: Path | None = None,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._timeout_s = timeout_s
        self._scenario = scripted_scenario
        self._routes = _routes_by_id(primary, fallback)
        self._num_retries = num_retries
        self._built: Any = None

    @property
    def _router(self) -> Any:
        """The litellm Router, built on first use: importing litellm takes seconds, and a
        worker that only replays a journal or runs programs without AI never needs it."""
        if self._built is None:
            self._built = _build_router(self._routes, timeout_s=self._timeout_s,
                                        num_retries=self._num_retries)
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
        """Models for `settings`: the scripted server without a model key, else `settings.model`.

        Args:
            settings: read for the model, key, base URL, scripted server URL and timeout.
            fallback_model: a litellm model every kind falls back to; with the scripted server,
                a model name the server answers as (`SCRIPTED_BACKUP_MODEL` in tests).
            fallback_api_key: the fallback's key; litellm reads the provider's usual variable
                when it is None.
            fallback_api_base: the fallback's base URL, when not the provider's default.
            num_retries: retries within a model group before giving up or falling back.

        Raises:
            ConfigurationError: no model key and no SLUICE_SCRIPTED_MODEL_URL.
        """
        if settings.using_scripted_model:
            url = _require_scripted_url(settings)
            price_as = settings.scripted_price_as
            primary = scripted_route(url, SCRIPTED_MODEL, price_as=price_as)
            fallback = scripted_route(url, fallback_model, price_as=price_as) if fallback_model \
                else None
        else:
            primary = ModelRoute(model=settings.model, price_as=settings.model,
                                 api_key=settings.model_api_key, api_base=settings.model_api_base)
            fallback = ModelRoute(model=fallback_model, price_as=fallback_model,
                                  api_key=fallback_api_key, api_base=fallback_api_base) \
                if fallback_model else None
        return cls(primary=primary, fallback=fallback, timeout_s=settings.model_timeout_s,
                   num_retries=num_retries, scripted_scenario=settings.scripted_scenario)

    def warm(self) -> None:
        """Import litellm and build the Router now (seconds), so the first request need not."""
        _ = self._router

    @property
    def priced_as(self) -> str:
        """The model whose prices the primary deployment reports (for `price_per_token`)."""
        return self._primary.price_as

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
        """The deployment that answered (after a fallback, not the one asked for)."""
        hidden: Mapping[str, object] = getattr(response, "_hidden_params", None) or {}
        route = self._routes.get(str(hidden.get("model_id")))
        return route if route is not None else self._primary

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

    def _explain(self, reason: str, *, kind: str, status: int | None, detail: str) -> str:
        model = self._primary.model
        if self._primary.scripted and reason == "unavailable":
            return (f"The scripted model server ({self._primary.api_base}) did not answer the "
                    f"{kind} request (HTTP {status or 'no response'}). Start Sluice with "
                    "`sluice up`, or check SLUICE_SCRIPTED_MODEL_URL.")
        also = f", and the fallback {self._fallback.model} failed too" if self._fallback else ""
        messages = {
            "cooling_down": f"{model} failed moments ago and is paused{also}. Try again in a "
                            "minute.",
            "rate_limited": f"The model provider is rate-limiting requests to {model}{also}. "
                            "Try again in a minute.",
            "auth": f"The model provider refused the API key for {model}. Check "
                    "SLUICE_MODEL_API_KEY (and the fallback model's key).",
            "timeout": f"{model} did not answer within {self._timeout_s:g} s{also}. Try again, "
                       "or raise SLUICE_MODEL_TIMEOUT_S.",
            "too_long": f"The request is too long for {model}. Ask for less at once, or use a "
                        "model with a larger context window (SLUICE_MODEL).",
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
        for route in (self._primary, self._fallback):
            if route is not None and route.api_key:
                detail = detail.replace(route.api_key, "[key]")
        return detail[:_DETAIL_SHOWN]


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


def _require_scripted_url(settings: Settings) -> str:
    if not settings.scripted_model_url:
        raise ConfigurationError(
            "No model is configured: SLUICE_MODEL_API_KEY is not set, so Sluice uses the scripted "
            "model, but SLUICE_SCRIPTED_MODEL_URL is not set either. Start everything with "
            "`sluice up` (it runs the scripted model), set SLUICE_SCRIPTED_MODEL_URL="
            "http://127.0.0.1:PORT, or set SLUICE_MODEL_API_KEY to use a real model."
        )
    return settings.scripted_model_url


def _routes_by_id(primary: ModelRoute, fallback: ModelRoute | None) -> dict[str, ModelRoute]:
    """Deployment id → route: `<kind>` for the primary, `<kind>-fallback` for the fallback."""
    routes: dict[str, ModelRoute] = {kind: primary for kind in TASK_KINDS}
    if fallback is not None:
        routes.update({f"{kind}-fallback": fallback for kind in TASK_KINDS})
    return routes


def _build_router(
    routes: Mapping[str, ModelRoute], *, timeout_s: float, num_retries: int
) -> Router:
    """One model group per deployment id (the group's name), with fallbacks kind → kind-fallback.

    `allowed_fails=0` puts a deployment in cooldown on its first provider-side failure, for
    Retry-After seconds when the provider sent one. The fallback gate relies on that.
    """
    _litellm_ready()
    from litellm.router import Router

    model_list = [
        {"model_name": group, "litellm_params": route.litellm_params(timeout_s=timeout_s),
         "model_info": {"id": group}}
        for group, route in routes.items()
    ]
    fallbacks = [{kind: [f"{kind}-fallback"]} for kind in TASK_KINDS
                 if f"{kind}-fallback" in routes]
    router: Router = Router(
        model_list=model_list,
        fallbacks=fallbacks,
        fallback_access_check=_fallback_gate,
        allowed_fails=0,
        num_retries=num_retries,
        timeout=timeout_s,
    )
    return router


async def _fallback_gate(
    *, model: str, request_kwargs: Mapping[str, object], ctx: RoutingContext
) -> bool:
    """Fall back to `<kind>-fallback` only when the `<kind>` deployment is cooling down.

    litellm falls back on every error, a 400 included, but a request the provider calls malformed
    (or the scripted model cannot answer) fails the same way elsewhere and should reach the person
    at once. With `allowed_fails=0` litellm cools a deployment down on its first 401/404/408/429,
    5xx, timeout or lost connection, never on another 4xx: so the cooldown tells the two apart.
    The gate runs right after the failed attempt, before the fallback is called.
    """
    primary = model.removesuffix("-fallback")
    if primary == model:
        return True
    cooling = await ctx.health().cooldowns.async_get_active_cooldowns(
        model_ids=[primary], parent_otel_span=None
    )
    return bool(cooling)


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
