"""Rate limits on the request path: the glue between the dispatcher, the config's limits
(`addon.config.schema_limits`), the window (`addon.routing.ratelimit`) and the accounts
(`addon.state.ratelimits`, shared through Redis with `state:`).

The dispatcher calls, per request: `filter` (routing skips a provider this replica last saw
at its limit: filter `rate_limited`, like an open breaker), `admit` (after the decision:
the client's and the policy's limits, one check-and-reserve; over a limit, the 429 in the
API's own format with `Retry-After` and OpenAI's `x-ratelimit-*` headers), `claim` (before
each attempt: the provider's limit; a provider at it is skipped, never sent a call it would
answer with 429, and the attempt engine says why), `finished` (the ledger row is built:
every hold becomes the real usage). When every target was left out for its provider's limit
(`no_room` after a `NoRoute`, `exhausted` after the engine tried nothing), the client gets
the same 429 as for its own limit, naming the provider that frees up first.
Limits are read from the `View` in force, so they change with a reload.

A request holds `prompt estimate + max_tokens` tokens (`decide.DEFAULT_MAX_OUTPUT` without
`max_tokens`; none for embeddings) until it ends; then its input + output tokens as the
provider reported them (0 when nothing answered). Provider attempts that did not answer keep
their request in the window with 0 tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from addon.config.loaded import Config
from addon.config.schema_limits import Limits, PolicyLimits
from addon.proxy.exchange import Pending, Reply, json_reply
from addon.proxy.metrics import Metrics
from addon.proxy.view import View
from addon.routing import catalog as catmod
from addon.routing import decide
from addon.routing import ratelimit as rl
from addon.routing.classify import RequestFeatures
from addon.state.ratelimits import Hold, LocalRateLimits, RateLimits
from addon.wire.usage import Usage

Usable = Callable[[catmod.Candidate], str | None]
ANONYMOUS = "anonymous"  # the metrics label of a client known by its address only
MAX_MADE = 4096  # scopes of addresses and per-client policies kept for reuse


@dataclass(frozen=True)
class Table:
    """One config version's limits, looked up per request."""

    clients: dict[str, rl.Scope] = field(default_factory=dict)  # named clients' own
    default: Limits | None = None
    policies: dict[str, PolicyLimits] = field(default_factory=dict)
    providers: dict[str, rl.Scope] = field(default_factory=dict)
    shared: dict[str, rl.Scope] = field(default_factory=dict)  # `scope: policy` ones

    @property
    def per_request(self) -> bool:
        """Whether any client or policy limit is set (else `admit` has nothing to do)."""
        return bool(self.clients or self.default or self.policies)

    @classmethod
    def of(cls, cfg: Config) -> Table:
        """The limits `cfg` declares."""
        s = cfg.settings
        default = s.default_client_limits
        policies = {p.name: p.limits for p in cfg.policies if p.limits is not None}
        return cls(
            {c.name: rl.Scope("client", c.name, lim.rpm, lim.tpm, c.name)
             for c in s.clients if (lim := c.limits or default) is not None},
            default,
            policies,
            {n: rl.Scope("provider", n, p.limits.rpm, p.limits.tpm, n)
             for n, p in s.providers.items() if p.limits is not None},
            {n: rl.Scope("policy", n, lim.rpm, lim.tpm, n)
             for n, lim in policies.items() if lim.scope == "policy"},
        )  # fmt: skip


@dataclass
class _Held:
    """What one request holds: its client/policy hold, and each provider attempt's."""

    request: Hold | None = None
    providers: list[tuple[Hold, str]] = field(default_factory=list)
    refused: list[rl.Limited] = field(default_factory=list)  # providers' refusals of it
    need: int | None = None  # the tokens it holds (`need`), computed once
    left_out: set[str] = field(default_factory=set)  # providers `filter` kept from routing


