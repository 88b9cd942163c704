"""Calls in flight shared by replicas through Redis (`state: redis://…`), for `least_busy`.

Each replica counts its own calls exactly, in process (`LocalInFlight`), and publishes them
every `sync_every_s` in one script call, which answers with the other replicas' counts:
`counts()` is this replica's own plus the fleet's last published ones, so the request path
never waits on Redis. A replica that stops publishing (it crashed, or lost Redis) drops out
after `ttl_s`: its calls cannot pin a deployment as busy for ever. While Redis is
unreachable the counts are this replica's alone, and balancing goes on.

Keys, under `prefix` (default "orch:"):

    inflight:<replica>   HASH target -> calls in flight at that replica; PX ttl
    inflight-replicas    ZSET replica -> last publish (ms, Redis clock)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from addon.config.redact import redact
from addon.state.inflight import LocalInFlight

log = logging.getLogger("orchestrator")

TIMEOUT_S = 0.5  # a dead Redis must not stall the event loop

# KEYS: replicas zset, this replica's hash; ARGV: replica id, ttl ms, hash key prefix,
# then target, count pairs. Returns the other live replicas' target, count pairs.
PUBLISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
if #ARGV >= 4 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
local out = {}
for _, r in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if r ~= ARGV[1] then
    local h = redis.call('HGETALL', ARGV[3] .. r)
    for j = 1, #h, 2 do out[#out + 1] = h[j]; out[#out + 1] = h[j + 1] end
  end
end
return out
"""


class RedisInFlight:
    """`InFlight` over the fleet: exact here, the other replicas' as last published."""

    def __init__(self, url: str, *, prefix: str = "orch:", sync_every_s: float = 0.1,
                 ttl_s: float = 2.0) -> None:  # fmt: skip
        self.url, self.where, self.prefix = url, redact(url), prefix
        self.sync_every_s, self.ttl_s = sync_every_s, max(ttl_s, 5 * sync_every_s)
        self.replica = uuid.uuid4().hex
        self.own = LocalInFlight()
        self._others: dict[str, int] = {}
        self._merged: dict[str, int] | None = None  # own + others, until either changes
        self._client: aredis.Redis | None = None
        self._script: Any = None  # the registered PUBLISH script
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    def start(self, key: str) -> None:
        """One more call to `key` from this replica."""
        self.own.start(key)
        self._merged = None

    def end(self, key: str) -> None:
        """One call to `key` from this replica ended."""
        self.own.end(key)
        self._merged = None

    def counts(self) -> Mapping[str, int]:
        """This replica's calls in flight plus the other replicas' last published ones."""
        if self._merged is None:
            merged = dict(self._others)
            for k, n in self.own.counts().items():
                merged[k] = merged.get(k, 0) + n
            self._merged = merged
        return self._merged

    # ----------------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Create the client and start publishing (a Redis that is down is retried)."""
        if self._task is not None:
            return
        self._client = aredis.Redis.from_url(self.url, socket_timeout=TIMEOUT_S,
                                             socket_connect_timeout=TIMEOUT_S,
                                             decode_responses=True)  # fmt: skip
        self._script = self._client.register_script(PUBLISH)
        self._task = asyncio.create_task(self._loop(), name="inflight-sync")

    async def close(self) -> None:
        """Stop publishing and withdraw this replica's counts."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await client.delete(self._hash_key(self.replica))
            await client.zrem(self.prefix + "inflight-replicas", self.replica)
        await client.aclose()

    def _hash_key(self, replica: str) -> str:
        return f"{self.prefix}inflight:{replica}"

    async def sync(self) -> None:
        """Publish this replica's counts and read the others' (one round trip)."""
        assert self._client is not None
        args: list[Any] = [self.replica, int(self.ttl_s * 1000), self.prefix + "inflight:"]
        for k, n in self.own.counts().items():
            args += [k, n]
        flat = await self._script(keys=[self.prefix + "inflight-replicas",
                                        self._hash_key(self.replica)], args=args)  # fmt: skip
        others: dict[str, int] = {}
        for i in range(0, len(flat) - 1, 2):
            others[flat[i]] = others.get(flat[i], 0) + int(flat[i + 1])
        if others != self._others:
            self._others, self._merged = others, None

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
                self._warned = False
            except (RedisError, OSError) as e:
                if self._others:
                    self._others, self._merged = {}, None  # stale: count this replica alone
                if not self._warned:
                    log.warning("state: calls in flight not shared through Redis at %s (%s); "
                                "least_busy counts this replica's calls only until it is back",
                                self.where, type(e).__name__)  # fmt: skip
                    self._warned = True
            await asyncio.sleep(self.sync_every_s)
