"""Failure domains: how far a failed attempt's fault reaches. Pure, no clock.

Every failure belongs to one domain, the set of targets that would fail the same way:

- PROVIDER — the configured provider (one `base_url`, one key) as a whole: the host cannot
  be reached (connect, DNS, TLS; `CONNECT_ERROR`), the key is refused (401; a 403 that does
  not name a model), the key's quota or credit is spent (a 402, or a 429 saying so), or a
  storm (below). The rest of the request skips the provider, and its provider breaker
  counts a fault.
- MODEL — this model at this provider (and its same-weights aliases,
  `addon.routing.chains.same_weights`): 404, context too long, a content-policy refusal,
  a 403 that names the model, and a lone 5xx, 429, timeout or unusable 2xx while the
  provider's other models answer. Only the target's own breaker counts it (when
  `breaker.counts_toward_breaker` says so).
- REQUEST — the request itself (`CLIENT_ERROR`: a 400 any target would give). No breaker
  counts it; the client gets the answer.

**Storm**: a 5xx, 429 or timeout is PROVIDER-wide when, counting it, the provider's
recent attempts hold at least `STORM_FAILURES` such failures on at least `STORM_MODELS`
different models (names that differ only by a date or a route suffix count as one,
`chains.weights_name`), all ending within `STORM_WINDOW_S` seconds of the newest, with no
success at that provider after the oldest of them (other failures in between neither
count nor break it). "Recent attempts" are whatever the caller passes: the request path
passes the attempts of the request so far. Two because a request rarely sees more than
four attempts, and two models of one host failing alike within a minute is already more
likely the host than chance; 60 s because two first-token timeouts take 40 s.

`RuledOut` keeps what one request's attempts so far rule out for the rest of its chain: the
providers shown down, and the candidates that failed for their model (whose same-weights
aliases are then no fallback either).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from addon.routing.breaker import counts_toward_breaker
from addon.routing.catalog import Candidate
from addon.routing.chains import repeats_failure, weights_name
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind

STORM_KINDS = frozenset({OutcomeKind.SERVER_ERROR, OutcomeKind.RATE_LIMITED, OutcomeKind.TIMEOUT})
STORM_FAILURES = 2  # storm-kind failures at one provider ...
STORM_MODELS = 2  # ... on this many different models ...
STORM_WINDOW_S = 60.0  # ... ending within this many seconds of each other
# words of a 429 that mean the key's quota or credit is spent, not a per-model rate limit
_QUOTA_WORDS = ("insufficient_quota", "exceeded your current quota", "billing", "credit")


class Domain(enum.Enum):
    """How far a failure reaches (see the module docstring)."""

    PROVIDER = "provider"
    MODEL = "model"
    REQUEST = "request"


_BY_KIND = {
    OutcomeKind.CONNECT_ERROR: Domain.PROVIDER,
    OutcomeKind.AUTH_ERROR: Domain.PROVIDER,
    OutcomeKind.TIMEOUT: Domain.MODEL,
    OutcomeKind.RATE_LIMITED: Domain.MODEL,
    OutcomeKind.SERVER_ERROR: Domain.MODEL,
    OutcomeKind.NOT_FOUND: Domain.MODEL,
    OutcomeKind.CONTEXT_TOO_LONG: Domain.MODEL,
    OutcomeKind.CONTENT_POLICY: Domain.MODEL,
    OutcomeKind.PROTOCOL_ERROR: Domain.MODEL,
    OutcomeKind.CLIENT_ERROR: Domain.REQUEST,
}


def domain_of(outcome: Outcome) -> Domain | None:
    """The domain of one outcome on its own, before any storm (None for a success)."""
    if outcome.ok:
        return None
    if outcome.status == 402:  # payment required: the key's credit, whatever the kind says
        return Domain.PROVIDER
    if outcome.kind is OutcomeKind.AUTH_ERROR and outcome.status == 403:
        return Domain.MODEL if "model" in outcome.message.lower() else Domain.PROVIDER
    if outcome.kind is OutcomeKind.RATE_LIMITED:
        low = outcome.message.lower()
        return Domain.PROVIDER if any(w in low for w in _QUOTA_WORDS) else Domain.MODEL
    return _BY_KIND[outcome.kind]


def storm(provider: str, attempts: Sequence[AttemptRecord]) -> tuple[str, ...]:
    """The distinct models (weights names) of the storm at `provider` that `attempts`
    (oldest first) end in, or () when they end in none (module docstring)."""
    mine = [a for a in attempts if a.provider == provider]
    if not mine or mine[-1].outcome.kind not in STORM_KINDS:
        return ()
    newest = _ended(mine[-1])
    models: list[str] = []
    failures = 0
    for a in reversed(mine):
        if a.outcome.ok or _ended(a) < newest - STORM_WINDOW_S:
            break
        if a.outcome.kind not in STORM_KINDS:
            continue
        failures += 1
        name = weights_name(a.model).base
        if name not in models:
            models.append(name)
    return tuple(models) if failures >= STORM_FAILURES and len(models) >= STORM_MODELS else ()


def _ended(a: AttemptRecord) -> float:
    return a.started + a.elapsed_ms / 1000


class Verdict(enum.Enum):
    """What one breaker is told about an attempt: `record(success=True)`,
    `record(success=False)`, or `release` (no verdict: a claimed probe goes back)."""

    SUCCESS = "success"
    FAILURE = "failure"
    RELEASE = "release"


@dataclass(frozen=True)
class Judgement:
    """One attempt judged: its domain (None for a success), why, and the verdicts for the
    target's breaker and its provider's."""

    domain: Domain | None
    reason: str
    target: Verdict
    provider: Verdict

    @property
    def provider_down(self) -> bool:
        """Whether the rest of this request should skip the attempt's provider."""
        return self.domain is Domain.PROVIDER


