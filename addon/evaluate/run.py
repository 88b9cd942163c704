"""One evaluation: every method's curve and metrics, per benchmark and over all items.

Methods (each gives every item a complexity; `metrics.sweep` makes its curve):
    keyword   the keyword heuristic's complexity (`classify.features` without a scorer)
    learned   the learned scorer's (`classify.features` with it), when one is given
    random    a uniform random complexity per item (seeds 0..RANDOM_SEEDS-1; the metrics
              are the mean over the seeds, the curve drawn is seed 0's)
    oracle    1 where the strong model scores higher on the item, 0.5 on a tie, 0 where
              it scores lower: the best any router could do (an upper bound, not a router)
Baselines (one point each): always-strong, always-weak (the cheapest offering of each).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from addon.evaluate import metrics
from addon.evaluate.metrics import Outcome, Point, Summary
from addon.evaluate.replay import Replayer, Setup, features
from addon.evaluate.workload import Item
from addon.routing import scoring
from addon.routing.difficulty import DifficultyModel

RANDOM_SEEDS = 10
TARGET = 0.95  # the quality target: this share of the strong model's quality
HOLDOUT_MODULUS = 5  # an item is held out of training when crc32(id) % 5 == 0


def held_out(item_id: str, modulus: int = HOLDOUT_MODULUS) -> bool:
    """Whether the item is in the held-out split (`scripts/train_router.py` never trains on
    it): a fixed hash of its id, so the split is the same in every run and every process."""
    return zlib.crc32(item_id.encode("utf-8")) % modulus == 0


@dataclass(frozen=True)
class MethodResult:
    """One method's curve and metrics (`summary` None for a fixed baseline)."""

    name: str
    points: tuple[Point, ...]
    summary: Summary | None


@dataclass(frozen=True)
class BenchResult:
    """Every method on one benchmark (or "overall"): its size, the two models, their mean
    quality and cost per call, and the quality target."""

    benchmark: str
    items: int
    strong: str
    weak: str
    strong_quality: float
    weak_quality: float
    strong_cost: float
    weak_cost: float
    target: float
    methods: tuple[MethodResult, ...] = field(default=())


@dataclass(frozen=True)
class Prepared:
    """An item's replay: its complexities per method, outcomes per weight level and baselines."""

    item: Item
    keyword: float
    learned: float | None
    per_level: tuple[Outcome, ...]  # one per weight level (`addon.routing.scoring.LEVELS`)
    strong: Outcome
    weak: Outcome


def prepare(
    items: Sequence[Item], replayer: Replayer, scorer: DifficultyModel | None
) -> list[Prepared]:
    """Replay every item once through the router (see `replay`)."""
    setup = replayer.setup
    out = []
    for it in items:
        f = features(it)
        learned = features(it, scorer).complexity if scorer is not None else None
        out.append(Prepared(it, f.complexity, learned, replayer.outcomes(it, f),
                            replayer.fixed(it, f, setup.strong),
                            replayer.fixed(it, f, setup.weak)))  # fmt: skip
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def evaluate_group(name: str, group: Sequence[Prepared], setup: Setup) -> BenchResult:
    """Every method's curve and metrics over `group`."""
    strong_q = _mean([p.strong.score for p in group])
    weak_q = _mean([p.weak.score for p in group])
    target = TARGET * strong_q
    per_level = [p.per_level for p in group]

    def curve(label: str, cs: Sequence[float]) -> MethodResult:
        pts = metrics.sweep(cs, per_level, scoring.CUTS)
        return MethodResult(label, tuple(pts), metrics.summarize(pts, weak_q, strong_q, target))

    def fixed(label: str, pick: Callable[[Prepared], Outcome]) -> MethodResult:
        os = [pick(p) for p in group]
        pt = Point(0.0, _mean([float(o.strong) for o in os]), _mean([o.score for o in os]),
                   _mean([o.cost for o in os]))  # fmt: skip
        return MethodResult(label, (pt,), None)

    methods = [fixed("always-strong", lambda p: p.strong), fixed("always-weak", lambda p: p.weak)]
    randoms = []
    for seed in range(RANDOM_SEEDS):
        rng = random.Random(seed)
        randoms.append(curve("random", [rng.random() for _ in group]))
    methods.append(MethodResult("random", randoms[0].points,
                                metrics.mean_summary([r.summary for r in randoms if r.summary])))  # fmt: skip
    methods.append(curve("keyword", [p.keyword for p in group]))
    if group[0].learned is not None:
        methods.append(curve("learned", [p.learned or 0.0 for p in group]))
    methods.append(curve("oracle", [(p.strong.score - p.weak.score + 1) / 2 for p in group]))
    return BenchResult(
        benchmark=name, items=len(group), strong=setup.strong, weak=setup.weak,
        strong_quality=strong_q, weak_quality=weak_q,
        strong_cost=_mean([p.strong.cost for p in group]),
        weak_cost=_mean([p.weak.cost for p in group]), target=target, methods=tuple(methods),
    )  # fmt: skip


def evaluate(prepared: Sequence[Prepared], setup: Setup) -> list[BenchResult]:
    """Results per benchmark (in order of first appearance), then "overall" when there are
    several benchmarks."""
    names: dict[str, list[Prepared]] = {}
    for p in prepared:
        names.setdefault(p.item.benchmark, []).append(p)
    out = [evaluate_group(n, g, setup) for n, g in names.items()]
    if len(names) > 1:
        out.append(evaluate_group("overall", prepared, setup))
    return out
