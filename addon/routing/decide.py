"""decide(request) -> RoutingDecision: profile, policy, and the ordered chain of targets. Pure.

Rankings are computed per (profile, weight level) when the router is built (config load;
live latency stats only move the candidates observed: see `addon.ranking`); per request the
work is a walk down one pre-ranked list — the profile's at the request's complexity level
(`addon.routing.scoring.level`) — already rid of the candidates the request's needs rule
out, applying the size and state filters until the chain is full. Which profile and policy
apply is `addon.routing.selection`'s (re-exported here).

The decision's reasons name the request's complexity, its class, the learned scorer's p
when the features carry it, and the profile's effective weights at that level
(`complexity_reason`).

Every request is for one API (`RoutingRequest.api`: chat, completions, responses, messages,
embeddings). The caller passes the providers a request may go to (`providers`: keyed, and
speaking its API) and those that speak its API (`speaking`); the candidates left out for
want of the API are counted apart (filter `api`) and named in the reasons. An embeddings
request is routed inside one embedding space (`space`: the offerings of one model), never
to another model, and a generation request never to an embedding model (`embedding_model`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from addon.config.rules import Constraints, Profile
from addon.routing import chains, price_cap
from addon.routing import cost as costmod
from addon.routing.api_notes import api_hint, api_reason
from addon.routing.catalog import Candidate, requested_candidate
from addon.routing.classify import RequestFeatures
from addon.routing.ranking import Needs, Router, static_reason
from addon.routing.scoring import Scored, effective_weights, level
from addon.routing.selection import ALIAS_PREFIX as ALIAS_PREFIX
from addon.routing.selection import AUTO as AUTO
from addon.routing.selection import PROFILE_HEADER as PROFILE_HEADER
from addon.routing.selection import NoRoute as NoRoute
from addon.routing.selection import RoutingRequest as RoutingRequest
from addon.routing.selection import policy_matches as policy_matches
from addon.routing.selection import select_profile as select_profile

DEFAULT_MAX_OUTPUT = 1024  # assumed completion size for cost caps when the client sets none


@dataclass(frozen=True)
class RoutingDecision:
    """Where a request goes: the profile and policy that apply, the ordered chain of
    targets to try, what the client asked for, and why (each filter's count, reasons)."""

    profile: str
    profile_reason: str
    policy: str | None
    chain: tuple[Scored, ...]
    requested: Candidate | None  # what the client asked for (for savings), if known
    filtered: Mapping[str, int]
    mode: str  # "scored" | "route" | "pin" | "space"
    reasons: tuple[str, ...] = ()


# --------------------------------------------------------------------------- filters

# Filters that depend on the router's state, not on the request or the candidate alone: a
# request turned away only by these can be served later (503), not never (400).
STATE_FILTERS = frozenset({"no_key", "breaker_open", "provider_open", "rate_limited"})


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
        or ("embedding_model" if req.api != "embeddings" and embedding_model(c) else None)
        or size_reason(c, req.features, constraints.max_cost_usd if constraints else None)
        or usable(c)
    )


def embedding_model(c: Candidate) -> bool:
    """Whether `c` is an embedding model, which answers embeddings requests only: its
    canonical or provider id names it one (`embed`: text-embedding-3-small, nomic-embed-text,
    mistral-embed, titan-embed-text…). The catalog has no model kind yet, so the name is
    the evidence."""
    return "embed" in c.model_id.lower() or "embed" in c.provider_model_id.lower()


def complexity_reason(f: RequestFeatures, profile: Profile, weights: str | None = None) -> str:
    """The reasons' line on the request's complexity and the weights it gave, e.g.
    ``complexity 0.720 (complex; learned p 0.212): weights quality 0.51 latency 0.30 cost
    0.19 context 0.00 (level 7 of 0..8, shift +0.112)``; `weights` is that level's
    `Weights.describe` when the router has it (`Router.weights`, formatted at build)."""
    p = f.difficulty  # the learned scorer's p (None under `complexity: keyword`)
    learned = f"; learned p {p:.3f}" if p is not None else ""
    if weights is None:
        weights = effective_weights(profile, level(f.complexity)).describe()
    adjust = "" if profile.complexity_adjust else " (complexity_adjust: false)"
    return (
        f"complexity {f.complexity:.3f} ({f.complexity_class}{learned}): weights {weights}{adjust}"
    )


# --------------------------------------------------------------------------- decide


def _left_out(
    router: Router,
    key: tuple[str, int],
    total: int,
    speaking: frozenset[str] | None,
    filtered: dict[str, int],
) -> None:
    """Split the `total` candidates of ranking `key` left out of a request's providers into
    those at providers that do not speak its API (`api`) and the rest (`no_key`)."""
    no_api = (
        0
        if speaking is None
        else len(router.rankings[key]) - len(router.ranking_for(*key, speaking))
    )
    if no_api:
        filtered["api"] = no_api
    if total - no_api > 0:
        filtered["no_key"] = total - no_api


