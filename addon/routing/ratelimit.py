"""Rate-limit arithmetic: requests and tokens per minute over a sliding window. PURE.

The window is a **sliding-window log**: every admitted request is one entry (its time and
the tokens it holds), and a request is admitted when, over the last `WINDOW_S` seconds,
the entries plus itself stay within the limit. It is exact: no 60 seconds ever hold more
than `rpm` admitted requests or `tpm` held tokens (error bound 0, unlike a fixed window,
which lets 2× through around its edge, or the two-bucket approximation, which assumes the
previous minute's traffic was even). Its cost is one entry per admitted request still in
the window (at most `rpm` when an rpm limit is set), each added once and dropped once, with
running totals, so a check is O(1) amortised. `addon.state.ratelimits` keeps logs in this
process, `addon.state.redis_ratelimits` the same log in Redis for a fleet.

Tokens are input + output: a request holds its estimate (prompt estimate + its
`max_tokens`, or a default) when admitted, and the hold is set to the real usage when the
call ends (`SlidingLog.adjust`), so a limit holds within one request's estimate error.

Times are seconds on whatever clock the caller passes (`now`); nothing here reads one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

WINDOW_S = 60.0  # rpm and tpm: per sliding minute

ScopeKind = Literal["client", "policy", "provider"]


@dataclass(frozen=True)
class Scope:
    """One limited account: its kind, its key (a client name or address, a policy name
    (`policy:client` for a per-client policy limit), a provider name), a bounded `label`
    for metrics (never an address), and its limits (None: that dimension is unlimited)."""

    kind: ScopeKind
    key: str
    rpm: int | None
    tpm: int | None
    label: str = ""
    id: str = field(init=False, repr=False, compare=False)  # `kind:key`, the account's name

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.kind}:{self.key}")


@dataclass(frozen=True)
class Usage:
    """A scope's window as a check saw it, for the `x-ratelimit-*` headers and `/status`:
    requests and tokens counted (this request included when admitted), and the seconds
    until the window is empty again for each (`reset_*_s`)."""

    scope: Scope
    requests: int
    tokens: int
    reset_requests_s: float
    reset_tokens_s: float

    @property
    def remaining_requests(self) -> int | None:
        """Requests left in the window now (None: no rpm limit)."""
        return None if self.scope.rpm is None else max(0, self.scope.rpm - self.requests)

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens left in the window now (None: no tpm limit)."""
        return None if self.scope.tpm is None else max(0, self.scope.tpm - self.tokens)


@dataclass(frozen=True)
class Limited:
    """A refusal: which scope, on which dimension (`requests` | `tokens`), the seconds
    until the request would fit (`retry_after_s`; `math.inf` when it never can: its
    estimate alone is over the tpm limit), and the scope's window as seen."""

    usage: Usage
    dimension: Literal["requests", "tokens"]
    retry_after_s: float
    need: int  # the tokens the request asked to hold

    @property
    def never(self) -> bool:
        """The request is larger than the tpm limit: waiting does not help."""
        return math.isinf(self.retry_after_s)

    @property
    def message(self) -> str:
        """What the client reads: which limit, what was seen, when to retry or how to fix."""
        s = self.usage.scope
        who = _describe(s)
        if self.dimension == "requests":
            return (f"rate limit reached for {who}: {s.rpm} requests per minute; "
                    f"retry in {retry_after(self.retry_after_s)}s")  # fmt: skip
        if self.never:
            return (f"request too large for {who}: it may use {self.need} tokens (prompt "
                    f"estimate + max_tokens) and the limit is {s.tpm} tokens per minute; "
                    "lower max_tokens or shorten the prompt")  # fmt: skip
        return (f"rate limit reached for {who}: {s.tpm} tokens per minute, "
                f"{self.usage.tokens} in use, this request needs {self.need}; "
                f"retry in {retry_after(self.retry_after_s)}s")  # fmt: skip


def _describe(s: Scope) -> str:
    if s.kind == "provider":
        return f"provider {s.key}"
    if s.kind == "policy":
        return f"policy {s.key}"
    return f"client {s.key}"


Entry = list[float]  # one admitted request in a window: [time, tokens held, 1 live | 0 gone]


