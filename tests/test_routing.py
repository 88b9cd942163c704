"""catalog + scoring + routing: pure decisions over a small declared catalog."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from addon.config import loader
from addon.config.loaded import Config
from addon.config.rules import DeclaredModel, Profile, Weights
from addon.routing import catalog as catmod
from addon.routing import classify, decide, ranking, scoring
from addon.routing.catalog import Candidate, OfferingRow

MODELS = [
    {
        "id": "big",
        "provider": "p1",
        "input_per_mtok": 10,
        "output_per_mtok": 30,
        "context_tokens": 200000,
        "quality": 1400,
        "capabilities": {"tools": True, "vision": True, "json_schema": True},
    },
    {
        "id": "mid",
        "provider": "p2",
        "input_per_mtok": 1,
        "output_per_mtok": 3,
        "context_tokens": 64000,
        "quality": 1250,
        "capabilities": {"tools": True},
    },
    {
        "id": "small",
        "provider": "p2",
        "input_per_mtok": 0.1,
        "output_per_mtok": 0.3,
        "context_tokens": 16000,
        "quality": 1100,
    },
    {"id": "mystery", "provider": "p3", "context_tokens": 32000},  # unpriced, unrated
    {
        "id": "keyed",
        "provider": "p4",
        "input_per_mtok": 0.01,
        "output_per_mtok": 0.01,
        "context_tokens": 1000000,
        "quality": 1500,
        "capabilities": {"tools": True, "vision": True, "json_schema": True},
    },
]
PROFILES = {
    "quality": {"weights": {"quality": 0.8, "latency": 0.1, "cost": 0.1}},
    "balanced": {"weights": {"quality": 0.4, "latency": 0.3, "cost": 0.3}},
    "budget": {"weights": {"quality": 0.1, "latency": 0.1, "cost": 0.8}},
    "long_context": {
        "weights": {"quality": 0.3, "latency": 0.2, "cost": 0.2, "context": 0.3},
        "min_context": 100000,
    },
}
POLICIES = [
    {"name": "cheap-batch", "match": {"headers": {"x-workload": "batch"}}, "profile": "budget"},
    {
        "name": "capped",
        "match": {"headers": {"x-cap": "*"}},
        "constraints": {"max_cost_usd": 0.001},
    },
    {
        "name": "only-p2",
        "match": {"model": "p2-*"},
        "constraints": {"providers": {"allow": ["p2"]}},
    },
    {
        "name": "no-small",
        "match": {"host": "internal.example"},
        "constraints": {"models": {"deny": ["small"]}, "min_quality": 1200},
    },
    {"name": "pinned", "match": {"headers": {"x-pin": "1"}}, "pin": True},
    {"name": "code", "match": {"task": "code"}, "profile": "quality"},
]
ROUTES = {"chain-me": ["small", {"provider": "p1", "model": "big"}]}


def write_tree(tmp: Path, **over: Any) -> Config:
    (tmp / "rules").mkdir(exist_ok=True)
    settings = {
        "intercept": ["api.openai.com"],
        "default_profile": "balanced",
        "providers": {
            "p1": {"base_url": "https://p1.example/v1", "api_key_env": "P1_KEY"},
            "p2": {"base_url": "https://p2.example/v1", "api_key_env": "P2_KEY"},
            "p3": {"base_url": "https://p3.example/v1"},  # keyless, not local: unpriced
            "p4": {"base_url": "https://api.openai.com/v1", "api_key_env": "P4_KEY"},
            "or": {
                "base_url": "https://openrouter.ai/api/v1",
                "api_key_env": "OR_KEY",
                "catalog": "openrouter",
            },
            "p5": {"base_url": "http://127.0.0.1:11434/v1", "local": True},
        },
    }
    settings.update(over.pop("settings", {}))
    (tmp / "orchestrator.yaml").write_text(yaml.safe_dump(settings))
    files = {
        "profiles.yaml": {"profiles": PROFILES},
        "policies.yaml": {"policies": POLICIES},
        "routes.yaml": {"routes": ROUTES},
        "models.yaml": {"models": MODELS},
    }
    files.update(over)
    for name, data in files.items():
        (tmp / "rules" / name).write_text(yaml.safe_dump(data))
    return loader.load(tmp / "orchestrator.yaml")


ENV = {"P1_KEY": "k1", "P2_KEY": "k2"}  # p4 has no key: usable only with the client's own


@pytest.fixture
def router(tmp_path: Path) -> ranking.Router:
    cfg = write_tree(tmp_path)
    cat = catmod.build_catalog(cfg, [], ENV)
    return ranking.build_router(cfg, cat, {})


def make_req(
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    host: str = "api.openai.com",
    client_key: bool = False,
) -> decide.RoutingRequest:
    body = body or {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    return decide.RoutingRequest(
        classify.features(body, requested_model=body.get("model")),
        host,
        "/v1/chat/completions",
        {k.lower(): v for k, v in (headers or {}).items()},
        "10.1.2.3",
        client_key,
    )


def usable_for(
    router: ranking.Router, req: decide.RoutingRequest, open_breakers: frozenset[str] = frozenset()
):
    def usable(c: Candidate) -> str | None:
        p = router.catalog.providers[c.provider]
        if not (p.keyless or p.has_env_key or (req.client_key and p.host == req.host)):
            return "no_key"
        return "breaker_open" if c.key in open_breakers else None

    return usable


def route(router: ranking.Router, req: decide.RoutingRequest, **kw: Any):
    return decide.decide(router, req, usable_for(router, req, **kw), 4)


def first(d: Any) -> str:
    assert isinstance(d, decide.RoutingDecision), d
    return d.chain[0].candidate.model_id


# --------------------------------------------------------------------------- profile selection


@pytest.mark.parametrize(
    ("model", "headers", "profile", "why"),
    [
        ("gpt-4o", {}, "balanced", "default_profile"),
        ("auto", {}, "balanced", "model alias auto"),
        ("orchestrator/quality", {}, "quality", "model alias orchestrator/quality"),
        ("gpt-4o", {"x-workload": "batch"}, "budget", "policy cheap-batch"),
        ("orchestrator/quality", {"x-workload": "batch"}, "quality", "model alias"),
        ("orchestrator/quality", {"X-Orchestrator-Profile": "budget"}, "budget", "header"),
    ],
)
def test_profile_precedence(
    router: ranking.Router, model: str, headers: dict[str, str], profile: str, why: str
) -> None:
    d = route(router, make_req({"model": model, "messages": []}, headers))
    assert isinstance(d, decide.RoutingDecision)
    assert d.profile == profile and d.profile_reason.startswith(why)


@pytest.mark.parametrize(
    ("model", "headers", "fragment"),
    [
        ("gpt-4o", {"X-Orchestrator-Profile": "turbo"}, "unknown profile 'turbo'"),
        ("orchestrator/turbo", {}, "unknown profile 'turbo' in model"),
    ],
)
def test_unknown_profile_is_a_clear_400(
    router: ranking.Router, model: str, headers: dict[str, str], fragment: str
) -> None:
    d = route(router, make_req({"model": model, "messages": []}, headers))
    assert isinstance(d, decide.NoRoute) and d.status == 400 and fragment in d.message
    assert "quality" in d.message  # lists the valid ones


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    ("profile", "winner"), [("quality", "big"), ("budget", "small"), ("long_context", "big")]
)
def test_profile_winner(router: ranking.Router, profile: str, winner: str) -> None:
    assert first(route(router, make_req(headers={"x-orchestrator-profile": profile}))) == winner


def test_parts_explain_the_score(router: ranking.Router) -> None:
    for s in router.ranking("balanced"):
        assert sum(v for _, v in s.parts) == pytest.approx(s.score, abs=1e-6)
        assert [m for m, _ in s.parts] == list(scoring.METRICS)


def test_unpriced_is_never_cheapest(router: ranking.Router) -> None:
    ranked = router.ranking("budget")
    mystery = next(s for s in ranked if s.candidate.model_id == "mystery")
    assert dict(mystery.parts)["cost"] == 0.0
    assert mystery.candidate.price.known is False


def test_observed_latency_moves_speedy_targets_up(tmp_path: Path) -> None:
    cfg = write_tree(tmp_path)
    cat = catmod.build_catalog(cfg, [], ENV)
    slow = ranking.build_router(cfg, cat, {"p1:big": 5000.0, "p2:mid": 50.0})
    fast = ranking.build_router(cfg, cat, {"p1:big": 50.0, "p2:mid": 5000.0})
    rank = lambda r: [s.candidate.key for s in r.ranking("balanced")]  # noqa: E731
    assert rank(slow).index("p2:mid") < rank(slow).index("p1:big")
    assert rank(fast).index("p1:big") < rank(fast).index("p2:mid")


@pytest.mark.parametrize(
    ("cls", "dq", "dc"), [("simple", -0.15, 0.15), ("medium", 0, 0), ("complex", 0.15, -0.15)]
)
def test_complexity_shifts_weight(router: ranking.Router, cls: str, dq: float, dc: float) -> None:
    p = router.config.profiles["balanced"]
    w = scoring.effective_weights(p, cls)
    assert w.quality == pytest.approx(0.4 + dq) and w.cost == pytest.approx(0.3 + dc)


@pytest.mark.parametrize(
    ("complexity", "lvl", "quality", "cost"),
    [
        (0.0, 0, 0.25, 0.45),  # the whole shift to cost
        (1 / 6, 0, 0.25, 0.45),  # the middle of "simple": the three-class weights
        (0.25, 1, 0.2875, 0.4125),  # 3/4 of it
        (0.33, 2, 0.325, 0.375),  # the class cut: half
        (0.45, 3, 0.3625, 0.3375),
        (0.5, 4, 0.4, 0.3),  # the profile as written
        (0.55, 5, 0.4375, 0.2625),
        (0.66, 6, 0.475, 0.225),
        (0.75, 7, 0.5125, 0.1875),
        (5 / 6, 8, 0.55, 0.15),  # the middle of "complex"
        (1.0, 8, 0.55, 0.15),
    ],
)
def test_complexity_moves_weight_continuously(
    router: ranking.Router, complexity: float, lvl: int, quality: float, cost: float
) -> None:
    p = router.config.profiles["balanced"]
    w = scoring.effective_weights(p, complexity)
    assert (w.level, w.quality, w.cost, w.latency) == (
        lvl, pytest.approx(quality), pytest.approx(cost), 0.3
    )  # fmt: skip
    assert w.shift == pytest.approx(quality - 0.4)
    assert scoring.level(complexity) == lvl


def test_the_shift_is_monotone_and_never_takes_a_weight_below_zero() -> None:
    p = Profile(weights=Weights(quality=0.05, latency=0.5, cost=0.1))
    grid = [scoring.effective_weights(p, i / 100) for i in range(101)]
    assert all(a.quality <= b.quality and a.cost >= b.cost for a, b in pairwise(grid))
    assert (grid[0].quality, grid[0].cost) == (0.0, pytest.approx(0.15))  # capped at quality's 0.05
    assert (grid[-1].quality, grid[-1].cost) == (pytest.approx(0.15), 0.0)  # and at cost's 0.1
    off = Profile(weights=Weights(quality=0.05, latency=0.5, cost=0.1), complexity_adjust=False)
    assert {scoring.effective_weights(off, i / 10).as_tuple() for i in range(11)} == {
        (0.05, 0.5, 0.1, 0.0)
    }


def test_levels_with_the_same_weights_share_one_ranking(tmp_path: Path) -> None:
    profiles = {**PROFILES, "flat": {"weights": {"quality": 1.0}, "complexity_adjust": False}}
    cfg = write_tree(tmp_path, **{"profiles.yaml": {"profiles": profiles}})
    router = ranking.build_router(cfg, catmod.build_catalog(cfg, [], ENV), {})
    assert len({id(router.base[("flat", k)]) for k in range(scoring.LEVELS)}) == 1
    assert len({id(router.base[("balanced", k)]) for k in range(scoring.LEVELS)}) == scoring.LEVELS
    # a class name reads its middle's level; the cli and /rankings ask by class
    assert router.ranking("balanced", "simple") is router.base[("balanced", 0)]
    assert router.ranking("balanced", "complex") is router.base[("balanced", 8)]


def test_the_first_choice_moves_up_in_quality_as_complexity_rises(router: ranking.Router) -> None:
    req = make_req()
    chosen = []
    for i in range(21):
        f = dataclasses.replace(req.features, complexity=i / 20)
        d = route(router, dataclasses.replace(req, features=f))
        assert isinstance(d, decide.RoutingDecision)
        chosen.append(d.chain[0].candidate)
    qualities = [c.quality_norm for c in chosen]
    assert qualities == sorted(qualities)
    assert len({c.key for c in chosen}) >= 2  # some level between the class middles flips it


@pytest.mark.parametrize(
    ("complexity", "line"),
    [
        (0.0, "complexity 0.000 (simple): weights quality 0.25 latency 0.30 cost 0.45 context "
              "0.00 (level 0 of 0..8, shift -0.150)"),
        (0.55, "complexity 0.550 (medium): weights quality 0.44 latency 0.30 cost 0.26 context "
               "0.00 (level 5 of 0..8, shift +0.037)"),
    ],
)  # fmt: skip
def test_the_decision_names_the_complexity_and_the_weights(
    router: ranking.Router, complexity: float, line: str
) -> None:
    req = make_req()
    req = dataclasses.replace(
        req, features=dataclasses.replace(req.features, complexity=complexity)
    )
    d = route(router, req)
    assert isinstance(d, decide.RoutingDecision)
    assert d.reasons[1] == line
    # formatted at build (`Router.weights`) or on the spot, the line is the same
    assert decide.complexity_reason(req.features, router.config.profiles["balanced"]) == line


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("body", "headers", "excluded", "reason"),
    [
        (
            {"messages": [{"role": "user", "content": "x" * 300000}]},
            {},
            {"mid", "small"},
            "context",
        ),
        ({"messages": [], "tools": [{"type": "function"}]}, {}, {"small", "mystery"}, "tools"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            {},
            {"mid", "small", "mystery"},
            "vision",
        ),
        (
            {"messages": [], "response_format": {"type": "json_schema"}},
            {},
            {"mid", "small", "mystery"},
            "json_schema",
        ),
        ({"model": "p2-anything", "messages": []}, {}, {"big", "mystery"}, "provider_list"),
        ({"messages": []}, {"x-cap": "1"}, {"big", "mid", "mystery"}, "max_cost"),
        (
            {"messages": []},
            {"x-orchestrator-profile": "long_context"},
            {"mid", "small", "mystery"},
            "min_context",
        ),
    ],
)
def test_hard_filters(
    router: ranking.Router, body: dict, headers: dict[str, str], excluded: set[str], reason: str
) -> None:
    body = {"model": "gpt-4o", **body}
    d = route(router, make_req(body, headers))
    assert isinstance(d, decide.RoutingDecision), d
    chosen = {s.candidate.model_id for s in d.chain}
    assert not chosen & excluded
    assert d.filtered.get(reason, 0) >= 1


def test_min_quality_and_model_deny(router: ranking.Router) -> None:
    d = route(router, make_req(host="internal.example"))
    chosen = {s.candidate.model_id for s in d.chain}
    assert chosen == {"big", "mid"}
    assert d.filtered["model_list"] == 1 and d.filtered["min_quality"] >= 1


def test_key_availability(router: ranking.Router) -> None:
    # p4 ("keyed") beats everything on paper but has no key configured
    d = route(router, make_req(headers={"x-orchestrator-profile": "quality"}))
    assert "keyed" not in {s.candidate.model_id for s in d.chain}
    # ... unless the client brought its own key for p4's host
    d = route(router, make_req(headers={"x-orchestrator-profile": "quality"}, client_key=True))
    assert first(d) == "keyed"
    # the client's key for another host does not count
    d = route(
        router,
        make_req(
            headers={"x-orchestrator-profile": "quality"}, client_key=True, host="elsewhere.example"
        ),
    )
    assert "keyed" not in {s.candidate.model_id for s in d.chain}


def test_open_breaker_skipped_and_all_open_is_503(router: ranking.Router) -> None:
    req = make_req(headers={"x-orchestrator-profile": "quality"})
    assert first(route(router, req, open_breakers=frozenset({"p1:big"}))) != "big"
    everything = frozenset(c.key for c in router.catalog.candidates)
    d = route(router, req, open_breakers=everything)
    assert isinstance(d, decide.NoRoute) and d.status == 503


def test_nothing_fits_is_a_400_naming_filters(router: ranking.Router) -> None:
    d = route(
        router, make_req({"model": "x", "messages": [{"role": "user", "content": "x" * 5_000_000}]})
    )
    assert isinstance(d, decide.NoRoute) and d.status == 400 and "context" in d.message


# --------------------------------------------------------------------------- routes & pins


def test_route_order_wins_over_scoring(router: ranking.Router) -> None:
    d = route(router, make_req({"model": "chain-me", "messages": []}))
    assert d.mode == "route"
    assert [s.candidate.key for s in d.chain] == ["p2:small", "p1:big"]


def test_route_ignored_when_profile_forced(router: ranking.Router) -> None:
    d = route(
        router,
        make_req({"model": "chain-me", "messages": []}, {"x-orchestrator-profile": "quality"}),
    )
    assert d.mode == "scored" and first(d) == "big"


def test_pin_keeps_requested_model(router: ranking.Router) -> None:
    d = route(router, make_req({"model": "small", "messages": []}, {"x-pin": "1"}))
    assert d.mode == "pin" and [s.candidate.model_id for s in d.chain] == ["small"]


# --------------------------------------------------------------------------- catalog


def _row(provider: str, pid: str, **kw: Any) -> OfferingRow:
    base: dict[str, Any] = dict(
        model_id=f"org/{pid}",
        model_name=pid,
        org="org",
        provider=provider,
        provider_model_id=pid,
        input_per_mtok=1.0,
        output_per_mtok=2.0,
        cached_input_per_mtok=None,
        context_tokens=8000,
        max_output_tokens=None,
        supports_tools=True,
        supports_vision=None,
        supports_json_schema=False,
        supports_reasoning=None,
        quality=1200.0,
        quality_lo=None,
        quality_hi=None,
        open_weights=None,
    )
    base.update(kw)
    return OfferingRow(**base)


def test_catalog_joins_db_rows_to_providers(tmp_path: Path) -> None:
    cfg = write_tree(tmp_path)
    rows = [
        _row("openrouter", "org/alpha"),
        _row("p1", "big", input_per_mtok=99.0),
        _row("unconfigured", "zzz"),
        _row("p5", "llama-listed-in-a-price-map"),
        _row("p5", "llama-installed", source="local"),
    ]
    cat = catmod.build_catalog(cfg, rows, ENV)
    keys = {c.key for c in cat.candidates}
    assert "or:org/alpha" in keys  # joined through `catalog: openrouter`
    assert not any(k.endswith(":zzz") for k in keys)  # no configured provider serves it
    assert "p5:llama-listed-in-a-price-map" not in keys  # local: only what it really serves
    assert "p5:llama-installed" in keys  # ... as found on its /v1/models by the refresh
    big = next(c for c in cat.candidates if c.key == "p1:big")
    assert big.source == "models.yaml" and big.price.input_per_mtok == 10  # rules win
    assert cat.lookup("ALPHA") and cat.lookup("org/alpha")
    mystery = next(c for c in cat.candidates if c.model_id == "mystery")
    assert mystery.price.input_per_mtok is None  # undeclared price: unknown, not free
    assert mystery.quality_norm == catmod.UNKNOWN_QUALITY_PRIOR
    local = catmod._declared(DeclaredModel(id="llama", provider="ollama"), "ollama:llama", True)
    assert local["price"].input_per_mtok == 0.0  # on a `local: true` provider it is free


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://api.openai.com/v1", "api.openai.com"),
        ("https://API.openai.com:443/v1", "api.openai.com"),
        ("http://127.0.0.1:11434/v1", "127.0.0.1:11434"),
        ("http://localhost:80/v1", "localhost"),
    ],
)
def test_host_of(url: str, host: str) -> None:
    assert catmod.host_of(url) == host


def test_chain_skips_aliases_of_the_same_model(tmp_path: Path) -> None:
    cfg = write_tree(tmp_path)
    rows = [
        _row("openrouter", "org/twin", model_id="org/twin"),
        _row("openrouter", "org/twin-2025-01-01", model_id="org/twin"),
    ]
    cat = catmod.build_catalog(cfg, rows, {**ENV, "OR_KEY": "k"})
    r = ranking.build_router(cfg, cat, {})
    d = route(r, make_req())
    idents = [(s.candidate.provider, s.candidate.model_id) for s in d.chain]
    assert len(idents) == len(set(idents)) and ("or", "org/twin") in idents


def test_provider_subset_matches_the_full_walk(router: ranking.Router) -> None:
    req = make_req(headers={"x-orchestrator-profile": "quality"})
    full = route(router, req)
    keyed = frozenset({"p1", "p2", "p3"})  # p4 has no key and no client key
    fast = decide.decide(router, req, usable_for(router, req), 4, keyed)
    assert isinstance(full, decide.RoutingDecision) and isinstance(fast, decide.RoutingDecision)
    assert [s.candidate.key for s in fast.chain] == [s.candidate.key for s in full.chain]
    assert fast.filtered["no_key"] >= 1
    assert router.ranking_for("quality", 0, keyed) is router.ranking_for("quality", 0, keyed)


def test_incremental_rerank_equals_a_full_ranking(tmp_path: Path) -> None:
    cfg = write_tree(tmp_path)
    cat = catmod.build_catalog(cfg, [], ENV)
    latency = {"p2:small": 4000.0, "p1:big": 20.0}
    fast = ranking.rerank(ranking.build_router(cfg, cat, {}), latency)
    for (name, cls), ranked in fast.rankings.items():
        full = scoring.rank(cat.candidates, scoring.effective_weights(cfg.profiles[name], cls),
                            fast.norms, latency)  # fmt: skip
        assert [(s.candidate.key, s.score) for s in ranked] == [
            (s.candidate.key, s.score) for s in full
        ]


# --------------------------------------------------------------------------- memoized walk


def reference_decide(
    router: ranking.Router, req: decide.RoutingRequest, usable: Any, max_chain: int
) -> tuple[list[str], dict[str, int]]:
    """Scored routing the slow way: every candidate through `reject_reason`, in ranking order,
    counting what was passed over before the chain was full."""
    chosen = decide.select_profile(router.config, req)
    assert not isinstance(chosen, decide.NoRoute)
    name, _, policy = chosen
    constraints = policy.constraints if policy else None
    cons_ctx = (constraints.min_context or 0) if constraints else 0
    min_ctx = max(router.config.profiles[name].min_context, cons_ctx)
    budgeted = bool(policy and policy.budget)
    chain: list[str] = []
    counts: dict[str, int] = {}
    taken: set[tuple[str, str]] = set()
    for s in router.rankings[(name, scoring.level(req.features.complexity))]:
        c = s.candidate
        needs = ranking.Needs.of(req.features, min_ctx)
        static = ranking.static_reason(c, needs, constraints, budgeted)
        if static is None and (c.provider, c.model_id) in taken:
            continue
        why = decide.reject_reason(c, req, constraints, min_ctx, usable, budgeted)
        if why:
            counts[why] = counts.get(why, 0) + 1
            continue
        chain.append(c.key)
        taken.add((c.provider, c.model_id))
        if len(chain) >= max_chain:
            break
    return chain, counts


def sized(tokens_of_text: int) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * tokens_of_text}]}


@pytest.mark.parametrize(
    ("body", "headers", "breakers"),
    [
        (None, {}, frozenset()),
        (None, {"x-orchestrator-profile": "quality"}, frozenset({"p1:big"})),
        ({"messages": [], "tools": [{"type": "function"}]}, {}, frozenset()),
        (sized(100_000), {}, frozenset()),  # context filter in the middle of the walk
        (sized(10), {"x-cap": "1"}, frozenset()),  # max_cost is per request size
        (None, {"host": "internal.example"}, frozenset({"p2:mid"})),
        (None, {"x-orchestrator-profile": "long_context"}, frozenset()),
    ],
)
def test_memoized_walk_equals_the_full_walk(
    router: ranking.Router, body: Any, headers: dict[str, str], breakers: frozenset[str]
) -> None:
    host = headers.pop("host", "api.openai.com")
    req = make_req(body, headers, host=host)
    usable = usable_for(router, req, breakers)
    for max_chain in (1, 2, 4, 10):
        for _ in range(2):  # the second decision comes from the memo
            d = decide.decide(router, req, usable, max_chain)
            chain, counts = reference_decide(router, req, usable, max_chain)
            got = (
                [s.candidate.key for s in d.chain] if isinstance(d, decide.RoutingDecision) else []
            )
            assert got == chain
            assert dict(d.filtered) == counts


def test_walk_memo_follows_a_rerank(tmp_path: Path) -> None:
    cfg = write_tree(tmp_path)
    cat = catmod.build_catalog(cfg, [], ENV)
    r = ranking.build_router(cfg, cat, {})
    req = make_req()

    def chain(router: ranking.Router) -> list[str]:
        d = route(router, req)
        assert isinstance(d, decide.RoutingDecision), d
        return [s.candidate.key for s in d.chain]

    before = chain(r)
    latency = {before[0]: 1e6}  # the winner turns very slow
    slow = ranking.rerank(r, latency)
    assert chain(slow) != before  # the old router's memo is not reused
    assert chain(slow) == chain(ranking.build_router(cfg, cat, latency))
    assert chain(r) == before


def _random_catalog(tmp_path: Path, rnd: random.Random) -> tuple[Config, catmod.Catalog]:
    """A few hundred offerings behind the "or" provider (OpenRouter's catalog), with random
    prices, windows, ratings and capabilities, including exact score ties."""
    cfg = write_tree(tmp_path)
    rows = [
        _row(
            "openrouter",
            f"org/m{i}",
            input_per_mtok=rnd.choice([None, 0.1, 1.0, rnd.uniform(0.01, 20)]),
            output_per_mtok=rnd.choice([0.3, 3.0, rnd.uniform(0.01, 60)]),
            context_tokens=rnd.choice([None, 8000, 32000, 128000, 1_000_000]),
            supports_tools=rnd.random() < 0.6,
            supports_vision=rnd.random() < 0.3,
            supports_json_schema=rnd.random() < 0.4,
            quality=rnd.choice([None, 1200.0, rnd.uniform(900, 1500)]),
        )
        for i in range(300)
    ]
    return cfg, catmod.build_catalog(cfg, rows, ENV)


@pytest.mark.parametrize("seed", range(4))
def test_reranked_memos_equal_a_fresh_build(tmp_path: Path, seed: int) -> None:
    """A rerank moves only the observed candidates (`ranking.Moves`) and brings the lineage's
    memos over the base orders up to date; everything must equal a router built from
    scratch with the same latencies, whether the memos were filled before the rerank or not."""
    rnd = random.Random(seed)
    cfg, cat = _random_catalog(tmp_path, rnd)
    assert len(cat.candidates) > 300
    keys = [c.key for c in cat.candidates]
    subsets = [frozenset({"openrouter"}), frozenset({"p1", "p2"}), frozenset({"openrouter", "p2"})]
    needs = [
        (make_req(), 0),
        (make_req({"messages": [], "tools": [{"type": "function"}]}), 0),
        (make_req({"messages": [], "response_format": {"type": "json_schema"}}), 100_000),
    ]
    policies = [None, *(p for p in cfg.policies if p.constraints)]

    def snapshot(r: Any) -> list[Any]:
        out: list[Any] = []
        for (name, cls), ranked in r.rankings.items():
            out.append([(s.candidate.key, s.score) for s in ranked])
            for providers in subsets:
                out.append([s.candidate.key for s in r.ranking_for(name, cls, providers)])
            out.append(sorted((k, s.score) for k, s in r.position(name, cls).items()))
            for req, min_ctx in needs:
                for policy in policies:
                    cons = policy.constraints if policy else None
                    budgeted = bool(policy and policy.budget)
                    for providers in (None, subsets[0]):
                        w = r.walk(name, cls, providers, req.features, min_ctx, cons, budgeted)
                        out.append((
                            [s.candidate.key for s in w.entries],
                            [s.candidate.key for s in w.rejected],
                            w.why,
                            w.no_key,
                            [r.rejected_before(w, i) for i in range(0, len(w.entries) + 9, 9)],
                        ))  # fmt: skip
        return out

    class Fast:
        """The router under test, asked through the same interface as the reference."""

        def __init__(self, router: ranking.Router) -> None:
            self.router = router
            self.rankings = router.rankings
            self.ranking_for = router.ranking_for
            self.position = router.position
            self.walk = router.walk

        def rejected_before(self, w: ranking.Walk, stop: int) -> dict[str, int]:
            return w.rejected_before(stop)

    class Reference:
        """The same questions answered the slow way: every order scored from scratch."""

        def __init__(self, latency: dict[str, float]) -> None:
            norms = scoring.static_norms(cat.candidates)
            self.rankings = {
                (n, c): scoring.rank(
                    cat.candidates, scoring.effective_weights(p, c), norms, latency
                )
                for n, p in cfg.profiles.items()
                for c in range(scoring.LEVELS)
            }

        def ranking_for(self, name: str, cls: int, providers: frozenset[str]) -> list[Any]:
            return [s for s in self.rankings[(name, cls)] if s.candidate.provider in providers]

        def position(self, name: str, cls: int) -> dict[str, Any]:
            return {s.candidate.key: s for s in self.rankings[(name, cls)]}

        def walk(self, name: str, cls: int, providers: Any, f: Any, min_ctx: int, cons: Any,
                 budgeted: bool) -> ranking.Walk:  # fmt: skip
            full = self.rankings[(name, cls)]
            order = full if providers is None else self.ranking_for(name, cls, providers)
            needs = ranking.Needs.of(f, min_ctx)
            return ranking.Walk.build(order, needs, cons, budgeted, len(full) - len(order))

        def rejected_before(self, w: ranking.Walk, stop: int) -> dict[str, int]:
            above = set(range(len(w.rejected)))  # every rejection, unless one ranks below
            if stop < len(w.entries):
                mark = w.entries[stop].score, w.entries[stop].candidate.key
                above = {i for i, s in enumerate(w.rejected)
                         if (-s.score, s.candidate.key) < (-mark[0], mark[1])}  # fmt: skip
            return dict(Counter(w.why[i] for i in sorted(above)))

    first = {k: rnd.uniform(10, 5000) for k in rnd.sample(keys, 40)}
    second = {k: rnd.uniform(10, 5000) for k in rnd.sample(keys, 60)}
    second[keys[0]] = second.get(keys[1], 300.0)  # a tie with another observed candidate
    base = ranking.build_router(cfg, cat, {})
    if seed % 2:
        snapshot(Fast(base))  # fill the lineage's memos before any rerank
    once = ranking.rerank(base, first)
    twice = ranking.rerank(once, second)
    assert once.moves and twice.moves  # the incremental path is the one under test
    assert snapshot(Fast(once)) == snapshot(Reference(first))
    assert snapshot(Fast(twice)) == snapshot(Reference(second))
    assert snapshot(Fast(base)) == snapshot(Reference({}))


def test_a_capable_candidate_behind_an_open_breaker_is_a_503(router: ranking.Router) -> None:
    # only "big" and "keyed" see images; keyed has no key, big's breaker is open: the request
    # can be served once big recovers, so it is the router's state (503), not a bad request
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    d = route(router, make_req(body), open_breakers=frozenset({"p1:big"}))
    assert isinstance(d, decide.NoRoute) and d.status == 503, d
    assert d.filtered["breaker_open"] == 1 and d.filtered["vision"] >= 1


# --------------------------------------------------------------------------- per API


def _speaking_route(router: ranking.Router, speaking: frozenset[str], **kw: Any) -> Any:
    req = make_req(headers={"x-orchestrator-profile": "quality"})
    req = replace(req, api="responses")
    keyed = frozenset(n for n, p in router.catalog.providers.items() if p.keyless or p.has_env_key)
    usable = usable_for(router, req)
    return decide.decide(router, req, lambda c: usable(c) if c.provider in speaking else "api",
                         4, keyed & speaking, speaking=speaking, **kw)  # fmt: skip


def test_providers_that_do_not_speak_the_api_are_left_out_and_named(
    router: ranking.Router,
) -> None:
    d = _speaking_route(router, frozenset({"p2", "p3"}))
    assert isinstance(d, decide.RoutingDecision)
    assert {s.candidate.provider for s in d.chain} <= {"p2", "p3"}
    assert d.filtered["api"] == 2  # p1:big, p4:keyed
    assert "no_key" not in d.filtered
    assert "api responses: 2 candidate(s) left out at providers that do not speak it " \
           "(or, p1, p4, p5)" in d.reasons  # fmt: skip


def test_no_provider_speaking_the_api_is_a_400_with_the_fix(router: ranking.Router) -> None:
    d = _speaking_route(router, frozenset())
    assert isinstance(d, decide.NoRoute) and d.status == 400
    assert "filtered out: api: 5" in d.message
    assert "only providers that speak the responses API can serve it (none is configured): " \
           "list responses in `apis:` of a provider" in d.message  # fmt: skip


def test_an_embedding_space_keeps_its_model(router: ranking.Router) -> None:
    space = router.catalog.lookup("mid") + router.catalog.lookup("small")
    d = _speaking_route(router, frozenset({"p1", "p2", "p3"}), space=space)
    assert isinstance(d, decide.RoutingDecision) and d.mode == "space"
    assert [s.candidate.model_id for s in d.chain] == ["mid", "small"]  # by score, only these
    none = _speaking_route(router, frozenset({"p1"}), space=space)
    assert isinstance(none, decide.NoRoute) and "the embedding space of 'gpt-4o'" in none.message


# --------------------------------------------------------------------------- chain diversity


def test_a_full_chain_gets_the_best_target_of_each_provider_it_lacks(
    router: ranking.Router,
) -> None:
    req = make_req(headers={"x-orchestrator-profile": "quality"})
    usable = usable_for(router, req)
    providers = frozenset({"p1", "p2", "p3"})
    narrow = decide.decide(router, req, usable, 1, providers)
    wide = decide.decide(router, req, usable, 1, providers, diverse=True)
    assert isinstance(narrow, decide.RoutingDecision) and isinstance(wide, decide.RoutingDecision)
    assert len(narrow.chain) == 1 and wide.chain[0] == narrow.chain[0]
    assert sorted(s.candidate.provider for s in wide.chain) == ["p1", "p2", "p3"]  # one each
    assert wide.filtered == narrow.filtered  # counts stay those of the chain's own walk
    # a chain that is not full, or has every provider already, is left alone
    assert decide.decide(router, req, usable, 10, providers, diverse=True) == decide.decide(
        router, req, usable, 10, providers
    )


def test_an_open_provider_breaker_is_the_routers_state_503(router: ranking.Router) -> None:
    req = make_req()
    d = decide.decide(router, req, lambda c: "provider_open", 4)
    assert isinstance(d, decide.NoRoute) and d.status == 503
    assert "provider_open" in d.message and "retry shortly" in d.message
