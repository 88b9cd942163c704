"""When each source is due in ``refresh --every``: its own interval, with jitter.

A source's period is ``max(its interval, --every)``; each delay is multiplied by a
random factor in ``[1 - jitter, 1 + jitter]`` so many sidecars do not hit a source in
step. A failed source is retried after ``retry_failed_after`` (or its period, if shorter).
On start, a source whose data (in the previous DB) is younger than its period waits for
the rest of it; anything else is due at once. Time is plain epoch seconds passed in by
the caller, so tests drive the schedule with a fake clock.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime


def epoch(stamp: str | None) -> float | None:
    """Epoch seconds of a snapshot's ``fetched_at`` (date or UTC timestamp), if readable."""
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


class Schedule:
    """Per-source due times. One instance per ``--every`` loop; not shared."""

    def __init__(
        self,
        intervals: Mapping[str, float],
        *,
        every: float,
        jitter: float,
        retry_failed_after: float,
        rng: random.Random,
        last_fetched: Mapping[str, float | None],
        now: float,
    ) -> None:
        self.periods = {kind: max(interval, every) for kind, interval in intervals.items()}
        self._jitter = jitter
        self._retry = retry_failed_after
        self._rng = rng
        self.next_due: dict[str, float] = {}
        for kind, period in self.periods.items():
            last = last_fetched.get(kind)
            self.next_due[kind] = now if last is None else min(now + period, last + period)

    def _jittered(self, seconds: float) -> float:
        return seconds * self._rng.uniform(1 - self._jitter, 1 + self._jitter)

    def due(self, now: float) -> frozenset[str]:
        return frozenset(kind for kind, at in self.next_due.items() if at <= now)

    def done(self, kind: str, now: float, *, ok: bool) -> None:
        period = self.periods[kind]
        delay = period if ok else min(self._retry, period)
        self.next_due[kind] = now + self._jittered(delay)

    def next_wake(self) -> float:
        return min(self.next_due.values())
