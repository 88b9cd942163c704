"""Router state shared by proxy replicas through Redis (`state: redis://…`).

`RedisState` holds the three `addon.state` interfaces. The request path reads a local
mirror (`Breakers.get`, `Latency.values`, `Budgets.snapshot`) that a background task
refreshes every `sync_every_s`; only claiming a half-open probe and reserving budget go to
Redis at once, through Lua scripts so replicas agree atomically. Every other write
(verdicts, settles, charges, releases) is queued and applied in order by one writer task,
and stays queued while Redis is unreachable (up to MAX_QUEUED_WRITES).

Keys, under `prefix` (default "orch:"):

    brk:<target>            HASH status, failures, opened_at (ms, Redis clock); 1 day TTL
    probe:<target>          STRING the replica holding the half-open probe; PX lease
    brks                    SET of targets with a brk: hash
    lat                     HASH target -> smoothed latency (ms)
    bud:<rule>:<scope>:<window start>
                            HASH name, scope, start, end, spent, held (units of 1e-10
                            USD), alerted, seeded; expires a day after the window ends
      …:h / …:m             ZSET hold id -> expiry (ms) / HASH hold id -> units
    budgets                 ZSET account key -> window end (s), for the snapshot
    budget-rules            HASH rule name -> the BudgetRule as JSON
    budget-ids              counter for reservation ids
    applied:<replica>       ZSET of this replica's applied write numbers, so a write
                            sent again after an ambiguous failure counts once

(<rule> and <scope> are percent-encoded.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from addon.config.redact import redact
from addon.errors import StateUnavailable
from addon.routing import breaker as brk
from addon.routing.breaker import BreakerStatus
from addon.routing.budget import (
    Alert,
    BudgetRule,
    Exceeded,
    Reservation,
    checked_amount,
    from_units,
    snapshot_row,
    to_units,
    window,
)
from addon.state.memory import LATENCY_ALPHA
from addon.state.redis_lua import SCRIPTS as _SCRIPTS

log = logging.getLogger("orchestrator")

TIMEOUT_S = 0.5  # connect and per-command: a dead Redis must not stall the event loop
PROBE_LEASE_S = 30.0  # a crashed replica's half-open probe is free again after this
BREAKER_TTL_S = 86_400
LATENCY_TTL_S = 86_400
MAX_QUEUED_WRITES = 100_000
RECENTLY_CLOSED = 65_536  # reservation ids remembered to ignore a second settle
MAX_SAMPLES = 64  # per target between syncs; older ones weigh < 0.7**64 anyway
_BATCH = 256
_DAY_S = 86_400
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# --------------------------------------------------------------------------- plumbing


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass
class _Write:
    seq: int
    script: str
    keys: list[str]
    args: list[Any]
    done: Callable[[Any], None]  # called with the script's reply, or None when dropped


class _Throttle:
    """At most one log line per topic every `every_s`, counting the ones held back."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._next: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warn(self, topic: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(topic, 0.0):
            self._held[topic] += 1
            return
        self._next[topic] = now + self.every_s
        held = self._held.pop(topic, 0)
        log.warning(msg + (f" ({held} more like this)" if held else ""), *args)

    def hold(self, topic: str) -> None:
        """Something just said it: stay quiet about `topic` for a while."""
        self._next[topic] = time.monotonic() + self.every_s


