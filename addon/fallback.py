"""What to do after an upstream attempt: pure, no I/O, no clock (callers pass `now`).

`addon.upstream` reduces every attempt (status, exception, timeout) to an `Outcome`;
`next_step` turns the outcome and the attempts so far into Retry, Fallback or GiveUp.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OutcomeKind(enum.Enum):
    OK = "ok"
    CONNECT_ERROR = "connect_error"  # refused, reset or DNS failure before any response byte
    TIMEOUT = "timeout"  # no response headers / first token within the limit
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx
    AUTH_ERROR = "auth_error"  # 401/403: this provider's key is refused
    NOT_FOUND = "not_found"  # 404: model or endpoint unknown at this provider
    CONTEXT_TOO_LONG = "context_too_long"  # 400 context_length_exceeded
    CONTENT_POLICY = "content_policy"  # 400 content policy rejection
    CLIENT_ERROR = "client_error"  # any other 4xx: the request itself is wrong
    PROTOCOL_ERROR = "protocol_error"  # 2xx that is not a usable answer


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    status: int | None = None
    message: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.OK

    @property
    def counts_against_target(self) -> bool:
        """Whether this outcome is the target's fault (feeds its circuit breaker)."""
        return self.kind in _TARGET_FAULTS


_TARGET_FAULTS = frozenset(
    {
        OutcomeKind.CONNECT_ERROR,
        OutcomeKind.TIMEOUT,
        OutcomeKind.SERVER_ERROR,
        OutcomeKind.RATE_LIMITED,
        OutcomeKind.PROTOCOL_ERROR,
    }
)
# Answers that describe the request, not the target: another target would say the same.
_FINAL = frozenset({OutcomeKind.CLIENT_ERROR, OutcomeKind.CONTENT_POLICY})


@dataclass(frozen=True)
class Retry:
    """Try the same target again after `delay` seconds."""

    delay: float


@dataclass(frozen=True)
class Fallback:
    """Move on to the next target in the chain."""

    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Stop; answer the client with the last outcome."""

    reason: str


Step = Retry | Fallback | GiveUp


@dataclass(frozen=True)
class AttemptRecord:
    provider: str
    model: str
    outcome: Outcome
    started: float
    elapsed_ms: float


def next_step(
    outcome: Outcome,
    *,
    tries_on_target: int,
    attempts_total: int,
    max_attempts: int,
    has_next: bool,
) -> Step:
    """Decide after a failed attempt. `tries_on_target` counts attempts on this target so far."""
    if outcome.ok:
        return GiveUp("succeeded")
    if outcome.kind in _FINAL:
        return GiveUp(f"{outcome.kind.value}: the request itself was refused; not retried")
    if attempts_total >= max_attempts:
        return GiveUp(f"max_attempts ({max_attempts}) reached")
    if outcome.kind is OutcomeKind.SERVER_ERROR and outcome.status == 500 and tries_on_target == 1:
        return Retry(delay=0.0)
    if has_next:
        return Fallback(f"{outcome.kind.value}" + (f" {outcome.status}" if outcome.status else ""))
    return GiveUp("no candidate left")
