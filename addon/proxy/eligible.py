"""Which providers (and, for embeddings, which offerings) one request may be sent to.

It starts from the providers with a usable key for the request (`View.keyed`: keyless ones,
ours, and those at the host the client's own key is for) among those that speak its API;
then:

- built-in tools (`RequestFeatures.hosted_tools`, see `addon.routing.classify`): only the
  providers at `HOSTED_TOOL_HOSTS` or at the host the client addressed;
- a Responses turn that continues stored state: only where that state lives
  (`addon.proxy.responsestate.pin_for`); none of those usable → a 503 naming why;
- an embeddings request: only the offerings of the model it names (`embedding_space`).

Every provider left out gets the filter name the decision counts it under (`api`,
`hosted_tools`, `pinned`; `no_key` otherwise), so `explain` says why it was not tried.
`state_filter` adds what the router's state says right now: a provider whose provider
breaker is open (`provider_open`), a target whose own breaker is (`breaker_open`), a target
resting after a 429 (`rate_limited`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from addon.proxy.exchange import Incoming
from addon.proxy.outbound import has_client_key
from addon.proxy.responsestate import Pin, Refusal, pin_for, unusable_pin
from addon.proxy.view import View
from addon.routing import breaker as brk
from addon.routing import catalog as catmod
from addon.routing import decide
from addon.routing.classify import HOSTED_TOOL_HOSTS, RequestFeatures
from addon.state.memory import Breakers
from addon.state.response_homes import ResponseHomes
from addon.wire.responses import ResponsesRequest


@dataclass(frozen=True)
class Eligible:
    """The providers a request may go to (`allowed`), those with a key for it that speak
    its API (`keyed`), those that speak it (`speaking`, None: all do), why each other one
    is out (`out`: provider -> filter), the Responses pin, and the reasons for the ledger."""

    allowed: frozenset[str]
    keyed: frozenset[str]
    speaking: frozenset[str] | None
    out: Mapping[str, str] = field(default_factory=dict)
    pin: Pin | None = None
    reasons: tuple[str, ...] = ()


async def eligible(
    view: View,
    homes: ResponseHomes,
    inc: Incoming,
    api: str,
    features: RequestFeatures,
    responses: ResponsesRequest | None,
    now: float,
) -> Eligible | Refusal:
    """The providers `inc` (a request of `api`) may be sent to (see the module docstring);
    `now` is wall-clock seconds (Responses homes expire)."""
    keyed = view.keyed(inc.host if has_client_key(inc.headers) else None, api)
    speaking = view.speaking(api)
    providers = view.catalog.providers
    allowed = keyed
    if speaking is None and not features.hosted_tools and responses is None:
        return Eligible(allowed, keyed, speaking)  # chat, completions: the common case
    out: dict[str, str] = {}
    reasons: list[str] = []
    if speaking is not None:
        out.update((n, "api") for n in providers if n not in speaking)
    if features.hosted_tools:
        hosts = HOSTED_TOOL_HOSTS | {inc.host}
        runs = frozenset(n for n, p in providers.items() if p.host in hosts)
        out.update((n, "hosted_tools") for n in allowed - runs)
        allowed &= runs
        reasons.append(f"built-in tools {', '.join(features.hosted_tools)}: only providers at "
                       f"{', '.join(sorted(hosts))}")  # fmt: skip
    pin = None
    if responses is not None:
        got = await pin_for(homes, responses, providers, inc.host, now)
        if isinstance(got, Refusal):
            return got
        if got is not None:
            pin = got
            reasons.append(pin.reason)
            if not keyed & pin.providers:
                return unusable_pin(pin, keyed, providers, api)
            out.update((n, "pinned") for n in allowed - pin.providers)
            allowed &= pin.providers
    return Eligible(allowed, keyed, speaking, out, pin, tuple(reasons))


def state_filter(
    ok: Eligible,
    breakers: Breakers,
    provider_breakers: Breakers,
    cooldown: Mapping[str, float],
    now: float,
    cooldown_s: float,
) -> tuple[frozenset[str], Callable[[catmod.Candidate], str | None]]:
    """The providers of `ok.allowed` whose provider breaker lets a request through at `now`
    (monotonic seconds; `cooldown_s` the breakers' cooldown), and the check `decide` asks
    of each candidate: the filter that keeps it out (the `ok.out` one or `no_key`,
    `provider_open`, `breaker_open`, `rate_limited` while `now` is before its entry in
    `cooldown`, by target key), or None when it may be tried."""
    allowed, out, target_state = ok.allowed, ok.out, breakers.get
    # only providers that ever failed have a breaker state: look at those, not at every
    # allowed provider (over a big catalog that is a hundred lookups per request)
    down = {p for p, st in provider_breakers.snapshot().items()
            if p in allowed and not brk.available(st, now, cooldown_s)}  # fmt: skip
    up = allowed - down if down else allowed

    def usable(c: catmod.Candidate) -> str | None:
        if c.provider not in allowed:
            return out.get(c.provider, "no_key")
        if c.provider not in up:
            return "provider_open"
        st = target_state(c.key)
        if st is not None and not brk.available(st, now, cooldown_s):
            return "breaker_open"
        if cooldown and cooldown.get(c.key, 0.0) > now:
            return "rate_limited"
        return None

    return up, usable


def embedding_space(
    catalog: catmod.Catalog, model: str | None, host: str
) -> tuple[catmod.Candidate, ...] | str | Refusal:
    """The offerings an embeddings request for `model` may go to: every offering of the
    same canonical model (the one the name means at `host` when it names several), so a
    vector never comes from another model; a 400 for a router alias or no model (the router
    never picks an embedding model); the reason it is forwarded as sent when the catalog
    does not know the model. Equivalences between two models (same vectors, another name)
    cannot be declared yet: a space is one canonical model."""
    if not model or model == decide.AUTO or model.startswith(decide.ALIAS_PREFIX):
        return Refusal(400, f"embeddings need a model name, not {model!r}: vectors of "
                       "different models cannot be mixed, so the router never picks one",
                       "embedding_model_required")  # fmt: skip
    meant = catmod.requested_candidate(catalog, model, host)
    if meant is None:
        return (f"embedding model {model!r} is not in the catalog; forwarded as sent (an "
                "embedding never moves to another model)")  # fmt: skip
    return tuple(c for c in catalog.candidates if c.model_id == meant.model_id)
