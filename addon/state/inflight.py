"""Calls in flight per target, for the `least_busy` balancing strategy.

`InFlight` is the interface: `start`/`end` around one attempt, `counts()` for routing. This
module has the in-process one (`LocalInFlight`, the embedded default); `addon.state.
redis_inflight.RedisInFlight` adds the other replicas' counts (`state: redis://…`).

`Tracker` does the bookkeeping of one request: an attempt is in flight from the moment the
attempt engine claims its target (`acquire`) until its outcome — for a stream that was handed
to the client, until the request's ledger row is written (`done`), since the stream runs
until then. Whatever is still held when the request ends is released by `done`, so no count
outlives its request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from addon.routing.catalog import Candidate
from addon.routing.domains import Judgement
from addon.routing.fallback import Outcome

Acquire = Callable[[Candidate], Awaitable[bool]]
Counted = Callable[[Candidate], Coroutine[Any, Any, bool]]  # what `track` gives back
OnOutcome = Callable[[Candidate, Outcome, float, Judgement], None]


class InFlight(Protocol):
    """Calls in flight by target key."""

    def start(self, key: str) -> None:
        """One more call to `key` is on its way."""

    def end(self, key: str) -> None:
        """One call to `key` ended."""

    def counts(self) -> Mapping[str, int]:
        """Calls in flight per target key (only keys with some)."""


class LocalInFlight:
    """`InFlight` in this process."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def start(self, key: str) -> None:
        """One more call to `key` is on its way."""
        self._counts[key] = self._counts.get(key, 0) + 1

    def end(self, key: str) -> None:
        """One call to `key` ended (never below zero)."""
        n = self._counts.get(key, 0) - 1
        if n > 0:
            self._counts[key] = n
        else:
            self._counts.pop(key, None)

    def counts(self) -> Mapping[str, int]:
        """Calls in flight per target key, as they are now (a live view: do not keep it)."""
        return self._counts


class Tracker:
    """Which targets each request holds in flight (`track`), released at its outcome or,
    at the latest, when the request ends (`done`)."""

    def __init__(self, inflight: InFlight) -> None:
        self.inflight = inflight
        self._held: dict[str, list[str]] = {}  # request id -> target keys held

    def track(self, request_id: str, acquire: Acquire, on_outcome: OnOutcome,
              streaming: bool) -> tuple[Counted, OnOutcome]:  # fmt: skip
        """`acquire` and `on_outcome` of one request, counting its attempts in flight: from
        a claimed target to its outcome (a stream that answered: until `done`)."""
        held = self._held.setdefault(request_id, [])
        counts = self.inflight

        async def counted_acquire(c: Candidate) -> bool:
            if not await acquire(c):
                return False
            counts.start(c.key)
            held.append(c.key)
            return True

        def counted_outcome(c: Candidate, outcome: Outcome, ms: float, j: Judgement) -> None:
            on_outcome(c, outcome, ms, j)
            if (streaming and outcome.ok) or c.key not in held:
                return
            held.remove(c.key)
            counts.end(c.key)

        return counted_acquire, counted_outcome

    def done(self, request_id: str) -> None:
        """The request ended: release whatever it still holds."""
        for key in self._held.pop(request_id, ()):
            self.inflight.end(key)
