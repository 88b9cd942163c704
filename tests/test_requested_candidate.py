"""`catalog.requested_candidate`: the one rule for which catalog entry a request's `model`
names, shared by routing (savings) and recording (the price of an unrouted call)."""

from __future__ import annotations

import pytest

from addon.routing.catalog import Candidate, Catalog, ProviderInfo, requested_candidate
from addon.routing.cost import Price

PRICED, UNPRICED = Price(1.0, 2.0), Price(None, None)


def _candidate(provider: str, price: Price) -> Candidate:
    return Candidate(f"{provider}:gpt-4o", "gpt-4o", "GPT-4o", provider, "gpt-4o", price, 128000,
                     None, True, True, True, False, 1300, 0.8, "models.yaml")  # fmt: skip


def _catalog(*entries: tuple[str, Price]) -> Catalog:
    hosts = {"openai": "api.openai.com", "azure": "api.openai.com", "router": "openrouter.ai"}
    cands = tuple(_candidate(p, price) for p, price in entries)
    providers = {p: ProviderInfo(p, f"https://{h}/v1", h, None, False, False)
                 for p, h in hosts.items()}  # fmt: skip
    return Catalog(cands, providers, {"gpt-4o": cands})


@pytest.mark.parametrize(
    ("entries", "name", "host", "want"),
    [
        # the host the client addressed wins, priced or not ...
        ((("router", PRICED), ("openai", UNPRICED)), "gpt-4o", "api.openai.com", "openai"),
        # ... and among its offerings a priced one comes first
        ((("openai", UNPRICED), ("azure", PRICED)), "gpt-4o", "api.openai.com", "azure"),
        # elsewhere: a priced offering before an unpriced one
        ((("openai", UNPRICED), ("router", PRICED)), "gpt-4o", "example.com", "router"),
        ((("openai", UNPRICED), ("router", UNPRICED)), "gpt-4o", "example.com", "openai"),
        ((("openai", PRICED),), "GPT-4o", "example.com", "openai"),  # names match any case
        ((("openai", PRICED),), "gpt-5", "api.openai.com", None),
        ((("openai", PRICED),), None, "api.openai.com", None),
        ((("openai", PRICED),), "", "api.openai.com", None),
    ],
)  # fmt: skip
def test_requested_candidate(entries: tuple[tuple[str, Price], ...], name: str | None, host: str,
                             want: str | None) -> None:  # fmt: skip
    got = requested_candidate(_catalog(*entries), name, host)
    assert (got.provider if got is not None else None) == want
