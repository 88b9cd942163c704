"""Which provider produced each OpenAI Responses answer: its home.

A request with `previous_response_id` can only be served by the provider that stored that
response, so the router remembers, for each response id it has seen answered, the
configured provider's name. `ResponseHomes` is the interface; `LocalResponseHomes` keeps
the homes in this process (one replica, and the own memory of each Redis replica, see
`addon.state.redis_response_homes`).

A home expires `ttl_s` after it was remembered (by default 30 days: how long OpenAI keeps
a stored response unless told otherwise), and at most `max_entries` are kept, the oldest
remembered dropped first: about 270 bytes each, so the default 100,000 cost some 27 MB.
Ids that are empty or longer than `MAX_ID_CHARS` are never remembered and never found.
Nothing here reads a clock: every call takes `now` (seconds, on any clock the caller uses
consistently).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Protocol

DEFAULT_TTL_S = 30 * 86_400.0  # OpenAI keeps a stored response 30 days by default
MAX_ENTRIES = 100_000  # ~27 MB of ids and names per replica
MAX_ID_CHARS = 256  # OpenAI's ids are ~55 characters; longer is not a response id
SWEEP = 8  # expired homes dropped per `remember`, at most: bounded work, and ahead of inserts


def well_formed(response_id: str) -> bool:
    """True for an id worth remembering or looking up: 1 to `MAX_ID_CHARS` characters."""
    return 0 < len(response_id) <= MAX_ID_CHARS


class ResponseHomes(Protocol):
    """The provider that produced each response id, for routing `previous_response_id`."""

    def remember(self, response_id: str, provider: str, now: float) -> None:
        """`provider` answered with `response_id` at `now` (s). Never blocks the event
        loop and never raises; with Redis the shared write is queued."""

    async def home(self, response_id: str, now: float) -> str | None:
        """The provider that produced `response_id`, None when unknown or expired at `now`.
        With Redis unreachable: what this replica remembered itself; never raises."""

    def health(self) -> dict[str, Any]:
        """Numbers for `/status`: `kind`, `entries` (homes held in this process), …"""


class LocalResponseHomes:
    """`ResponseHomes` in this process: at most `max_entries` homes, each kept `ttl_s`
    seconds after it was remembered, the oldest remembered evicted first."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        if not 0 < ttl_s < math.inf:
            raise ValueError(
                f"response homes: ttl_s must be a positive number of seconds, got {ttl_s!r}"
            )
        if max_entries < 1:
            raise ValueError(f"response homes: max_entries must be at least 1, got {max_entries!r}")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.evicted = 0  # homes dropped for room before they expired
        # response id -> (provider, expires at), oldest remembered first
        self._homes: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        """Homes held, expired ones not yet swept included."""
        return len(self._homes)

    def remember(self, response_id: str, provider: str, now: float) -> None:
        """`provider` answered with `response_id` at `now`: keep it until `now + ttl_s`
        (remembering an id again renews it). Then sweep up to `SWEEP` expired homes off
        the old end and evict the oldest while more than `max_entries` are held."""
        if not well_formed(response_id):
            return
        homes = self._homes
        homes[response_id] = (provider, now + self.ttl_s)
        homes.move_to_end(response_id)
        for _ in range(SWEEP):
            oldest = next(iter(homes), None)
            if oldest is None or homes[oldest][1] > now:
                break
            del homes[oldest]
        while len(homes) > self.max_entries:
            homes.popitem(last=False)
            self.evicted += 1

    def lookup(self, response_id: str, now: float) -> str | None:
        """The provider remembered for `response_id`, None when unknown or expired at
        `now` (an expired home is forgotten)."""
        found = self._homes.get(response_id)
        if found is None:
            return None
        provider, expires = found
        if expires <= now:
            del self._homes[response_id]
            return None
        return provider

    async def home(self, response_id: str, now: float) -> str | None:
        """The provider that produced `response_id` (`lookup`)."""
        return self.lookup(response_id, now)

    def health(self) -> dict[str, Any]:
        """For `/status`: kind `in-process`, homes held, the bound, evictions so far."""
        return {
            "kind": "in-process",
            "entries": len(self._homes),
            "max_entries": self.max_entries,
            "evicted": self.evicted,
        }
