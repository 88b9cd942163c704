"""Composite scores: profile weights over normalized metrics. Pure.

Each metric is normalized to 0..1 (higher is better):
  quality  the model's arena-style rating, min-max over the catalog (5th percentile..max);
           an unrated model gets a below-median prior (catalog.UNKNOWN_QUALITY_PRIOR)
  cost     blended price per 1M tokens, (3·input + output) / 4, on a log10 scale, min-max
           over the catalog's priced offerings, cheapest = 1; an unpriced offering gets 0
           (an unknown price is never treated as free)
  latency  observed by this proxy: 1 / (1 + ewma_ms / 1000); unseen → 0.5 (neutral prior)
  context  log2(context / 4k) / log2(2M / 4k), clamped
score = Σ weight·norm / Σ weight; each weighted term is kept for explanations.

Complexity adjustment: for a "simple" request 0.15 of weight moves from quality to cost;
for a "complex" one 0.15 moves from cost to quality (never below 0). A profile can opt out
with `complexity_adjust: false`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from addon.config.rules import Profile
from addon.routing.catalog import Candidate

COMPLEXITY_SHIFT = 0.15
CONTEXT_FLOOR = 4096
CONTEXT_CEIL = 2_000_000
METRICS = ("quality", "latency", "cost", "context")


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate's place in one ranking: its score (0..1, higher is better) and each
    metric's weighted contribution to it."""

    candidate: Candidate
    score: float
    parts: tuple[tuple[str, float], ...]  # (metric, weighted contribution)
    # the sort key of every ranking: best first, ties broken by key
    order: tuple[float, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", (-self.score, self.candidate.key))

    def explain(self) -> str:
        """The contributions as text, e.g. ``quality 0.412 + latency 0.050 + …``."""
        return " + ".join(f"{m} {v:.3f}" for m, v in self.parts)


ORDER = operator.attrgetter("order")  # the sort key of a ranking, for sort and bisect


@dataclass(frozen=True)
class Weights:
    """A profile's metric weights after the complexity adjustment (any scale: `rank`
    divides by their sum)."""

    quality: float
    latency: float
    cost: float
    context: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(quality, latency, cost, context), the order `rank` reads them in."""
        return (self.quality, self.latency, self.cost, self.context)


def effective_weights(profile: Profile, complexity_class: str) -> Weights:
    """`profile`'s weights for a request of `complexity_class`, shifted as the module
    docstring describes (unless the profile opts out)."""
    w = profile.weights
    q, lat, c, ctx = w.quality, w.latency, w.cost, w.context
    if profile.complexity_adjust:
        if complexity_class == "simple":
            moved = min(COMPLEXITY_SHIFT, q)
            q, c = q - moved, c + moved
        elif complexity_class == "complex":
            moved = min(COMPLEXITY_SHIFT, c)
            q, c = q + moved, c - moved
    return Weights(q, lat, c, ctx)


def blended_price(c: Candidate) -> float | None:
    """USD per million tokens, (3·input + output) / 4; None when the price is unknown."""
    p = c.price
    if p.input_per_mtok is None or p.output_per_mtok is None:
        return None
    return (3 * p.input_per_mtok + p.output_per_mtok) / 4


@dataclass(frozen=True)
class Norms:
    """Per-candidate static metric norms for one catalog (computed once at config load)."""

    quality: dict[str, float]
    cost: dict[str, float]
    context: dict[str, float]


def static_norms(candidates: Iterable[Candidate]) -> Norms:
    """The quality, cost and context norms (0..1) of every candidate, over the whole set."""
    cands = list(candidates)
    logs = {c.key: math.log10(bp + 0.01) for c in cands if (bp := blended_price(c)) is not None}
    lo, hi = (min(logs.values()), max(logs.values())) if logs else (0.0, 1.0)
    span = (hi - lo) or 1.0
    top = math.log2(CONTEXT_CEIL / CONTEXT_FLOOR)
    return Norms(
        quality={c.key: c.quality_norm for c in cands},
        cost={c.key: (1 - (logs[c.key] - lo) / span) if c.key in logs else 0.0 for c in cands},
        context={
            c.key: min(
                1.0,
                max(
                    0.0, math.log2(max(c.context_tokens or 0, CONTEXT_FLOOR) / CONTEXT_FLOOR) / top
                ),
            )
            for c in cands
        },
    )


def latency_norm(ewma_ms: float | None) -> float:
    """0..1 for an observed latency in milliseconds, 0.5 when none was observed."""
    return 0.5 if ewma_ms is None else 1.0 / (1.0 + max(ewma_ms, 0.0) / 1000.0)


def rank(
    candidates: Iterable[Candidate],
    weights: Weights,
    norms: Norms,
    latency_ms: Mapping[str, float],
) -> list[Scored]:
    """Candidates best first; ties broken by key for a stable order."""
    total = sum(weights.as_tuple()) or 1.0
    wq, wl, wc, wx = (w / total for w in weights.as_tuple())
    out = []
    for c in candidates:
        parts = (
            ("quality", wq * norms.quality[c.key]),
            ("latency", wl * latency_norm(latency_ms.get(c.key))),
            ("cost", wc * norms.cost[c.key]),
            ("context", wx * norms.context[c.key]),
        )
        out.append(Scored(c, round(sum(v for _, v in parts), 9), parts))
    out.sort(key=ORDER)
    return out
