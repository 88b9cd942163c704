"""Rate limits: the sliding-window arithmetic (`addon.routing.ratelimit`), the in-process
accounts (`addon.state.ratelimits`), the config keys, and the 429 the gate answers."""

from __future__ import annotations

import asyncio
import math

import pytest
from pydantic import ValidationError

from addon.config.rules import Policy
from addon.config.schema import Settings
from addon.config.schema_limits import Limits
from addon.routing import ratelimit as rl
from addon.routing.ratelimit import WINDOW_S, Limited, Scope, SlidingLog
from addon.state.ratelimits import Hold, LocalRateLimits

RPM3 = Scope("client", "alice", 3, None, "alice")
TPM100 = Scope("client", "bob", None, 100, "bob")


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- the window


def test_rpm_admits_exactly_the_limit_and_says_when_the_oldest_leaves() -> None:
    log = SlidingLog()
    for t in (0.0, 10.0, 20.0):
        assert log.check(RPM3, 1, t) is None
        log.add(1, t)
    refused = log.check(RPM3, 1, 30.0)
    assert isinstance(refused, Limited) and refused.dimension == "requests"
    assert refused.retry_after_s == pytest.approx(30.0)  # the entry at 0 leaves at 60
    assert refused.usage.requests == 3 and refused.usage.remaining_requests == 0
    assert refused.usage.reset_requests_s == pytest.approx(50.0)  # the newest leaves at 80
    assert log.check(RPM3, 1, 59.999) is not None
    assert log.check(RPM3, 1, 60.0) is None  # sliding: exactly a window after the first


def test_a_sliding_window_never_lets_more_than_the_limit_through_any_minute() -> None:
    log, admitted = SlidingLog(), []
    for i in range(2400):  # one attempt every 0.1 s for four minutes
        t = i * 0.1
        if log.check(RPM3, 1, t) is None:
            log.add(1, t)
            admitted.append(t)
    for j, start in enumerate(admitted):  # every window that starts at an admission
        inside = [t for t in admitted[j:] if t < start + WINDOW_S]
        assert len(inside) <= 3
    assert len(admitted) == 12  # 3 per minute, a fixed window's edge would let 6 through


def test_rpm_retry_after_counts_the_entries_that_must_leave() -> None:
    scope = Scope("client", "c", 2, None)
    log = SlidingLog()
    for t in (0.0, 5.0, 6.0, 7.0):
        log.add(1, t)  # 4 entries over a limit of 2 (the limit was lowered by a reload)
    refused = log.check(scope, 1, 8.0)
    assert refused is not None and refused.retry_after_s == pytest.approx(66.0 - 8.0)


@pytest.mark.parametrize(
    ("held", "need", "wait"),
    [
        ([(0.0, 60), (10.0, 30)], 20, 60.0),  # the entry at 0 leaving frees enough
        ([(0.0, 10), (10.0, 80)], 21, 70.0),  # only the one at 10 does
        ([(0.0, 50)], 50, None),  # fits exactly
    ],
)
def test_tpm_waits_until_enough_tokens_left(
    held: list[tuple[float, int]], need: int, wait: float | None
) -> None:
    log = SlidingLog()
    for t, tok in held:
        log.add(tok, t)
    refused = log.check(TPM100, need, 10.0)
    if wait is None:
        assert refused is None
    else:
        assert refused is not None and refused.dimension == "tokens"
        assert refused.retry_after_s == pytest.approx(wait - 10.0)


def test_a_request_larger_than_the_tpm_limit_can_never_fit() -> None:
    refused = SlidingLog().check(TPM100, 101, 0.0)
    assert refused is not None and refused.never and math.isinf(refused.retry_after_s)
    assert "lower max_tokens" in refused.message
    assert rl.retry_after(refused.retry_after_s) == 60


def test_adjust_sets_the_real_usage_and_remove_takes_the_entry_out() -> None:
    log = SlidingLog()
    entry = log.add(90, 0.0)
    assert log.check(TPM100, 20, 1.0) is not None
    log.adjust(entry, 30)  # the call used 30 of the 90 it held
    assert log.tokens == 30 and log.check(TPM100, 20, 1.0) is None
    log.remove(entry)
    assert (log.requests, log.tokens, len(log.entries)) == (0, 0, 0)
    log.adjust(entry, 50)  # gone: nothing changes
    log.remove(entry)  # twice: nothing changes either
    assert (log.requests, log.tokens) == (0, 0)
    assert log.tokens == 0


def test_expiry_drops_entries_and_their_tokens() -> None:
    log = SlidingLog()
    first = log.add(40, 0.0)
    log.add(50, 30.0)
    log.expire(60.0)
    assert (log.requests, log.tokens) == (1, 50)
    log.adjust(first, 99)  # expired: no effect
    assert log.tokens == 50


@pytest.mark.parametrize(
    ("prompt", "max_out", "default", "want"),
    [(100, 50, 1024, 150), (100, None, 1024, 1124), (0, 0, 1024, 1)],
)
def test_estimate(prompt: int, max_out: int | None, default: int, want: int) -> None:
    assert rl.estimate(prompt, max_out, default) == want


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.12, "120ms"), (0.0, "0ms"), (1.0, "1s"), (1.42, "1.5s"), (59.5, "59.5s"),
     (60.0, "1m0s"), (360.0, "6m0s"), (61.2, "1m2s")],
)  # fmt: skip
def test_duration_is_written_like_openai(seconds: float, text: str) -> None:
    assert rl.duration(seconds) == text


