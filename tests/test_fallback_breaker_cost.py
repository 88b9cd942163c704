"""Pure decisions: fallback steps, breaker transitions, cost arithmetic."""

from __future__ import annotations

import pytest

from addon.routing import breaker as brk
from addon.routing.cost import Price, cost, estimate_max
from addon.routing.fallback import (
    Fallback,
    GiveUp,
    Outcome,
    OutcomeKind,
    Retry,
    backoff,
    classify_anthropic_failure,
    classify_failure,
    in_band_failure,
    next_step,
)
from addon.wire.usage import Usage

K = OutcomeKind


@pytest.mark.parametrize(
    ("outcome", "tries", "total", "has_next", "expected"),
    [
        (Outcome(K.SERVER_ERROR, 500), 1, 1, True, Retry),
        (Outcome(K.SERVER_ERROR, 500), 2, 2, True, Fallback),
        (Outcome(K.SERVER_ERROR, 503), 1, 1, True, Fallback),
        (Outcome(K.RATE_LIMITED, 429, retry_after=5), 1, 1, True, Fallback),
        (Outcome(K.CONNECT_ERROR), 1, 1, True, Fallback),
        (Outcome(K.TIMEOUT), 1, 1, True, Fallback),
        (Outcome(K.AUTH_ERROR, 401), 1, 1, True, Fallback),
        (Outcome(K.NOT_FOUND, 404), 1, 1, True, Fallback),
        (Outcome(K.CONTEXT_TOO_LONG, 400), 1, 1, True, Fallback),
        (Outcome(K.CLIENT_ERROR, 400), 1, 1, True, GiveUp),
        (Outcome(K.CONTENT_POLICY, 400), 1, 1, True, GiveUp),
        (Outcome(K.SERVER_ERROR, 503), 1, 4, True, GiveUp),  # max_attempts reached
        (Outcome(K.SERVER_ERROR, 503), 1, 1, False, GiveUp),  # nowhere left
        (Outcome(K.SERVER_ERROR, 500), 1, 1, False, Retry),
    ],
)
def test_next_step(
    outcome: Outcome, tries: int, total: int, has_next: bool, expected: type
) -> None:
    step = next_step(
        outcome, tries_on_target=tries, attempts_total=total, max_attempts=4, has_next=has_next
    )
    assert isinstance(step, expected)


def test_breaker_opens_half_opens_and_closes() -> None:
    s = brk.CLOSED
    for t in range(3):
        assert brk.available(s, t, 60)
        s = brk.record(s, success=False, now=t, threshold=3)
    assert s.status is brk.BreakerStatus.OPEN
    assert not brk.available(s, 30, 60)
    ok, s = brk.acquire(s, 63, 60)
    assert ok and s.status is brk.BreakerStatus.HALF_OPEN
    ok2, s = brk.acquire(s, 63.1, 60)
    assert not ok2, "only one half-open probe"
    s = brk.record(s, success=True, now=64, threshold=3)
    assert s == brk.CLOSED


def test_breaker_failed_probe_reopens() -> None:
    s = brk.BreakerState(brk.BreakerStatus.OPEN, 3, 0.0)
    _, s = brk.acquire(s, 61, 60)
    s = brk.record(s, success=False, now=61, threshold=3)
    assert s.status is brk.BreakerStatus.OPEN and s.opened_at == 61
    assert brk.release(brk.BreakerState(brk.BreakerStatus.HALF_OPEN, 3, 0, True)).probing is False


def test_success_resets_failures() -> None:
    s = brk.record(brk.CLOSED, success=False, now=0, threshold=3)
    assert s.failures == 1
    assert brk.record(s, success=True, now=1, threshold=3) == brk.CLOSED


@pytest.mark.parametrize(
    ("usage", "price", "expected"),
    [
        (Usage(1000, 500), Price(2.5, 10.0), (1000 * 2.5 + 500 * 10) / 1e6),
        (
            Usage(1000, 500, cached_tokens=400),
            Price(2.5, 10.0, 1.25),
            (600 * 2.5 + 400 * 1.25 + 500 * 10) / 1e6,
        ),
        (Usage(1000, 500, cached_tokens=400), Price(2.5, 10.0), (1000 * 2.5 + 500 * 10) / 1e6),
        (Usage(10, 10), Price(0.0, 0.0), 0.0),
        (Usage(10, 10), Price(None, 1.0), None),
        (Usage(10, 10), Price(1.0, None), None),
        (Usage(5, 0, cached_tokens=50), Price(1.0, 1.0, 0.5), 5 * 0.5 / 1e6),
    ],
)
def test_cost(usage: Usage, price: Price, expected: float | None) -> None:
    got = cost(usage, price)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_estimate_max() -> None:
    assert estimate_max(1000, 1000, Price(1.0, 2.0)) == pytest.approx(0.003)
    assert estimate_max(1000, 1000, Price(None, 2.0)) is None


