"""Router state that replicas may share: circuit breakers, live latency stats, budgets.

Three small interfaces, each with an in-process implementation here (the embedded
default, exactly the single-process behaviour) and a Redis one in `addon.redisstate`
(`state: redis://…` in orchestrator.yaml).

The request path reads only local values (`Breakers.get`, `Latency.values`,
`Budgets.snapshot`): the Redis implementations keep a mirror that they refresh in the
background, and go to Redis only where the fleet must agree at once — claiming the single
half-open probe and reserving budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from addon.routing import breaker as brk
from addon.routing.budget import Alert, BudgetBook, BudgetRule, Exceeded, Reservation, window

log = logging.getLogger("orchestrator")

LATENCY_ALPHA = 0.3


# --------------------------------------------------------------------------- interfaces


class Breakers(Protocol):
    def get(self, key: str) -> brk.BreakerState | None:
        """The last known state; `opened_at` is on this process's `time.monotonic()`."""

    async def acquire(self, key: str, cooldown_s: float) -> bool:
        """Claim the right to try `key` now: an open breaker past its cooldown hands out
        exactly one half-open probe (fleet-wide with Redis)."""

    def record(self, key: str, *, success: bool, threshold: int) -> None:
        """An attempt's verdict on the target (a success closes, failures count)."""

    def release(self, key: str) -> None:
        """The attempt ended without a verdict: give a claimed probe back."""

    def snapshot(self) -> dict[str, brk.BreakerState]: ...


class Latency(Protocol):
    dirty: bool  # values changed since the last rerank cleared it

    def observe(self, key: str, ms: float) -> None: ...

    def values(self) -> dict[str, float]:
        """Smoothed latency per target key (ms)."""


class Budgets(Protocol):
    on_alert: Callable[[Alert], None]

    async def reserve(
        self, rule: BudgetRule, scope_key: str, amount_usd: float, now: float
    ) -> Reservation | Exceeded:
        """Hold `amount_usd` if spent + held + it fits; raises StateUnavailable when the
        shared store cannot be asked."""

    def settle(self, reservation: Reservation, actual_usd: float | None, now: float) -> None:
        """Close the hold, charging `actual_usd` (None: the held amount). Alerts crossed go
        to `on_alert`."""

    def release(self, reservation: Reservation) -> None: ...

    def charge(self, rule: BudgetRule, scope_key: str, usd: float, now: float) -> None:
        """Spend without a reservation (a call downgraded after the budget ran out)."""

    async def seed(
        self, rule: BudgetRule, scope_key: str, window_start: float, spent: float
    ) -> None:
        """Spend read from the ledger at startup (shared: only when no replica has counted
        this window yet)."""

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Current windows, shaped like `BudgetBook.snapshot`."""


# --------------------------------------------------------------------------- in-process


class LocalBreakers:
    def __init__(self) -> None:
        self.states: dict[str, brk.BreakerState] = {}

    def get(self, key: str) -> brk.BreakerState | None:
        return self.states.get(key)

    async def acquire(self, key: str, cooldown_s: float) -> bool:
        state = self.states.get(key)
        if state is None:
            return True
        ok, new = brk.acquire(state, time.monotonic(), cooldown_s)
        if new is not state:
            _log_transition(key, state, new, " (probe)")
            self.states[key] = new
        return ok

    def record(self, key: str, *, success: bool, threshold: int) -> None:
        state = self.states.get(key)
        if state is None and success:
            return
        state = state or brk.CLOSED
        new = brk.record(state, success=success, now=time.monotonic(), threshold=threshold)
        _log_transition(key, state, new)
        self.states[key] = new

    def release(self, key: str) -> None:
        state = self.states.get(key)
        if state is not None and state.probing:
            self.states[key] = brk.release(state)

    def snapshot(self) -> dict[str, brk.BreakerState]:
        return dict(self.states)


def _log_transition(key: str, old: brk.BreakerState, new: brk.BreakerState, note: str = "") -> None:
    if new.status is not old.status:
        log.warning("breaker %s: %s -> %s%s", key, old.status.value, new.status.value, note)


class LocalLatency:
    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        self.dirty = False

    def observe(self, key: str, ms: float) -> None:
        prev = self._values.get(key)
        self._values[key] = ms if prev is None else LATENCY_ALPHA * ms + (1 - LATENCY_ALPHA) * prev
        self.dirty = True

    def values(self) -> dict[str, float]:
        return dict(self._values)


class LocalBudgets:
    """`BudgetBook` behind the `Budgets` interface."""

    def __init__(self, book: BudgetBook | None = None) -> None:
        self.book = book if book is not None else BudgetBook()
        self.on_alert: Callable[[Alert], None] = lambda a: None

    async def reserve(
        self, rule: BudgetRule, scope_key: str, amount_usd: float, now: float
    ) -> Reservation | Exceeded:
        return self.book.reserve(rule, scope_key, amount_usd, now)

    def settle(self, reservation: Reservation, actual_usd: float | None, now: float) -> None:
        for alert in self.book.settle(reservation, actual_usd, now):
            self.on_alert(alert)

    def release(self, reservation: Reservation) -> None:
        self.book.release(reservation)

    def charge(self, rule: BudgetRule, scope_key: str, usd: float, now: float) -> None:
        if usd > 0:
            self.book.seed(rule, scope_key, window(rule.per, now)[0], usd)

    async def seed(
        self, rule: BudgetRule, scope_key: str, window_start: float, spent: float
    ) -> None:
        self.book.seed(rule, scope_key, window_start, spent)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        return self.book.snapshot(now)
