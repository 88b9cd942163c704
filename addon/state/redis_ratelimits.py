"""Rate-limit accounts shared by proxy replicas through Redis (`state: redis://…`).

The same sliding-window log as `addon.routing.ratelimit`, kept in Redis: admitting a request
is ONE Lua script (`RESERVE`) that drops the expired entries of each of the request's scopes,
checks them all, and logs the request in every one or in none, on Redis' clock (`TIME`), so
the fleet together admits exactly what one process would, whatever the replicas' clocks
say. Setting a hold to the real usage (`ADJUST`) and taking it out (`RELEASE`) are sent
without waiting for them. What the request path reads without a round trip (`blocked`,
`snapshot`) is what this replica's last checks saw.

While Redis is unreachable each replica limits on its own (`LocalRateLimits`: the fleet may
then admit up to N times a limit) and says so once in the log; the shared log is used again
as soon as Redis answers.

Keys, under `prefix` (default "orch:"):

    rl:<kind>:<key>       ZSET request id -> admission time (ms, Redis clock)
    rl:<kind>:<key>:h     HASH request id -> tokens held; `sum` -> their total
    rl-ids                counter for request ids

Both of a scope's keys expire a window (plus a second) after its newest entry. (<key> is
percent-encoded.)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import redis.asyncio as aredis
from redis.exceptions import RedisError

from addon.config.redact import redact
from addon.routing.ratelimit import WINDOW_S, Limited, Scope, Usage, status_row
from addon.state.ratelimits import MAX_STATUS_ROWS, Hold, LocalRateLimits

log = logging.getLogger("orchestrator")

TIMEOUT_S = 0.5  # a dead Redis must not stall the event loop
RETRY_S = 2.0  # after a failure, how long the replica limits on its own before asking again

# KEYS: per scope its ZSET and HASH, then the id counter. ARGV: window ms, tokens needed, then
# per scope rpm and tpm (0: none). Returns {id, now, count, sum per scope} when admitted,
# {0, scope index, 1 requests | 2 tokens | 3 never fits, count, sum, wait ms, reset ms, now}.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win, need = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = (#KEYS - 1) / 2
local seen = {}
for i = 1, n do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - win)
  if #old > 0 then
    local freed = 0
    for _, id in ipairs(old) do
      freed = freed + tonumber(redis.call('HGET', h, id) or '0')
      redis.call('HDEL', h, id)
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - win)
    redis.call('HINCRBY', h, 'sum', -freed)
  end
  local count = redis.call('ZCARD', z)
  local sum = tonumber(redis.call('HGET', h, 'sum') or '0')
  local rpm, tpm = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local reset = 0
  if count > 0 then
    reset = tonumber(redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')[2]) + win - now
  end
  if rpm > 0 and count + 1 > rpm then
    local e = redis.call('ZRANGE', z, count - rpm, count - rpm, 'WITHSCORES')
    return {0, i, 1, count, sum, tonumber(e[2]) + win - now, reset, now}
  end
  if tpm > 0 and sum + need > tpm then
    if need > tpm then return {0, i, 3, count, sum, 0, reset, now} end
    local over, wait = sum + need - tpm, 0
    local es = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
    for j = 1, #es, 2 do
      over = over - tonumber(redis.call('HGET', h, es[j]) or '0')
      if over <= 0 then wait = tonumber(es[j + 1]) + win - now; break end
    end
    return {0, i, 2, count, sum, wait, reset, now}
  end
  seen[#seen + 1] = count
  seen[#seen + 1] = sum
end
local id = redis.call('INCR', KEYS[#KEYS])
for i = 1, n do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('ZADD', z, now, id)
  redis.call('HSET', h, id, need)
  redis.call('HINCRBY', h, 'sum', need)
  redis.call('PEXPIRE', z, win + 1000)
  redis.call('PEXPIRE', h, win + 1000)
end
local out = {id, now}
for _, v in ipairs(seen) do out[#out + 1] = v end
return out
"""

# KEYS: per scope its ZSET and HASH. ARGV: request id, tokens now held.
ADJUST = """
for i = 1, #KEYS / 2 do
  local h = KEYS[2 * i]
  local old = redis.call('HGET', h, ARGV[1])
  if old then
    redis.call('HSET', h, ARGV[1], ARGV[2])
    redis.call('HINCRBY', h, 'sum', tonumber(ARGV[2]) - tonumber(old))
  end
end
return 1
"""

# KEYS: per scope its ZSET and HASH. ARGV: request id.
RELEASE = """
for i = 1, #KEYS / 2 do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local old = redis.call('HGET', h, ARGV[1])
  if old then
    redis.call('HDEL', h, ARGV[1])
    redis.call('ZREM', z, ARGV[1])
    redis.call('HINCRBY', h, 'sum', -tonumber(old))
  end
end
return 1
"""


