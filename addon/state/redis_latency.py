"""Observed latency smoothed over the fleet's samples (`memory.Latency`).

Each replica keeps the samples it observed since the last sync and pushes them in one
script call; Redis folds them into its EWMA in arrival order and answers with every
target's value. Key: `lat`, a HASH target -> smoothed latency (ms), 1 day TTL.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from addon.state.memory import LATENCY_ALPHA, smoothed
from addon.state.redis_connection import Call, RedisConnection

LATENCY_TTL_S = 86_400
MAX_SAMPLES = 64  # per target between syncs; older ones weigh < 0.7**64 anyway

Samples = dict[str, deque[float]]  # target -> latencies (ms) observed here, oldest first


class RedisLatency:
    """`memory.Latency` smoothed over the fleet's samples (EWMA in Redis, in arrival order)."""

    def __init__(self, conn: RedisConnection) -> None:
        self._conn = conn
        self._values: dict[str, float] = {}
        self._samples: Samples = {}  # observed since the last push
        self.dirty = False  # values changed since the last rerank cleared it

    def observe(self, key: str, ms: float) -> None:
        """One attempt's latency to `key` (ms): folded in here at once, pushed at the next
        sync. A value that is not finite is ignored."""
        if not math.isfinite(ms):
            return
        self._values[key] = smoothed(self._values.get(key), ms)
        self._samples.setdefault(key, deque(maxlen=MAX_SAMPLES)).append(ms)
        self.dirty = True

    def values(self) -> dict[str, float]:
        """Smoothed latency per target key (ms): the fleet's, plus samples since the sync."""
        return dict(self._values)

    # ----------------------------------------------------------------------- sync

    def take(self) -> Samples:
        """The samples observed since the last push, removed: pass them to `push_call`,
        and back to `restore` when the push fails."""
        taken, self._samples = self._samples, {}
        return taken

    def push_call(self, samples: Samples) -> Call:
        """The script call that adds `samples` to the fleet's values and reads them all."""
        push: list[Any] = [LATENCY_ALPHA, LATENCY_TTL_S * 1000]
        for target, values in samples.items():
            push += [target, len(values), *values]
        return ("lat_push", [self._conn.key("lat")], push)

    def restore(self, taken: Samples) -> None:
        """Put back samples whose push failed, before the ones observed since."""
        for key, old in taken.items():
            merged = deque(old, maxlen=MAX_SAMPLES)
            merged.extend(self._samples.get(key, ()))
            self._samples[key] = merged

    def merge(self, flat: list[str]) -> None:
        """The fleet's values (the reply to `push_call`: target, value, …), with the
        samples observed here while the push was on its way folded in again."""
        for i in range(0, len(flat), 2):
            key, value = flat[i], float(flat[i + 1])
            for ms in self._samples.get(key, ()):  # observed while the push was on its way
                value = smoothed(value, ms)
            if self._values.get(key) != value:
                self._values[key] = value
                self.dirty = True