@pytest.mark.parametrize(
    ("outcome", "tries", "has_next", "remaining", "expected"),
    [
        (
            Outcome(K.RATE_LIMITED, 429, retry_after=3),
            1,
            True,
            60,
            Fallback("rate_limited 429, retry after 3s: next candidate"),
        ),
        (Outcome(K.RATE_LIMITED, 429, retry_after=3), 1, False, 60, Retry(3)),
        (
            Outcome(K.RATE_LIMITED, 429, retry_after=30),
            1,
            False,
            10,
            GiveUp("rate_limited 429: Retry-After 30s exceeds the time budget"),
        ),
        (Outcome(K.RATE_LIMITED, 429), 1, True, 60, Retry(0.25)),
        (Outcome(K.RATE_LIMITED, 429), 2, True, 60, Retry(0.5)),
        (Outcome(K.RATE_LIMITED, 429), 3, True, 60, Fallback("rate_limited 429")),
        (
            Outcome(K.CONTEXT_TOO_LONG, 400),
            1,
            True,
            60,
            Fallback("context_too_long 400", larger_context=True),
        ),
        (Outcome(K.CONTEXT_TOO_LONG, 400), 1, False, 60, GiveUp("context_too_long 400")),
    ],
)
def test_next_step_rate_limits_and_context(
    outcome: Outcome, tries: int, has_next: bool, remaining: float, expected: object
) -> None:
    step = next_step(outcome, tries_on_target=tries, attempts_total=tries, max_attempts=10,
                     has_next=has_next, remaining_s=remaining, jitter=0.5)  # fmt: skip
    assert step == expected


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_backoff_is_bounded_and_jittered(jitter: float) -> None:
    delays = [backoff(n, jitter) for n in range(1, 10)]
    assert all(0.1 <= d <= 3.0 for d in delays)
    assert delays == sorted(delays)


@pytest.mark.parametrize(
    ("state", "now", "left"),
    [
        (brk.CLOSED, 10.0, 0.0),
        (brk.BreakerState(failures=2), 10.0, 0.0),
        (brk.BreakerState(brk.BreakerStatus.OPEN, 3, 0.0), 10.0, 50.0),
        (brk.BreakerState(brk.BreakerStatus.OPEN, 3, 0.0), 12.34, 47.7),
        (brk.BreakerState(brk.BreakerStatus.OPEN, 3, 0.0), 75.0, 0.0),  # probe due
        (brk.BreakerState(brk.BreakerStatus.HALF_OPEN, 3, 0.0, True), 61.0, 0.0),
    ],
)
def test_seconds_left_and_status_row(state: brk.BreakerState, now: float, left: float) -> None:
    assert brk.seconds_left(state, now, 60) == left
    assert brk.row("openai", state, now, 60) == brk.BreakerRow(
        "openai", state.status.value, state.failures, left
    )


@pytest.mark.parametrize(
    ("outcome", "tries", "counts"),
    [
        (Outcome(K.RATE_LIMITED, 429), 1, True),  # the first 429 of a request on a target
        (Outcome(K.RATE_LIMITED, 429), 2, False),  # its backoff retries: the same evidence
        (Outcome(K.RATE_LIMITED, 429), 3, False),
        (Outcome(K.RATE_LIMITED, 429, retry_after=2), 1, True),
        (Outcome(K.RATE_LIMITED, 429, retry_after=2), 2, False),
        (Outcome(K.SERVER_ERROR, 500), 1, True),
        (Outcome(K.SERVER_ERROR, 500), 2, True),  # a retried 500 is a second fault
        (Outcome(K.CONNECT_ERROR), 1, True),
        (Outcome(K.TIMEOUT), 1, True),
        (Outcome(K.PROTOCOL_ERROR, 200), 1, True),
        (Outcome(K.AUTH_ERROR, 401), 1, False),
        (Outcome(K.NOT_FOUND, 404), 1, False),
        (Outcome(K.CLIENT_ERROR, 400), 1, False),
        (Outcome(K.OK, 200), 1, False),
    ],
)
def test_counts_toward_breaker(outcome: Outcome, tries: int, counts: bool) -> None:
    assert brk.counts_toward_breaker(outcome, tries) is counts