class RateLimitGate:
    """The dispatcher's rate limiter over one `RateLimits` store."""

    def __init__(self, limits: RateLimits | None = None, metrics: Metrics | None = None) -> None:
        self.limits: RateLimits = limits if limits is not None else LocalRateLimits()
        self.metrics = metrics
        self._held: dict[str, _Held] = {}  # request id -> its holds, until `finished`
        self._table: tuple[Config, Table] | None = None
        self._made: dict[tuple[str, str], rl.Scope] = {}  # per-address/-client scopes, reused
        self._last: dict[str, tuple[rl.Limited, float]] = {}  # provider -> refusal, when
        self.clock: Callable[[], float] = time.monotonic  # the store's `blocked` clock

    @classmethod
    def for_state(cls, url: str | None, metrics: Metrics | None = None) -> RateLimitGate:
        """In-process accounts, or the fleet's through the Redis at `url` (`state:`)."""
        if url is None:
            return cls(metrics=metrics)
        from addon.state.redis_ratelimits import RedisRateLimits

        return cls(RedisRateLimits(url), metrics)

    async def start(self) -> None:
        """Open the shared store (with Redis; nothing to do in process)."""
        opener = getattr(self.limits, "open", None)
        if opener is not None:
            await opener()

    async def close(self) -> None:
        """Close the shared store."""
        closer = getattr(self.limits, "close", None)
        if closer is not None:
            await closer()

    def table(self, view: View) -> Table:
        """The limits of `view`'s config (built once per config version)."""
        cached = self._table
        if cached is None or cached[0] is not view.config:
            cached = self._table = (view.config, Table.of(view.config))
            self._made = {}  # (`_last` is kept: the stores' windows outlive a reload too)
        return cached[1]

    # ----------------------------------------------------------------------- request path

    def filter(self, view: View, usable: Usable, pending: Pending) -> Usable:
        """`usable` that also keeps out (`rate_limited`) the targets of a provider this
        replica last saw at its own limit; one reason per such provider."""
        scopes = self.table(view).providers
        if not scopes or not self.limits.any_blocked():
            return usable
        full = frozenset(n for n, s in scopes.items() if self.limits.blocked(s))
        if not full:
            return usable
        pending.reasons.extend(f"provider {n} at its rate limit: not tried" for n in sorted(full))

        def limited(c: catmod.Candidate) -> str | None:
            why = usable(c)
            if why is None and c.provider in full:
                self._holds(pending).left_out.add(c.provider)
                return "rate_limited"
            return why

        return limited

    async def admit(self, view: View, pending: Pending, req: decide.RoutingRequest,
                    decision: decide.RoutingDecision) -> Reply | None:  # fmt: skip
        """Reserve the request in its client's and its policy's windows; the 429 when one
        has no room (None: admitted, or nothing limits it)."""
        t = self.table(view)
        if not t.per_request:
            return None
        name, policy = req.client_name, decision.policy
        who = name or req.client_addr
        scopes = []
        if name is not None:
            if (mine := t.clients.get(name)) is not None:
                scopes.append(mine)
        elif (d := t.default) is not None:
            scopes.append(self._scope("", who, d, ANONYMOUS))
        if policy is not None and (pol := t.policies.get(policy)) is not None:
            scopes.append(t.shared[policy] if pol.scope == "policy" else
                          self._scope(policy, who, pol, policy))  # fmt: skip
        if not scopes:
            return None
        lim, tokens = self.limits, need(req.features, req.api)
        got = (lim.reserve_now(scopes, tokens) if type(lim) is LocalRateLimits  # no coroutine
               else await lim.reserve(scopes, tokens))  # fmt: skip
        if isinstance(got, rl.Limited):
            self._count(got.usage.scope)
            code = "rate_limit_exceeded"
            return json_reply(429, got.message, type_=got.dimension, code=code, pending=pending,
                              headers=rl.headers(got))  # fmt: skip
        held = self._holds(pending)  # (`filter` may have opened it)
        held.request, held.need = got, tokens
        return None

    async def claim(self, view: View, pending: Pending, c: catmod.Candidate,
                    features: RequestFeatures) -> str | None:  # fmt: skip
        """Before an attempt at `c`: reserve it in its provider's window. None: reserved;
        else why `c` is skipped (`skip_reason`: its provider is at its limit)."""
        scope = self.table(view).providers.get(c.provider)
        if scope is None:
            return None
        held, lim = self._holds(pending), self.limits
        tokens = held.need if held.need is not None else need(features, pending.api)
        got = (lim.reserve_now([scope], tokens) if type(lim) is LocalRateLimits
               else await lim.reserve([scope], tokens))  # fmt: skip
        if isinstance(got, rl.Limited):
            self._count(scope)
            held.refused.append(got)
            self._last[c.provider] = (got, self.clock())
            return skip_reason(got)
        held.providers.append((got, c.provider))
        return None

    def exhausted(self, pending: Pending) -> Reply | None:
        """After the attempt engine tried no target: the 429 when some target was skipped
        for its provider's limit (Retry-After: when the first of this request's providers
        at their limit has room again)."""
        held = self._held.get(pending.id)
        if held is None or not held.refused:
            return None
        return _every_provider([*held.refused, *self._full(held.left_out)], pending)

    def no_room(self, pending: Pending, no: decide.NoRoute) -> Reply | None:
        """After routing found no target: the 429 instead of the 503 when the router's
        state left them out (`no.status` 503) and some for their provider's limit."""
        held = self._held.get(pending.id)
        if no.status != 503 or "rate_limited" not in no.filtered or held is None:
            return None
        full = self._full(held.left_out)
        return _every_provider(full, pending) if full else None

    def _full(self, providers: set[str]) -> list[rl.Limited]:
        """The last refusal of each of `providers` (left out by `filter`: they were
        `blocked`), its times moved on to now, under the limits in force."""
        now, out = self.clock(), []
        scopes = self._table[1].providers if self._table is not None else {}
        for name in providers:
            last = self._last.get(name)
            if last is not None:
                got, at = last
                gone, u = now - at, got.usage
                usage = replace(u, scope=scopes.get(name, u.scope),
                                reset_requests_s=max(0.0, u.reset_requests_s - gone),
                                reset_tokens_s=max(0.0, u.reset_tokens_s - gone))  # fmt: skip
                out.append(replace(got, usage=usage,
                                   retry_after_s=max(0.0, got.retry_after_s - gone)))  # fmt: skip
        return out

    def finished(self, pending: Pending, usage: Usage | None) -> None:
        """The request ended: each hold becomes the tokens really used (input + output;
        0 where nothing answered)."""
        held = self._held.pop(pending.id, None)
        if held is None:
            return
        used = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
        if held.request is not None:
            self.limits.settle(held.request, used)
        answered = pending.answered_by.candidate.provider if pending.answered_by else None
        for hold, provider in reversed(held.providers):  # the last attempt answered
            self.limits.settle(hold, used if provider == answered else 0)
            answered = None if provider == answered else answered

    def snapshot(self) -> list[dict[str, Any]]:
        """`/status` `rate_limits`: the accounts' windows, busiest first."""
        return self.limits.snapshot()

    def _scope(self, policy: str, who: str, lim: Limits, label: str) -> rl.Scope:
        """The anonymous client's (`policy` "") or the per-client policy's scope of `who`."""
        made = self._made.get((policy, who))
        if made is None:
            if len(self._made) >= MAX_MADE:
                self._made.clear()
            made = self._made[(policy, who)] = (
                rl.Scope("policy", f"{policy}:{who}", lim.rpm, lim.tpm, label) if policy
                else rl.Scope("client", who, lim.rpm, lim.tpm, label)
            )  # fmt: skip
        return made

    def _holds(self, pending: Pending) -> _Held:
        held = self._held.get(pending.id)
        if held is None:
            held = self._held[pending.id] = _Held()
        return held

    def _count(self, scope: rl.Scope) -> None:
        if self.metrics is not None:
            self.metrics.rate_limited.labels(scope.kind, scope.label).inc()