def decide(
    router: Router,
    req: RoutingRequest,
    usable: Callable[[Candidate], str | None],
    max_chain: int,
    providers: frozenset[str] | None = None,
    *,
    speaking: frozenset[str] | None = None,
    space: tuple[Candidate, ...] | None = None,
    diverse: bool = False,
) -> RoutingDecision | NoRoute:
    """The routing decision for one request.

    `usable(candidate)` answers the stateful questions (credentials for this request, breaker
    state) with a filter name, or None when the candidate may be tried. `providers` are the
    providers the request may be sent to, `speaking` those that speak its API (None: all
    do), `space` the only candidates an embeddings request may go to (ordered by score).
    `diverse`: a full scored chain also gets each lacking provider's best (`chains.newcomers`).
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
    lvl = level(req.features.complexity)
    filtered: dict[str, int] = {}
    model = req.features.requested_model or ""
    requested = requested_candidate(router.catalog, model, req.host)
    cap, cap_note = price_cap.cap_for(profile, constraints, requested)
    forced = why.startswith(("header", "model alias"))
    state_only = False  # some candidate fit the request and was turned away by state alone

    mode = "scored"
    chain: list[Scored] = []
    if space is not None or (not forced and (model in cfg.routes or (policy and policy.pin))):
        if providers is not None:
            full = len(router.rankings[(profile_name, lvl)])
            left = full - len(router.ranking_for(profile_name, lvl, providers))
            _left_out(router, (profile_name, lvl), left, speaking, filtered)
        position = router.position(profile_name, lvl)
        targets: list[Candidate] = list(space or ())
        if space is not None:
            mode = "space"
        elif policy and policy.pin:
            targets.extend(router.catalog.lookup(model))
            mode = "pin"
        routes = cfg.routes.get(model, ()) if space is None else ()
        for t in routes:
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
            r = reject_reason(c, req, constraints, min_ctx, usable, budgeted) or (
                cap.reason(c) if cap and mode != "space" else None
            )
            if r:
                filtered[r] = filtered.get(r, 0) + 1
                state_only = state_only or r in STATE_FILTERS
                continue
            chain.append(s)
            if len(chain) >= max_chain:
                break
        if mode == "space" or (policy and policy.pin and not cfg.routes.get(model)):
            chain.sort(key=lambda s: -s.score)
    else:
        f = req.features
        walk = router.walk(profile_name, lvl, providers, f, min_ctx, constraints, budgeted)
        if walk.no_key:
            _left_out(router, (profile_name, lvl), walk.no_key, speaking, filtered)
        max_cost = constraints.max_cost_usd if constraints else None
        need = f.prompt_tokens + (f.max_output_tokens or 0)
        generation = req.api != "embeddings"
        # One entry per (provider, model): a dated alias of a model that just failed at the
        # same provider would fail the same way, so it is no fallback.
        taken: set[tuple[str, str]] = set()
        stop = len(walk.entries)

        def unfit(c: Candidate) -> str | None:
            ctx = c.context_tokens
            if ctx is not None and need > ctx:  # size_reason's first check, inlined
                return "context"
            if generation and embedding_model(c):
                return "embedding_model"
            if cap is not None and cap.reason(c):
                return price_cap.FILTER
            return (size_reason(c, f, max_cost) if max_cost is not None else None) or usable(c)

        for i, s in enumerate(walk.entries):
            c = s.candidate
            ident = (c.provider, c.model_id)
            if ident in taken:
                continue
            r = unfit(c)
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
        if diverse and providers is not None and len(chain) >= max_chain:
            rest = walk.entries[stop + 1 : stop + 1 + chains.PROVIDER_SCAN]
            # a way out of a provider-wide outage: the best of up to NEWCOMERS more providers
            chain.extend(chains.newcomers(chain, rest, providers, unfit, chains.NEWCOMERS))

    if not chain:
        detail = ", ".join(f"{k}: {v}" for k, v in Counter(filtered).most_common())
        detail = detail or "catalog is empty"
        what = {
            "pin": f"model {model!r} (pinned by policy)",
            "route": f"route {model!r}",
            "space": f"the embedding space of {model!r}",
        }.get(mode, f"profile {profile_name!r}")
        # a candidate that fits the request but is unusable right now (keys, breakers, rate
        # limits) is the router's state: 503; else the request cannot be served here: 400
        status = 503 if state_only or (filtered and set(filtered) <= STATE_FILTERS) else 400
        return NoRoute(
            status,
            f"no candidate can serve this request under {what}; filtered out: {detail}; "
            + (
                "a model that fits is unusable right now (open breaker, rate limit or no key): "
                "retry shortly, or check `orchestrator status`"
                if status == 503
                else "ask for less (context, tools, images) or relax the policy's constraints"
            )
            + api_hint(router, req.api, speaking, filtered),
            "no_candidate",
            profile_name,
            policy.name if policy else None,
            filtered,
        )
    best = chain[0]
    note = None
    if mode == "scored":  # the complexity and the weights it gave (a pinned chain has none)
        note = complexity_reason(req.features, profile, router.weights.get((profile_name, lvl)))
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
            *([note] if note else []),
            *api_reason(router, req.api, speaking, filtered),
            *([cap.note(filtered.get(price_cap.FILTER, 0))] if cap else []),
            *([cap_note] if cap_note else []),
            f"{mode}: {best.candidate.key} score {best.score:.3f} = {router.explain(best)}",
        ),
    )