def test_headers_of_a_refusal() -> None:
    scope = Scope("client", "alice", 60, 1000, "alice")
    log = SlidingLog()
    for i in range(60):
        log.add(10, float(i) / 10)
    refused = log.check(scope, 10, 10.0)
    assert refused is not None
    h = dict(rl.headers(refused))
    assert h["retry-after"] == "50"  # the first entry (t=0) leaves at 60
    assert h["x-ratelimit-limit-requests"] == "60"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "55.9s"  # the newest (5.9) leaves at 65.9
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == "400"
    assert h["x-orchestrator-rate-limit"] == "client"
    assert refused.message == (
        "rate limit reached for client alice: 60 requests per minute; retry in 50s"
    )


def test_headers_leave_out_a_dimension_without_a_limit() -> None:
    log = SlidingLog()
    log.add(100, 0.0)
    refused = log.check(TPM100, 5, 1.0)
    assert refused is not None
    names = {k for k, _ in rl.headers(refused)}
    assert "x-ratelimit-limit-tokens" in names and "x-ratelimit-limit-requests" not in names


# --------------------------------------------------------------------------- in process


def _reserve(limits: LocalRateLimits, scopes: list[Scope], need: int = 1) -> Hold | Limited:
    return asyncio.run(limits.reserve(scopes, need))


def test_local_reserves_in_every_scope_or_in_none() -> None:
    clock = Clock()
    limits = LocalRateLimits(clock)
    policy = Scope("policy", "p", 1, None, "p")
    first = _reserve(limits, [RPM3, policy])
    assert isinstance(first, Hold)
    refused = _reserve(limits, [RPM3, policy])  # the policy is full
    assert isinstance(refused, Limited) and refused.usage.scope == policy
    assert limits.logs[RPM3.id].requests == 1  # the refusal held nothing in the client's


def test_local_blocked_until_the_wait_passes_and_release_frees() -> None:
    clock = Clock()
    limits = LocalRateLimits(clock)
    one = Scope("provider", "alpha", 1, None, "alpha")
    hold = _reserve(limits, [one])
    assert isinstance(hold, Hold) and not limits.blocked(one)
    assert isinstance(_reserve(limits, [one]), Limited)
    assert limits.blocked(one)
    clock.t += WINDOW_S
    assert not limits.blocked(one)
    assert isinstance(_reserve(limits, [one]), Hold)
    assert isinstance(_reserve(limits, [one]), Limited)
    limits.release(hold)  # an old hold, long expired: nothing to take out
    assert limits.blocked(one) is False  # but it says room may be back: the next check decides


def test_local_settle_gives_unused_tokens_back() -> None:
    clock = Clock()
    limits = LocalRateLimits(clock)
    hold = _reserve(limits, [TPM100], 90)
    assert isinstance(hold, Hold)
    assert isinstance(_reserve(limits, [TPM100], 20), Limited)
    limits.settle(hold, 25)
    assert isinstance(_reserve(limits, [TPM100], 20), Hold)
    assert limits.logs[TPM100.id].tokens == 45


def test_local_forgets_empty_windows_and_snapshot_lists_the_busiest() -> None:
    clock = Clock()
    limits = LocalRateLimits(clock)
    for i in range(5):
        _reserve(limits, [Scope("client", f"10.0.0.{i}", 10, None, "anonymous")])
    _reserve(limits, [RPM3])
    _reserve(limits, [RPM3])
    rows = limits.snapshot()
    assert rows[0] == {"scope": "client", "name": "alice", "rpm": 3, "tpm": None,
                       "requests": 2, "tokens": 2, "remaining_requests": 1,
                       "remaining_tokens": None, "reset_s": 60.0}  # fmt: skip
    assert len(rows) == 6
    clock.t += WINDOW_S
    assert limits.snapshot() == [] and limits.logs == {}


# --------------------------------------------------------------------------- config


def test_limits_need_rpm_or_tpm() -> None:
    with pytest.raises(ValidationError, match="limits need rpm, tpm or both"):
        Limits()
    with pytest.raises(ValidationError):
        Limits(rpm=0)


def test_limits_in_orchestrator_yaml_and_policies() -> None:
    s = Settings.model_validate({
        "clients": [{"name": "app", "key_env": "K", "limits": {"rpm": 60, "tpm": 100000}}],
        "providers": {"openai": {"base_url": "https://api.openai.com/v1",
                                 "limits": {"rpm": 500}}},
        "default_client_limits": {"rpm": 10},
    })  # fmt: skip
    assert s.clients[0].limits == Limits(rpm=60, tpm=100000)
    assert s.providers["openai"].limits == Limits(rpm=500)
    assert s.default_client_limits == Limits(rpm=10)
    p = Policy.model_validate({"name": "batch", "limits": {"tpm": 5000, "scope": "client"}})
    assert p.limits is not None and p.limits.scope == "client" and p.limits.rpm is None
    with pytest.raises(ValidationError):
        Policy.model_validate({"name": "x", "limits": {"rpm": 1, "per": "hour"}})
