"""Load balancing across deployments: the pure strategies (`addon.routing.balance`), the
`balance:` schema and its config checks, the calls-in-flight bookkeeping, and the counts
shared through a real Redis (`addon.state.redis_inflight`)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from addon.config import loader
from addon.config.schema_balance import Balance, Group, problems
from addon.errors import ConfigError
from addon.routing import balance as bal
from addon.routing.catalog import Candidate
from addon.routing.chains import Chain
from addon.routing.cost import Price
from addon.routing.domains import Judgement, Verdict
from addon.routing.fallback import Outcome, OutcomeKind
from addon.routing.scoring import Scored
from addon.state.inflight import LocalInFlight, Tracker
from addon.state.redis_inflight import RedisInFlight
from tests.services import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _cand(provider: str, model: str) -> Candidate:
    return Candidate(key=f"{provider}:{model}", model_id=model, name=model, provider=provider,
                     provider_model_id=model, price=Price(1.0, 2.0), context_tokens=8000,
                     max_output_tokens=None, tools=False, vision=False, json_schema=False,
                     reasoning=False, quality=1200.0, quality_norm=0.5, source="models.yaml")  # fmt: skip


def _chain(*keys: str) -> Chain:
    targets = tuple(Scored(_cand(*k.split(":")), 0.5, ()) for k in keys)
    return Chain(targets, tuple(f"slot {i}" for i in range(1, len(keys) + 1)))


def _keys(chain: Chain) -> list[str]:
    return [s.candidate.key for s in chain.targets]


POOL = Balance(groups={"pool": Group(deployments={"a": 5, "b": 3, "c": 2})})


# --------------------------------------------------------------------------- weighted


@pytest.mark.parametrize(
    ("u", "first"),
    [(0.0, 0), (0.49, 0), (0.5, 1), (0.79, 1), (0.8, 2), (0.999, 2), (1.0, 2)],
)
def test_weighted_pick_is_the_cumulative_weight_the_draw_lands_in(u: float, first: int) -> None:
    picks = bal.weighted([5, 3, 2], u)
    assert picks[0].index == first
    assert [p.index for p in picks[1:]] == [i for i in (0, 1, 2) if i != first]  # by weight
    assert "picked by weight" in picks[0].why and f"draw {u:.3f}" in picks[0].why


def test_weighted_zero_weight_is_never_first_but_stays_a_fallback() -> None:
    for u in (0.0, 0.3, 0.6, 0.9999):
        picks = bal.weighted([0, 1, 1], u)
        assert picks[0].index != 0
        assert picks[-1].index == 0


def test_weighted_without_a_draw_is_the_most_likely_order() -> None:
    picks = bal.weighted([1, 3, 2], None)
    assert [p.index for p in picks] == [1, 2, 0]
    assert picks[0].why == "most likely first pick, weight 3 of 6 (50%)"


def test_weighted_converges_to_the_weights_with_a_seeded_rng() -> None:
    rng = random.Random(20)
    firsts = Counter(bal.weighted([5, 3, 2], rng.random())[0].index for _ in range(30_000))
    for i, w in enumerate((0.5, 0.3, 0.2)):
        assert abs(firsts[i] / 30_000 - w) < 0.01, firsts


# --------------------------------------------------------------------------- least_busy


def test_least_busy_picks_the_fewest_in_flight() -> None:
    picks = bal.least_busy([4, 1, 2], [1, 1, 1], 0.99)
    assert [p.index for p in picks] == [1, 2, 0]
    assert picks[0].why == "least busy: 1 in flight"
    assert picks[1].why == "fallback, 2 in flight"


def test_least_busy_counts_per_unit_of_weight() -> None:
    # a deployment of weight 4 with 3 in flight is less busy than one of weight 1 with 1
    picks = bal.least_busy([3, 1], [4, 1], 0.5)
    assert picks[0].index == 0
    assert "0.75 per unit of weight" in picks[0].why


@pytest.mark.parametrize(("u", "first"), [(0.1, 0), (0.6, 2)])
def test_least_busy_ties_are_broken_by_weight_with_the_draw(u: float, first: int) -> None:
    picks = bal.least_busy([0, 5, 0], [1, 1, 1], u)
    assert picks[0].index == first
    assert "tied with 1 other(s): by weight" in picks[0].why
    assert picks[-1].index == 1


def test_least_busy_keeps_weight_zero_last() -> None:
    assert bal.least_busy([0, 3], [0, 1], 0.0)[0].index == 1


# --------------------------------------------------------------------------- latency


def test_latency_unmeasured_first_then_fastest() -> None:
    picks = bal.fastest([300.0, None, 120.0], [1, 1, 1], 0.9, explore=0.05)
    assert [p.index for p in picks] == [1, 2, 0]
    assert picks[0].why == "no latency sample yet: measured first"
    picks = bal.fastest([300.0, 80.0, 120.0], [1, 1, 1], 0.9, explore=0.05)
    assert [p.index for p in picks] == [1, 2, 0]
    assert picks[0].why == "fastest: 80 ms smoothed latency"


def test_latency_explores_by_weight_below_the_explore_share() -> None:
    # u = 0.04 < 0.05: weighted order with draw 0.8 -> the last of weights 1, 1, 3... lands on 2
    picks = bal.fastest([10.0, 20.0, 900.0], [1, 1, 3], 0.04, explore=0.05)
    assert picks[0].index == 2
    assert picks[0].why.startswith("exploring (draw 0.040 < explore 0.05)")


# --------------------------------------------------------------------------- rebalance


def test_rebalance_permutes_deployments_in_their_own_places_only() -> None:
    chain = _chain("a:m", "x:other", "b:m", "c:m", "y:more")
    out = bal.rebalance(chain, POOL, inflight={}, latency=dict, draw=lambda: 0.85)
    assert _keys(out.chain) == ["c:m", "x:other", "a:m", "b:m", "y:more"]
    assert out.chain.reasons[1] == "slot 2" and out.chain.reasons[4] == "slot 5"
    assert out.chain.reasons[0].startswith("balanced 1 of 3 (pool, weighted): picked by weight")
    assert out.lines == (
        "balance pool (weighted): m over 3 deployments, c first (picked by weight, weight 2 of "
        "10 (20%), draw 0.850); order c, a, b",
    )


def test_rebalance_never_mixes_models_or_groups() -> None:
    two = Balance(groups={"p": Group(deployments=["a", "b"]), "q": Group(deployments=["c", "d"])})
    chain = _chain("a:m1", "b:m2", "c:m1", "d:m1", "b:m1")
    out = bal.rebalance(chain, two, inflight={"a:m1": 9}, latency=dict, draw=lambda: 0.99)
    keys = _keys(out.chain)
    # equal weights, draw 0.99: the second of each pair first; m2 (alone in p) stays put
    assert keys[1] == "b:m2"
    assert {keys[0], keys[4]} == {"a:m1", "b:m1"} and keys[0] == "b:m1"
    assert {keys[2], keys[3]} == {"c:m1", "d:m1"} and keys[2] == "d:m1"
    assert [s.candidate.model_id for s in out.chain.targets] == [s.candidate.model_id
                                                                 for s in chain.targets]  # fmt: skip


def test_rebalance_uses_the_model_strategy_and_asks_latency_only_then() -> None:
    group = Group(deployments=["a", "b"], models={"fast-*": "latency", "busy": "least_busy"})
    asked: list[int] = []

    def latency() -> dict[str, float]:
        asked.append(1)
        return {"a:fast-1": 500.0, "b:fast-1": 50.0}

    cfg = Balance(groups={"g": group})
    out = bal.rebalance(_chain("a:busy", "b:busy"), cfg, inflight={"a:busy": 2},
                        latency=latency, draw=lambda: 0.0)  # fmt: skip
    assert _keys(out.chain) == ["b:busy", "a:busy"] and not asked
    out = bal.rebalance(_chain("a:fast-1", "b:fast-1"), cfg, inflight={},
                        latency=latency, draw=lambda: 0.5)  # fmt: skip
    assert _keys(out.chain) == ["b:fast-1", "a:fast-1"] and asked == [1]
    assert "(g, latency): fastest: 50 ms" in out.chain.reasons[0]


def test_rebalance_names_the_deployments_left_out() -> None:
    def absent(group: str, model: str, present: tuple[str, ...]) -> list[str]:
        return [f"{p} (provider_open)" for p in ("a", "b", "c") if p not in present]

    out = bal.rebalance(_chain("a:m", "b:m"), POOL, inflight={}, latency=dict,
                        draw=lambda: 0.1, absent=absent)  # fmt: skip
    assert out.lines[0].endswith("; skipped c (provider_open)")
    out = bal.rebalance(_chain("b:m"), POOL, inflight={}, latency=dict, draw=lambda: 0.1,
                        absent=absent)  # fmt: skip
    assert out.lines == ("balance pool: m at b only; skipped a (provider_open); c (provider_open)",)


def test_rebalance_without_groups_or_members_is_the_same_chain() -> None:
    chain = _chain("a:m", "b:m")
    assert bal.rebalance(chain, Balance(), inflight={}, latency=dict, draw=None).chain is chain
    other = _chain("x:m", "y:m")
    assert bal.rebalance(other, POOL, inflight={}, latency=dict, draw=None).chain is other


# --------------------------------------------------------------------------- schema


def test_group_deployments_as_a_list_weigh_one_each() -> None:
    assert Group(deployments=["a", "b"]).deployments == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"deployments": {"a": 0, "b": 0}}, "every deployment has weight 0"),
        ({"deployments": {}}, "at least one deployment"),
        ({"deployments": {"a": -1}}, "greater than or equal to 0"),
        ({"deployments": ["a"], "strategy": "round_robin"}, "'weighted', 'least_busy' or"),
        ({"deployments": ["a"], "explore": 2}, "less than or equal to 1"),
    ],
)
def test_group_refuses_what_cannot_balance(group: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Group.model_validate(group)


def test_problems_name_unknown_providers_and_providers_in_two_groups() -> None:
    cfg = Balance(groups={"p": Group(deployments=["a", "ghost"]), "q": Group(deployments=["a"])})
    got = problems(cfg, ["a", "b"])
    assert got == [
        (("balance", "groups", "p", "deployments", "ghost"),
         "deployment 'ghost' of group 'p' is not a configured provider",
         "add it under `providers:` or use one of: a, b"),
        (("balance", "groups", "q", "deployments", "a"), "provider 'a' is in groups 'p' and 'q'",
         "a provider is a deployment of one group only"),
    ]  # fmt: skip


def test_loader_reports_a_bad_deployment_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "profiles.yaml").write_text(
        yaml.safe_dump({"profiles": {"balanced": {"weights": {"quality": 1.0}}}})
    )
    cfg = {
        "providers": {"a": {"base_url": "https://a.example/v1"}},
        "balance": {"groups": {"pool": {"deployments": {"a": 1, "typo": 2}}}},
    }
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        loader.load(tmp_path / "orchestrator.yaml")
    text = str(e.value)
    assert "orchestrator.yaml:9:" in text, text  # the `typo:` line
    assert "deployment 'typo' of group 'pool' is not a configured provider" in text


# --------------------------------------------------------------------------- in flight

OK = Outcome(OutcomeKind.OK, 200)
FAILED = Outcome(OutcomeKind.SERVER_ERROR, 500)
J = Judgement(None, "", Verdict.SUCCESS, Verdict.SUCCESS)


@pytest.mark.parametrize(
    ("streaming", "outcome", "after_outcome"),
    [(False, OK, {}), (False, FAILED, {}), (True, FAILED, {}), (True, OK, {"a:m": 1})],
)
def test_tracker_holds_a_call_from_claim_to_outcome_or_request_end(
    streaming: bool, outcome: Outcome, after_outcome: dict[str, int]
) -> None:
    counts = LocalInFlight()
    tracker = Tracker(counts)
    told: list[str] = []

    async def acquire(c: Candidate) -> bool:
        return c.provider != "refused"

    claim, on_outcome = tracker.track("r1", acquire, lambda c, o, ms, j: told.append(c.key),
                                      streaming)  # fmt: skip
    c = _cand("a", "m")
    assert _run(claim(c)) is True
    assert _run(claim(_cand("refused", "m"))) is False
    assert dict(counts.counts()) == {"a:m": 1}
    on_outcome(c, outcome, 12.0, J)
    assert told == ["a:m"]  # the dispatcher's own bookkeeping still runs
    assert dict(counts.counts()) == after_outcome
    tracker.done("r1")
    assert dict(counts.counts()) == {}
    tracker.done("r1")  # twice is harmless
    assert dict(counts.counts()) == {}


def test_local_in_flight_never_goes_below_zero() -> None:
    counts = LocalInFlight()
    counts.end("x")
    counts.start("x")
    counts.start("x")
    counts.end("x")
    assert dict(counts.counts()) == {"x": 1}


async def _until(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_redis_in_flight_is_shared_by_replicas_and_withdrawn_on_close(redis_url: str) -> None:
    async def scenario() -> None:
        a, b = (
            RedisInFlight(redis_url, sync_every_s=0.05),
            RedisInFlight(redis_url, sync_every_s=0.05),
        )
        await a.open()
        await b.open()
        try:
            a.start("p:m")
            a.start("p:m")
            b.start("p:m")
            b.start("q:m")
            await _until(lambda: dict(b.counts()) == {"p:m": 3, "q:m": 1}, "b to see a's calls")
            await _until(lambda: dict(a.counts()) == {"p:m": 3, "q:m": 1}, "a to see b's calls")
            a.end("p:m")
            await _until(lambda: b.counts().get("p:m") == 2, "b to see a's call end")
            await a.close()
            await _until(lambda: dict(b.counts()) == {"p:m": 1, "q:m": 1}, "a's withdrawal")
        finally:
            await a.close()
            await b.close()

    _run(scenario())


def test_redis_in_flight_counts_this_replica_when_redis_is_down() -> None:
    async def scenario() -> None:
        dead = RedisInFlight("redis://127.0.0.1:9/0", sync_every_s=0.05)
        await dead.open()
        try:
            dead.start("p:m")
            await _until(lambda: dead._warned, "a failed sync to be noticed")
            assert dict(dead.counts()) == {"p:m": 1}
            assert dead._task is not None and not dead._task.done()  # it keeps retrying
        finally:
            await dead.close()

    _run(scenario())
