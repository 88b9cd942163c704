"""What to do after an upstream attempt: pure, no I/O, no clock (callers pass `now`).

`addon.proxy.upstream` reduces every attempt (status, exception, timeout) to an `Outcome`;
`next_step` turns the outcome and the attempts so far into Retry, Fallback or GiveUp.
An upstream's error body is read in its API's shape: `classify_failure` for the OpenAI
envelope (chat, completions, Responses, embeddings), `classify_anthropic_failure` for
Anthropic's (`wire.messages.classify_failure`: 529 overloaded is a server error, 413 and
"prompt is too long" are context_too_long, …); both land on the same `OutcomeKind`s, so
fallback follows the same fault classes whatever the API.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from addon.wire import messages
from addon.wire.failures import error_code, error_message, parse_retry_after


class OutcomeKind(enum.Enum):
    """What one upstream attempt came to, whatever the transport said."""

    OK = "ok"
    CONNECT_ERROR = "connect_error"  # refused, reset or DNS failure before any response byte
    TIMEOUT = "timeout"  # no response headers / first token within the limit
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx
    AUTH_ERROR = "auth_error"  # 401/402/403: this provider's key is refused or out of credit
    NOT_FOUND = "not_found"  # 404: model or endpoint unknown at this provider
    CONTEXT_TOO_LONG = "context_too_long"  # 400 context_length_exceeded
    CONTENT_POLICY = "content_policy"  # 400 content policy rejection
    CLIENT_ERROR = "client_error"  # any other 4xx: the request itself is wrong
    PROTOCOL_ERROR = "protocol_error"  # 2xx that is not a usable answer


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: its kind, the HTTP status if there was one, the upstream's
    message, and its Retry-After in seconds."""

    kind: OutcomeKind
    status: int | None = None
    message: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the attempt produced a usable answer."""
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
    """Move on to the next target in the chain (one with a larger context window when the
    request did not fit)."""

    reason: str
    larger_context: bool = False


@dataclass(frozen=True)
class GiveUp:
    """Stop; answer the client with the last outcome."""

    reason: str


Step = Retry | Fallback | GiveUp


@dataclass(frozen=True)
class AttemptRecord:
    """One finished attempt on one target: `started` in seconds on the caller's monotonic
    clock, `elapsed_ms` in milliseconds."""

    provider: str
    model: str
    outcome: Outcome
    started: float
    elapsed_ms: float


RATE_LIMIT_RETRIES = 2  # backoff retries on one target after a 429 without Retry-After
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 2.0


def backoff(tries: int, jitter: float) -> float:
    """Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s … (capped), each ×[0.5, 1.5)."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (tries - 1)) * (0.5 + jitter)


def next_step(
    outcome: Outcome,
    *,
    tries_on_target: int,
    attempts_total: int,
    max_attempts: int,
    has_next: bool,
    remaining_s: float = float("inf"),
    jitter: float = 0.5,
) -> Step:
    """Decide after a failed attempt.

    `tries_on_target` counts attempts on this target so far, `remaining_s` is what is left of
    the request's time budget, `jitter` a number in [0, 1) from the caller's RNG.

    - 429 with Retry-After: another candidate at once; with none left, wait exactly as long
      as asked if that fits the budget — never sooner.
    - 429 without Retry-After: up to two backoff retries (≤ a few per second), then fail over.
    - 500: one quick retry on the same target, then fail over. Other 5xx, connection errors,
      timeouts (a silent target is not retried), 401/402/403, 404: fail over.
    - context_length_exceeded: fail over to a target with a larger context window.
    - other 4xx and content-policy refusals: the request's own fault, answered as is.
    """
    if outcome.ok:
        return GiveUp("succeeded")
    if outcome.kind in _FINAL:
        return GiveUp(f"{outcome.kind.value}: the request itself was refused; not retried")
    if attempts_total >= max_attempts:
        return GiveUp(f"max_attempts ({max_attempts}) reached")
    label = outcome.kind.value + (f" {outcome.status}" if outcome.status else "")
    if outcome.kind is OutcomeKind.RATE_LIMITED:
        if outcome.retry_after is not None:
            if has_next:
                return Fallback(f"{label}, retry after {outcome.retry_after:g}s: next candidate")
            if outcome.retry_after <= remaining_s:
                return Retry(delay=outcome.retry_after)
            return GiveUp(f"{label}: Retry-After {outcome.retry_after:g}s exceeds the time budget")
        if tries_on_target <= RATE_LIMIT_RETRIES:
            delay = backoff(tries_on_target, jitter)
            if delay <= remaining_s:
                return Retry(delay=delay)
    if outcome.kind is OutcomeKind.SERVER_ERROR and outcome.status == 500 and tries_on_target == 1:
        return Retry(delay=min(remaining_s, 0.05 * (0.5 + jitter)))
    if outcome.kind is OutcomeKind.CONTEXT_TOO_LONG:
        return Fallback(label, larger_context=True) if has_next else GiveUp(label)
    if has_next:
        return Fallback(label)
    return GiveUp("no candidate left")


def classify_failure(status: int, body: bytes, retry_after: str | None = None) -> Outcome:
    """An upstream's non-2xx answer as an Outcome (pure: status, body bytes, header value)."""
    msg = error_message(body)
    code = error_code(body)
    low = f"{code} {msg}".lower()
    ra = parse_retry_after(retry_after)
    if status == 429:
        return Outcome(OutcomeKind.RATE_LIMITED, status, msg, retry_after=ra)
    if status >= 500:
        return Outcome(OutcomeKind.SERVER_ERROR, status, msg, retry_after=ra)
    if status in (401, 402, 403):  # 402 payment required: the key's credit, not the request
        return Outcome(OutcomeKind.AUTH_ERROR, status, msg)
    if status == 404:
        return Outcome(OutcomeKind.NOT_FOUND, status, msg)
    if "context_length" in low or "maximum context length" in low or "too many tokens" in low:
        return Outcome(OutcomeKind.CONTEXT_TOO_LONG, status, msg)
    if "content_policy" in low or "content_filter" in low or "safety" in low:
        return Outcome(OutcomeKind.CONTENT_POLICY, status, msg)
    return Outcome(OutcomeKind.CLIENT_ERROR, status, msg)


def classify_anthropic_failure(status: int, body: bytes, retry_after: str | None = None) -> Outcome:
    """An Anthropic upstream's non-2xx answer (status, body bytes, `retry-after` value) as an
    Outcome (`wire.messages.classify_failure`)."""
    f = messages.classify_failure(status, body, retry_after)
    return Outcome(OutcomeKind(f.kind), f.status, f.message, retry_after=f.retry_after)


def in_band_failure(kind: str, message: str) -> Outcome:
    """An error event a 200 stream opened with, before any answer byte (`kind` an
    `OutcomeKind` value): a failed attempt like the status it stands for, so the chain
    falls back."""
    return Outcome(OutcomeKind(kind), None, message)