class RedisState:
    """Breakers, latency and budgets shared through the Redis at `url`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "orch:",
        sync_every_s: float = 0.25,
        hold_ttl_s: float = 900.0,
    ) -> None:
        self.url = url
        self.where = redact(url)
        self.prefix = prefix
        self.sync_every_s = sync_every_s
        self.hold_ttl_s = hold_ttl_s
        self.max_queued_writes = MAX_QUEUED_WRITES
        self.token = uuid.uuid4().hex  # this replica
        self.connected = False
        self.last_error: str | None = None
        self._secret = urlsplit(url).password
        self._client: aredis.Redis | None = None
        self._shas = {
            n: hashlib.sha1(s.encode(), usedforsecurity=False).hexdigest()
            for n, s in _SCRIPTS.items()
        }
        self._writes: dict[int, _Write] = {}  # by number: oldest first
        self._seq = itertools.count(1)
        self._dropped = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._asks: list[tuple[tuple[str, list[str], list[Any]], asyncio.Future[Any]]] = []
        self._asker: asyncio.Task[None] | None = None
        self._throttle = _Throttle()
        self.breakers = RedisBreakers(self)
        self.latency = RedisLatency(self)
        self.budgets = RedisBudgets(self)

    def key(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect and start syncing; a Redis that is down is retried in the background."""
        if self._client is not None:
            return
        try:
            pool = aredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=8,  # a sync, a writer and one for the request path
                timeout=4 * TIMEOUT_S,  # waiting for a free pooled connection
                socket_timeout=TIMEOUT_S,
                socket_connect_timeout=TIMEOUT_S,
                retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),  # a stale pooled socket
                decode_responses=True,
            )
        except ValueError as e:
            raise ValueError(f"state: {self.where} is not a usable Redis URL: {e}") from None
        self._client = aredis.Redis(connection_pool=pool)
        try:
            await self._connect()
        except (RedisError, OSError) as e:
            self._down(e)
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="redisstate-sync"),
            asyncio.create_task(self._write_loop(), name="redisstate-write"),
        ]

    async def close(self) -> None:
        """Stop syncing, give queued writes a last chance (2 s), close the connections."""
        tasks = [*self._tasks, *([self._asker] if self._asker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._asker = [], None
        if self._client is None:
            return
        if self._writes:
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                await asyncio.wait_for(self._last_flush(), 2.0)
        if self._writes:
            log.warning(
                "state: %d writes (spend, breaker verdicts) never reached Redis at %s: %s",
                len(self._writes), self.where, self.last_error or "shut down while unreachable",
            )  # fmt: skip
        await self._client.aclose(close_connection_pool=True)
        self._client = None
        self.connected = False

    def health(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "where": self.where,
            "connected": self.connected,
            "last_error": self.last_error,
            "queued": len(self._writes),  # writes waiting for Redis
        }

    # ----------------------------------------------------------------------- connection

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***").replace(quote(self._secret), "***")
            text = text.replace(unquote(self._secret), "***")
        return text

    def _down(self, e: BaseException) -> None:
        self.last_error = self._scrub(f"{type(e).__name__}: {e}")
        if self.connected:
            log.warning(
                "state: lost Redis at %s (%s); budgets refuse calls, breakers decide on "
                "this replica, writes are queued until it is back",
                self.where, self.last_error,
            )  # fmt: skip
            self._throttle.hold("down")
        else:
            self._throttle.warn(
                "down", "state: Redis at %s unreachable (%s); retrying", self.where, self.last_error
            )
        self.connected = False

    def _up(self) -> None:
        if not self.connected and self.last_error is None:
            log.info("state: connected to Redis at %s", self.where)
        elif not self.connected:
            log.warning("state: Redis at %s is back; applying %d queued writes",
                        self.where, len(self._writes))  # fmt: skip
        self.connected = True
        self._wake.set()

    def unavailable(self, rule: BudgetRule, e: BaseException | None = None) -> StateUnavailable:
        why = self._scrub(f"{type(e).__name__}: {e}") if e else self.last_error or "not connected"
        return StateUnavailable(
            f"budget {rule.name!r} cannot be checked: the shared state at {self.where} is "
            f"unreachable ({why}); calls under this budget are refused until it is back — "
            "check that Redis is running and that `state:` in orchestrator.yaml points at it"
        )

    def _redis(self) -> aredis.Redis:
        if self._client is None:
            raise RedisConnectionError("RedisState.start() has not run")
        return self._client

    async def _connect(self) -> None:
        await self._redis().ping()
        await self._load_scripts()
        self._up()

    async def _load_scripts(self) -> None:
        async with self._redis().pipeline(transaction=False) as pipe:
            for source in _SCRIPTS.values():
                pipe.script_load(source)
            await pipe.execute()

    async def _eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script for the request path. Calls made while a round trip is under way
        share the next one, so a burst of requests needs one connection, not one each."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks.append(((name, keys, args), future))
        if self._asker is None or self._asker.done():
            self._asker = asyncio.create_task(self._ask_loop(), name="redisstate-ask")
        return await future

    async def _ask_loop(self) -> None:
        while self._asks:
            batch, self._asks = self._asks[:_BATCH], self._asks[_BATCH:]
            try:
                replies = await self._eval_many([call for call, _ in batch])
            except asyncio.CancelledError:  # close(): the callers get a clear error
                for _, future in batch + self._asks:
                    if not future.done():
                        future.set_exception(RedisConnectionError("the state store closed"))
                self._asks = []
                raise
            except Exception as e:
                replies = [e] * len(batch)
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():  # its caller gave up
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _eval_many(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """One round trip; a script Redis lost (a restart) is loaded and run again. Replies
        that are errors come back as ResponseError values."""
        replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._load_scripts()
            for i, r in zip(
                missing, await self._pipeline([calls[i] for i in missing]), strict=True
            ):
                replies[i] = r
        return replies

    async def _pipeline(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        async with self._redis().pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                pipe.evalsha(self._shas[name], len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    # ----------------------------------------------------------------------- writes

    def _enqueue(
        self, script: str, keys: list[str], args: list[Any], done: Callable[[Any], None]
    ) -> None:
        if len(self._writes) >= self.max_queued_writes:
            oldest = self._writes.pop(next(iter(self._writes)))
            self._dropped += 1
            self._throttle.warn(
                "dropped",
                "state: %d writes queued for Redis at %s; dropping the oldest (%s), %d so far",
                len(self._writes) + 1, self.where, oldest.script, self._dropped,
            )  # fmt: skip
            self._finish(oldest, None)
        seq = next(self._seq)
        self._writes[seq] = _Write(seq, script, keys, args, done)
        if self.connected:
            self._wake.set()

    @staticmethod
    def _finish(write: _Write, reply: Any) -> None:
        try:
            write.done(reply)
        except Exception:
            log.exception("state: handling the reply to %s failed", write.script)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Exception as e:  # kept queued; the next sync wakes the writer again
                self._throttle.warn("write", "state: writing to Redis failed: %r", e)

    async def _flush(self) -> None:
        """Send queued writes oldest first, in batches of one round trip, while connected."""
        while self._writes and self.connected:
            batch = list(itertools.islice(self._writes.values(), _BATCH))
            low = batch[0].seq
            calls = [(w.script, w.keys, [w.seq, low, *w.args]) for w in batch]
            try:
                replies = await self._eval_many(calls)
            except _DOWN as e:
                self._down(e)
                return
            again = False
            for write, reply in zip(batch, replies, strict=True):
                if isinstance(reply, ResponseError):
                    if str(reply).startswith(("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY")):
                        again = True  # Redis cannot write now: keep it for the next sync
                        self._throttle.warn("refused", "state: Redis refused a write: %s", reply)
                        continue
                    log.error("state: Redis rejected %s (dropped): %s", write.script, reply)
                    reply = None
                if self._writes.pop(write.seq, None) is not None:
                    self._finish(write, reply)
            if again:
                return

    async def _last_flush(self) -> None:
        if not self.connected:
            await self._connect()
        await self._flush()

    # ----------------------------------------------------------------------- sync

    async def _sync_loop(self) -> None:
        while True:
            try:
                if not self.connected:
                    await self._connect()
                if self.connected:
                    await self._sync()
            except _DOWN as e:
                self._down(e)
            except Exception as e:
                self._throttle.warn("sync", "state: syncing with Redis failed: %r", e)
            if self.connected and self._writes:
                self._wake.set()
            await asyncio.sleep(self.sync_every_s)

    async def _sync(self) -> None:
        """Push latency samples and read back breakers, budgets and latency: one round trip."""
        samples = self.latency._take()
        version = self.breakers._version
        push: list[Any] = [LATENCY_ALPHA, LATENCY_TTL_S * 1000]
        for target, values in samples.items():
            push += [target, len(values), *values]
        calls = [
            ("brk_snapshot", [self.key("brks")], [self.key("brk:"), self.key("probe:")]),
            ("bud_refresh", [self.key("budgets"), self.key("budget-rules")], []),
            ("lat_push", [self.key("lat")], push),
        ]
        try:
            brk_reply, bud_reply, lat_reply = await self._eval_many(calls)
        except BaseException:
            self.latency._restore(samples)
            raise
        mono = time.monotonic()
        if isinstance(lat_reply, Exception):
            self.latency._restore(samples)
        else:
            self.latency._merge(lat_reply)
        if not isinstance(brk_reply, Exception):
            self.breakers._refresh(brk_reply, mono, version)
        if not isinstance(bud_reply, Exception):
            self.budgets._refresh(bud_reply)
        for reply in (brk_reply, bud_reply, lat_reply):
            if isinstance(reply, Exception):
                self._throttle.warn("sync-script", "state: a Redis sync script failed: %s", reply)


# --------------------------------------------------------------------------- breakers


def _breaker(
    status: str, failures: int, opened_ms: int, probing: int, now_ms: int, mono: float
) -> brk.BreakerState:
    """A state read from Redis, `opened_at` moved onto this process's monotonic clock."""
    st = BreakerStatus(status)
    if st is BreakerStatus.CLOSED:
        return brk.CLOSED if failures == 0 else brk.BreakerState(failures=failures)
    opened = mono - (now_ms - opened_ms) / 1000
    return brk.BreakerState(st, failures, opened, st is BreakerStatus.HALF_OPEN and bool(probing))


def _from_reply(reply: list[Any], mono: float) -> brk.BreakerState:
    status, failures, opened_ms, probing, now_ms = reply
    return _breaker(status, int(failures), int(opened_ms), int(probing), int(now_ms), mono)


def _same(a: brk.BreakerState, b: brk.BreakerState) -> bool:
    return (a.status, a.failures, a.probing) == (b.status, b.failures, b.probing) and abs(
        a.opened_at - b.opened_at
    ) < 0.05


class RedisBreakers:
    """`state.Breakers` shared by the fleet: failures count across replicas and one
    replica at a time holds the half-open probe."""

    def __init__(self, rs: RedisState) -> None:
        self._rs = rs
        self._states: dict[str, brk.BreakerState] = {}  # not closed-with-no-failures
        self._pending: Counter[str] = Counter()  # queued writes per target
        self._touched: dict[str, int] = {}  # target -> _version of its last local change
        self._version = 0

    def get(self, key: str) -> brk.BreakerState | None:
        return self._states.get(key)

    def snapshot(self) -> dict[str, brk.BreakerState]:
        return dict(self._states)

    async def acquire(self, key: str, cooldown_s: float) -> bool:
        state = self._states.get(key)
        if state is None or state.status is BreakerStatus.CLOSED:
            return True
        if not brk.available(state, time.monotonic(), cooldown_s):
            return False
        rs = self._rs
        if rs.connected:
            args = ["0", "0", key, round(cooldown_s * 1000), _ms(PROBE_LEASE_S)]
            try:
                ok, reply = await rs._eval("brk_acquire", self._keys(key), [*args, rs.token])
            except _DOWN as e:
                rs._down(e)
            except RedisError as e:
                rs._throttle.warn("acquire-error", "breaker %s: Redis refused: %s", key, e)
            else:
                if not self._pending[key]:
                    new = _from_reply(reply, time.monotonic())
                    self._set(key, new, " (probe)" if ok else " (fleet)",
                              logging.WARNING if ok else logging.INFO)  # fmt: skip
                return bool(ok)
        rs._throttle.warn(
            "acquire", "breaker %s: Redis at %s unreachable; this replica decides alone",
            key, rs.where,
        )  # fmt: skip
        state = self._states.get(key, brk.CLOSED)
        ok, new = brk.acquire(state, time.monotonic(), cooldown_s)
        if new is not state:
            self._set(key, new, " (probe, this replica alone)")
        return ok

    def record(self, key: str, *, success: bool, threshold: int) -> None:
        state = self._states.get(key)
        if success and state is None:
            return  # the hot path: nothing to reset anywhere
        new = brk.record(
            state or brk.CLOSED, success=success, now=time.monotonic(), threshold=threshold
        )
        self._set(key, new)
        self._write("brk_record", key, [int(success), threshold, BREAKER_TTL_S * 1000])

    def release(self, key: str) -> None:
        state = self._states.get(key)
        if state is not None and state.probing:
            self._set(key, brk.release(state))
            self._write("brk_release", key, [self._rs.token])

    # ----------------------------------------------------------------------- internals

    def _keys(self, key: str) -> list[str]:
        rs = self._rs
        return [rs.key("applied:", rs.token), rs.key("brk:", key), rs.key("probe:", key),
                rs.key("brks")]  # fmt: skip

    def _write(self, script: str, key: str, args: list[Any]) -> None:
        self._pending[key] += 1
        self._rs._enqueue(script, self._keys(key), [key, *args], lambda r: self._written(key, r))

    def _written(self, key: str, reply: Any) -> None:
        self._pending[key] -= 1
        if self._pending[key] <= 0:
            del self._pending[key]
            if reply is not None:  # the fleet's verdict replaces the optimistic one
                self._set(key, _from_reply(reply, time.monotonic()), " (fleet)")

    def _set(
        self, key: str, new: brk.BreakerState, note: str = "", level: int = logging.WARNING
    ) -> None:
        old = self._states.get(key, brk.CLOSED)
        if new == brk.CLOSED:
            self._states.pop(key, None)
        else:
            self._states[key] = new
        self._version += 1
        self._touched[key] = self._version
        if new.status is not old.status:
            log.log(level, "breaker %s: %s -> %s%s", key, old.status.value, new.status.value, note)

    def _refresh(self, reply: list[Any], mono: float, version: int) -> None:
        """The fleet's states, except for targets changed here since the read was sent."""
        now_ms, rows = reply
        seen = {
            rows[i]: _breaker(rows[i + 1], int(rows[i + 2]), int(rows[i + 3]), rows[i + 4],
                              now_ms, mono)
            for i in range(0, len(rows), 5)
        }  # fmt: skip
        for key in set(self._states) | set(seen):
            if self._pending[key] or self._touched.get(key, 0) > version:
                continue
            new = seen.get(key, brk.CLOSED)
            if not _same(new, self._states.get(key, brk.CLOSED)):
                self._set(key, new, " (fleet)", logging.INFO)


# --------------------------------------------------------------------------- latency


class RedisLatency:
    """`state.Latency` smoothed over the fleet's samples (EWMA in Redis, in arrival order)."""

    def __init__(self, rs: RedisState) -> None:
        self._rs = rs
        self._values: dict[str, float] = {}
        self._samples: dict[str, deque[float]] = {}  # observed since the last push
        self.dirty = False

    def observe(self, key: str, ms: float) -> None:
        if not math.isfinite(ms):
            return
        prev = self._values.get(key)
        self._values[key] = ms if prev is None else LATENCY_ALPHA * ms + (1 - LATENCY_ALPHA) * prev
        self._samples.setdefault(key, deque(maxlen=MAX_SAMPLES)).append(ms)
        self.dirty = True

    def values(self) -> dict[str, float]:
        return dict(self._values)

    def _take(self) -> dict[str, deque[float]]:
        taken, self._samples = self._samples, {}
        return taken

    def _restore(self, taken: dict[str, deque[float]]) -> None:
        for key, old in taken.items():
            merged = deque(old, maxlen=MAX_SAMPLES)
            merged.extend(self._samples.get(key, ()))
            self._samples[key] = merged

    def _merge(self, flat: list[str]) -> None:
        for i in range(0, len(flat), 2):
            key, value = flat[i], float(flat[i + 1])
            for ms in self._samples.get(key, ()):  # observed while the push was on its way
                value = LATENCY_ALPHA * ms + (1 - LATENCY_ALPHA) * value
            if self._values.get(key) != value:
                self._values[key] = value
                self.dirty = True


# --------------------------------------------------------------------------- budgets

_Key = tuple[str, str, float, float]  # rule name, scope key, window start, window end


@dataclass
class _Account:
    spent: int = 0  # units of 1e-10 USD
    held: int = 0
    alerted: bool = False


class RedisBudgets:
    """`state.Budgets` with one account per (rule, scope key, window) in Redis: the
    admission check runs in Redis, so replicas together never overshoot a budget.

    A reservation is closed once: a second settle or release of it here is ignored, as in
    BudgetBook."""

    def __init__(self, rs: RedisState) -> None:
        self._rs = rs
        self.on_alert: Callable[[Alert], None] = lambda a: None
        self._rules: dict[str, BudgetRule] = {}  # latest seen here, per name
        self._fleet_rules: dict[str, BudgetRule] = {}  # as stored by any replica
        self._json: dict[str, tuple[BudgetRule, str]] = {}
        self._parsed: dict[str, BudgetRule | None] = {}
        self._accounts: dict[_Key, _Account] = {}  # mirror for snapshot()
        self._closed: dict[int, None] = {}  # recently settled or released ids, oldest first

    async def reserve(
        self, rule: BudgetRule, scope_key: str, amount_usd: float, now: float
    ) -> Reservation | Exceeded:
        amount = checked_amount(amount_usd, "a reservation")
        self._rules[rule.name] = rule
        start, end = window(rule.per, now)
        rs = self._rs
        if not rs.connected:
            raise rs.unavailable(rule)
        keys, args = self._account(rule.name, scope_key, start, end)
        extra = [to_units(amount), to_units(rule.usd), _ms(rs.hold_ttl_s)]
        try:
            reply = await rs._eval("bud_reserve", keys, ["0", "0", *args, *extra])
        except (RedisError, OSError) as e:
            if isinstance(e, _DOWN):
                rs._down(e)
            raise rs.unavailable(rule, e) from e
        rid, spent, held, alerted = (int(x) for x in reply)
        self._accounts[(rule.name, scope_key, start, end)] = _Account(spent, held, bool(alerted))
        if not rid:
            retry = max(1, math.ceil(end - now))
            return Exceeded(
                rule, scope_key, from_units(spent), from_units(held), amount, rule.usd, retry
            )
        return Reservation(rid, rule.name, scope_key, start, end, amount)

    def settle(self, reservation: Reservation, actual_usd: float | None, now: float) -> None:
        r = reservation
        if not self._close(r):
            return
        held = charge = to_units(r.amount)
        if actual_usd is not None:
            if math.isfinite(actual_usd) and actual_usd >= 0:
                charge = to_units(actual_usd)
            else:
                log.error("budget %r: cost %r is not an amount; charging the reserved "
                          "$%.6f instead", r.rule, actual_usd, r.amount)  # fmt: skip
        rule = self._rules.get(r.rule)
        acct = self._accounts.setdefault((r.rule, r.scope_key, r.window_start, r.window_end),
                                         _Account())  # fmt: skip
        acct.held = max(0, acct.held - held)
        acct.spent += charge
        keys, args = self._account(r.rule, r.scope_key, r.window_start, r.window_end)
        self._rs._enqueue("bud_settle", keys, [*args, r.id, charge, self._threshold(rule)],
                          lambda reply: self._settled(r, rule, reply))  # fmt: skip

    def release(self, reservation: Reservation) -> None:
        r = reservation
        if not self._close(r):
            return
        acct = self._accounts.get((r.rule, r.scope_key, r.window_start, r.window_end))
        if acct is not None:
            acct.held = max(0, acct.held - to_units(r.amount))
        keys, args = self._account(r.rule, r.scope_key, r.window_start, r.window_end)
        self._rs._enqueue("bud_release", keys, [*args, r.id], lambda reply: None)

    def charge(self, rule: BudgetRule, scope_key: str, usd: float, now: float) -> None:
        if not (math.isfinite(usd) and usd > 0):
            if usd > 0 or math.isnan(usd):
                log.error("budget %r: cannot charge %r", rule.name, usd)
            return
        self._rules[rule.name] = rule
        start, end = window(rule.per, now)
        units = to_units(usd)
        acct = self._accounts.setdefault((rule.name, scope_key, start, end), _Account())
        acct.spent += units
        if rule.alert_at is not None and acct.spent >= rule.alert_at * to_units(rule.usd):
            acct.alerted = True
        keys, args = self._account(rule.name, scope_key, start, end)
        self._rs._enqueue(
            "bud_charge", keys, [*args, units, self._threshold(rule)], lambda reply: None
        )

    async def seed(
        self, rule: BudgetRule, scope_key: str, window_start: float, spent: float
    ) -> None:
        """Count the ledger's spend unless a replica has already opened this account in
        Redis. While Redis is unreachable the seed is queued and tried when it is back."""
        start, end = window(rule.per, window_start)
        if start != window_start:
            raise ValueError(
                f"{window_start!r} is not the start of a {rule.per} window; "
                f"pass window({rule.per!r}, t)[0]"
            )
        units = to_units(checked_amount(spent, "seeded spend"))
        self._rules[rule.name] = rule
        key = (rule.name, scope_key, start, end)
        keys, args = self._account(rule.name, scope_key, start, end)
        extra = [units, self._threshold(rule)]
        rs = self._rs
        if rs.connected:
            try:
                reply = await rs._eval("bud_seed", keys, ["0", "0", *args, *extra])
            except _DOWN as e:
                rs._down(e)
            except RedisError as e:
                log.warning("budget %r: seeding in Redis failed: %s", rule.name, e)
            else:
                self._seeded(key, units, rule, reply)
                return
        log.warning("budget %r: Redis at %s unreachable; the ledger's spend for %s is counted "
                    "when it is back", rule.name, rs.where, scope_key)  # fmt: skip
        rs._enqueue("bud_seed", keys, [*args, *extra], lambda r: self._seeded(key, units, rule, r))

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for (name, key, start, end), acct in sorted(self._accounts.items(), key=lambda kv: kv[0]):
            rule = self._rules.get(name) or self._fleet_rules.get(name)
            if rule is None or (start, end) != window(rule.per, now):
                continue
            rows.append(snapshot_row(rule, key, start, end, acct.spent, acct.held, acct.alerted))
        return rows

    # ----------------------------------------------------------------------- internals

    def _account(
        self, name: str, scope_key: str, start: float, end: float
    ) -> tuple[list[str], list[Any]]:
        rs = self._rs
        base = rs.key("bud:", quote(name, safe=""), ":", quote(scope_key, safe=""), ":",
                      str(int(start)))  # fmt: skip
        keys = [rs.key("applied:", rs.token), base, base + ":h", base + ":m",
                rs.key("budgets"), rs.key("budget-rules"), rs.key("budget-ids")]  # fmt: skip
        rule = self._rules.get(name)
        args = [name, scope_key, int(start), int(end), int(end) + _DAY_S, self._rule_json(rule)]
        return keys, args

    def _close(self, r: Reservation) -> bool:
        """False when `r` was settled or released here already (the second one is ignored)."""
        if r.id in self._closed:
            return False
        self._closed[r.id] = None
        if len(self._closed) > RECENTLY_CLOSED:
            del self._closed[next(iter(self._closed))]
        return True

    def _rule_json(self, rule: BudgetRule | None) -> str:
        if rule is None:
            return ""
        cached = self._json.get(rule.name)
        if cached is None or cached[0] != rule:
            cached = (rule, json.dumps(asdict(rule), sort_keys=True, separators=(",", ":")))
            self._json[rule.name] = cached
        return cached[1]

    @staticmethod
    def _threshold(rule: BudgetRule | None) -> str:
        if rule is None or rule.alert_at is None:
            return ""
        return repr(rule.alert_at * to_units(rule.usd))  # BudgetBook's comparison, in Lua

    def _settled(self, r: Reservation, rule: BudgetRule | None, reply: Any) -> None:
        if reply is None or rule is None or rule.alert_at is None:
            return
        _, alert, spent = (int(x) for x in reply)
        if not alert:
            return
        acct = self._accounts.get((r.rule, r.scope_key, r.window_start, r.window_end))
        if acct is not None:
            acct.alerted = True
        try:
            self.on_alert(
                Alert(
                    r.rule, r.scope_key, r.window_start, from_units(spent), rule.usd, rule.alert_at
                )
            )
        except Exception:
            log.exception("budget %r: the alert handler failed", r.rule)

    def _seeded(self, key: _Key, units: int, rule: BudgetRule, reply: Any) -> None:
        if reply is not None and int(reply):
            alerted = rule.alert_at is not None and units >= rule.alert_at * to_units(rule.usd)
            self._accounts[key] = _Account(units, 0, alerted)

    def _parse_rule(self, raw: str) -> BudgetRule | None:
        if raw not in self._parsed:
            try:
                self._parsed[raw] = BudgetRule(**json.loads(raw))
            except (TypeError, ValueError):
                self._parsed[raw] = None
        return self._parsed[raw]

    def _refresh(self, reply: list[Any]) -> None:
        rows, rules = reply
        fleet = {}
        for name, raw in _pairs(rules):
            if (rule := self._parse_rule(raw)) is not None:
                fleet[name] = rule
        self._fleet_rules = fleet
        self._accounts = {
            (rows[i], rows[i + 1], float(rows[i + 2]), float(rows[i + 3])): _Account(
                int(rows[i + 4] or 0), int(rows[i + 5] or 0), rows[i + 6] == "1"
            )
            for i in range(0, len(rows), 7)
        }


def _pairs(flat: list[Any]) -> Iterable[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)
