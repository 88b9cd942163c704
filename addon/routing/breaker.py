"""Circuit breakers: pure transitions over an immutable state, for a target or a provider.

closed --(N consecutive faults)--> open --(cooldown elapsed)--> half_open
half_open lets exactly one probe through: success closes, failure re-opens.

Two families share these transitions, thresholds and cooldown (`resilience.breaker`):

- a target breaker per candidate key (`"provider:model"`) counts that target's own faults
  (`counts_toward_breaker`);
- a provider breaker per configured provider name (one `base_url` with one key) counts the
  faults of the whole provider: unreachable host, refused key, a storm across its models
  (`addon.routing.domains`). While it is open, none of that provider's targets is tried.

`now` and `opened_at` are seconds on whatever clock the caller keeps (the state stores use
`time.monotonic()`); `cooldown_s` is in seconds too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from addon.routing.fallback import Outcome, OutcomeKind


class BreakerStatus(enum.Enum):
    """Where a breaker is in the cycle above."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerState:
    """One target's breaker: its status, the target faults in a row so far, when it last
    opened, and whether its one half-open probe is out."""

    status: BreakerStatus = BreakerStatus.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False


CLOSED = BreakerState()


def available(state: BreakerState, now: float, cooldown_s: float) -> bool:
    """Whether a request may be sent to this target now (without claiming the probe)."""
    if state.status is BreakerStatus.CLOSED:
        return True
    if state.status is BreakerStatus.OPEN:
        return now - state.opened_at >= cooldown_s
    return not state.probing


def acquire(state: BreakerState, now: float, cooldown_s: float) -> tuple[bool, BreakerState]:
    """Claim the right to send one request; an open breaker past its cooldown hands out
    exactly one half-open probe."""
    if state.status is BreakerStatus.CLOSED:
        return True, state
    if state.status is BreakerStatus.OPEN:
        if now - state.opened_at >= cooldown_s:
            return True, replace(state, status=BreakerStatus.HALF_OPEN, probing=True)
        return False, state
    if state.probing:
        return False, state
    return True, replace(state, probing=True)


def record(state: BreakerState, *, success: bool, now: float, threshold: int) -> BreakerState:
    """The state after an attempt on this target finished."""
    if success:
        return CLOSED
    if state.status is BreakerStatus.HALF_OPEN:
        return BreakerState(BreakerStatus.OPEN, state.failures + 1, now, False)
    failures = state.failures + 1
    if failures >= threshold:
        return BreakerState(BreakerStatus.OPEN, failures, now, False)
    return replace(state, failures=failures)


def release(state: BreakerState) -> BreakerState:
    """An acquired attempt ended without a verdict on the target (e.g. the client's own
    error): give the probe back."""
    return replace(state, probing=False) if state.probing else state


def seconds_left(state: BreakerState, now: float, cooldown_s: float) -> float:
    """Seconds until an open breaker lets its probe through (0 when closed, half-open, or
    past its cooldown), rounded to 0.1 s."""
    if state.status is not BreakerStatus.OPEN:
        return 0.0
    return round(max(0.0, state.opened_at + cooldown_s - now), 1)


@dataclass(frozen=True)
class BreakerRow:
    """One breaker as `/status` shows it: the key (a target key or a provider name), the
    status, the faults in a row, and the seconds left in the cooldown."""

    key: str
    state: str
    failures: int
    cooldown_left_s: float


def row(key: str, state: BreakerState, now: float, cooldown_s: float) -> BreakerRow:
    """The `/status` row of the breaker `key` in `state` at `now`."""
    return BreakerRow(key, state.status.value, state.failures, seconds_left(state, now, cooldown_s))


def counts_toward_breaker(outcome: Outcome, tries_on_target: int) -> bool:
    """Whether a failed attempt counts as a fault of its target's breaker.

    A target fault (`Outcome.counts_against_target`: connect errors, timeouts, 5xx, 429,
    unusable 2xx) counts, except a 429 on a retry of the same target within one request
    (`tries_on_target` > 1, the attempts on this target in this request so far, this one
    included): the router chose those backoff retries itself, so one request's burst of
    429s on one target is one piece of evidence, not three. The target still rests after
    every 429 (its `Retry-After`, or 1 s without one); the breaker opens only when
    `failures` requests in a row met the limit.
    """
    if not outcome.counts_against_target:
        return False
    return not (outcome.kind is OutcomeKind.RATE_LIMITED and tries_on_target > 1)