def test_one_requests_burst_of_429s_does_not_open_the_breaker() -> None:
    s = brk.CLOSED
    for tries in (1, 2, 3):  # a 429, then next_step's two backoff retries, all 429
        if brk.counts_toward_breaker(Outcome(K.RATE_LIMITED, 429), tries):
            s = brk.record(s, success=False, now=tries, threshold=3)
    assert s == brk.BreakerState(failures=1)
    for t in (10, 20):  # two more requests in a row meet the limit: the breaker opens
        s = brk.record(s, success=False, now=t, threshold=3)
    assert s.status is brk.BreakerStatus.OPEN


# --------------------------------------------------------------------------- per API


@pytest.mark.parametrize(
    ("usage", "price", "expected"),
    [
        # Anthropic: 20 prompt tokens = 11 fresh + 5 cache reads + 4 cache writes
        (Usage(20, 9, cached_tokens=5, cache_write_tokens=4), Price(3, 15, 0.3),
         (11 * 3 + 5 * 0.3 + 4 * 3 * 1.25 + 9 * 15) / 1e6),
        # an explicit cache-write price wins over the 1.25x rule
        (Usage(20, 9, cached_tokens=5, cache_write_tokens=4), Price(3, 15, 0.3, 6),
         (11 * 3 + 5 * 0.3 + 4 * 6 + 9 * 15) / 1e6),
        # no cached price: reads at the input price, writes still 1.25x
        (Usage(10, 0, cached_tokens=2, cache_write_tokens=2), Price(2, 4),
         (6 * 2 + 2 * 2 + 2 * 2.5) / 1e6),
        # counts beyond the prompt are capped, never negative fresh tokens
        (Usage(5, 0, cached_tokens=4, cache_write_tokens=4), Price(1, 1), (4 * 1 + 1 * 1.25) / 1e6),
        (Usage(5, 0, cache_write_tokens=5), Price(None, 1), None),
    ],
)  # fmt: skip
def test_cache_writes_and_reads_each_at_their_rate(
    usage: Usage, price: Price, expected: float | None
) -> None:
    got = cost(usage, price)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "kind", "ra"),
    [
        (529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "2",
         K.SERVER_ERROR, 2.0),
        (429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}', "7",
         K.RATE_LIMITED, 7.0),
        (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too '
              b'long: 300000 tokens > 200000 maximum"}}', None, K.CONTEXT_TOO_LONG, None),
        (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}', None,
         K.CLIENT_ERROR, None),
        (401, b'{"type":"error","error":{"type":"authentication_error","message":"x"}}', None,
         K.AUTH_ERROR, None),
    ],
)  # fmt: skip
def test_anthropic_failures_land_on_the_same_outcome_kinds(
    status: int, body: bytes, retry_after: str | None, kind: OutcomeKind, ra: float | None
) -> None:
    got = classify_anthropic_failure(status, body, retry_after)
    assert (got.kind, got.status, got.retry_after) == (kind, status, ra)
    assert got.message and got.message != body.decode()  # the upstream's own message


def test_an_error_opening_a_stream_is_a_target_fault() -> None:
    got = in_band_failure("server_error", "overloaded_error: Overloaded")
    assert got.kind is K.SERVER_ERROR and got.status is None and got.counts_against_target
    step = next_step(got, tries_on_target=1, attempts_total=1, max_attempts=4, has_next=True)
    assert isinstance(step, Fallback)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (402, b'{"error":{"message":"Insufficient credits. Add more using https://x/credits"}}',
         K.AUTH_ERROR),  # payment required: the key's problem, another provider may answer
        (401, b'{"error":{"message":"bad key"}}', K.AUTH_ERROR),
        (403, b'{"error":{"message":"forbidden"}}', K.AUTH_ERROR),
        (400, b'{"error":{"message":"bad temperature"}}', K.CLIENT_ERROR),
    ],
)  # fmt: skip
def test_payment_required_is_the_keys_fault_not_the_requests(
    status: int, body: bytes, kind: OutcomeKind
) -> None:
    got = classify_failure(status, body)
    assert (got.kind, got.status) == (kind, status)
    step = next_step(got, tries_on_target=1, attempts_total=1, max_attempts=4, has_next=True)
    assert isinstance(step, Fallback if kind is K.AUTH_ERROR else GiveUp)
