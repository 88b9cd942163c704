"""Response homes shared by the fleet through Redis (`response_homes.ResponseHomes`).

A replica that saw a response answered writes its home to Redis through the write queue
(the request path never waits for it), so a follow-up with `previous_response_id` finds
it on any replica. Each replica also keeps the homes it remembered itself in a bounded
`LocalResponseHomes`: those are answered without a round trip, and are all it knows while
Redis is unreachable. Homes read from Redis are not copied there.

A home never changes (one provider produced the response), so a write sent twice is
harmless and the write queue's `applied:` bookkeeping is not needed. At most `max_queued`
home writes wait in the queue at once, so an outage fills it with spend and breaker
writes, not ids; a home past that bound stays known to this replica only (`unshared`).

Key, under the prefix: `resp:<id>`, a STRING holding the provider's name, `EX` the TTL in
seconds on Redis's clock. The id is used as it is (no other part, no client data).
"""

from __future__ import annotations

import math
from typing import Any

from addon.state.redis_connection import DOWN, RedisConnection
from addon.state.redis_writes import WriteQueue
from addon.state.response_homes import (
    DEFAULT_TTL_S,
    MAX_ENTRIES,
    LocalResponseHomes,
    well_formed,
)

MAX_QUEUED_HOMES = 10_000  # home writes waiting for Redis at once, at most


class RedisResponseHomes:
    """`ResponseHomes` shared through the Redis at `conn`: writes go through `writes`,
    lookups through `conn.eval`; this replica's own homes (at most `max_local`) are kept
    in-process too, for `ttl_s` seconds like in Redis."""

    def __init__(
        self,
        conn: RedisConnection,
        writes: WriteQueue,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_local: int = MAX_ENTRIES,
        max_queued: int = MAX_QUEUED_HOMES,
    ) -> None:
        self._conn = conn
        self._writes = writes
        self.own = LocalResponseHomes(ttl_s, max_local)  # homes this replica remembered
        self.max_queued = max_queued
        self.unshared = 0  # homes never written to Redis: the queue bound was reached
        self._queued = 0  # home writes waiting in `writes`

    def remember(self, response_id: str, provider: str, now: float) -> None:
        """Keep the home here at once and queue `SET resp:<id> provider EX ttl` for the
        fleet. Never waits for Redis and never raises."""
        if not well_formed(response_id):
            return
        self.own.remember(response_id, provider, now)
        if self._queued >= self.max_queued:
            self.unshared += 1
            self._conn.throttle.warn(
                "homes-unshared",
                "state: %d response homes wait for Redis at %s; new ones stay on this "
                "replica (%d so far)",
                self._queued, self._conn.where, self.unshared,
            )  # fmt: skip
            return
        self._queued += 1
        ttl = max(1, math.ceil(self.own.ttl_s))  # whole seconds, at least 1
        self._writes.enqueue("resp_set", [self._key(response_id)], [provider, ttl], self._written)

    async def home(self, response_id: str, now: float) -> str | None:
        """The provider that produced `response_id`: this replica's own memory first,
        then Redis. None when neither knows it (or it expired); with Redis unreachable,
        only this replica's memory answers. Never raises."""
        if not well_formed(response_id):
            return None
        own = self.own.lookup(response_id, now)
        conn = self._conn
        if own is not None or not conn.connected:
            return own
        try:
            reply = await conn.eval("resp_get", [self._key(response_id)], [])
        except DOWN as e:
            conn.down(e)
            return None
        except Exception as e:  # a refusal must not fail the request: unknown it is
            conn.throttle.warn("homes-get", "state: looking up a response home failed: %r", e)
            return None
        return reply if isinstance(reply, str) and reply else None

    def health(self) -> dict[str, Any]:
        """For `/status`: kind `redis`, this replica's own homes (`entries`, the bound,
        evictions), home writes waiting for Redis, and homes never shared."""
        return {
            **self.own.health(),
            "kind": "redis",
            "queued": self._queued,
            "unshared": self.unshared,
        }

    def _key(self, response_id: str) -> str:
        return self._conn.key("resp:", response_id)

    def _written(self, reply: Any) -> None:
        """The write queue applied a home write, or dropped it (`reply` None)."""
        self._queued -= 1
