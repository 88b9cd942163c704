"""Rankings per (profile, weight level) and the request-independent filter pass. Pure.

`build_router` scores every candidate per (profile, weight level: the complexity
adjustment's `addon.routing.scoring.LEVELS` steps) once, at config load, with the
latency prior (`addon.routing.scoring.latency_prior`): the *base* orders. Observed latencies move only the candidates they
were observed for, so `rerank` never rescores the catalog: it takes those few out of each
base order and bisects them back in, re-scored (`addon.routing.moves.Moves`). Everything
derived from an order — the order restricted to the providers a request has keys for, the
pass of the request-independent filters (`Walk`), a key -> entry index — is built once over
the base order, kept for as long as the config (the router's lineage: every rerank shares
it), and brought up to date with the same moves. A rerank or the first request after it
therefore costs a few list copies and bisections, not a walk of the 3,000+ candidate
catalog with the event loop held.
"""

from __future__ import annotations

import bisect
import fnmatch
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from addon.config.loaded import Config
from addon.config.rules import Constraints
from addon.routing.catalog import Candidate, Catalog
from addon.routing.classify import RequestFeatures
from addon.routing.moves import Moves
from addon.routing.scoring import (
    LEVELS,
    ORDER,
    Norms,
    Scored,
    effective_weights,
    level_of,
    rank,
    static_norms,
)

CLASSES = ("simple", "medium", "complex")

RankKey = tuple[str, int]  # (profile, weight level 0..LEVELS-1)


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class Needs:
    """The request-independent part of the filters: what the request needs of a model."""

    tools: bool
    vision: bool
    json_schema: bool
    min_context: int

    @classmethod
    def of(cls, f: RequestFeatures, min_context: int) -> Needs:
        """The needs of a request with features `f` that must fit `min_context` tokens."""
        return cls(f.needs_tools, f.needs_vision, f.needs_json_schema, min_context)


def glob(pattern: str | None, value: str) -> bool:
    """Case-insensitive shell-style match; no pattern matches everything."""
    return pattern is None or fnmatch.fnmatchcase(value.lower(), pattern.lower())


def static_reason(
    c: Candidate, needs: Needs, constraints: Constraints | None, budgeted: bool
) -> str | None:
    """Why `c` can never serve a request with these needs under these constraints."""
    if needs.min_context and (c.context_tokens or 0) < needs.min_context:
        return "min_context"
    if needs.tools and not c.tools:
        return "tools"
    if needs.vision and not c.vision:
        return "vision"
    if needs.json_schema and not c.json_schema:
        return "json_schema"
    if constraints is None:
        return None
    pa, md = constraints.providers, constraints.models
    if (pa.allow and c.provider not in pa.allow) or c.provider in pa.deny:
        return "provider_list"
    names = (c.model_id, c.provider_model_id)
    if md.allow and not any(glob(p, n) for p in md.allow for n in names):
        return "model_list"
    if any(glob(p, n) for p in md.deny for n in names):
        return "model_list"
    if constraints.min_quality is not None and (
        c.quality is None or c.quality < constraints.min_quality
    ):
        return "min_quality"
    if budgeted and not c.price.known:
        return "unpriced"  # a budget cannot reserve an unknown cost
    if constraints.max_cost_usd is not None and not c.price.known:
        return "unpriced"
    return None


# --------------------------------------------------------------------------- walk


