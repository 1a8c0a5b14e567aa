"""Prices and the budget: a run stops *before* a request that could take it over.

Every request in flight holds a reservation of its worst case (estimated prompt
tokens plus max_tokens of output); its real cost replaces the reservation when
the answer arrives. So spent + in flight never exceeds ``max_cost_usd``.
"""

from __future__ import annotations

from pipeline.core.errors import UserError
from pipeline.core.params import Price, SynthesizeParams


def price_for(cfg: SynthesizeParams) -> Price | None:
    """The table entry for the model: exact, else the longest prefix (gpt-4o-mini-2024-07-18 → gpt-4o-mini)."""
    if cfg.model in cfg.prices:
        return cfg.prices[cfg.model]
    prefixes = [name for name in cfg.prices if cfg.model.startswith(name)]
    return cfg.prices[max(prefixes, key=len)] if prefixes else None


def cost_usd(price: Price | None, prompt_tokens: int, completion_tokens: int, factor: float = 1.0) -> float:
    if price is None:
        return 0.0
    return factor * (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


class Budget:
    def __init__(self, cfg: SynthesizeParams, factor: float = 1.0):
        self.price = price_for(cfg)
        self.factor = factor
        self.max_requests = cfg.max_requests
        self.max_cost = cfg.max_cost_usd
        if self.max_cost is not None and self.price is None:
            raise UserError(
                f"params.yaml: synthesize.max_cost_usd is set but synthesize.prices has no entry for model "
                f"{cfg.model!r}; add synthesize.prices.{cfg.model}.input_per_mtok and .output_per_mtok"
            )
        self.max_tokens = cfg.max_tokens
        self.requests = 0
        self.spent = 0.0
        self.reserved = 0.0
        self.stopped_by: str | None = None

    def worst_case(self, prompt_tokens: int) -> float:
        return cost_usd(self.price, prompt_tokens, self.max_tokens, self.factor)

    def reserve(self, prompt_tokens: int) -> float | None:
        """The reservation for one more request, or None (and stopped_by set) if it could exceed."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            self.stopped_by = "max_requests"
            return None
        worst = self.worst_case(prompt_tokens)
        if self.max_cost is not None and self.spent + self.reserved + worst > self.max_cost + 1e-12:
            self.stopped_by = "max_cost_usd"
            return None
        self.stopped_by = None
        self.requests += 1
        self.reserved += worst
        return worst

    def settle(self, reservation: float, actual: float) -> None:
        self.reserved -= reservation
        self.spent += actual

    def release(self, reservation: float) -> None:
        """A request that failed for good costs nothing (errors are not billed)."""
        self.reserved -= reservation

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return cost_usd(self.price, prompt_tokens, completion_tokens, self.factor)
