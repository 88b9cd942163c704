"""Per-(provider, model) circuit breaker: pure transitions over an immutable state.

closed --(N consecutive target faults)--> open --(cooldown elapsed)--> half_open
half_open lets exactly one probe through: success closes, failure re-opens.

`now` and `opened_at` are seconds on whatever clock the caller keeps (the state stores use
`time.monotonic()`); `cooldown_s` is in seconds too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


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
