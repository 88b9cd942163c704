"""Response cache entries shared by replicas through Redis (`cache.store: redis://…`, or
the `state:` Redis when `cache.store` is unset): a hit on one replica is an answer another
one paid for. A `CacheStore` (`addon.store.cache`).

Keys, under `prefix` (default "orch:"):

    cache-salt      STRING, 32 random bytes: the secret that keys every hash; the first
                    replica to start sets it (`SET NX`), the others read it
    cache:<hash>    STRING, an encoded `CachedAnswer`; `EX` the entry's TTL (Redis's clock)

Every call is bounded by `TIMEOUT_S`: an unreachable Redis makes each lookup a miss and
each write a no-op (with a warning at most every 30 s), never a failed request.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from addon.config.redact import redact
from addon.store.cache import CachedAnswer

log = logging.getLogger("orchestrator")

TIMEOUT_S = 0.5
WARN_EVERY_S = 30.0


class RedisCache:
    """`CacheStore` on the Redis at `url`."""

    def __init__(self, url: str, *, prefix: str = "orch:") -> None:
        self.url, self.where, self.prefix = url, redact(url), prefix
        self._client: aredis.Redis | None = None
        self._salt: bytes | None = None
        self.errors = 0
        self._warned_at = -math.inf

    async def open(self) -> None:
        """Make the client and try to read the salt (retried on later lookups)."""
        self._client = aredis.Redis.from_url(self.url, socket_timeout=TIMEOUT_S,
                                             socket_connect_timeout=TIMEOUT_S)  # fmt: skip
        await self.salt()

    async def salt(self) -> bytes | None:
        """The fleet's salt, set by the first replica that asks; None while Redis is away."""
        if self._salt is not None or self._client is None:
            return self._salt
        key = self.prefix + "cache-salt"
        try:
            await self._client.set(key, secrets.token_bytes(32), nx=True)
            got = await self._client.get(key)
        except (RedisError, OSError) as e:
            self._failed("salt", e)
            return None
        self._salt = got.encode() if isinstance(got, str) else bytes(got) if got else None
        return self._salt

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        """The entry under `key` (Redis expires it on its own)."""
        if self._client is None:
            return None
        try:
            raw = await self._client.get(self.prefix + "cache:" + key)
        except (RedisError, OSError) as e:
            self._failed("read", e)
            return None
        return CachedAnswer.decode(raw) if raw else None

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float, now: float) -> None:
        """`SET cache:<key> value EX ttl` (whole seconds, at least 1)."""
        if self._client is None:
            return
        try:
            await self._client.set(self.prefix + "cache:" + key, answer.encode(),
                                   ex=max(1, math.ceil(ttl_s)))  # fmt: skip
        except (RedisError, OSError) as e:
            self._failed("write", e)

    async def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def health(self) -> dict[str, Any]:
        """Kind `redis`, where (password redacted), whether the salt is known, failures."""
        return {"kind": "redis", "url": self.where, "ready": self._salt is not None,
                "errors": self.errors}  # fmt: skip

    def _failed(self, what: str, e: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("cache: Redis %s at %s failed (%s); served without the cache",
                        what, self.where, type(e).__name__)  # fmt: skip
