"""What model calls cost, from litellm's bundled price list and the models file's own prices.

See ARCHITECTURE.md, "Preview before spending": estimates and spend use the same prices. litellm
takes seconds to import, so it is imported inside functions, never at module import; it reads the
bundled price list, which matches the pinned version, because importing `codegen` says so.
"""

from __future__ import annotations

from collections.abc import Mapping

from codegen.model_config import ModelRoute

__all__ = ["DeploymentPrices", "cost_usd", "price_per_token", "register_prices"]


def price_per_token(model: str) -> tuple[float, float] | None:
    """Input and output prices in $/token for `model` from litellm's price list; None if unknown.

    `model` may carry a provider prefix ("openai/gpt-4o-mini").
    """
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
    import litellm

    key = _price_key(price_as, litellm.model_cost)
    if key is None or price_per_token(key) is None:
        return None
    prompt_cost, completion_cost = litellm.cost_per_token(
        model=key, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    return prompt_cost + completion_cost


def register_prices(routes: Mapping[str, ModelRoute]) -> None:
    """Put the models file's price overrides into litellm's price list (process-wide)."""
    import litellm

    for route in routes.values():
        if route.price is None:
            continue
        provider = route.model.split("/", 1)[0] if "/" in route.model else "openai"
        litellm.register_model({route.price_as: {
            "input_cost_per_token": route.price[0], "output_cost_per_token": route.price[1],
            "litellm_provider": provider, "mode": "chat"}})


class DeploymentPrices:
    """One deployment's prices, looked up once (a direct deployment prices every answer, and
    `cost_usd` walks litellm's price list each time): $/token for input and output, or None when
    unknown. A model litellm prices in tiers (by prompt length) is left to `cost_usd`."""

    __slots__ = ("per_token", "price_as", "tiered")

    def __init__(self, price_as: str, per_token: tuple[float, float] | None, *,
                 tiered: bool = False) -> None:
        self.price_as = price_as
        self.per_token = per_token
        self.tiered = tiered

    @classmethod
    def of(cls, route: ModelRoute) -> DeploymentPrices:
        """The prices `route` costs: the models file's `price`, else its `price_as` model's."""
        if route.price is not None:
            return cls(route.price_as, route.price)
        import litellm

        key = _price_key(route.price_as, litellm.model_cost)
        info = litellm.model_cost.get(key) if key else None
        tiered = isinstance(info, Mapping) and any("_above_" in name for name in info)
        return cls(route.price_as, price_per_token(route.price_as), tiered=tiered)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """What the tokens cost, in dollars; None when the price or the token counts are
        unknown (a server that sends no usage)."""
        if self.per_token is None or prompt_tokens is None or completion_tokens is None:
            return None
        if self.tiered:
            return cost_usd(self.price_as, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens)
        return prompt_tokens * self.per_token[0] + completion_tokens * self.per_token[1]


def _price_key(model: str, model_cost: Mapping[str, object]) -> str | None:
    """The key of `model` in litellm's price list: as given, or without its provider prefix."""
    for key in (model, model.split("/", 1)[-1]):
        if key in model_cost:
            return key
    return None
