"""`max_price_ratio`: never route a request to a model dearer than the one it asked for. Pure.

A profile (`rules/profiles.yaml`) or a policy's constraints (`rules/policies.yaml`) may set
`max_price_ratio: R`; the stricter of the two applies. A candidate whose blended price,
(3·input + output) / 4 per 1M tokens, exceeds R times the requested model's is filtered
(`max_price_ratio` in the decision's filter counts), as is an unpriced one, whose cost is
unknown. With R = 1.0 the savings against the requested model are never negative. When the
request names no model the catalog prices (`auto`, an unknown name) the cap cannot be
computed and is not applied; the decision's reasons say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from addon.config.rules import Constraints, Profile
from addon.routing.catalog import Candidate
from addon.routing.scoring import blended_price

FILTER = "max_price_ratio"
_SLACK = 1e-9  # the requested model itself always passes at ratio 1.0


@dataclass(frozen=True, slots=True)
class PriceCap:
    """The highest blended price (USD per 1M tokens) a candidate may have."""

    ratio: float
    limit: float
    requested: str  # the requested candidate's key

    def reason(self, c: Candidate) -> str | None:
        """`FILTER` when `c` is dearer than the cap (or unpriced), else None."""
        price = blended_price(c)
        if price is None or price > self.limit * (1 + _SLACK) + _SLACK:
            return FILTER
        return None

    def note(self, filtered: int) -> str:
        return (f"{FILTER} {self.ratio:g}: at most {self.limit:.4g} USD/1M blended "
                f"({self.ratio:g}× {self.requested}); {filtered} dearer or unpriced "
                "candidate(s) filtered")  # fmt: skip


def ratio_of(profile: Profile, constraints: Constraints | None) -> float | None:
    """The ratio that applies: the stricter of the profile's and the policy's."""
    policy = constraints.max_price_ratio if constraints is not None else None
    ratios = [r for r in (profile.max_price_ratio, policy) if r is not None]
    return min(ratios) if ratios else None


def cap_for(
    profile: Profile, constraints: Constraints | None, requested: Candidate | None
) -> tuple[PriceCap | None, str | None]:
    """The cap for a request whose requested model is `requested`, and a note for the
    decision's reasons when a ratio is set but cannot be applied."""
    ratio = ratio_of(profile, constraints)
    if ratio is None:
        return None, None
    price = blended_price(requested) if requested is not None else None
    if requested is None or price is None:
        return None, (f"{FILTER} {ratio:g} not applied: the requested model is not a priced "
                      "model of the catalog")  # fmt: skip
    return PriceCap(ratio, ratio * price, requested.key), None
