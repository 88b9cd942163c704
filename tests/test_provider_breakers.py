"""Provider breakers: in-process and shared through Redis, beside the target breakers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
import redis

from addon.routing import breaker as brk
from addon.routing.breaker import BreakerStatus
from addon.state import memory
from addon.state.redisstate import RedisState
from tests.services import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

PROV = "openai"
TARGET = "openai:gpt-4o"


def status(b: memory.Breakers, key: str = PROV) -> BreakerStatus:
    state = b.get(key)
    return BreakerStatus.CLOSED if state is None else state.status


async def until(check: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- in-process


def test_local_provider_breaker_opens_probes_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        b = memory.LocalProviderBreakers()
        for _ in range(3):
            assert await b.acquire(PROV, 60.0)
            b.record(PROV, success=False, threshold=3)
        assert status(b) is BreakerStatus.OPEN
        assert not await b.acquire(PROV, 60.0)
        assert await b.acquire(PROV, 0.0)  # cooldown over: the one probe
        assert not await b.acquire(PROV, 0.0)
        b.release(PROV)
        assert await b.acquire(PROV, 0.0)
        b.record(PROV, success=True, threshold=3)
        assert b.get(PROV) == brk.CLOSED

    with caplog.at_level(logging.INFO, logger="orchestrator"):
        asyncio.run(main())
    assert "provider breaker openai: closed -> open" in caplog.text
    assert "provider breaker openai: open -> half_open (probe)" in caplog.text


def test_target_breakers_keep_their_log_line(caplog: pytest.LogCaptureFixture) -> None:
    b = memory.LocalBreakers()
    with caplog.at_level(logging.INFO, logger="orchestrator"):
        b.record(TARGET, success=False, threshold=1)
    assert "breaker openai:gpt-4o: closed -> open" in caplog.text
    assert "provider breaker" not in caplog.text


def test_breaker_rows_for_status() -> None:
    b = memory.LocalProviderBreakers()
    b.record("groq", success=False, threshold=3)
    b.record(PROV, success=False, threshold=1)
    rows = memory.breaker_rows(b.snapshot(), 60.0, key_name="provider")
    assert [r["provider"] for r in rows] == ["groq", PROV]
    assert rows[0] == {"provider": "groq", "state": "closed", "failures": 1, "cooldown_left_s": 0.0}
    assert rows[1]["state"] == "open" and 59.0 <= rows[1]["cooldown_left_s"] <= 60.0
    assert memory.breaker_rows({}, 60.0) == []
    assert set(memory.breaker_rows({TARGET: brk.CLOSED}, 60.0)[0]) == {
        "target", "state", "failures", "cooldown_left_s"
    }  # fmt: skip


# --------------------------------------------------------------------------- Redis


def test_a_provider_trip_is_seen_fleet_wide_within_the_sync_interval(redis_url: str) -> None:
    async def main() -> None:
        a, b = RedisState(redis_url, sync_every_s=0.05), RedisState(redis_url, sync_every_s=0.05)
        await a.start()
        await b.start()
        try:
            for _ in range(3):
                a.provider_breakers.record(PROV, success=False, threshold=3)
            assert status(a.provider_breakers) is BreakerStatus.OPEN  # at once, locally
            await until(lambda: status(b.provider_breakers) is BreakerStatus.OPEN,
                        "B to see A's provider trip", 0.5)  # fmt: skip
            # the target breakers are another family: untouched
            assert a.breakers.get(PROV) is None and b.breakers.get(PROV) is None
            assert a.breakers.snapshot() == {} == b.breakers.snapshot()

            fleet = [a, b] * 20
            wins = await asyncio.gather(*(s.provider_breakers.acquire(PROV, 0.0) for s in fleet))
            assert sum(wins) == 1, "one half-open probe for the whole fleet"
            winner = fleet[wins.index(True)]
            winner.provider_breakers.record(PROV, success=True, threshold=3)
            await until(
                lambda: a.provider_breakers.get(PROV) is None is b.provider_breakers.get(PROV),
                "both to see the provider closed",
            )
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_provider_failures_count_across_replicas_under_their_own_keys(redis_url: str) -> None:
    async def main() -> None:
        a, b = RedisState(redis_url, sync_every_s=0.05), RedisState(redis_url, sync_every_s=0.05)
        await a.start()
        await b.start()
        try:
            a.provider_breakers.record(PROV, success=False, threshold=3)
            a.breakers.record(TARGET, success=False, threshold=3)
            b.provider_breakers.record(PROV, success=False, threshold=3)
            await until(lambda: a.health()["queued"] == 0 == b.health()["queued"], "writes")
            b.provider_breakers.record(PROV, success=False, threshold=3)
            await until(
                lambda: (
                    status(a.provider_breakers) is status(b.provider_breakers) is BreakerStatus.OPEN
                ),
                "the third failure, from two replicas, to trip",
            )
            state = a.provider_breakers.get(PROV)
            assert state is not None and state.failures == 3
            t = a.breakers.get(TARGET)
            assert t is not None and t.status is BreakerStatus.CLOSED and t.failures == 1
        finally:
            await a.close()
            await b.close()

        r = redis.Redis.from_url(redis_url, decode_responses=True)
        assert r.hget("orch:provider-brk:openai", "status") == "open"
        assert r.smembers("orch:provider-brks") == {PROV}
        assert r.smembers("orch:brks") == {TARGET}
        assert r.hget("orch:brk:openai:gpt-4o", "failures") == "1"

    asyncio.run(main())
