"""Composite scores: profile weights over normalized metrics. Pure.

Each metric is normalized to 0..1 (higher is better):
  quality  the model's arena-style rating, min-max over the catalog (5th percentile..max);
           an unrated model gets a below-median prior (catalog.UNKNOWN_QUALITY_PRIOR)
  cost     blended price per 1M tokens, (3·input + output) / 4, on a log10 scale, min-max
           over the catalog's priced offerings, cheapest = 1; an unpriced offering gets 0
           (an unknown price is never treated as free)
  latency  observed by this proxy: 1 / (1 + ewma_ms / 1000); unseen → a prior: with
           `latency_prior: price` (the default) the same formula over an estimate from the
           offering's output price, est_ms = 600 + 120 · output USD per 1M tokens (capped at
           20 s; providers price by compute, and bigger models answer slower), so a $0.60
           model starts at 0.60 and a $15 one at 0.29; unpriced or free → 0.5 (neutral)
  context  log2(context / 4k) / log2(2M / 4k), clamped
score = Σ weight·norm / Σ weight − free_penalty for an OpenRouter `:free` variant (0.3 by
default: they are heavily rate-limited, so they serve as fallbacks rather than first
choices); each weighted term (and the penalty, as `free`) is kept for explanations.

Complexity adjustment (continuous): a request of complexity c (0..1; the learned scorer's
p mapped through its knots, or the keyword heuristic, plus the structure terms: see
`addon.routing.classify`) moves weight between quality and cost by

    shift(c) = COMPLEXITY_SHIFT · clamp((c − 0.5) / RAMP, −1, 1)      (0.15, RAMP 1/3)

from cost to quality when positive (never taking cost below 0), from quality to cost when
negative (never taking quality below 0); latency and context keep their weights. So c = 0.5
leaves the profile's weights as written, c = 1/6 and below (the middle of "simple") moves
the full 0.15 to cost, c = 5/6 and up (the middle of "complex") the full 0.15 to quality, and
at the class cuts 0.33 / 0.66 about half of it moves. The shift is applied in `LEVELS` (9)
steps of 0.15 / `STEPS` (0.0375 of weight): level k = the number of `CUTS` at or below c
(c rounded to the nearest step of RAMP / STEPS), shift = 0.15 · (k − 4) / 4, one pre-ranked
order per (profile, level) at config load (`addon.routing.ranking`). A profile opts out with
`complexity_adjust: false` (every level keeps the profile's weights). The class names
map to their middles: simple 1/6 (level 0), medium 0.5 (level 4), complex 5/6 (level 8),
which are the weights the three-class adjustment gave.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from addon.config.rules import Profile
from addon.routing.catalog import Candidate

COMPLEXITY_SHIFT = 0.15  # the most weight the complexity adjustment moves
RAMP = 1 / 3  # the distance of c from 0.5 at which the whole shift applies
STEPS = 4  # levels on each side of 0.5
LEVELS = 2 * STEPS + 1
# CUTS[k - 1]: the complexity from which a request is at level k (k = 1..LEVELS-1)
CUTS = tuple(0.5 + RAMP * (k - STEPS - 0.5) / STEPS for k in range(1, LEVELS))
CLASS_COMPLEXITY = {"simple": 1 / 6, "medium": 0.5, "complex": 5 / 6}  # each class's middle
CONTEXT_FLOOR = 4096
CONTEXT_CEIL = 2_000_000
METRICS = ("quality", "latency", "cost", "context")
PART_NAMES = (*METRICS, "free")  # the names of `Scored.values`
PRIOR_BASE_MS = 600.0  # latency prior: est_ms = PRIOR_BASE_MS + PRIOR_MS_PER_USD · output $/1M
PRIOR_MS_PER_USD = 120.0
PRIOR_CAP_MS = 20_000.0


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate's place in one ranking: its score (0..1, higher is better) and each
    metric's weighted contribution to it."""

    candidate: Candidate
    score: float
    # each metric's weighted contribution, in METRICS order, then the free-tier penalty
    # (negative) when there is one: bare floats, as a ranking holds one entry per
    # candidate and (profile, level) — ~150k over the bundled catalog — and (name, value)
    # pairs would be twice the memory (`parts` names them)
    values: tuple[float, ...]
    # the sort key of every ranking: best first, ties broken by key
    order: tuple[float, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", (-self.score, self.candidate.key))

    @property
    def parts(self) -> tuple[tuple[str, float], ...]:
        """(metric, weighted contribution) pairs, the free-tier penalty last as "free"."""
        return tuple(zip(PART_NAMES, self.values, strict=False))

    def explain(self) -> str:
        """The contributions as text, e.g. ``quality 0.412 + latency 0.050 + …``."""
        return " + ".join(f"{m} {v:.3f}" for m, v in self.parts)


ORDER = operator.attrgetter("order")  # the sort key of a ranking, for sort and bisect


@dataclass(frozen=True)
class Weights:
    """A profile's metric weights after the complexity adjustment (any scale: `rank`
    divides by their sum), and the adjustment's `shift` (weight moved from cost to
    quality; negative: from quality to cost) at weight level `level`."""

    quality: float
    latency: float
    cost: float
    context: float
    free_penalty: float = 0.0  # subtracted from an OpenRouter `:free` variant's score
    price_prior: bool = False  # unobserved latency from the price prior, not 0.5
    shift: float = 0.0
    level: int = STEPS

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(quality, latency, cost, context), the order `rank` reads them in."""
        return (self.quality, self.latency, self.cost, self.context)

    def describe(self) -> str:
        """The weights as `rank` uses them (normalized to sum 1), e.g. ``quality 0.47
        latency 0.30 cost 0.23 context 0.00 (level 6 of 0..8, shift +0.075)``."""
        total = sum(self.as_tuple()) or 1.0
        q, lat, c, x = (w / total for w in self.as_tuple())
        return (f"quality {q:.2f} latency {lat:.2f} cost {c:.2f} context {x:.2f} "
                f"(level {self.level} of 0..{LEVELS - 1}, shift {self.shift:+.3f})")  # fmt: skip


def level(complexity: float) -> int:
    """The weight level (0..LEVELS-1) of a request of `complexity` (0..1): how many of
    `CUTS` are at or below it."""
    return bisect.bisect_right(CUTS, complexity)


def level_of(complexity: float | str) -> int:
    """`level` of a complexity, or of a class name's middle (`CLASS_COMPLEXITY`)."""
    if isinstance(complexity, str):
        return level(CLASS_COMPLEXITY[complexity])
    return level(complexity)


def level_complexity(lvl: int) -> float:
    """A complexity inside level `lvl` (its middle; 0 and 1 for the outermost levels)."""
    if lvl <= 0:
        return 0.0
    if lvl >= LEVELS - 1:
        return 1.0
    return 0.5 + RAMP * (lvl - STEPS) / STEPS


def level_shift(lvl: int) -> float:
    """The weight the adjustment moves from cost to quality at level `lvl` (see the module
    docstring): COMPLEXITY_SHIFT · (lvl − STEPS) / STEPS."""
    return COMPLEXITY_SHIFT * (lvl - STEPS) / STEPS


def effective_weights(profile: Profile, complexity: float | str | int) -> Weights:
    """`profile`'s weights for a request of `complexity` (a 0..1 float, a class name, or a
    level as an int), shifted as the module docstring describes (unless the profile opts
    out)."""
    lvl = complexity if isinstance(complexity, int) else level_of(complexity)
    lvl = min(max(lvl, 0), LEVELS - 1)
    w = profile.weights
    q, lat, c, ctx = w.quality, w.latency, w.cost, w.context
    moved = 0.0
    if profile.complexity_adjust:
        s = level_shift(lvl)
        if s < 0:
            moved = -min(-s, q)
        elif s > 0:
            moved = min(s, c)
        q, c = q + moved, c - moved
    return Weights(q, lat, c, ctx, profile.free_penalty, profile.latency_prior == "price",
                   moved, lvl)  # fmt: skip


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
    latency_prior: dict[str, float] = field(default_factory=dict)  # by key, see latency_prior
    free: frozenset[str] = frozenset()  # keys of the OpenRouter `:free` variants


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
        latency_prior={c.key: latency_prior(c) for c in cands},
        free=frozenset(c.key for c in cands if free_variant(c)),
    )