def need(features: RequestFeatures, api: str | None) -> int:
    """The tokens a request holds until it ends: prompt estimate + its output cap."""
    out = 0 if api == "embeddings" else features.max_output_tokens
    return rl.estimate(features.prompt_tokens, out, decide.DEFAULT_MAX_OUTPUT)


def skip_reason(got: rl.Limited) -> str:
    """Why the attempt engine skipped a target whose provider is at its own limit, as
    `explain` and the ledger's reasons show it."""
    s, wait = got.usage.scope, rl.retry_after(got.retry_after_s)
    if got.dimension == "requests":
        return f"provider rate limit: {s.rpm} rpm reached, resets in {wait} s"
    if got.never:
        return (f"provider rate limit: this request may use {got.need} tokens, over the "
                f"{s.tpm} tpm limit")  # fmt: skip
    return (f"provider rate limit: {s.tpm} tpm reached ({got.usage.tokens} in use, this "
            f"request needs {got.need}), resets in {wait} s")  # fmt: skip


def _every_provider(seen: list[rl.Limited], pending: Pending) -> Reply:
    """The 429 for a request every target of which is at its provider's limit, naming the
    provider that has room first (of `seen`)."""
    got = min(seen, key=lambda x: x.retry_after_s)
    msg = f"every target for this request is at its provider's rate limit; {got.message}"
    return json_reply(429, msg, type_=got.dimension, code="rate_limit_exceeded",
                      pending=pending, headers=rl.headers(got))  # fmt: skip