class SlidingLog:
    """The entries of one scope's window, oldest first, with running totals. `add` gives
    back the request's entry; `adjust` and `remove` take it (no lookup by id: the caller
    keeps the entry, and an entry that left the window is marked gone, so changing it
    later changes nothing)."""

    __slots__ = ("entries", "requests", "tokens")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()
        self.requests = 0
        self.tokens = 0

    def expire(self, now: float) -> None:
        """Drop entries that left the window (older than `now - WINDOW_S`)."""
        cut = now - WINDOW_S
        e = self.entries
        while e and e[0][0] <= cut:
            entry = e.popleft()
            entry[2] = 0
            self.requests -= 1
            self.tokens -= int(entry[1])

    def check(self, scope: Scope, need: int, now: float) -> Limited | None:
        """Whether one more request holding `need` tokens fits `scope` at `now` (expired
        entries dropped first); the refusal when it does not."""
        e = self.entries
        if e and e[0][0] <= now - WINDOW_S:
            self.expire(now)
        rpm, tpm = scope.rpm, scope.tpm
        if rpm is not None and self.requests >= rpm:
            # the request fits once the oldest `requests - rpm + 1` entries have left
            oldest = e[self.requests - rpm][0]
            wait = oldest + WINDOW_S - now
            return Limited(self.usage(scope, now), "requests", wait, need)
        if tpm is not None and self.tokens + need > tpm:
            if need > tpm:
                return Limited(self.usage(scope, now), "tokens", math.inf, need)
            over, wait = self.tokens + need - tpm, 0.0
            for t, tok, _ in e:
                over -= int(tok)
                if over <= 0:
                    wait = t + WINDOW_S - now
                    break
            return Limited(self.usage(scope, now), "tokens", wait, need)
        return None

    def add(self, need: int, now: float) -> Entry:
        """Log an admitted request holding `need` tokens at `now` (after `check`)."""
        entry = [now, need, 1]
        self.entries.append(entry)
        self.requests += 1
        self.tokens += need
        return entry

    def adjust(self, entry: Entry, tokens: int) -> None:
        """Set the tokens `entry` holds (its request's real usage); nothing once it left."""
        if entry[2]:
            self.tokens += tokens - int(entry[1])
            entry[1] = tokens

    def remove(self, entry: Entry) -> None:
        """Take `entry` out of the window (its request was never sent)."""
        if entry[2]:
            entry[2] = 0
            self.entries.remove(entry)
            self.requests -= 1
            self.tokens -= int(entry[1])

    def usage(self, scope: Scope, now: float) -> Usage:
        """The window now: counts, and when each dimension is back to empty."""
        reset = self.entries[-1][0] + WINDOW_S - now if self.entries else 0.0
        return Usage(scope, self.requests, self.tokens, max(0.0, reset),
                     max(0.0, reset) if self.tokens > 0 else 0.0)  # fmt: skip

    def free_at(self, scope: Scope, now: float) -> float:
        """When (on the caller's clock) one more small request fits: `now` if it does."""
        limited = self.check(scope, 1, now)
        return now if limited is None else now + limited.retry_after_s


def estimate(prompt_tokens: int, max_output_tokens: int | None, default_output: int) -> int:
    """The tokens a request holds before it runs: its prompt estimate plus its output cap
    (`max_tokens`; `default_output` when it sets none)."""
    out = max_output_tokens if max_output_tokens is not None else default_output
    return max(1, prompt_tokens + max(0, out))


# --------------------------------------------------------------------------- headers


def retry_after(seconds: float) -> int:
    """Whole seconds for `Retry-After`: rounded up, at least 1."""
    if math.isinf(seconds):
        return int(WINDOW_S)
    return max(1, math.ceil(seconds - 1e-9))


def duration(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` headers write it: `120ms`, `1.5s`,
    `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    m, s = divmod(math.ceil(seconds), 60)
    return f"{m}m{s}s"


def headers(limited: Limited) -> tuple[tuple[str, str], ...]:
    """The 429's headers: `Retry-After` and OpenAI's `x-ratelimit-limit-requests`,
    `-tokens`, `x-ratelimit-remaining-*`, `x-ratelimit-reset-*` of the scope that refused
    (a dimension without a limit is left out)."""
    u = limited.usage
    out = [("retry-after", str(retry_after(limited.retry_after_s)))]
    if u.scope.rpm is not None:
        out += [("x-ratelimit-limit-requests", str(u.scope.rpm)),
                ("x-ratelimit-remaining-requests", str(u.remaining_requests)),
                ("x-ratelimit-reset-requests", duration(u.reset_requests_s))]  # fmt: skip
    if u.scope.tpm is not None:
        out += [("x-ratelimit-limit-tokens", str(u.scope.tpm)),
                ("x-ratelimit-remaining-tokens", str(u.remaining_tokens)),
                ("x-ratelimit-reset-tokens", duration(u.reset_tokens_s))]  # fmt: skip
    out.append(("x-orchestrator-rate-limit", u.scope.kind))
    return tuple(out)


def status_row(u: Usage) -> dict[str, Any]:
    """One `/status` `rate_limits` row."""
    s = u.scope
    return {"scope": s.kind, "name": s.key, "rpm": s.rpm, "tpm": s.tpm,
            "requests": u.requests, "tokens": u.tokens,
            "remaining_requests": u.remaining_requests, "remaining_tokens": u.remaining_tokens,
            "reset_s": round(u.reset_requests_s, 3)}  # fmt: skip