@dataclass(frozen=True)
class Walk:
    """One ranking after the request-independent filters (`static_reason`), built once per
    filter signature: per request only the size and state checks run, over `entries`.

    `rejected` / `why` list the candidates the static filters removed, in ranking order, and
    the filter of each, so a decision can still report every candidate passed over before
    its chain was full.
    """

    entries: tuple[Scored, ...]  # the survivors, in ranking order
    rejected: tuple[Scored, ...]  # the statically rejected, in ranking order
    why: tuple[str, ...]  # the filter that rejected each
    no_key: int = 0  # candidates left out of the ranking for want of a usable key
    _counts: dict[int, dict[str, int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        ranking: Sequence[Scored],
        needs: Needs,
        constraints: Constraints | None,
        budgeted: bool,
        no_key: int = 0,
    ) -> Walk:
        """The filter pass over `ranking`; `no_key` counts the candidates already left out
        of it for want of a usable key."""
        entries: list[Scored] = []
        rejected: list[Scored] = []
        why: list[str] = []
        for s in ranking:
            r = static_reason(s.candidate, needs, constraints, budgeted)
            if r is None:
                entries.append(s)
            else:
                rejected.append(s)
                why.append(r)
        return cls(tuple(entries), tuple(rejected), tuple(why), no_key)

    def moved(
        self,
        moves: Moves,
        needs: Needs,
        constraints: Constraints | None,
        budgeted: bool,
        providers: frozenset[str] | None,
    ) -> Walk:
        """This walk (over a base order) after `moves`: a moved candidate keeps its verdict,
        which does not depend on its score, and takes its new place."""
        verdict = {
            s.candidate.key: static_reason(s.candidate, needs, constraints, budgeted)
            for s in moves.old
            if providers is None or s.candidate.provider in providers
        }
        entries = moves.apply(
            self.entries, lambda s: s.candidate.key in verdict and verdict[s.candidate.key] is None
        )
        rejected, why = list(self.rejected), list(self.why)
        for s in reversed(moves.old):
            if verdict.get(s.candidate.key) is not None:
                i = bisect.bisect_left(rejected, s.order, key=ORDER)
                if i < len(rejected) and rejected[i] is s:
                    del rejected[i], why[i]
        for s in moves.new:
            if (r := verdict.get(s.candidate.key)) is not None:
                i = bisect.bisect_left(rejected, s.order, key=ORDER)
                rejected.insert(i, s)
                why.insert(i, r)
        return Walk(tuple(entries), tuple(rejected), tuple(why), self.no_key)

    def rejected_before(self, stop: int) -> dict[str, int]:
        """Static rejections ranked above entry `stop` (all of them when stop is past the
        end), per filter; memoized, the same stop recurs for similar requests."""
        got = self._counts.get(stop)
        if got is None:
            n = (
                bisect.bisect_left(self.rejected, self.entries[stop].order, key=ORDER)
                if stop < len(self.entries)
                else len(self.rejected)
            )
            got = dict(Counter(self.why[:n]))
            if len(self._counts) > 64:
                self._counts.clear()
            self._counts[stop] = got
        return got


# --------------------------------------------------------------------------- router


@dataclass
class Lineage:
    """Memos over the base orders, shared by a router and every rerank of it (the base
    orders change only with the config, which builds a new router and a new lineage)."""

    subsets: dict[tuple[str, int, frozenset[str]], tuple[Scored, ...]] = field(default_factory=dict)
    walks: dict[tuple[object, ...], Walk] = field(default_factory=dict)
    index: dict[RankKey, dict[str, Scored]] = field(default_factory=dict)


@dataclass(frozen=True)
class Router:
    """The rankings of one config and catalog, and memos of what is derived from them.

    `base` holds each (profile, weight level) order with the latency prior, `rankings` the
    same orders with observed latencies, `moves` the edit from one to the other. A config
    load builds a new router (`build_router`), a rerank a copy (`with_rankings`); the
    memos are caches, left out of comparisons.
    """

    config: Config
    catalog: Catalog
    norms: Norms
    base: Mapping[RankKey, tuple[Scored, ...]]  # with the latency prior
    rankings: Mapping[RankKey, tuple[Scored, ...]]  # with observed latencies
    moves: Mapping[RankKey, Moves] = field(default_factory=dict)  # base -> rankings
    weights: Mapping[RankKey, str] = field(default_factory=dict)  # `Weights.describe` of each
    lineage: Lineage = field(default_factory=Lineage, compare=False, repr=False)
    # this router's memos (the rankings with its latencies): the ranking restricted to the
    # providers with a usable key for a request, key -> entry, the filter pass, explanations
    _subsets: dict[tuple[str, int, frozenset[str]], tuple[Scored, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _positions: dict[RankKey, dict[str, Scored]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _walks: dict[tuple[object, ...], Walk] = field(default_factory=dict, compare=False, repr=False)
    _explained: dict[int, tuple[Scored, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def base_index(self, key: RankKey) -> dict[str, Scored]:
        """candidate key -> its entry in a base order (memoized for the lineage)."""
        got = self.lineage.index.get(key)
        if got is None:
            got = {s.candidate.key: s for s in self.base[key]}
            self.lineage.index[key] = got
        return got

    def position(self, profile: str, lvl: int) -> dict[str, Scored]:
        """candidate key -> its Scored entry in a ranking (memoized)."""
        got = self._positions.get((profile, lvl))
        if got is None:
            got = self.base_index((profile, lvl))
            moves = self.moves.get((profile, lvl))
            if moves is not None:
                got = got | {s.candidate.key: s for s in moves.new}
            self._positions[(profile, lvl)] = got
        return got

    def ranking(self, profile: str, complexity: str | float | int = "medium") -> tuple[Scored, ...]:
        """The ranking of `profile` for a request of `complexity` (a class name: its middle,
        a 0..1 complexity, or a weight level as an int), best first."""
        lvl = complexity if isinstance(complexity, int) else level_of(complexity)
        return self.rankings[(profile, lvl)]

    def ranking_for(self, profile: str, lvl: int, providers: frozenset[str]) -> tuple[Scored, ...]:
        """The ranking restricted to `providers` (memoized)."""
        key = (profile, lvl, providers)
        got = self._subsets.get(key)
        if got is None:
            got = self._base_subset(key)
            moves = self.moves.get((profile, lvl))
            if moves is not None:
                got = tuple(moves.apply(got, lambda s: s.candidate.provider in providers))
            if len(self._subsets) > 256:
                self._subsets.clear()
            self._subsets[key] = got
        return got

    def _base_subset(self, key: tuple[str, int, frozenset[str]]) -> tuple[Scored, ...]:
        memo = self.lineage.subsets
        got = memo.get(key)
        if got is None:
            profile, lvl, providers = key
            got = tuple(s for s in self.base[(profile, lvl)] if s.candidate.provider in providers)
            if len(memo) > 256:
                memo.clear()
            memo[key] = got
        return got

    def explain(self, s: Scored) -> str:
        """`s.explain()`, formatted once per ranking entry (memoized by identity: the entries
        live as long as this router)."""
        got = self._explained.get(id(s))
        if got is None or got[0] is not s:
            got = (s, s.explain())
            if len(self._explained) > 4096:
                self._explained.clear()
            self._explained[id(s)] = got
        return got[1]

    def walk(
        self,
        profile: str,
        lvl: int,
        providers: frozenset[str] | None,
        f: RequestFeatures,
        min_context: int,
        constraints: Constraints | None,
        budgeted: bool,
    ) -> Walk:
        """The ranking with the request-independent filters applied (memoized): what a
        request with these needs may be routed to before its size and the router's state
        are looked at."""
        # constraints belong to this router's config (a policy's), so their identity is stable
        key = (profile, lvl, providers, f.needs_tools, f.needs_vision, f.needs_json_schema,
               min_context, id(constraints), budgeted)  # fmt: skip
        got = self._walks.get(key)
        if got is None:
            needs = Needs.of(f, min_context)
            got = self._base_walk(key, (profile, lvl), providers, needs, constraints, budgeted)
            moves = self.moves.get((profile, lvl))
            if moves is not None:
                got = got.moved(moves, needs, constraints, budgeted, providers)
            if len(self._walks) > 512:
                self._walks.clear()
            self._walks[key] = got
        return got

    def _base_walk(
        self,
        key: tuple[object, ...],
        rank_key: RankKey,
        providers: frozenset[str] | None,
        needs: Needs,
        constraints: Constraints | None,
        budgeted: bool,
    ) -> Walk:
        """The walk over the base order (memoized for the lineage under the walk's key)."""
        memo = self.lineage.walks
        got = memo.get(key)
        if got is None:
            full = self.base[rank_key]
            order = full if providers is None else self._base_subset((*rank_key, providers))
            got = Walk.build(order, needs, constraints, budgeted, len(full) - len(order))
            if len(memo) > 512:
                memo.clear()
            memo[key] = got
        return got


def build_router(config: Config, catalog: Catalog, latency_ms: Mapping[str, float]) -> Router:
    """Rank every candidate per (profile, weight level) with the latency prior, then move
    the few candidates the proxy has observed to their places. Levels whose weights are the
    same (a profile with `complexity_adjust: false`, a shift clamped at a zero weight) share
    one ranking."""
    norms = static_norms(catalog.candidates)
    base: dict[RankKey, tuple[Scored, ...]] = {}
    described: dict[RankKey, str] = {}
    for name, p in config.profiles.items():
        done: dict[tuple[float, ...], tuple[Scored, ...]] = {}
        for lvl in range(LEVELS):
            w = effective_weights(p, lvl)
            same = (*w.as_tuple(), w.free_penalty, float(w.price_prior))
            if same not in done:
                done[same] = tuple(rank(catalog.candidates, w, norms, {}))
            base[(name, lvl)] = done[same]
            described[(name, lvl)] = w.describe()
    return rerank(Router(config, catalog, norms, base, base, weights=described), latency_ms)


def reranked(
    router: Router, key: RankKey, latency_ms: Mapping[str, float]
) -> tuple[tuple[Scored, ...], Moves | None]:
    """One ranking with observed latencies applied: its base order with only the observed
    candidates re-scored and moved (see `Moves`), never the whole catalog rescored."""
    base = router.base[key]
    index = router.base_index(key)
    old = sorted((index[k] for k in latency_ms if k in index), key=ORDER)
    if not old:
        return base, None
    weights = effective_weights(router.config.profiles[key[0]], key[1])
    moves = Moves(tuple(old), tuple(rank((s.candidate for s in old), weights, router.norms,
                                         latency_ms)))  # fmt: skip
    return tuple(moves.apply(base)), moves


def with_rankings(
    router: Router, done: Mapping[RankKey, tuple[tuple[Scored, ...], Moves | None]]
) -> Router:
    """The router with rankings from `reranked` (one per base order). The lineage's memos
    carry over; this router's own start empty."""
    rankings = {key: done[key][0] for key in router.base}
    moves = {key: m for key, (_, m) in done.items() if m is not None}
    return replace(
        router, rankings=rankings, moves=moves, _subsets={}, _positions={}, _walks={}, _explained={}
    )


def rerank(router: Router, latency_ms: Mapping[str, float]) -> Router:
    """The same router with observed latencies applied, every ranking at once (the proxy
    runs `reranked` one ranking per event-loop turn instead: see `addon.proxy.runtime`)."""
    return with_rankings(router, {key: reranked(router, key, latency_ms) for key in router.base})
