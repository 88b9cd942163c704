"""Rate-limit accounts (requests and tokens per sliding minute) the request path reserves in.

`RateLimits` is the interface; `LocalRateLimits` keeps one `ratelimit.SlidingLog` per scope
in this process (the embedded default); `addon.state.redis_ratelimits.RedisRateLimits`
keeps the same logs in Redis so replicas share them (`state: redis://…`).

A request reserves in all its scopes at once (client, policy; a provider per attempt) or in
none: one check-and-reserve, so a refusal in one scope never leaves a hold in another. The
hold is set to the real token usage when the call ends (`settle`), or taken out when the
call was never sent (`release`). `blocked` answers from what this process last saw, with no
round trip, for the routing filter that skips a provider at its limit (`rate_limited`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from addon.routing.ratelimit import Entry, Limited, Scope, SlidingLog, status_row

MAX_STATUS_ROWS = 100  # /status lists the busiest accounts, at most this many
SWEEP_EVERY = 1024  # reserves between sweeps of accounts whose window emptied


@dataclass(slots=True)
class Hold:
    """An admitted request's entry (`id`) in each of `scopes`, holding `tokens`; in process,
    also each scope's window and the request's entry in it (`logged`)."""

    id: int
    scopes: tuple[Scope, ...]
    tokens: int
    logged: tuple[tuple[SlidingLog, Entry], ...] = ()


class RateLimits(Protocol):
    """Sliding-window accounts by scope."""

    async def reserve(self, scopes: Sequence[Scope], need: int) -> Hold | Limited:
        """Admit one request holding `need` tokens in every scope, or refuse it (the first
        scope that has no room) and hold nothing."""

    def settle(self, hold: Hold, tokens: int) -> None:
        """The call ended having used `tokens` (input + output): the hold becomes that."""

    def release(self, hold: Hold) -> None:
        """The call was never sent: take its entry out of every scope."""

    def blocked(self, scope: Scope) -> bool:
        """Whether `scope` was at its limit when this process last looked (no round trip)."""

    def any_blocked(self) -> bool:
        """Whether any scope may be `blocked` (False: none is; a fast path)."""

    def snapshot(self) -> list[dict[str, Any]]:
        """`/status` rows: each account's window, the busiest first."""


class LocalRateLimits:
    """`RateLimits` in this process, on `time.monotonic()` (or the `clock` given); hold
    ids count by `ids_step` (-1: negative ids, told apart from Redis' own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ids_step: int = 1) -> None:
        self.clock = clock
        self.logs: dict[str, SlidingLog] = {}  # scope id -> its window
        self.scopes: dict[str, Scope] = {}  # scope id -> the scope as last reserved in
        self._free_at: dict[str, float] = {}  # scope id -> when it has room again
        self._ids = itertools.count(ids_step, ids_step)
        self._reserves = 0

    async def reserve(self, scopes: Sequence[Scope], need: int) -> Hold | Limited:
        """Check every scope, then log the request in each (atomic: one event-loop step)."""
        return self.reserve_now(scopes, need)

    def reserve_now(self, scopes: Sequence[Scope], need: int) -> Hold | Limited:
        """`reserve` without the coroutine (the Redis fallback and the bench call it)."""
        now = self.clock()
        logs, known = self.logs, self.scopes
        found = []
        for s in scopes:
            sid = s.id
            log = logs.get(sid)
            if log is None:
                log = logs[sid] = SlidingLog()
            if known.get(sid) is not s:
                known[sid] = s
            refused = log.check(s, need, now)
            if refused is not None:
                if not refused.never:  # a request too large for the limit leaves it open
                    self._free_at[sid] = now + refused.retry_after_s
                return refused
            found.append(log)
        hold = Hold(next(self._ids), tuple(scopes), need,
                    tuple([(log, log.add(need, now)) for log in found]))  # fmt: skip
        self._reserves += 1
        if self._reserves % SWEEP_EVERY == 0:
            self.sweep(now)
        return hold

    def settle(self, hold: Hold, tokens: int) -> None:
        """Set the hold to `tokens` in every scope it is still in the window of."""
        if tokens == hold.tokens:
            return
        for log, entry in hold.logged:  # `SlidingLog.adjust`, inlined (once per scope)
            if entry[2]:
                log.tokens += tokens - int(entry[1])
                entry[1] = tokens
        if tokens < hold.tokens and self._free_at:
            for s in hold.scopes:
                self._free_at.pop(s.id, None)  # room may be back: the next check says

    def release(self, hold: Hold) -> None:
        """Take the hold's entry out of every scope."""
        for log, entry in hold.logged:
            log.remove(entry)
        for s in hold.scopes:
            self._free_at.pop(s.id, None)

    def any_blocked(self) -> bool:
        """Whether some scope's last check refused (its wait may have passed since)."""
        return bool(self._free_at)

    def blocked(self, scope: Scope) -> bool:
        """Whether `scope`'s last check refused and its wait has not passed."""
        at = self._free_at.get(scope.id)
        if at is None:
            return False
        if self.clock() < at:
            return True
        del self._free_at[scope.id]
        return False

    def sweep(self, now: float) -> None:
        """Forget accounts whose window is empty (anonymous addresses come and go)."""
        empty = []
        for sid, log in self.logs.items():
            log.expire(now)
            if log.requests == 0:
                empty.append(sid)
        for sid in empty:
            del self.logs[sid]
            self.scopes.pop(sid, None)
            self._free_at.pop(sid, None)

    def snapshot(self) -> list[dict[str, Any]]:
        """The busiest accounts' windows now (`ratelimit.status_row`)."""
        now = self.clock()
        self.sweep(now)
        rows = [status_row(log.usage(self.scopes[sid], now)) for sid, log in self.logs.items()
                if sid in self.scopes]  # fmt: skip
        rows.sort(key=lambda r: (-int(r["requests"]), str(r["scope"]), str(r["name"])))
        return rows[:MAX_STATUS_ROWS]