def judge(attempts: Sequence[AttemptRecord], *, tries_on_target: int = 1) -> Judgement:
    """The last of `attempts` (a request's attempts so far, oldest first) judged in light of
    the earlier ones; `tries_on_target` counts the attempts on its target in a row, it
    included (`breaker.counts_toward_breaker`).

    Target breaker: a success closes it, a target fault counts, anything else releases.
    Provider breaker: a success closes it, a PROVIDER-domain failure counts, a MODEL or
    REQUEST one releases (the host answered, but that says nothing of its health)."""
    last = attempts[-1]
    o = last.outcome
    if o.ok:
        return Judgement(None, "ok", Verdict.SUCCESS, Verdict.SUCCESS)
    label = o.kind.value + (f" {o.status}" if o.status else "")
    target = Verdict.FAILURE if counts_toward_breaker(o, tries_on_target) else Verdict.RELEASE
    dom = domain_of(o) or Domain.REQUEST
    if dom is Domain.MODEL and (models := storm(last.provider, attempts)):
        why = (f"a storm at {last.provider}: failures on {len(models)} models "
               f"({', '.join(models)}) within {STORM_WINDOW_S:g} s")  # fmt: skip
        return Judgement(Domain.PROVIDER, f"{label}: {why}", target, Verdict.FAILURE)
    if dom is Domain.PROVIDER:
        why = f"provider {last.provider} fails for every model (host, key or quota)"
        return Judgement(dom, f"{label}: {why}", target, Verdict.FAILURE)
    why = (
        "this model only; the provider's other models may answer"
        if dom is Domain.MODEL
        else "the request itself; any target would refuse it"
    )
    return Judgement(dom, f"{label}: {why}", target, Verdict.RELEASE)


def dead_providers(attempts: Iterable[AttemptRecord]) -> dict[str, str]:
    """The providers a request's attempts so far (oldest first) showed to be down, each
    with the reason of the first attempt that showed it: the rest of the request skips
    them."""
    seen: list[AttemptRecord] = []
    dead: dict[str, str] = {}
    for a in attempts:
        seen.append(a)
        if a.provider not in dead:
            j = judge(seen)
            if j.provider_down:
                dead[a.provider] = j.reason
    return dead


@dataclass
class RuledOut:
    """What one request's attempts so far rule out for the rest of its chain (one per
    request, filled in attempt order): `dead` maps each provider shown down to the reason
    of the attempt that showed it; `failed` holds the candidates that failed for their
    model (MODEL domain)."""

    dead: dict[str, str] = field(default_factory=dict)
    failed: list[Candidate] = field(default_factory=list)

    def skip(self, c: Candidate) -> str | None:
        """Why the rest of the request skips `c` (its provider is down, or it is the same
        weights as a candidate that failed), or None to try it."""
        if c.provider in self.dead:
            return f"provider {c.provider} is down for this request ({self.dead[c.provider]})"
        twin = repeats_failure(c, self.failed)
        if twin is not None:
            return f"same weights as {twin.key}, which failed in this request"
        return None

    def any_left(self, candidates: Iterable[Candidate]) -> bool:
        """Whether any of `candidates` is still worth trying (`skip` says None)."""
        return any(self.skip(c) is None for c in candidates)

    def judge(
        self, c: Candidate, attempts: Sequence[AttemptRecord], tries_on_target: int
    ) -> Judgement:
        """`judge` the last of `attempts` (an attempt on `c`) and remember what it rules out."""
        j = judge(attempts, tries_on_target=tries_on_target)
        if j.provider_down:
            self.dead.setdefault(c.provider, j.reason)
        elif j.domain is Domain.MODEL and c not in self.failed:
            self.failed.append(c)
        return j
