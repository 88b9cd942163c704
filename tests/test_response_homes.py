"""Response homes: the in-process store (expiry by `now`, the size bound, odd ids) and the
Redis one against a real private redis-server, two `RedisState`s playing two replicas."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from addon.state.redis_connection import RedisConnection
from addon.state.redis_response_homes import RedisResponseHomes
from addon.state.redis_writes import WriteQueue
from addon.state.redisstate import RedisState
from addon.state.response_homes import (
    DEFAULT_TTL_S,
    MAX_ID_CHARS,
    LocalResponseHomes,
    ResponseHomes,
)
from tests.services import RedisServer, free_port, redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

ID = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452e3a6e9"
NOW = 1_700_000_000.0


def home(homes: ResponseHomes, response_id: str, now: float = NOW) -> str | None:
    return asyncio.run(homes.home(response_id, now))


# --------------------------------------------------------------------------- in-process


def test_a_home_is_known_until_its_ttl_has_passed() -> None:
    homes = LocalResponseHomes(ttl_s=60.0)
    homes.remember(ID, "openai", NOW)
    assert home(homes, ID, NOW) == "openai"
    assert home(homes, ID, NOW + 59.9) == "openai"
    assert home(homes, ID, NOW + 60.0) is None
    assert len(homes) == 0  # the expired home is forgotten
    assert home(homes, ID, NOW) is None  # and stays forgotten


def test_the_default_ttl_is_openais_30_days() -> None:
    assert DEFAULT_TTL_S == 30 * 86_400
    homes = LocalResponseHomes()
    homes.remember(ID, "openai", NOW)
    assert home(homes, ID, NOW + 29.9 * 86_400) == "openai"
    assert home(homes, ID, NOW + 30 * 86_400) is None


def test_unknown_ids_have_no_home() -> None:
    homes = LocalResponseHomes()
    homes.remember(ID, "openai", NOW)
    assert home(homes, "resp_other", NOW) is None


def test_remembering_again_renews_the_home() -> None:
    homes = LocalResponseHomes(ttl_s=60.0)
    homes.remember(ID, "openai", NOW)
    homes.remember(ID, "azure", NOW + 50)
    assert home(homes, ID, NOW + 100) == "azure"
    assert len(homes) == 1


@pytest.mark.parametrize(("bound", "remembered"), [(1, 1), (3, 2), (3, 3), (3, 10)])
def test_the_oldest_remembered_is_evicted_past_the_bound(bound: int, remembered: int) -> None:
    homes = LocalResponseHomes(max_entries=bound)
    for i in range(remembered):
        homes.remember(f"resp_{i}", f"p{i}", NOW + i)
    kept = range(max(0, remembered - bound), remembered)
    assert len(homes) == len(kept)
    assert [home(homes, f"resp_{i}", NOW + remembered) for i in range(remembered)] == [
        f"p{i}" if i in kept else None for i in range(remembered)
    ]
    assert homes.health() == {
        "kind": "in-process", "entries": len(kept), "max_entries": bound,
        "evicted": remembered - len(kept),
    }  # fmt: skip


def test_renewing_a_home_saves_it_from_eviction() -> None:
    homes = LocalResponseHomes(max_entries=2)
    homes.remember("resp_a", "p", NOW)
    homes.remember("resp_b", "p", NOW)
    homes.remember("resp_a", "p", NOW + 1)  # now the newest
    homes.remember("resp_c", "p", NOW + 2)
    assert [home(homes, r) for r in ("resp_a", "resp_b", "resp_c")] == ["p", None, "p"]


def test_expired_homes_are_swept_on_remember_and_not_counted_as_evicted() -> None:
    homes = LocalResponseHomes(ttl_s=10.0, max_entries=100)
    for i in range(5):
        homes.remember(f"resp_{i}", "p", NOW)
    homes.remember(ID, "p", NOW + 10)
    assert len(homes) == 1
    assert homes.health()["evicted"] == 0


@pytest.mark.parametrize("response_id", ["", "r" * (MAX_ID_CHARS + 1)])
def test_ill_formed_ids_are_never_remembered(response_id: str) -> None:
    homes = LocalResponseHomes()
    homes.remember(response_id, "openai", NOW)
    assert len(homes) == 0
    assert home(homes, response_id) is None


def test_the_longest_well_formed_id_is_remembered() -> None:
    homes = LocalResponseHomes()
    homes.remember("r" * MAX_ID_CHARS, "openai", NOW)
    assert home(homes, "r" * MAX_ID_CHARS) == "openai"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ttl_s": 0}, "ttl_s must be a positive number of seconds, got 0"),
        ({"ttl_s": -1.0}, "ttl_s must be a positive number of seconds, got -1.0"),
        ({"ttl_s": float("nan")}, "got nan"),
        ({"ttl_s": float("inf")}, "got inf"),
        ({"max_entries": 0}, "max_entries must be at least 1, got 0"),
    ],
)
def test_bad_bounds_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalResponseHomes(**kw)


# --------------------------------------------------------------------------- Redis


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


def drained(*states: RedisState) -> Callable[[], bool]:
    return lambda: all(s.responses.health()["queued"] == 0 for s in states)


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@pytest.mark.parametrize("prefix", ["orch:", "fleet-7:"])
def test_replicas_see_each_others_homes_under_a_key_of_prefix_and_id(
    redis_url: str, prefix: str
) -> None:
    async def main() -> None:
        async with replicas(redis_url, prefix=prefix) as (a, b):
            a.responses.remember(ID, "openai", NOW)
            b.responses.remember("resp_b", "azure", NOW)
            await until(drained(a, b), "the writes")
            assert await b.responses.home(ID, NOW) == "openai"
            assert await a.responses.home("resp_b", NOW) == "azure"
            assert await a.responses.home("resp_unknown", NOW) is None
            assert b.responses.health()["entries"] == 1  # what it read is not copied
            with client(redis_url) as r:
                assert set(r.keys("*")) == {
                    f"{prefix}resp:{ID}".encode(),
                    f"{prefix}resp:resp_b".encode(),
                }
                assert r.get(f"{prefix}resp:{ID}") == b"openai"
                assert DEFAULT_TTL_S - 60 < r.ttl(f"{prefix}resp:{ID}") <= DEFAULT_TTL_S

    asyncio.run(main())


def test_redis_expiry_is_honoured(redis_url: str) -> None:
    async def main() -> None:
        async with replicas(redis_url) as (a, b):
            short = RedisResponseHomes(a.connection, a.writes, ttl_s=1.5)
            short.remember(ID, "openai", NOW)
            await until(lambda: short.health()["queued"] == 0, "the write")
            with client(redis_url) as r:
                assert r.ttl(f"orch:resp:{ID}") == 2  # whole seconds, rounded up
                assert await b.responses.home(ID, NOW) == "openai"
                r.pexpire(f"orch:resp:{ID}", 1)
                await asyncio.sleep(0.05)
            assert await b.responses.home(ID, NOW) is None
            assert short.own.lookup(ID, NOW + 1.5) is None  # its own memory expires by `now`

    asyncio.run(main())


def test_while_redis_is_unreachable_a_replica_knows_only_its_own_homes() -> None:
    async def main() -> None:
        async with replicas(f"redis://127.0.0.1:{free_port()}/0", 1) as (a,):
            a.responses.remember(ID, "openai", NOW)
            assert await a.responses.home(ID, NOW) == "openai"
            assert await a.responses.home("resp_other", NOW) is None
            assert a.responses.health() == {
                "kind": "redis", "entries": 1, "max_entries": 100_000, "evicted": 0,
                "queued": 1, "unshared": 0,
            }  # fmt: skip

    asyncio.run(main())


def test_homes_survive_an_outage_and_are_shared_when_redis_is_back() -> None:
    srv = RedisServer()
    srv.start()
    url = f"redis://127.0.0.1:{srv.port}/0"

    async def main() -> None:
        async with replicas(url) as (a, b):
            a.responses.remember("resp_before", "openai", NOW)
            await until(drained(a), "the write")
            assert srv.proc is not None
            srv.proc.terminate()
            await asyncio.to_thread(srv.proc.wait)

            assert await b.responses.home("resp_before", NOW) is None  # no exception
            a.responses.remember(ID, "azure", NOW)
            assert await a.responses.home(ID, NOW) == "azure"
            assert await a.responses.home("resp_before", NOW) == "openai"
            await until(lambda: not b.health()["connected"], "the outage to be noticed")
            assert await b.responses.home(ID, NOW) is None

            await asyncio.to_thread(srv.start)  # an empty Redis on the same port
            await until(drained(a), "the queued write", 5.0)
            await until(lambda: b.health()["connected"], "b to reconnect", 5.0)
            assert await b.responses.home(ID, NOW) == "azure"

    try:
        asyncio.run(main())
    finally:
        srv.close()


def test_home_writes_waiting_for_redis_are_bounded() -> None:
    conn = RedisConnection(f"redis://127.0.0.1:{free_port()}/0")
    writes = WriteQueue(conn)
    homes = RedisResponseHomes(conn, writes, max_queued=2)
    for i in range(3):
        homes.remember(f"resp_{i}", "openai", NOW)
    assert len(writes) == 2
    assert homes.health()["unshared"] == 1
    assert [home(homes, f"resp_{i}") for i in range(3)] == ["openai"] * 3


@pytest.mark.parametrize("response_id", ["", "r" * (MAX_ID_CHARS + 1)])
def test_ill_formed_ids_never_reach_redis(response_id: str) -> None:
    conn = RedisConnection(f"redis://127.0.0.1:{free_port()}/0")
    conn.connected = True  # a lookup would go to Redis, fail, and mark it down
    writes = WriteQueue(conn)
    homes = RedisResponseHomes(conn, writes)
    homes.remember(response_id, "openai", NOW)
    assert len(writes) == 0
    assert home(homes, response_id) is None
    assert conn.connected
