"""Router state shared by proxy replicas through Redis (`state: redis://…`).

`RedisState` holds the three `addon.state.memory` interfaces (breakers twice: per target
and per provider) and the response homes (`addon.state.response_homes`). The request path reads a local mirror (`Breakers.get`,
`Latency.values`, `Budgets.snapshot`) that a background task refreshes every
`sync_every_s`; only claiming a half-open probe, reserving budget and looking up a response
home another replica remembered go to Redis at once, the first two through Lua scripts so
replicas agree atomically. Every other write (verdicts, settles, charges, releases, homes)
is queued and applied in order by one writer task, and stays queued while Redis is
unreachable (up to `redis_writes.MAX_QUEUED_WRITES`).

The parts: `redis_connection` (the client, its health, running scripts), `redis_writes`
(the write queue), `redis_breakers`, `redis_latency`, `redis_budgets`,
`redis_response_homes` (each interface and its keys), `redis_lua` (the scripts). This
module composes them and runs the sync.

Keys, under `prefix` (default "orch:"):

    brk:<target>            HASH status, failures, opened_at (ms, Redis clock); 1 day TTL
    probe:<target>          STRING the replica holding the half-open probe; PX lease
    brks                    SET of targets with a brk: hash
    provider-brk:<provider>, provider-probe:<provider>, provider-brks
                            the same for the provider breakers
    lat                     HASH target -> smoothed latency (ms)
    bud:<rule>:<scope>:<window start>
                            HASH name, scope, start, end, spent, held (units of 1e-10
                            USD), alerted, seeded; expires a day after the window ends
      …:h / …:m             ZSET hold id -> expiry (ms) / HASH hold id -> units
    budgets                 ZSET account key -> window end (s), for the snapshot
    budget-rules            HASH rule name -> the BudgetRule as JSON
    budget-ids              counter for reservation ids
    resp:<id>               STRING the provider that produced response <id>; EX 30 days
    applied:<replica>       ZSET of this replica's applied write numbers, so a write
                            sent again after an ambiguous failure counts once

(<rule> and <scope> are percent-encoded.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from addon.state.redis_breakers import RedisBreakers, provider_breakers
from addon.state.redis_budgets import RedisBudgets
from addon.state.redis_connection import DOWN, Call, RedisConnection
from addon.state.redis_latency import RedisLatency
from addon.state.redis_response_homes import RedisResponseHomes
from addon.state.redis_writes import WriteQueue

log = logging.getLogger("orchestrator")

LAST_FLUSH_S = 2.0  # how long close() waits for queued writes to reach Redis


class RedisState:
    """Breakers (per target and per provider), latency, budgets and response homes shared
    through the Redis at `url`: `start()` connects and starts the sync and writer tasks,
    `close()` stops them."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "orch:",
        sync_every_s: float = 0.25,
        hold_ttl_s: float = 900.0,
    ) -> None:
        self.sync_every_s = sync_every_s
        self.connection = RedisConnection(url, prefix)
        self.writes = WriteQueue(self.connection)
        self.breakers = RedisBreakers(self.connection, self.writes)
        self.provider_breakers = provider_breakers(self.connection, self.writes)
        self.latency = RedisLatency(self.connection)
        self.budgets = RedisBudgets(self.connection, self.writes, hold_ttl_s)
        self.responses = RedisResponseHomes(self.connection, self.writes)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def max_queued_writes(self) -> int:
        """Writes kept while Redis is unreachable; past it the oldest is dropped."""
        return self.writes.max_queued

    @max_queued_writes.setter
    def max_queued_writes(self, value: int) -> None:
        """Change the bound; writes already queued stay, each new one past it drops the oldest."""
        self.writes.max_queued = value

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect and start syncing; a Redis that is down is retried in the background."""
        conn = self.connection
        if conn.is_open:
            return
        conn.open()
        try:
            await self._connect()
        except (RedisError, OSError) as e:
            conn.down(e)
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="redisstate-sync"),
            asyncio.create_task(self.writes.run(), name="redisstate-write"),
        ]

    async def close(self) -> None:
        """Stop syncing, give queued writes a last chance (2 s), close the connections."""
        conn = self.connection
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, conn.stop_asking(), return_exceptions=True)
        self._tasks = []
        if not conn.is_open:
            return
        if self.writes:
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                await asyncio.wait_for(self._last_flush(), LAST_FLUSH_S)
        if self.writes:
            log.warning(
                "state: %d writes (spend, breaker verdicts) never reached Redis at %s: %s",
                len(self.writes), conn.where, conn.last_error or "shut down while unreachable",
            )  # fmt: skip
        await conn.aclose()

    def health(self) -> dict[str, Any]:
        """For `/status`: where Redis is (password redacted), whether it answered last
        time, the last error, and how many writes wait for it."""
        conn = self.connection
        return {
            "kind": "redis",
            "where": conn.where,
            "connected": conn.connected,
            "last_error": conn.last_error,
            "queued": len(self.writes),  # writes waiting for Redis
        }

    async def _eval_many(self, calls: list[Call]) -> list[Any]:
        """One round trip of script calls (`RedisConnection.eval_many`)."""
        return await self.connection.eval_many(calls)

    # ----------------------------------------------------------------------- sync

    async def _connect(self) -> None:
        await self.connection.connect()
        self.connection.up(len(self.writes))
        self.writes.wake()

    async def _last_flush(self) -> None:
        if not self.connection.connected:
            await self._connect()
        await self.writes.flush()

    async def _sync_loop(self) -> None:
        conn = self.connection
        while True:
            try:
                if not conn.connected:
                    await self._connect()
                if conn.connected:
                    await self._sync()
            except DOWN as e:
                conn.down(e)
            except Exception as e:
                conn.throttle.warn("sync", "state: syncing with Redis failed: %r", e)
            if conn.connected and self.writes:
                self.writes.wake()
            await asyncio.sleep(self.sync_every_s)

    async def _sync(self) -> None:
        """Push latency samples and read back both families of breakers, budgets and
        latency: one round trip."""
        samples = self.latency.take()
        version = self.breakers.version
        prov_version = self.provider_breakers.version
        calls = [
            self.breakers.snapshot_call(),
            self.budgets.refresh_call(),
            self.latency.push_call(samples),
            self.provider_breakers.snapshot_call(),
        ]
        try:
            brk_reply, bud_reply, lat_reply, prov_reply = await self.connection.eval_many(calls)
        except BaseException:
            self.latency.restore(samples)
            raise
        mono = time.monotonic()
        if isinstance(lat_reply, Exception):
            self.latency.restore(samples)
        else:
            self.latency.merge(lat_reply)
        if not isinstance(brk_reply, Exception):
            self.breakers.refresh(brk_reply, mono, version)
        if not isinstance(prov_reply, Exception):
            self.provider_breakers.refresh(prov_reply, mono, prov_version)
        if not isinstance(bud_reply, Exception):
            self.budgets.refresh(bud_reply)
        for reply in (brk_reply, bud_reply, lat_reply, prov_reply):
            if isinstance(reply, Exception):
                conn = self.connection
                conn.throttle.warn("sync-script", "state: a Redis sync script failed: %s", reply)