def latency_prior(c: Candidate) -> float:
    """The latency norm assumed for `c` before it is observed: `latency_norm` of the price
    estimate in the module docstring; 0.5 (neutral) when its output price is unknown or 0."""
    out = c.price.output_per_mtok
    if out is None or out <= 0:
        return 0.5
    return latency_norm(min(PRIOR_CAP_MS, PRIOR_BASE_MS + PRIOR_MS_PER_USD * out))


def free_variant(c: Candidate) -> bool:
    """Whether `c` is an OpenRouter `:free` variant (its provider model id ends in `:free`)."""
    return c.provider_model_id.endswith(":free")


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
    prior = norms.latency_prior if weights.price_prior else {}
    quality, cost, context = norms.quality, norms.cost, norms.context
    penalty = weights.free_penalty
    free = norms.free if penalty else frozenset()
    out = []
    for c in candidates:
        k = c.key
        seen = latency_ms.get(k)
        lat = latency_norm(seen) if seen is not None else prior.get(k, 0.5)
        q, la, co, x = wq * quality[k], wl * lat, wc * cost[k], wx * context[k]
        if k in free:
            values: tuple[float, ...] = (q, la, co, x, -penalty)
            score = q + la + co + x - penalty
        else:
            values = (q, la, co, x)
            score = q + la + co + x
        out.append(Scored(c, round(score, 9), values))
    out.sort(key=ORDER)
    return out
