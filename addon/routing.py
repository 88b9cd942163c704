"""decide(request) -> RoutingDecision: profile, policy, and the ordered chain of targets. Pure.

Rankings are computed per (profile, complexity class) when the router is built (config load,
or when live latency stats change); per request the work is a walk down one pre-ranked list
applying the hard filters until the chain is full.
"""

from __future__ import annotations

import bisect
import fnmatch
import ipaddress
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from addon import cost as costmod
from addon.catalog import Candidate, Catalog
from addon.classify import RequestFeatures
from addon.config import Constraints, Policy
from addon.configload import Config
from addon.scoring import Norms, Scored, effective_weights, rank, static_norms

PROFILE_HEADER = "x-orchestrator-profile"
ALIAS_PREFIX = "orchestrator/"
AUTO = "auto"
CLASSES = ("simple", "medium", "complex")
DEFAULT_MAX_OUTPUT = 1024  # assumed completion size for cost caps when the client sets none


@dataclass(frozen=True)
class RoutingRequest:
    features: RequestFeatures
    host: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    client_addr: str
    client_key: bool  # the client sent its own API key (usable only at `host`)
    client_name: str | None = None  # authenticated router client (`clients:`), if any
    allowed_policies: frozenset[str] | None = None  # that client's `policies:`, None = all


