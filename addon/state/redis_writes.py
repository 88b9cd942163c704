"""The queue of writes to Redis that the request path does not wait for.

Breaker verdicts, settles, charges, releases and seeds made while Redis is unreachable are
numbered and kept here, oldest first, up to `max_queued` (then the oldest is dropped), and
one writer task applies them in order whenever Redis answers. Each carries its number and
the lowest number still queued, so a write sent again after an ambiguous failure is
applied once (the `applied:<replica>` set, see `addon.state.redis_lua`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from addon.state.redis_connection import BATCH, DOWN, RedisConnection

log = logging.getLogger("orchestrator")

MAX_QUEUED_WRITES = 100_000
# Redis answers these while it cannot write (memory, a replica, loading, a script): retry
_NOT_NOW = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY")


@dataclass
class Write:
    """One queued script call: its number in the queue, and what to do with the reply."""

    seq: int
    script: str
    keys: list[str]
    args: list[Any]
    done: Callable[[Any], None]  # called with the script's reply, or None when dropped


class WriteQueue:
    """Writes waiting for Redis at `conn`, applied oldest first by `run()`."""

    def __init__(self, conn: RedisConnection, max_queued: int = MAX_QUEUED_WRITES) -> None:
        self.max_queued = max_queued
        self._conn = conn
        self._writes: dict[int, Write] = {}  # by number: oldest first
        self._seq = itertools.count(1)
        self._dropped = 0
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        """The writes not yet applied."""
        return len(self._writes)

    def enqueue(
        self, script: str, keys: list[str], args: list[Any], done: Callable[[Any], None]
    ) -> None:
        """Queue `script(keys, args)`; `done` gets its reply once applied, or None when it
        is dropped (the queue was full, or Redis rejected it)."""
        if len(self._writes) >= self.max_queued:
            oldest = self._writes.pop(next(iter(self._writes)))
            self._dropped += 1
            self._conn.throttle.warn(
                "dropped",
                "state: %d writes queued for Redis at %s; dropping the oldest (%s), %d so far",
                len(self._writes) + 1, self._conn.where, oldest.script, self._dropped,
            )  # fmt: skip
            _finish(oldest, None)
        seq = next(self._seq)
        self._writes[seq] = Write(seq, script, keys, args, done)
        if self._conn.connected:
            self._wake.set()

    def wake(self) -> None:
        """Tell the writer task that Redis is there (or back): send what is queued."""
        self._wake.set()

    async def run(self) -> None:
        """The writer task: flush whenever woken, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as e:  # kept queued; the next sync wakes the writer again
                self._conn.throttle.warn("write", "state: writing to Redis failed: %r", e)

    async def flush(self) -> None:
        """Send queued writes oldest first, in batches of one round trip, while connected."""
        conn = self._conn
        while self._writes and conn.connected:
            batch = list(itertools.islice(self._writes.values(), BATCH))
            low = batch[0].seq
            calls = [(w.script, w.keys, [w.seq, low, *w.args]) for w in batch]
            try:
                replies = await conn.eval_many(calls)
            except DOWN as e:
                conn.down(e)
                return
            again = False
            for write, reply in zip(batch, replies, strict=True):
                if isinstance(reply, ResponseError):
                    if str(reply).startswith(_NOT_NOW):
                        again = True  # Redis cannot write now: keep it for the next sync
                        conn.throttle.warn("refused", "state: Redis refused a write: %s", reply)
                        continue
                    log.error("state: Redis rejected %s (dropped): %s", write.script, reply)
                    reply = None
                if self._writes.pop(write.seq, None) is not None:
                    _finish(write, reply)
            if again:
                return


def _finish(write: Write, reply: Any) -> None:
    try:
        write.done(reply)
    except Exception:
        log.exception("state: handling the reply to %s failed", write.script)
