"""The connection behind `addon.state.redisstate`: one Redis client, its health, its scripts.

`RedisConnection` parses the `state:` URL (and keeps its password out of every message),
creates the client with short timeouts so a dead Redis never stalls the event loop, loads
the Lua scripts of `addon.state.redis_lua` and runs them: `eval` for the request path, in
shared round trips, and `eval_many` for the background tasks. It knows whether Redis was
reachable last time and logs each change once (`Throttle` keeps the repeats quiet).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from addon.config.redact import redact
from addon.errors import StateUnavailable
from addon.routing.budget import BudgetRule
from addon.state.redis_lua import SCRIPTS

log = logging.getLogger("orchestrator")

TIMEOUT_S = 0.5  # connect and per-command: a dead Redis must not stall the event loop
BATCH = 256  # scripts sent in one round trip, at most
DOWN = (RedisConnectionError, RedisTimeoutError, OSError)  # Redis unreachable, not refusing

Call = tuple[str, list[str], list[Any]]  # script name, KEYS, ARGV


def ms(seconds: float) -> int:
    """`seconds` as whole milliseconds for Redis (PX, PEXPIRE), at least 1."""
    return max(1, round(seconds * 1000))


class Throttle:
    """At most one log line per topic every `every_s`, counting the ones held back."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._next: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warn(self, topic: str, msg: str, *args: object) -> None:
        """Log `msg % args` as a warning unless `topic` was logged less than `every_s` ago;
        the next line that gets through says how many were held back."""
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


class RedisConnection:
    """The client for the Redis at `url`, the key names under `prefix`, and whether Redis
    answered last time (`connected`, `last_error` with the password scrubbed)."""

    def __init__(self, url: str, prefix: str = "orch:") -> None:
        self.url = url
        self.where = redact(url)  # the URL for messages
        self.prefix = prefix
        self.token = uuid.uuid4().hex  # this replica
        self.connected = False
        self.last_error: str | None = None
        self.throttle = Throttle()
        self._secret = urlsplit(url).password
        self._client: aredis.Redis | None = None
        self._shas = {
            n: hashlib.sha1(s.encode(), usedforsecurity=False).hexdigest()
            for n, s in SCRIPTS.items()
        }
        self._asks: list[tuple[Call, asyncio.Future[Any]]] = []
        self._asker: asyncio.Task[None] | None = None

    def key(self, *parts: str) -> str:
        """The Redis key made of `parts` under this fleet's prefix."""
        return self.prefix + "".join(parts)

    @property
    def is_open(self) -> bool:
        """True between `open()` and `aclose()`, reachable or not."""
        return self._client is not None

    # ----------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Create the client (no round trip yet); a URL redis-py cannot use raises
        ValueError naming it, password redacted."""
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

    async def connect(self) -> None:
        """Ping Redis and load the scripts; raises RedisError or OSError when it cannot.
        The caller marks the connection `up()`."""
        await self._redis().ping()
        await self._load_scripts()

    async def stop_asking(self) -> None:
        """Cancel the request path's round trip under way; its callers get a
        ConnectionError saying the state store closed."""
        asker, self._asker = self._asker, None
        if asker is not None:
            asker.cancel()
            await asyncio.gather(asker, return_exceptions=True)

    async def aclose(self) -> None:
        """Close the client and its connections; `open()` may run again afterwards."""
        if self._client is not None:
            await self._client.aclose(close_connection_pool=True)
        self._client = None
        self.connected = False

    # ----------------------------------------------------------------------- health

    def scrub(self, text: str) -> str:
        """`text` with the URL's password (raw or percent-encoded) replaced by ***."""
        if self._secret:
            text = text.replace(self._secret, "***").replace(quote(self._secret), "***")
            text = text.replace(unquote(self._secret), "***")
        return text

    def down(self, e: BaseException) -> None:
        """Redis did not answer: remember why, and log the loss once (then throttled)."""
        self.last_error = self.scrub(f"{type(e).__name__}: {e}")
        if self.connected:
            log.warning(
                "state: lost Redis at %s (%s); budgets refuse calls, breakers decide on "
                "this replica, writes are queued until it is back",
                self.where, self.last_error,
            )  # fmt: skip
            self.throttle.hold("down")
        else:
            self.throttle.warn(
                "down", "state: Redis at %s unreachable (%s); retrying", self.where, self.last_error
            )
        self.connected = False

    def up(self, queued: int) -> None:
        """Redis answered after `connect()`: log the first connection or the return
        (with the `queued` writes about to be applied)."""
        if not self.connected and self.last_error is None:
            log.info("state: connected to Redis at %s", self.where)
        elif not self.connected:
            log.warning("state: Redis at %s is back; applying %d queued writes",
                        self.where, queued)  # fmt: skip
        self.connected = True

    def unavailable(self, rule: BudgetRule, e: BaseException | None = None) -> StateUnavailable:
        """The error for a budget check Redis cannot answer: what failed, where, the fix."""
        why = self.scrub(f"{type(e).__name__}: {e}") if e else self.last_error or "not connected"
        return StateUnavailable(
            f"budget {rule.name!r} cannot be checked: the shared state at {self.where} is "
            f"unreachable ({why}); calls under this budget are refused until it is back — "
            "check that Redis is running and that `state:` in orchestrator.yaml points at it"
        )

    # ----------------------------------------------------------------------- scripts

    async def eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script for the request path. Calls made while a round trip is under way
        share the next one, so a burst of requests needs one connection, not one each."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks.append(((name, keys, args), future))
        if self._asker is None or self._asker.done():
            self._asker = asyncio.create_task(self._ask_loop(), name="redisstate-ask")
        return await future

    async def eval_many(self, calls: list[Call]) -> list[Any]:
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

    def _redis(self) -> aredis.Redis:
        if self._client is None:
            raise RedisConnectionError("RedisState.start() has not run")
        return self._client

    async def _load_scripts(self) -> None:
        async with self._redis().pipeline(transaction=False) as pipe:
            for source in SCRIPTS.values():
                pipe.script_load(source)
            await pipe.execute()

    async def _ask_loop(self) -> None:
        while self._asks:
            batch, self._asks = self._asks[:BATCH], self._asks[BATCH:]
            try:
                replies = await self.eval_many([call for call, _ in batch])
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

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        async with self._redis().pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                pipe.evalsha(self._shas[name], len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
