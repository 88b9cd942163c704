"""RedisState against a real private redis-server: two instances on one database play two
proxy replicas."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import redis

from addon.errors import StateUnavailable
from addon.routing import breaker as brk
from addon.routing.breaker import BreakerStatus
from addon.routing.budget import (
    Alert,
    BudgetBook,
    BudgetRule,
    Exceeded,
    Reservation,
    to_units,
    window,
)
from addon.state.redisstate import RedisState
from tests.services import RedisServer, free_port, redis_server

__all__ = ["redis_server"]


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A fresh database whose URL allows 5 s a call: these replicas' agreement is asserted
    exactly, and a late answer on a loaded machine would make one count alone."""
    return redis_server.fleet_database()


KEY = "openai/gpt-4o"
RULE = BudgetRule("team", usd=1.0)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def until(check: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def replicas(url: str, n: int = 2, **kw: Any) -> AsyncIterator[list[RedisState]]:
    states = [RedisState(url, sync_every_s=0.05, **kw) for _ in range(n)]
    try:
        for s in states:
            await s.start()
        yield states
    finally:
        for s in states:
            await s.close()


def status(rs: RedisState, key: str = KEY) -> BreakerStatus:
    state = rs.breakers.get(key)
    return BreakerStatus.CLOSED if state is None else state.status


def drained(*states: RedisState) -> Callable[[], bool]:
    return lambda: all(s.health()["queued"] == 0 for s in states)


def account_key(rule: BudgetRule, scope: str, now: float) -> str:
    return f"orch:bud:{rule.name}:{scope}:{int(window(rule.per, now)[0])}"


# --------------------------------------------------------------------------- breakers


def test_a_trip_is_seen_fleet_wide_and_one_probe_is_handed_out(redis_url: str) -> None:
    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            for _ in range(3):
                a.breakers.record(KEY, success=False, threshold=3)
            assert status(a) is BreakerStatus.OPEN  # at once, before Redis answers
            await until(lambda: status(b) is BreakerStatus.OPEN, "B to see A's trip", 1.0)

            cooldown = 0.5
            assert not await b.breakers.acquire(KEY, cooldown)
            await until(
                lambda: all(
                    brk.available(s.breakers.get(KEY) or brk.CLOSED, time.monotonic(), cooldown)
                    for s in (a, b)
                ),
                "the cooldown on both replicas' clocks",
            )
            wins = await asyncio.gather(*(s.breakers.acquire(KEY, cooldown) for s in [a, b] * 25))
            assert sum(wins) == 1
            await until(
                lambda: all((st := s.breakers.get(KEY)) is not None and st.probing for s in (a, b)),
                "both to see the probe taken",
            )
            assert not await a.breakers.acquire(KEY, cooldown)

            a.breakers.record(KEY, success=True, threshold=3)
            assert a.breakers.get(KEY) is None
            await until(lambda: b.breakers.get(KEY) is None, "B to see the breaker closed", 1.0)

    run(main())


def test_failures_are_counted_across_replicas(redis_url: str) -> None:
    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            a.breakers.record(KEY, success=False, threshold=3)
            a.breakers.record(KEY, success=False, threshold=3)
            await until(drained(a), "A's failures to reach Redis")
            assert status(a) is BreakerStatus.CLOSED
            b.breakers.record(KEY, success=False, threshold=3)
            await until(
                lambda: status(a) is status(b) is BreakerStatus.OPEN, "the third failure to trip"
            )
            state = b.breakers.get(KEY)
            assert state is not None and state.failures == 3
            assert abs(time.monotonic() - state.opened_at) < 1.0  # on this process's clock

    run(main())


def test_a_released_probe_goes_to_another_replica_and_a_failed_probe_reopens(
    redis_url: str,
) -> None:
    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            a.breakers.record(KEY, success=False, threshold=1)
            await until(lambda: status(b) is BreakerStatus.OPEN, "B to see the trip")
            assert await a.breakers.acquire(KEY, 0.0)
            assert status(a) is BreakerStatus.HALF_OPEN
            assert not await b.breakers.acquire(KEY, 0.0)

            a.breakers.release(KEY)
            deadline = time.monotonic() + 2
            while not await b.breakers.acquire(KEY, 0.0):
                assert time.monotonic() < deadline, "the released probe never reached B"
                await asyncio.sleep(0.01)

            b.breakers.record(KEY, success=False, threshold=1)
            await until(
                lambda: (
                    (s := a.breakers.get(KEY)) is not None
                    and s.status is BreakerStatus.OPEN
                    and not s.probing
                ),
                "A to see the failed probe re-open the breaker",
            )

    run(main())


def test_successes_on_a_healthy_target_never_reach_redis(redis_url: str) -> None:
    async def main() -> None:
        async with replicas(redis_url, 1) as (a,):
            for _ in range(1000):
                a.breakers.record(KEY, success=True, threshold=3)
            assert a.health()["queued"] == 0

            a.breakers.record(KEY, success=False, threshold=3)
            await until(drained(a), "the failure to reach Redis")
            with redis.Redis.from_url(redis_url) as r:
                assert r.hget(f"orch:brk:{KEY}", "failures") == b"1"
                a.breakers.record(KEY, success=True, threshold=3)  # resets the fleet's count
                await until(drained(a), "the reset to reach Redis")
                assert not r.exists(f"orch:brk:{KEY}")
                assert r.smembers("orch:brks") == set()

    run(main())


def test_breakers_decide_locally_while_redis_is_down() -> None:
    async def main() -> None:
        async with replicas(f"redis://127.0.0.1:{free_port()}/0", 1) as (a,):
            assert a.health()["connected"] is False and a.health()["last_error"]
            a.breakers.record(KEY, success=False, threshold=1)
            assert status(a) is BreakerStatus.OPEN
            assert await a.breakers.acquire(KEY, 0.0)
            assert not await a.breakers.acquire(KEY, 0.0)
            a.breakers.release(KEY)
            assert await a.breakers.acquire(KEY, 0.0)
            assert a.health()["queued"] == 2  # the verdict and the release, for later

    run(main())


# --------------------------------------------------------------------------- latency


def test_latency_converges_on_the_fleet_values(redis_url: str) -> None:
    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            for _ in range(3):
                a.latency.observe("t", 100.0)
                b.latency.observe("t", 300.0)
            b.latency.observe("only-b", 42.0)
            assert a.latency.values() == {"t": 100.0}  # local at once
            a.latency.dirty = False
            await until(
                lambda: (
                    a.latency.values() == b.latency.values()
                    and set(a.latency.values()) == {"t", "only-b"}
                ),
                "both replicas to agree",
            )
            assert 100.0 < a.latency.values()["t"] < 300.0
            assert a.latency.values()["only-b"] == 42.0
            assert a.latency.dirty

    run(main())


# --------------------------------------------------------------------------- budgets


def test_concurrent_reservations_on_two_replicas_never_overshoot(redis_url: str) -> None:
    rng = random.Random(7)
    now = time.time()
    limit = to_units(RULE.usd)

    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            pairs = list(
                zip(itertools.cycle([a, b]), [rng.uniform(0.005, 0.04) for _ in range(200)])
            )
            results = await asyncio.gather(
                *(s.budgets.reserve(RULE, "acme", amt, now) for s, amt in pairs)
            )
            admitted = [
                (s, r)
                for (s, _), r in zip(pairs, results, strict=True)
                if isinstance(r, Reservation)
            ]
            refused = [r for r in results if isinstance(r, Exceeded)]
            assert 10 < len(admitted) < 150 and len(admitted) + len(refused) == 200
            assert sum(to_units(r.amount) for _, r in admitted) <= limit  # all held at once
            assert len({r.id for _, r in admitted}) == len(admitted)
            for e in refused:
                assert e.spent == 0 and to_units(e.reserved) + to_units(e.requested) > limit

            actuals: list[float] = []

            async def settle(s: RedisState, r: Reservation) -> None:
                await asyncio.sleep(0)
                actual = r.amount * rng.random()
                s.budgets.settle(r, actual, now)
                actuals.append(actual)

            async def call(s: RedisState, amount: float) -> None:  # reserve, then settle
                r = await s.budgets.reserve(RULE, "acme", amount, now)
                if isinstance(r, Reservation):
                    await settle(s, r)

            await asyncio.gather(
                *(settle(s, r) for s, r in admitted),
                *(call(s, rng.uniform(0.005, 0.04)) for s in [a, b] * 100),
            )
            spent = sum(to_units(x) for x in actuals)
            assert spent <= limit
            await until(drained(a, b), "the settles to reach Redis")
            with redis.Redis.from_url(redis_url) as r:
                acct = r.hgetall(account_key(RULE, "acme", now))
            assert int(acct[b"spent"]) == spent and int(acct[b"held"]) == 0

            def agreed() -> bool:
                snap = a.budgets.snapshot(now)
                return snap == b.budgets.snapshot(now) and snap[0]["spent"] == spent / 1e10

            await until(agreed, "both snapshots to show the final spend")  # fmt: skip
            (row,) = a.budgets.snapshot(now)
            assert row["reserved"] == 0 and row["limit"] == 1.0 and row["scope"] == "acme"

    run(main())


def test_expired_holds_free_the_budget_but_their_spend_still_counts(redis_url: str) -> None:
    now = time.time()

    async def main() -> None:
        async with replicas(redis_url, 1, hold_ttl_s=0.3) as (a,):
            held = await a.budgets.reserve(RULE, "acme", 1.0, now)
            assert isinstance(held, Reservation)
            assert isinstance(await a.budgets.reserve(RULE, "acme", 0.5, now), Exceeded)
            deadline = time.monotonic() + 3
            while not isinstance(
                later := await a.budgets.reserve(RULE, "acme", 0.5, now), Reservation
            ):
                assert time.monotonic() < deadline, "the expired hold never freed the budget"
                await asyncio.sleep(0.02)
            a.budgets.settle(held, 0.4, now)
            a.budgets.settle(later, None, now)  # unpriced: the reserved amount is charged
            a.budgets.settle(later, 0.1, now)  # a second settle is ignored
            await until(drained(a), "the settles")
            with redis.Redis.from_url(redis_url) as r:
                assert int(r.hget(account_key(RULE, "acme", now), "spent") or 0) == to_units(0.9)

    run(main())


def test_an_alert_fires_once_across_the_fleet(redis_url: str) -> None:
    rule = BudgetRule("team", usd=1.0, alert_at=0.5)
    now = time.time()

    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            alerts: list[Alert] = []
            a.budgets.on_alert = b.budgets.on_alert = alerts.append

            async def spend(s: RedisState, usd: float) -> None:
                r = await s.budgets.reserve(rule, "acme", usd, now)
                assert isinstance(r, Reservation)
                s.budgets.settle(r, usd, now)
                await until(drained(s), "the settle")

            await spend(a, 0.3)
            assert alerts == []
            await spend(b, 0.25)
            start = window("day", now)[0]
            assert alerts == [Alert("team", "acme", start, 0.55, 1.0, 0.5)]
            assert alerts[0].message.startswith("budget 'team' for acme reached 55%")
            await asyncio.gather(spend(a, 0.1), spend(b, 0.1))
            assert len(alerts) == 1
            await until(
                lambda: all(s.budgets.snapshot(now)[0]["alerted"] for s in (a, b)),
                "both snapshots to show the alert",
            )

    run(main())


@pytest.mark.parametrize(
    ("seeded", "held", "requested"),
    [(0.9, 0.05, 0.2), (0.0, 0.0, 1.5), (0.5, 0.5, 0.000001)],
)
def test_exceeded_reads_like_the_budget_books(
    redis_url: str, seeded: float, held: float, requested: float
) -> None:
    now = time.time()
    start = window("day", now)[0]
    book = BudgetBook()
    book.seed(RULE, "acme", start, seeded)
    book.reserve(RULE, "acme", held, now)
    expected = book.reserve(RULE, "acme", requested, now)
    assert isinstance(expected, Exceeded)

    async def main() -> None:
        async with replicas(redis_url, 1) as (a,):
            await a.budgets.seed(RULE, "acme", start, seeded)
            assert isinstance(await a.budgets.reserve(RULE, "acme", held, now), Reservation)
            got = await a.budgets.reserve(RULE, "acme", requested, now)
            assert got == expected
            assert isinstance(got, Exceeded) and got.message == expected.message

    run(main())


def test_seed_counts_only_when_no_replica_has(redis_url: str) -> None:
    rule = BudgetRule("team", usd=1.0, alert_at=0.4)
    now = time.time()
    start = window("day", now)[0]

    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            alerts: list[Alert] = []
            a.budgets.on_alert = b.budgets.on_alert = alerts.append
            await a.budgets.seed(rule, "acme", start, 0.5)
            await b.budgets.seed(rule, "acme", start, 0.5)  # a restarted replica: not again
            await b.budgets.seed(rule, "other", start, 0.0)
            with redis.Redis.from_url(redis_url) as r:
                acct = r.hgetall(account_key(rule, "acme", now))
                assert int(acct[b"spent"]) == to_units(0.5)
                assert acct[b"seeded"] == b"1" and acct[b"alerted"] == b"1"
                assert r.exists(account_key(rule, "other", now))
            res = await b.budgets.reserve(rule, "acme", 0.1, now)
            assert isinstance(res, Reservation)
            b.budgets.settle(res, 0.1, now)
            await until(drained(b), "the settle")
            assert alerts == []  # alerted before the restart
            await until(
                lambda: [row["spent"] for row in a.budgets.snapshot(now)] == [0.6, 0.0],
                "A's snapshot",
            )
            with pytest.raises(ValueError, match="is not the start of a day window"):
                await a.budgets.seed(rule, "acme", start + 1, 0.5)

    run(main())


def test_reserve_fails_closed_and_hides_the_password_when_redis_is_down() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"

    async def main() -> None:
        async with replicas(url, 1) as (a,):
            with pytest.raises(StateUnavailable) as e:
                await a.budgets.reserve(RULE, "acme", 0.1, time.time())
            text = str(e.value)
            assert "budget 'team' cannot be checked" in text and "refused until it is back" in text
            health = a.health()
            assert health["kind"] == "redis" and health["connected"] is False
            assert "s3cret" not in repr(health) + text and "***" in health["where"]
            a.budgets.charge(RULE, "acme", 0.2, time.time())  # queued, never raises
            assert a.health()["queued"] == 1

    run(main())


def test_writes_made_during_an_outage_are_applied_when_redis_returns() -> None:
    srv = RedisServer()
    srv.start()
    now = time.time()
    url = f"redis://127.0.0.1:{srv.port}/0"

    async def main() -> None:
        async with replicas(url, 1) as (a,):
            res = await a.budgets.reserve(RULE, "acme", 0.5, now)
            assert isinstance(res, Reservation)
            assert srv.proc is not None
            srv.proc.terminate()
            await asyncio.to_thread(srv.proc.wait)
            a.budgets.settle(res, 0.25, now)
            a.budgets.charge(RULE, "acme", 0.125, now)
            a.breakers.record(KEY, success=False, threshold=1)
            await until(lambda: not a.health()["connected"], "the outage to be noticed")
            with pytest.raises(StateUnavailable):
                await a.budgets.reserve(RULE, "acme", 0.1, now)
            assert a.health()["queued"] == 3

            await asyncio.to_thread(srv.start)  # an empty Redis on the same port
            await until(lambda: a.health()["connected"], "the reconnect", 5.0)
            await until(drained(a), "the queued writes")
            with redis.Redis(port=srv.port) as r:
                assert int(r.hget(account_key(RULE, "acme", now), "spent") or 0) == to_units(0.375)
                assert r.hget(f"orch:brk:{KEY}", "status") == b"open"
            assert isinstance(await a.budgets.reserve(RULE, "acme", 0.5, now), Reservation)

    try:
        run(main())
    finally:
        srv.close()


def test_a_write_sent_twice_counts_once(redis_url: str) -> None:
    now = time.time()
    start, end = window("day", now)

    async def main() -> None:
        async with replicas(redis_url, 1) as (a,):
            keys, args = a.budgets._account("team", "acme", start, end)
            first = ("bud_charge", keys, [7, 7, *args, to_units(0.1), ""])
            await a._eval_many([first])
            await a._eval_many([first])  # e.g. resent after a timeout that hid the reply
            await a._eval_many([("bud_charge", keys, [8, 7, *args, to_units(0.2), ""])])
            with redis.Redis.from_url(redis_url) as r:
                assert int(r.hget(account_key(RULE, "acme", now), "spent") or 0) == to_units(0.3)

    run(main())


def test_the_write_queue_is_bounded() -> None:
    async def main() -> None:
        async with replicas(f"redis://127.0.0.1:{free_port()}/0", 1) as (a,):
            a.max_queued_writes = 3
            for _ in range(5):
                a.budgets.charge(RULE, "acme", 0.1, time.time())
            assert a.health()["queued"] == 3

    run(main())


def test_scripts_flushed_from_redis_are_loaded_again(redis_url: str) -> None:
    async def main() -> None:
        async with replicas(redis_url, 1) as (a,):
            with redis.Redis.from_url(redis_url) as r:
                r.script_flush()
            assert isinstance(await a.budgets.reserve(RULE, "acme", 0.1, time.time()), Reservation)

    run(main())