@dataclass(frozen=True)
class RoutingDecision:
    profile: str
    profile_reason: str
    policy: str | None
    chain: tuple[Scored, ...]
    requested: Candidate | None  # what the client asked for (for savings), if known
    filtered: Mapping[str, int]
    mode: str  # "scored" | "route" | "pin"
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoRoute:
    status: int
    message: str
    code: str
    profile: str | None = None
    policy: str | None = None
    filtered: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Router:
    config: Config
    catalog: Catalog
    norms: Norms
    base: Mapping[tuple[str, str], tuple[Scored, ...]]  # with the neutral latency prior
    rankings: Mapping[tuple[str, str], tuple[Scored, ...]]  # with observed latencies
    # memo of rankings restricted to a set of providers (those with a usable key for a
    # request): per-request work walks only candidates that can be tried
    _subsets: dict[tuple[str, str, frozenset[str]], tuple[Scored, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    _positions: dict[tuple[str, str], dict[str, Scored]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # memo of the request-independent filter pass per filter signature (see `Walk`)
    _walks: dict[tuple[object, ...], Walk] = field(default_factory=dict, compare=False, repr=False)
    _explained: dict[int, tuple[Scored, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def position(self, profile: str, cls: str) -> dict[str, Scored]:
        """candidate key -> its Scored entry in a ranking (memoized)."""
        got = self._positions.get((profile, cls))
        if got is None:
            got = {s.candidate.key: s for s in self.rankings[(profile, cls)]}
            self._positions[(profile, cls)] = got
        return got

    def ranking(self, profile: str, complexity_class: str = "medium") -> tuple[Scored, ...]:
        return self.rankings[(profile, complexity_class)]

    def ranking_for(self, profile: str, cls: str, providers: frozenset[str]) -> tuple[Scored, ...]:
        key = (profile, cls, providers)
        got = self._subsets.get(key)
        if got is None:
            got = tuple(
                s for s in self.rankings[(profile, cls)] if s.candidate.provider in providers
            )
            if len(self._subsets) > 256:
                self._subsets.clear()
            self._subsets[key] = got
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
        cls: str,
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
        key = (profile, cls, providers, f.needs_tools, f.needs_vision, f.needs_json_schema,
               min_context, id(constraints), budgeted)  # fmt: skip
        got = self._walks.get(key)
        if got is None:
            full = self.rankings[(profile, cls)]
            ranking = full if providers is None else self.ranking_for(profile, cls, providers)
            needs = Needs.of(f, min_context)
            got = Walk.build(ranking, needs, constraints, budgeted, len(full) - len(ranking))
            if len(self._walks) > 512:
                self._walks.clear()
            self._walks[key] = got
        return got


def build_router(config: Config, catalog: Catalog, latency_ms: Mapping[str, float]) -> Router:
    """Rank every candidate per (profile, complexity class) with the neutral latency prior,
    then move the few candidates the proxy has observed to their places."""
    norms = static_norms(catalog.candidates)
    base = {
        (name, cls): tuple(rank(catalog.candidates, effective_weights(p, cls), norms, {}))
        for name, p in config.profiles.items()
        for cls in CLASSES
    }
    return _with_latency(Router(config, catalog, norms, base, base), latency_ms)


def rerank(router: Router, latency_ms: Mapping[str, float]) -> Router:
    """The same router with observed latencies applied: only the observed candidates are
    re-scored and re-inserted (a few bisections), never the whole catalog."""
    return _with_latency(router, latency_ms)


def _order(s: Scored) -> tuple[float, str]:
    return (-s.score, s.candidate.key)


def _with_latency(router: Router, latency_ms: Mapping[str, float]) -> Router:
    if not latency_ms:
        return replace(
            router, rankings=router.base, _subsets={}, _positions={}, _walks={}, _explained={}
        )
    rankings = {}
    for (name, cls), base in router.base.items():
        weights = effective_weights(router.config.profiles[name], cls)
        kept = [s for s in base if s.candidate.key not in latency_ms]
        if len(kept) == len(base):
            rankings[(name, cls)] = base
            continue
        seen = [s.candidate for s in base if s.candidate.key in latency_ms]
        for s in rank(seen, weights, router.norms, latency_ms):
            bisect.insort(kept, s, key=_order)
        rankings[(name, cls)] = tuple(kept)
    return replace(router, rankings=rankings, _subsets={}, _positions={}, _walks={}, _explained={})


# --------------------------------------------------------------------------- policy & profile


def _glob(pattern: str | None, value: str) -> bool:
    return pattern is None or fnmatch.fnmatchcase(value.lower(), pattern.lower())


def _in_network(addr: str, net: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]) in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return False


def policy_matches(p: Policy, req: RoutingRequest) -> bool:
    """Every condition of the policy's `match` holds (the cheap equality checks first)."""
    m = p.match
    f = req.features
    if m.task is not None and m.task != f.task:
        return False
    if m.complexity is not None and m.complexity != f.complexity_class:
        return False
    for name, pat in m.headers.items():
        value = req.headers.get(name.lower())
        if value is None or not _glob(pat, value):
            return False
    if m.host is not None and not _glob(m.host, req.host):
        return False
    if m.path is not None and not _glob(m.path, req.path):
        return False
    if m.model is not None and not _glob(m.model, f.requested_model or ""):
        return False
    return m.client is None or m.client == req.client_name or _in_network(req.client_addr, m.client)


def select_profile(cfg: Config, req: RoutingRequest) -> tuple[str, str, Policy | None] | NoRoute:
    """(profile, why, matching policy) — header > model alias > policy > default."""
    allowed = req.allowed_policies
    policy = next(
        (p for p in cfg.policies
         if (allowed is None or p.name in allowed) and policy_matches(p, req)),
        None,
    )  # fmt: skip
    header = req.headers.get(PROFILE_HEADER)
    if header:
        if header not in cfg.profiles:
            known = ", ".join(sorted(cfg.profiles))
            return NoRoute(
                400,
                f"unknown profile {header!r} in X-Orchestrator-Profile; use one of: {known}",
                "unknown_profile",
            )
        return header, "header X-Orchestrator-Profile", policy
    model = req.features.requested_model or ""
    if model.startswith(ALIAS_PREFIX):
        name = model[len(ALIAS_PREFIX) :]
        if name not in cfg.profiles:
            return NoRoute(
                400,
                f"unknown profile {name!r} in model {model!r}; use one of: "
                f"{', '.join(ALIAS_PREFIX + k for k in sorted(cfg.profiles))}",
                "unknown_profile",
            )
        return name, f"model alias {model}", policy
    if policy and policy.profile:
        return policy.profile, f"policy {policy.name}", policy
    if model == AUTO:
        return cfg.settings.default_profile, "model alias auto (default profile)", policy
    return cfg.settings.default_profile, "default_profile", policy


# --------------------------------------------------------------------------- filters

# Filters that depend on the router's state, not on the request or the candidate alone: a
# request turned away only by these can be served later (503), not never (400).
STATE_FILTERS = frozenset({"no_key", "breaker_open", "rate_limited"})


@dataclass(frozen=True, slots=True)
class Needs:
    """The request-independent part of the filters: what the request needs of a model."""

    tools: bool
    vision: bool
    json_schema: bool
    min_context: int

    @classmethod
    def of(cls, f: RequestFeatures, min_context: int) -> Needs:
        return cls(f.needs_tools, f.needs_vision, f.needs_json_schema, min_context)


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
    if md.allow and not any(_glob(p, n) for p in md.allow for n in names):
        return "model_list"
    if any(_glob(p, n) for p in md.deny for n in names):
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


def size_reason(c: Candidate, f: RequestFeatures, max_cost_usd: float | None) -> str | None:
    """Why `c` cannot serve a request of this size (context window, per-request cost cap)."""
    ctx = c.context_tokens
    if ctx is not None and f.prompt_tokens + (f.max_output_tokens or 0) > ctx:
        return "context"
    if max_cost_usd is not None:
        est = costmod.estimate_max(
            f.prompt_tokens, f.max_output_tokens or DEFAULT_MAX_OUTPUT, c.price
        )
        if est is None:
            return "unpriced"
        if est > max_cost_usd:
            return "max_cost"
    return None


def reject_reason(
    c: Candidate,
    req: RoutingRequest,
    constraints: Constraints | None,
    min_context: int,
    usable: Callable[[Candidate], str | None],
    budgeted: bool = False,
) -> str | None:
    """Why `c` cannot serve `req` (a short filter name), or None if it can: the needs first,
    then the request's size, then the router's state (`usable`)."""
    return (
        static_reason(c, Needs.of(req.features, min_context), constraints, budgeted)
        or size_reason(c, req.features, constraints.max_cost_usd if constraints else None)
        or usable(c)
    )


@dataclass(frozen=True)
class Walk:
    """One ranking after the request-independent filters (`static_reason`), built once per
    filter signature: per request only the size and state checks run, over the survivors.

    `rejected_at` / `rejected_why` list the ranking position and filter of each candidate the
    static filters removed, so a decision can still report every candidate passed over
    before its chain was full.
    """

    entries: tuple[Scored, ...]
    positions: tuple[int, ...]  # each entry's position in the full ranking
    rejected_at: tuple[int, ...]  # ranking positions of the statically rejected, ascending
    rejected_why: tuple[str, ...]
    no_key: int = 0  # candidates left out of the ranking for want of a usable key
    # per entry: (entry, its (provider, model) identity, its context window)
    rows: tuple[tuple[Scored, tuple[str, str], int | None], ...] = field(
        default=(), compare=False, repr=False
    )
    _counts: dict[int, dict[str, int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        ranking: tuple[Scored, ...],
        needs: Needs,
        constraints: Constraints | None,
        budgeted: bool,
        no_key: int = 0,
    ) -> Walk:
        entries: list[Scored] = []
        positions: list[int] = []
        at: list[int] = []
        why: list[str] = []
        for i, s in enumerate(ranking):
            r = static_reason(s.candidate, needs, constraints, budgeted)
            if r is None:
                entries.append(s)
                positions.append(i)
            else:
                at.append(i)
                why.append(r)
        rows = tuple(
            (s, (s.candidate.provider, s.candidate.model_id), s.candidate.context_tokens)
            for s in entries
        )
        return cls(tuple(entries), tuple(positions), tuple(at), tuple(why), no_key, rows)

    def rejected_before(self, stop: int) -> dict[str, int]:
        """Static rejections ranked above entry `stop` (all of them when stop is past the
        end), per filter; memoized, the same stop recurs for similar requests."""
        got = self._counts.get(stop)
        if got is None:
            limit = (
                self.positions[stop]
                if stop < len(self.positions)
                else len(self.positions) + len(self.rejected_at)
            )
            n = bisect.bisect_left(self.rejected_at, limit)
            got = dict(Counter(self.rejected_why[:n]))
            if len(self._counts) > 64:
                self._counts.clear()
            self._counts[stop] = got
        return got


# --------------------------------------------------------------------------- decide


def requested_candidate(router: Router, req: RoutingRequest) -> Candidate | None:
    name = req.features.requested_model
    if not name:
        return None
    found = router.catalog.lookup(name)
    if not found:
        return None
    same_host = [c for c in found if router.catalog.providers[c.provider].host == req.host]
    priced = [c for c in (same_host or found) if c.price.known]
    return (priced or same_host or list(found))[0]


def decide(
    router: Router,
    req: RoutingRequest,
    usable: Callable[[Candidate], str | None],
    max_chain: int,
    providers: frozenset[str] | None = None,
) -> RoutingDecision | NoRoute:
    """The routing decision for one request.

    `usable(candidate)` answers the stateful questions (credentials for this request, breaker
    state) with a filter name, or None when the candidate may be tried.
    """
    cfg = router.config
    chosen = select_profile(cfg, req)
    if isinstance(chosen, NoRoute):
        return chosen
    profile_name, why, policy = chosen
    profile = cfg.profiles[profile_name]
    constraints = policy.constraints if policy else None
    budgeted = bool(policy and policy.budget)
    min_ctx = max(profile.min_context, (constraints.min_context or 0) if constraints else 0)
    cls = req.features.complexity_class
    filtered: dict[str, int] = {}
    requested = requested_candidate(router, req)
    model = req.features.requested_model or ""
    forced = why.startswith(("header", "model alias"))
    state_only = False  # some candidate fit the request and was turned away by state alone

    mode = "scored"
    chain: list[Scored] = []
    if not forced and (model in cfg.routes or (policy and policy.pin)):
        if providers is not None:
            full = len(router.rankings[(profile_name, cls)])
            if no_key := full - len(router.ranking_for(profile_name, cls, providers)):
                filtered["no_key"] = no_key
        position = router.position(profile_name, cls)
        targets: list[Candidate] = []
        if policy and policy.pin:
            targets.extend(router.catalog.lookup(model))
            mode = "pin"
        for t in cfg.routes.get(model, ()):
            targets.extend(
                c
                for c in router.catalog.lookup(t.model)
                if t.provider is None or c.provider == t.provider
            )
            mode = "route" if mode != "pin" else mode
        seen: set[str] = set()
        for c in targets:
            if c.key in seen:
                continue
            seen.add(c.key)
            s = position.get(c.key)
            if s is None:
                continue
            r = reject_reason(c, req, constraints, min_ctx, usable, budgeted)
            if r:
                filtered[r] = filtered.get(r, 0) + 1
                state_only = state_only or r in STATE_FILTERS
                continue
            chain.append(s)
            if len(chain) >= max_chain:
                break
        if policy and policy.pin and not cfg.routes.get(model):
            chain.sort(key=lambda s: -s.score)
    else:
        f = req.features
        walk = router.walk(profile_name, cls, providers, f, min_ctx, constraints, budgeted)
        if walk.no_key:
            filtered["no_key"] = walk.no_key
        max_cost = constraints.max_cost_usd if constraints else None
        need = f.prompt_tokens + (f.max_output_tokens or 0)
        # One entry per (provider, model): a dated alias of a model that just failed at the
        # same provider would fail the same way, so it is no fallback.
        taken: set[tuple[str, str]] = set()
        stop = len(walk.entries)
        for i, (s, ident, ctx) in enumerate(walk.rows):
            if ident in taken:
                continue
            c = s.candidate
            if ctx is not None and need > ctx:  # size_reason's first check, inlined
                r = "context"
            else:
                r = (max_cost is not None and size_reason(c, f, max_cost)) or usable(c)
            if r:
                filtered[r] = filtered.get(r, 0) + 1
                state_only = state_only or r in STATE_FILTERS
                continue
            chain.append(s)
            taken.add(ident)
            if len(chain) >= max_chain:
                stop = i
                break
        for r, n in walk.rejected_before(stop).items():
            filtered[r] = filtered.get(r, 0) + n

    if not chain:
        detail = ", ".join(f"{k}: {v}" for k, v in Counter(filtered).most_common())
        detail = detail or "catalog is empty"
        what = {"pin": f"model {model!r} (pinned by policy)", "route": f"route {model!r}"}.get(
            mode, f"profile {profile_name!r}"
        )
        # a candidate that fits the request but is unusable right now (keys, breakers, rate
        # limits) is the router's state: 503; otherwise the request itself cannot be served
        # under these rules: 400
        status = 503 if state_only or (filtered and set(filtered) <= STATE_FILTERS) else 400
        return NoRoute(
            status,
            f"no candidate can serve this request under {what}; filtered out: {detail}; "
            + (
                "a model that fits is unusable right now (open breaker, rate limit or no key): "
                "retry shortly, or check `orchestrator status`"
                if status == 503
                else "ask for less (context, tools, images) or relax the policy's constraints"
            ),
            "no_candidate",
            profile_name,
            policy.name if policy else None,
            filtered,
        )
    best = chain[0]
    return RoutingDecision(
        profile=profile_name,
        profile_reason=why,
        policy=policy.name if policy else None,
        chain=tuple(chain),
        requested=requested,
        filtered=filtered,
        mode=mode,
        reasons=(
            f"profile {profile_name} ({why})",
            f"{mode}: {best.candidate.key} score {best.score:.3f} = {router.explain(best)}",
        ),
    )
