"""The metrics of `orchestrator eval`, as RouteLLM defines them. Pure: numbers in, numbers out.

The curve
    Each method gives every item a complexity c (0..1). An operating point is an offset δ
    added to every c (clamped to 0..1): the item is then routed as a request of that
    complexity would be. The router reads complexity through a few levels (the proxy's
    weight levels, `addon.routing.scoring.CUTS`: level k from cut k on), so `sweep` takes
    what the router decided for each item at each level. Sweeping δ from -1 (every item at
    the lowest level) to +1 (every item at the highest) moves the items up one level at a
    time, in the order of c; every distinct δ where some item moves is a point of the curve:
    (share of calls to the strong model, mean quality, mean cost).

PGR, APGR, CPT (RouteLLM, Ong et al. 2024, `routellm/evals/evaluate.py`)
    PGR(point)  = (quality - weak quality) / (strong quality - weak quality)
    APGR        = the area under PGR over the share of strong calls, by the trapezoid rule,
                  divided by the span of that share (0..1 for a full sweep): RouteLLM's
                  (AUC - weak AUC) / (strong AUC - weak AUC). RouteLLM samples 10 quantile
                  thresholds; here every point of the sweep is used (the exact area).
    CPT(x)      = the share of strong calls at which the curve, linearly interpolated in
                  share order, first reaches PGR x (RouteLLM interpolates with np.interp,
                  which is the same for a curve that rises).
    at_quality  = the cheapest point of the interpolated curve whose quality is at least a
                  target (the eval's target: 95% of the strong model's quality).

A random router's expected curve is the straight line from always-weak to always-strong, so
its APGR is 0.5 and its CPT(x) is x.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

CLASS_CUTS = (0.33, 0.66)  # the class cuts of classify.RequestFeatures.complexity_class


@dataclass(frozen=True, slots=True)
class Outcome:
    """What routing one item in one class gives: the routed model's score (0..1), the call's
    cost (USD), and whether that model is the strong one."""

    score: float
    cost: float
    strong: bool


@dataclass(frozen=True, slots=True)
class Point:
    """One operating point: the offset, the share of calls to the strong model, the mean
    quality and the mean cost per call (USD)."""

    offset: float
    strong_share: float
    quality: float
    cost: float


@dataclass(frozen=True, slots=True)
class Summary:
    """A curve's metrics (None where the curve never gets there): APGR, CPT(50%) and
    CPT(80%) as shares of strong calls, the cheapest point at the quality target, and the
    point at offset 0 (the router as configured)."""

    apgr: float | None
    cpt50: float | None
    cpt80: float | None
    at_target: Point | None
    default: Point | None


def sweep(
    complexities: Sequence[float],
    outcomes: Sequence[Sequence[Outcome]],
    cuts: Sequence[float] = CLASS_CUTS,
) -> list[Point]:
    """The curve of items with these complexities and per-level outcomes (one per level,
    lowest first: len(cuts) + 1 of them; level k from complexity cuts[k - 1] on), from
    offset -1 to +1 (see the module docstring)."""
    n = len(complexities)
    if n == 0 or n != len(outcomes) or any(len(o) != len(cuts) + 1 for o in outcomes):
        raise ValueError(
            f"sweep needs one outcome per level ({len(cuts) + 1}) for each complexity, "
            "and some items"
        )
    events: list[tuple[float, int, int]] = []  # (offset, item, level it moves into)
    for i, c in enumerate(complexities):
        c = min(1.0, max(0.0, c))
        events.extend((round(cut - c, 9), i, k) for k, cut in enumerate(cuts, 1))
    events.sort()
    score = sum(o[0].score for o in outcomes)
    cost = sum(o[0].cost for o in outcomes)
    strong = sum(o[0].strong for o in outcomes)
    points = [Point(-1.0, strong / n, score / n, cost / n)]
    k = 0
    while k < len(events):
        offset = events[k][0]
        while k < len(events) and events[k][0] == offset:
            _, i, cls = events[k]
            old, new = outcomes[i][cls - 1], outcomes[i][cls]
            score += new.score - old.score
            cost += new.cost - old.cost
            strong += new.strong - old.strong
            k += 1
        points.append(Point(offset, strong / n, score / n, cost / n))
    if points[-1].offset < 1.0:
        points.append(Point(1.0, strong / n, score / n, cost / n))
    return points


def pgr(quality: float, weak: float, strong: float) -> float:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong one's."""
    gap = strong - weak
    return (quality - weak) / gap if gap else 0.0


