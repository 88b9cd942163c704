"""Cost of one call: pure arithmetic over usage and per-million-token prices.

An unknown price is not free: `cost` returns None ("unpriced"), never 0.

Prompt tokens come in three kinds (`wire.usage.Usage`: `prompt_tokens` counts all three):
fresh ones at the input price; cache reads (`cached_tokens`) at the cached-input price, or
the input price when there is none; cache writes (`cache_write_tokens`, Anthropic's
`cache_creation_input_tokens`) at the cache-write price, or `CACHE_WRITE_MARKUP` (1.25) times
the input price when there is none — Anthropic's price for a 5-minute cache write.
"""

from __future__ import annotations

from dataclasses import dataclass

from addon.wire.usage import Usage

CACHE_WRITE_MARKUP = 1.25  # a cache write without a price of its own: 1.25x the input price


@dataclass(frozen=True)
class Price:
    """USD per million tokens: input, output, cached input (None: the provider bills
    cached prompt tokens at the input price) and cache writes (None: `CACHE_WRITE_MARKUP`
    times the input price). None for input or output is an unknown price."""

    input_per_mtok: float | None
    output_per_mtok: float | None
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    @property
    def known(self) -> bool:
        """Whether both the input and the output price are known."""
        return self.input_per_mtok is not None and self.output_per_mtok is not None


def cost(usage: Usage, price: Price) -> float | None:
    """USD for `usage` at `price`; None when the price is unknown.

    Cached prompt tokens are billed at the cached-input price when the provider has one,
    otherwise at the normal input price; cache writes at their own price, otherwise at
    `CACHE_WRITE_MARKUP` times the input price (see the module docstring).
    """
    if price.input_per_mtok is None or price.output_per_mtok is None:
        return None
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    fresh = usage.prompt_tokens - cached - written
    cached_price = (
        price.cached_input_per_mtok
        if price.cached_input_per_mtok is not None
        else price.input_per_mtok
    )
    write_price = (
        price.cache_write_per_mtok
        if price.cache_write_per_mtok is not None
        else price.input_per_mtok * CACHE_WRITE_MARKUP
    )
    usd = (
        fresh * price.input_per_mtok
        + cached * cached_price
        + written * write_price
        + usage.completion_tokens * price.output_per_mtok
    ) / 1_000_000
    return round(usd, 10)


def estimate_max(prompt_tokens: int, max_output_tokens: int, price: Price) -> float | None:
    """Upper bound of a request's cost before it is sent (no cache discount assumed)."""
    if not price.known:
        return None
    assert price.input_per_mtok is not None and price.output_per_mtok is not None
    return (prompt_tokens * price.input_per_mtok + max_output_tokens * price.output_per_mtok) / 1e6
