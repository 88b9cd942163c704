"""Defaults that make sense: `:free` variants rank below paid ones, unobserved latency has a
prior from price, and `max_price_ratio` keeps routing from going dearer than the request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from addon.config.rules import Profile, Weights
from addon.routing import catalog as catmod
from addon.routing import decide, ranking, scoring
from addon.routing.catalog import OfferingRow
from tests.test_routing import ENV, POLICIES, PROFILES, make_req, usable_for, write_tree

OR_ENV = {**ENV, "OR_KEY": "k"}


def _row(pmid: str, out: float, quality: float | None = 1300.0) -> OfferingRow:
    return OfferingRow(
        model_id=pmid.split(":")[0], model_name=pmid, org="x", provider="openrouter",
        provider_model_id=pmid, input_per_mtok=out / 4, output_per_mtok=out,
        cached_input_per_mtok=None, context_tokens=128000, max_output_tokens=None,
        supports_tools=True, supports_vision=False, supports_json_schema=False,
        supports_reasoning=False, quality=quality, quality_lo=None, quality_hi=None,
        open_weights=True,
    )  # fmt: skip


def _router(tmp: Path, rows: list[OfferingRow], **over: Any) -> ranking.Router:
    cfg = write_tree(tmp, **over)
    return ranking.build_router(cfg, catmod.build_catalog(cfg, rows, OR_ENV), {})


def _keys(router: ranking.Router, profile: str) -> list[str]:
    return [s.candidate.key for s in router.ranking(profile) if s.candidate.provider == "or"]


# --------------------------------------------------------------------------- :free variants

FREE_ROWS = [_row("acme/m-7b", 0.2), _row("acme/m-7b:free", 0.0), _row("acme/n-70b", 0.9)]


@pytest.mark.parametrize("profile", ["balanced", "budget", "quality"])
def test_free_variants_are_not_first_by_default(tmp_path: Path, profile: str) -> None:
    order = _keys(_router(tmp_path, FREE_ROWS), profile)
    assert order.index("or:acme/m-7b") < order.index("or:acme/m-7b:free"), order
    free = next(s for s in _router(tmp_path, FREE_ROWS).ranking(profile)
                if s.candidate.key == "or:acme/m-7b:free")  # fmt: skip
    assert "free -0.300" in free.explain()


def test_free_penalty_can_be_switched_off(tmp_path: Path) -> None:
    profiles = {**PROFILES, "budget": {**PROFILES["budget"], "free_penalty": 0}}
    router = _router(tmp_path, FREE_ROWS, **{"profiles.yaml": {"profiles": profiles}})
    assert _keys(router, "budget")[0] == "or:acme/m-7b:free"  # price 0 is the cheapest
    assert "free" not in router.ranking("budget")[0].explain()


# --------------------------------------------------------------------------- latency prior


@pytest.mark.parametrize(("out", "expected"), [(0.6, 1 / (1 + 0.672)), (15.0, 1 / (1 + 2.4)),
                                               (1000.0, 1 / (1 + 20.0)), (0.0, 0.5)])  # fmt: skip
def test_latency_prior_formula(out: float, expected: float) -> None:
    cand = catmod.Candidate(
        "p:m", "m", "m", "p", "m", catmod.Price(out / 4, out, None), None, None,
        False, False, False, False, None, 0.25, "benchmarks",
    )  # fmt: skip
    assert scoring.latency_prior(cand) == pytest.approx(expected)


def test_speed_profile_tells_cheap_fast_models_from_dear_slow_ones(tmp_path: Path) -> None:
    rows = [_row("acme/big", 60.0, 1300.0), _row("acme/small", 0.4, 1300.0)]
    profiles = {**PROFILES, "speed": {"weights": {"quality": 0.1, "latency": 0.7, "cost": 0.2}},
                "neutral": {"weights": {"latency": 1.0}, "latency_prior": "neutral"}}  # fmt: skip
    router = _router(tmp_path, rows, **{"profiles.yaml": {"profiles": profiles}})
    speed = {s.candidate.key: dict(s.parts)["latency"] for s in router.ranking("speed")}
    assert speed["or:acme/small"] > speed["or:acme/big"]
    neutral = {s.candidate.key: s.score for s in router.ranking("neutral")}
    assert neutral["or:acme/small"] == neutral["or:acme/big"] == 0.5
    # an observed latency replaces the prior
    seen = ranking.rerank(router, {"or:acme/big": 50.0})
    assert _keys(seen, "speed")[0] == "or:acme/big"


def test_effective_weights_carry_the_profile_defaults() -> None:
    profile = Profile(weights=Weights(quality=1.0))
    w = scoring.effective_weights(profile, "medium")
    assert (w.free_penalty, w.price_prior) == (0.3, True)
    off = Profile(weights=Weights(quality=1.0), free_penalty=0, latency_prior="neutral")
    assert (scoring.effective_weights(off, "medium").free_penalty, off.max_price_ratio) == (0, None)


# --------------------------------------------------------------------------- max_price_ratio


def _capped_router(tmp: Path, profile_ratio: float | None = 1.0, policy_ratio: float | None = None):
    balanced: dict[str, Any] = {"weights": {"quality": 0.9, "cost": 0.1}}
    if profile_ratio is not None:
        balanced["max_price_ratio"] = profile_ratio
    profiles = {**PROFILES, "balanced": balanced}
    policies = [*POLICIES]
    if policy_ratio is not None:
        policies.insert(0, {"name": "thrifty", "match": {"headers": {"x-thrifty": "1"}},
                            "constraints": {"max_price_ratio": policy_ratio}})  # fmt: skip
    cfg = write_tree(tmp, **{"profiles.yaml": {"profiles": profiles},
                             "policies.yaml": {"policies": policies}})  # fmt: skip
    return ranking.build_router(cfg, catmod.build_catalog(cfg, [], ENV), {})


def _decide(router: ranking.Router, model: str, headers: dict[str, str] | None = None) -> Any:
    req = make_req({"model": model, "messages": [{"role": "user", "content": "hi"}]}, headers)
    return decide.decide(router, req, usable_for(router, req), 4)


def test_max_price_ratio_never_routes_dearer_than_requested(tmp_path: Path) -> None:
    router = _capped_router(tmp_path)
    d = _decide(router, "mid")  # mid: 1/3 USD per 1M; big (30 out) ranks first on quality
    assert isinstance(d, decide.RoutingDecision)
    limit = scoring.blended_price(router.catalog.lookup("mid")[0])
    assert limit is not None
    assert all((scoring.blended_price(s.candidate) or 0) <= limit for s in d.chain)
    assert "big" not in {s.candidate.model_id for s in d.chain}
    assert d.filtered["max_price_ratio"] >= 1
    assert any(r.startswith("max_price_ratio 1: at most 1.5 USD/1M blended (1× p2:mid)")
               for r in d.reasons), d.reasons  # fmt: skip


def test_max_price_ratio_is_off_by_default_and_needs_a_priced_request(tmp_path: Path) -> None:
    uncapped = _decide(_capped_router(tmp_path, profile_ratio=None), "mid")
    assert uncapped.chain[0].candidate.model_id == "big"
    unknown = _decide(_capped_router(tmp_path), "gpt-unknown")
    assert unknown.chain[0].candidate.model_id == "big"
    assert any("max_price_ratio 1 not applied" in r for r in unknown.reasons)


def test_policy_ratio_and_the_stricter_of_two(tmp_path: Path) -> None:
    router = _capped_router(tmp_path, profile_ratio=None, policy_ratio=0.5)
    d = _decide(router, "mid", {"x-thrifty": "1"})  # cap 0.75 USD/1M: small (0.15) only
    assert [s.candidate.model_id for s in d.chain] == ["small"]
    assert any(r.startswith("max_price_ratio 0.5:") for r in d.reasons)
    router = _capped_router(tmp_path, profile_ratio=0.5, policy_ratio=0.05)
    assert [s.candidate.model_id for s in _decide(router, "mid").chain] == ["small"]
    strict = _decide(router, "mid", {"x-thrifty": "1"})  # 0.05 wins: nothing keyed is that cheap
    assert isinstance(strict, decide.NoRoute) and strict.filtered["max_price_ratio"] >= 2


def test_everything_dearer_is_a_clear_refusal(tmp_path: Path) -> None:
    router = _capped_router(tmp_path, profile_ratio=0.01)
    d = _decide(router, "small")
    assert isinstance(d, decide.NoRoute) and d.status == 400
    assert "max_price_ratio" in d.message