class RedisRateLimits:
    """`RateLimits` over the fleet: the Redis at `url` admits, this replica remembers what
    it saw (for `blocked` and `snapshot`) on `time.monotonic()`."""

    def __init__(self, url: str, *, prefix: str = "orch:", timeout_s: float = TIMEOUT_S) -> None:
        self.url, self.where, self.prefix = url, redact(url), prefix
        self.timeout_s = timeout_s  # a call slower than this counts as Redis being down
        self.local = LocalRateLimits(ids_step=-1)  # while Redis cannot be asked; ids < 0
        self._client: aredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._seen: dict[str, tuple[Usage, float]] = {}  # scope id -> last usage, when (mono)
        self._free_at: dict[str, float] = {}
        self._down_until = 0.0
        self._pending: set[asyncio.Task[Any]] = set()
        self._warned = False

    # ----------------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Create the client and register the scripts (no round trip yet)."""
        if self._client is not None:
            return
        self._client = aredis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                             socket_connect_timeout=self.timeout_s,
                                             decode_responses=True)  # fmt: skip
        self._scripts = {n: self._client.register_script(s)
                         for n, s in (("reserve", RESERVE), ("adjust", ADJUST),
                                      ("release", RELEASE))}  # fmt: skip

    async def close(self) -> None:
        """Let the adjustments under way finish (briefly), then close the client."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=2 * self.timeout_s)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ----------------------------------------------------------------------- RateLimits

    async def reserve(self, scopes: Sequence[Scope], need: int) -> Hold | Limited:
        """One `RESERVE` script over all `scopes`; this replica alone while Redis is down."""
        mono = self.local.clock()
        if self._client is None or mono < self._down_until:
            return self.local.reserve_now(scopes, need)
        keys = [k for s in scopes for k in self._keys(s)] + [self.prefix + "rl-ids"]
        args: list[Any] = [int(WINDOW_S * 1000), need]
        for s in scopes:
            args += [s.rpm or 0, s.tpm or 0]
        try:
            reply = await self._scripts["reserve"](keys=keys, args=args)
        except (RedisError, OSError) as e:
            self._down(e)
            return self.local.reserve_now(scopes, need)
        if self._warned:
            log.warning("rate limits: Redis at %s is back; limits are the fleet's again",
                        self.where)  # fmt: skip
            self._warned = False
        r = [int(x) for x in reply]
        if r[0] == 0:
            i, kind, count, total, wait_ms, reset_ms = r[1] - 1, r[2], r[3], r[4], r[5], r[6]
            s = scopes[i]
            reset = reset_ms / 1000
            usage = Usage(s, count, total, reset, reset if total > 0 else 0.0)
            wait = math.inf if kind == 3 else max(0.0, wait_ms / 1000)
            self._seen[s.id] = (usage, mono)
            if kind != 3:  # a request too large for the limit leaves it open to others
                self._free_at[s.id] = mono + wait
            return Limited(usage, "requests" if kind == 1 else "tokens", wait, need)
        rid = r[0]
        for j, s in enumerate(scopes):
            count, total = r[2 + 2 * j] + 1, r[3 + 2 * j] + need
            self._seen[s.id] = (Usage(s, count, total, WINDOW_S, WINDOW_S), mono)
        return Hold(rid, tuple(scopes), need)

    def settle(self, hold: Hold, tokens: int) -> None:
        """Set the hold to `tokens` in Redis (not awaited)."""
        if hold.id < 0:
            self.local.settle(hold, tokens)
            return
        if tokens == hold.tokens:
            return
        if tokens < hold.tokens:
            for s in hold.scopes:
                self._free_at.pop(s.id, None)
        self._send("adjust", hold, [hold.id, tokens])

    def release(self, hold: Hold) -> None:
        """Take the hold out in Redis (not awaited)."""
        if hold.id < 0:
            self.local.release(hold)
            return
        for s in hold.scopes:
            self._free_at.pop(s.id, None)
        self._send("release", hold, [hold.id])

    def any_blocked(self) -> bool:
        """Whether some scope may be `blocked`."""
        return bool(self._free_at) or self.local.any_blocked()

    def blocked(self, scope: Scope) -> bool:
        """Whether this replica's last check of `scope` was refused and its wait has not
        passed (or, with Redis down, the local limiter's)."""
        at = self._free_at.get(scope.id)
        if at is not None:
            if self.local.clock() < at:
                return True
            del self._free_at[scope.id]
        return self.local.blocked(scope)

    def snapshot(self) -> list[dict[str, Any]]:
        """The accounts this replica checked within the last window, as it saw them then
        (`as_of_s`: seconds ago), busiest first; with Redis down, the local windows too."""
        mono = self.local.clock()
        rows = []
        for sid, (usage, at) in list(self._seen.items()):
            age = mono - at
            if age > WINDOW_S:
                del self._seen[sid]
                continue
            rows.append({**status_row(usage), "as_of_s": round(age, 3),
                         "reset_s": round(max(0.0, usage.reset_requests_s - age), 3)})  # fmt: skip
        rows += [{**r, "local": True} for r in self.local.snapshot()]
        rows.sort(key=lambda row: (-int(row["requests"]), str(row["scope"]), str(row["name"])))
        return rows[:MAX_STATUS_ROWS]

    # ----------------------------------------------------------------------- internals

    def _keys(self, s: Scope) -> tuple[str, str]:
        base = f"{self.prefix}rl:{s.kind}:{quote(s.key, safe='')}"
        return base, base + ":h"

    def _send(self, script: str, hold: Hold, args: list[Any]) -> None:
        if self._client is None or self.local.clock() < self._down_until:
            return  # the entry keeps its estimate until it leaves the window: conservative
        keys = [k for s in hold.scopes for k in self._keys(s)]
        task = asyncio.ensure_future(self._run(script, keys, args))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> None:
        try:
            await self._scripts[script](keys=keys, args=args)
        except (RedisError, OSError) as e:
            self._down(e)

    def _down(self, e: BaseException) -> None:
        self._down_until = self.local.clock() + RETRY_S
        if not self._warned:
            log.warning("rate limits: Redis at %s unreachable (%s); each replica limits on "
                        "its own until it is back", self.where, type(e).__name__)  # fmt: skip
            self._warned = True