def _by_share(points: Sequence[Point]) -> list[Point]:
    return sorted(points, key=lambda p: p.strong_share)  # stable: sweep order within a share


def apgr(points: Sequence[Point], weak: float, strong: float) -> float | None:
    """The area under PGR over the share of strong calls, over that share's span."""
    pts = _by_share(points)
    span = pts[-1].strong_share - pts[0].strong_share
    if span <= 0 or strong == weak:
        return None
    area = 0.0
    for a, b in itertools.pairwise(pts):
        dx = b.strong_share - a.strong_share
        area += dx * (pgr(a.quality, weak, strong) + pgr(b.quality, weak, strong)) / 2
    return area / span


def cpt(points: Sequence[Point], weak: float, strong: float, target: float) -> float | None:
    """The share of strong calls where PGR first reaches `target` (0..1), interpolated."""
    if strong == weak:
        return None
    pts = _by_share(points)
    prev: Point | None = None
    for p in pts:
        g = pgr(p.quality, weak, strong)
        if g >= target:
            if prev is None:
                return p.strong_share
            g0 = pgr(prev.quality, weak, strong)
            t = (target - g0) / (g - g0) if g != g0 else 1.0
            return prev.strong_share + t * (p.strong_share - prev.strong_share)
        prev = p
    return None


def at_quality(points: Sequence[Point], target: float) -> Point | None:
    """The cheapest point of the interpolated curve (in share order) with quality >= target."""
    pts = _by_share(points)
    best: Point | None = None
    for i, b in enumerate(pts):
        if b.quality < target:
            continue
        a = pts[i - 1] if i else None
        if a is None or a.quality >= target or b.quality == a.quality:
            cand = b
        else:
            t = (target - a.quality) / (b.quality - a.quality)
            cand = Point(
                a.offset + t * (b.offset - a.offset),
                a.strong_share + t * (b.strong_share - a.strong_share),
                target,
                a.cost + t * (b.cost - a.cost),
            )
        if best is None or cand.cost < best.cost:
            best = cand
    return best


def default_point(points: Sequence[Point]) -> Point | None:
    """The point at offset 0 (the last point of the sweep whose offset is at most 0)."""
    got = None
    for p in points:
        if p.offset <= 0:
            got = p
    return got


def summarize(points: Sequence[Point], weak: float, strong: float, target: float) -> Summary:
    """Every metric of one curve; `target` is the quality the cost is read at."""
    return Summary(
        apgr=apgr(points, weak, strong),
        cpt50=cpt(points, weak, strong, 0.5),
        cpt80=cpt(points, weak, strong, 0.8),
        at_target=at_quality(points, target),
        default=default_point(points),
    )


def mean_summary(summaries: Sequence[Summary]) -> Summary:
    """The mean of several summaries (the random baseline over seeds); a metric some seed
    never reaches is None."""

    def avg(values: Sequence[float | None]) -> float | None:
        return None if not values or any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]

    def avg_point(ps: Sequence[Point | None]) -> Point | None:
        if not ps or any(p is None for p in ps):
            return None
        real = [p for p in ps if p is not None]
        m = len(real)
        return Point(sum(p.offset for p in real) / m, sum(p.strong_share for p in real) / m,
                     sum(p.quality for p in real) / m, sum(p.cost for p in real) / m)  # fmt: skip

    return Summary(
        apgr=avg([s.apgr for s in summaries]),
        cpt50=avg([s.cpt50 for s in summaries]),
        cpt80=avg([s.cpt80 for s in summaries]),
        at_target=avg_point([s.at_target for s in summaries]),
        default=avg_point([s.default for s in summaries]),
    )
