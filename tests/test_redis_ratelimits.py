"""Rate limits shared through a real Redis (`addon.state.redis_ratelimits`): two stores
standing in for two replicas admit together exactly what the limit allows, all scopes or
none, holds reconciled and released, the window slides, and a Redis that goes away leaves
each replica limiting on its own."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import redis

from addon.routing.ratelimit import Limited, Scope
from addon.state import redis_ratelimits
from addon.state.ratelimits import Hold
from addon.state.redis_ratelimits import RedisRateLimits
from tests.services import RedisServer, free_port, redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

RPM60 = Scope("client", "app", 60, None, "app")
TPM = Scope("client", "tok", None, 1000, "tok")


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on its own event loop (pytest sees its fixtures)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


@contextlib.asynccontextmanager
async def replicas(
    url: str, timeout_s: float = redis_ratelimits.TIMEOUT_S
) -> AsyncIterator[tuple[RedisRateLimits, RedisRateLimits]]:
    """Two stores on one Redis, as two replicas have."""
    a = RedisRateLimits(url, timeout_s=timeout_s)
    b = RedisRateLimits(url, timeout_s=timeout_s)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@sync
async def test_two_replicas_admit_exactly_the_limit_together(
    redis_url: str,
) -> None:
    # 200 calls at once through one Redis: on a loaded 2-core machine some take longer than
    # the production 0.5 s timeout, and a replica then admits on its own (by design, and
    # tested below) — this test is about the fleet's count, so Redis gets 5 s here
    async with replicas(redis_url, timeout_s=5.0) as (a, b):
        got = await asyncio.gather(*[(a if i % 2 else b).reserve([RPM60], 1) for i in range(200)])
        held = [g for g in got if isinstance(g, Hold)]
        refused = [g for g in got if isinstance(g, Limited)]
        assert len(held) == 60 and len(refused) == 140
        assert len({h.id for h in held}) == 60 and all(h.id > 0 for h in held)
        # the first admission leaves the window a minute after it: everyone is told about that
        waits = [r.retry_after_s for r in refused]
        assert all(58 < w <= 60 for w in waits), (min(waits), max(waits))
        assert all(r.dimension == "requests" and r.usage.requests == 60 for r in refused)
        assert a.blocked(RPM60) and b.blocked(RPM60)


@sync
async def test_all_scopes_or_none(redis_url: str) -> None:
    async with replicas(redis_url) as (a, b):
        full = Scope("policy", "p", 1, None, "p")
        assert isinstance(await a.reserve([full], 1), Hold)
        refused = await b.reserve([RPM60, full], 1)
        assert isinstance(refused, Limited) and refused.usage.scope == full
        # the client's window holds nothing of the refused request
        h = await a.reserve([RPM60], 1)
        assert isinstance(h, Hold)
        rows = {(r["scope"], r["name"]): r for r in a.snapshot()}
        assert rows[("client", "app")]["requests"] == 1


@sync
async def test_tokens_settle_to_the_real_usage_and_release_frees(redis_url: str) -> None:
    async with replicas(redis_url) as (a, b):
        first = await a.reserve([TPM], 900)
        assert isinstance(first, Hold)
        refused = await b.reserve([TPM], 200)
        assert isinstance(refused, Limited) and refused.dimension == "tokens"
        assert refused.usage.tokens == 900 and 58 < refused.retry_after_s <= 60
        a.settle(first, 300)
        await asyncio.wait(a._pending)  # the adjustment is sent without waiting for it
        second = await b.reserve([TPM], 650)
        assert isinstance(second, Hold)
        assert isinstance(await a.reserve([TPM], 100), Limited)  # 300 + 650 + 100 > 1000
        b.release(second)
        await asyncio.wait(b._pending)
        assert isinstance(await a.reserve([TPM], 650), Hold)
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        assert r.hget("orch:rl:client:tok:h", "sum") == "950"
        assert r.zcard("orch:rl:client:tok") == 2
        assert 0 < r.pttl("orch:rl:client:tok") <= 61_000  # keys go away with the window


@sync
async def test_never_fits_is_told_apart(redis_url: str) -> None:
    async with replicas(redis_url) as (a, _):
        refused = await a.reserve([TPM], 1001)
        assert isinstance(refused, Limited) and refused.never
        assert "lower max_tokens" in refused.message


@sync
async def test_the_window_slides(redis_url: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(redis_ratelimits, "WINDOW_S", 0.3)
    async with replicas(redis_url) as (a, b):
        two = Scope("client", "slide", 2, None)
        assert [isinstance(await x.reserve([two], 1), Hold) for x in (a, b, a)] == [
            True,
            True,
            False,
        ]
        refused = await b.reserve([two], 1)
        assert isinstance(refused, Limited) and 0 < refused.retry_after_s <= 0.3
        deadline = asyncio.get_running_loop().time() + 5
        while isinstance(await b.reserve([two], 1), Limited):  # poll: the oldest leaves at 0.3 s
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)


@sync
async def test_without_redis_each_replica_limits_on_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = RedisRateLimits(f"redis://127.0.0.1:{free_port()}/0")
    await gone.open()
    one = Scope("client", "solo", 1, None)
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        first = await gone.reserve([one], 1)
        second = await gone.reserve([one], 1)
    assert isinstance(first, Hold) and first.id < 0  # the local limiter's
    assert isinstance(second, Limited)
    assert sum("each replica limits on its own" in r.message for r in caplog.records) == 1
    gone.settle(first, 0)  # settles locally, no Redis call
    assert [r.get("local") for r in gone.snapshot()] == [True]
    await gone.close()


@sync
async def test_a_redis_restart_keeps_limiting(redis_server: RedisServer, redis_url: str) -> None:
    limits: Any = RedisRateLimits(redis_url)
    await limits.open()
    r = redis.Redis.from_url(redis_url)
    r.script_flush()  # as after a restart: the scripts are loaded again on first use
    got = [await limits.reserve([Scope("client", "flush", 2, None)], 1) for _ in range(3)]
    assert [isinstance(g, Hold) for g in got] == [True, True, False]
    await limits.close()


@sync
async def test_the_urls_own_timeout_rides_out_a_slow_redis(redis_url: str) -> None:
    # a Redis that answers after 1.5 s (CLIENT PAUSE): past the default 0.5 s the replica
    # limits alone (a local hold, id < 0); with `?socket_timeout=5` in the URL (README: Rate
    # limits) it waits and the fleet's Redis admits (id > 0)
    admin = redis.Redis.from_url(redis_url)
    got = {}
    for url in (redis_url, redis_url + "?socket_timeout=5&socket_connect_timeout=5"):
        store = RedisRateLimits(url)
        await store.open()
        try:
            await store.reserve([TPM], 1)  # connected and the scripts loaded, before the pause
            admin.client_pause(1500)
            held = await store.reserve([RPM60], 1)
        finally:
            await store.close()
        assert isinstance(held, Hold)
        got[url == redis_url] = held.id > 0
    assert got == {True: False, False: True}
