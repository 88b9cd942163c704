"""Router state that replicas may share: circuit breakers, live latency stats, budgets.

Three small interfaces (`Breakers` serves two families: target breakers by candidate
key, provider breakers by provider name), each with an in-process implementation here (the
embedded default, exactly the single-process behaviour) and a Redis one in
`addon.state.redisstate` (`state: redis://…` in orchestrator.yaml). Both smooth latency
with `smoothed` and log breaker transitions with `log_transition`.

The request path reads only local values (`Breakers.get`, `Latency.values`,
`Budgets.snapshot`): the Redis implementations keep a mirror that they refresh in the
background, and go to Redis only where the fleet must agree at once — claiming the single
half-open probe and reserving budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from addon.routing import breaker as brk
from addon.routing.budget import Alert, BudgetBook, BudgetRule, Exceeded, Reservation, window
from addon.routing.domains import Verdict

log = logging.getLogger("orchestrator")

LATENCY_ALPHA = 0.3  # weight of the newest latency sample in the moving average


def smoothed(prev: float | None, ms: float) -> float:
    """The exponentially weighted moving average after sample `ms` (ms); the first
    sample (`prev` None) is taken as is."""
    return ms if prev is None else LATENCY_ALPHA * ms + (1 - LATENCY_ALPHA) * prev


TARGET_LABEL = "breaker"  # how transitions of a target breaker are logged
PROVIDER_LABEL = "provider breaker"  # ... and of a provider breaker


def log_transition(
    key: str,
    old: brk.BreakerState,
    new: brk.BreakerState,
    note: str = "",
    level: int = logging.WARNING,
    label: str = TARGET_LABEL,
) -> None:
    """Log `<label> <key>: <old> -> <new><note>` when the status changes (at `level`), e.g.
    `breaker openai:gpt-4o: closed -> open` or `provider breaker openai: open -> half_open`."""
    if new.status is not old.status:
        log.log(level, "%s %s: %s -> %s%s", label, key, old.status.value, new.status.value, note)


def breaker_rows(
    snapshot: Mapping[str, brk.BreakerState], cooldown_s: float, *, key_name: str = "target"
) -> list[dict[str, Any]]:
    """The `/status` rows of a `Breakers.snapshot()`, sorted by key: `{key_name: key,
    "state", "failures", "cooldown_left_s"}` (seconds until an open breaker's probe, on this
    process's monotonic clock)."""
    now = time.monotonic()
    return [
        {key_name: r.key, "state": r.state, "failures": r.failures,
         "cooldown_left_s": r.cooldown_left_s}
        for r in (brk.row(k, st, now, cooldown_s) for k, st in sorted(snapshot.items()))
    ]  # fmt: skip


# --------------------------------------------------------------------------- interfaces


class Breakers(Protocol):
    """Circuit breakers by key (a target key `"provider:model"`, or a provider name for the
    provider breakers): the state the request path reads, and the transitions it asks for."""

    def get(self, key: str) -> brk.BreakerState | None:
        """The last known state; `opened_at` is on this process's `time.monotonic()`."""

    async def acquire(self, key: str, cooldown_s: float) -> bool:
        """Claim the right to try `key` now: an open breaker past its cooldown hands out
        exactly one half-open probe (fleet-wide with Redis)."""

    def record(self, key: str, *, success: bool, threshold: int) -> None:
        """An attempt's verdict on the target (a success closes, failures count)."""

    def release(self, key: str) -> None:
        """The attempt ended without a verdict: give a claimed probe back."""

    def snapshot(self) -> dict[str, brk.BreakerState]:
        """A copy of every known breaker state, by target key."""


class Latency(Protocol):
    """Observed latency per target, smoothed; `dirty` tells the scorer to rerank."""

    dirty: bool  # values changed since the last rerank cleared it

    def observe(self, key: str, ms: float) -> None:
        """One attempt's latency to `key` (ms), folded into its moving average."""

    def values(self) -> dict[str, float]:
        """Smoothed latency per target key (ms)."""


class Budgets(Protocol):
    """Budget accounts per (rule, scope key, window): reservations around a call,
    charges, the ledger's spend at startup; `on_alert` gets each alert threshold crossed."""

    on_alert: Callable[[Alert], None]

    async def reserve(
        self, rule: BudgetRule, scope_key: str, amount_usd: float, now: float
    ) -> Reservation | Exceeded:
        """Hold `amount_usd` if spent + held + it fits; raises StateUnavailable when the
        shared store cannot be asked."""

    def settle(self, reservation: Reservation, actual_usd: float | None, now: float) -> None:
        """Close the hold, charging `actual_usd` (None: the held amount). Alerts crossed go
        to `on_alert`."""

    def release(self, reservation: Reservation) -> None:
        """Give the hold back without charging (the call never ran)."""

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
    """`Breakers` in this process: `states` holds every target that ever failed; `label`
    names the family in the log (`log_transition`)."""

    def __init__(self, label: str = TARGET_LABEL) -> None:
        self.states: dict[str, brk.BreakerState] = {}
        self.label = label

    def get(self, key: str) -> brk.BreakerState | None:
        """The state of `key`, None when it never failed."""
        return self.states.get(key)

    async def acquire(self, key: str, cooldown_s: float) -> bool:
        """Claim the right to try `key` now: closed yes, open no until `cooldown_s` has
        passed, then one half-open probe at a time."""
        state = self.states.get(key)
        if state is None:
            return True
        ok, new = brk.acquire(state, time.monotonic(), cooldown_s)
        if new is not state:
            log_transition(key, state, new, " (probe)", label=self.label)
            self.states[key] = new
        return ok

    def record(self, key: str, *, success: bool, threshold: int) -> None:
        """An attempt's verdict on `key`: a success closes, `threshold` failures open."""
        state = self.states.get(key)
        if state is None and success:
            return
        state = state or brk.CLOSED
        new = brk.record(state, success=success, now=time.monotonic(), threshold=threshold)
        log_transition(key, state, new, label=self.label)
        self.states[key] = new

    def release(self, key: str) -> None:
        """The attempt ended without a verdict: give a claimed probe back."""
        state = self.states.get(key)
        if state is not None and state.probing:
            self.states[key] = brk.release(state)

    def snapshot(self) -> dict[str, brk.BreakerState]:
        """A copy of `states`."""
        return dict(self.states)


class LocalProviderBreakers(LocalBreakers):
    """Provider breakers in this process: `Breakers` keyed by configured provider name,
    with the same transitions, thresholds and probe as the target ones; a provider whose
    breaker is open has none of its targets tried."""

    def __init__(self) -> None:
        super().__init__(PROVIDER_LABEL)


class LocalLatency:
    """`Latency` in this process: one moving average per target."""

    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        self.dirty = False

    def observe(self, key: str, ms: float) -> None:
        """One attempt's latency to `key` (ms), folded into its moving average."""
        self._values[key] = smoothed(self._values.get(key), ms)
        self.dirty = True

    def values(self) -> dict[str, float]:
        """Smoothed latency per target key (ms)."""
        return dict(self._values)


class LocalBudgets:
    """`BudgetBook` behind the `Budgets` interface."""

    def __init__(self, book: BudgetBook | None = None) -> None:
        self.book = book if book is not None else BudgetBook()
        self.on_alert: Callable[[Alert], None] = lambda a: None

    async def reserve(
        self, rule: BudgetRule, scope_key: str, amount_usd: float, now: float
    ) -> Reservation | Exceeded:
        """Hold `amount_usd` if spent + held + it fits (`BudgetBook.reserve`)."""
        return self.book.reserve(rule, scope_key, amount_usd, now)

    def settle(self, reservation: Reservation, actual_usd: float | None, now: float) -> None:
        """Close the hold, charging `actual_usd` (None: the held amount); each alert
        crossed goes to `on_alert`."""
        for alert in self.book.settle(reservation, actual_usd, now):
            self.on_alert(alert)

    def release(self, reservation: Reservation) -> None:
        """Give the hold back without charging."""
        self.book.release(reservation)

    def charge(self, rule: BudgetRule, scope_key: str, usd: float, now: float) -> None:
        """Spend `usd` without a reservation in the window holding `now` (nothing for
        zero or less)."""
        if usd > 0:
            self.book.seed(rule, scope_key, window(rule.per, now)[0], usd)

    async def seed(
        self, rule: BudgetRule, scope_key: str, window_start: float, spent: float
    ) -> None:
        """Add the ledger's spend for the window starting at `window_start`."""
        self.book.seed(rule, scope_key, window_start, spent)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The current windows (`BudgetBook.snapshot`)."""
        return self.book.snapshot(now)


def tell(b: Breakers, key: str, verdict: Verdict, threshold: int) -> None:
    """Apply one attempt's `verdict` (`routing.domains.Verdict`) to breaker `key` of `b`."""
    if verdict is Verdict.RELEASE:
        b.release(key)
    else:
        b.record(key, success=verdict is Verdict.SUCCESS, threshold=threshold)
