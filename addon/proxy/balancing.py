"""Load balancing on the request path: the glue between the dispatcher, the pure strategies
(`addon.routing.balance`) and the calls-in-flight state (`addon.state.inflight`).

`Balancing.order` reorders a request's chain (after `chains.tried_order`) so each model's
deployments are tried in their group's order, and adds one reason per balanced model for
`explain`; `track` and `done` count the request's calls in flight for `least_busy`. With
`state:` set the counts are the fleet's (`addon.state.redis_inflight`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from addon.proxy.view import View
from addon.routing import balance
from addon.routing import catalog as catmod
from addon.routing.chains import Chain
from addon.state import inflight as flight
from addon.state.memory import Latency

Usable = Callable[[catmod.Candidate], str | None]


class Balancing:
    """The dispatcher's balancer: calls in flight (`inflight`) and the random source of the
    `weighted` picks (`rng`; seed it for a reproducible order)."""

    def __init__(self, inflight: flight.InFlight | None = None,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.inflight: flight.InFlight = (
            inflight if inflight is not None else flight.LocalInFlight()
        )
        self.tracker = flight.Tracker(self.inflight)
        self.rng = rng if rng is not None else random.Random()

    @classmethod
    def for_state(cls, url: str | None) -> Balancing:
        """In-process counts, or the fleet's through the Redis at `url` (`state:`)."""
        if url is None:
            return cls()
        from addon.state.redis_inflight import RedisInFlight

        return cls(RedisInFlight(url))

    async def start(self) -> None:
        """Start sharing the counts (with Redis; nothing to do in process)."""
        opener = getattr(self.inflight, "open", None)
        if opener is not None:
            await opener()

    async def close(self) -> None:
        """Stop sharing the counts and withdraw this replica's."""
        closer = getattr(self.inflight, "close", None)
        if closer is not None:
            await closer()

    def order(self, view: View, chain: Chain, latency: Latency, usable: Usable,
              reasons: list[str]) -> Chain:  # fmt: skip
        """`chain` with each model's deployments in their group's order; the reasons (one
        line per balanced model) appended to `reasons`."""
        groups = view.config.settings.balance
        if not groups.groups:
            return chain
        out = balance.rebalance(chain, groups, inflight=self.inflight.counts(),
                                latency=latency.values, draw=self.rng.random,
                                absent=missing(view, usable))  # fmt: skip
        reasons.extend(out.lines)
        return out.chain

    def track(self, request_id: str, acquire: flight.Acquire, on_outcome: flight.OnOutcome,
              streaming: bool) -> tuple[flight.Counted, flight.OnOutcome]:  # fmt: skip
        """`acquire` and `on_outcome` counting the request's calls in flight."""
        return self.tracker.track(request_id, acquire, on_outcome, streaming)

    def done(self, request_id: str) -> None:
        """The request ended: its calls are no longer in flight."""
        self.tracker.done(request_id)


def missing(view: View, usable: Usable) -> Callable[[str, str, tuple[str, ...]], list[str]]:
    """`rebalance`'s `absent`: the deployments of group `name` that serve `model_id` but are
    not among `present`, each with why (the state filter that left it out, e.g.
    `provider_open`, `breaker_open`, `rate_limited`, `no_key`)."""

    def absent(name: str, model_id: str, present: tuple[str, ...]) -> list[str]:
        group = view.config.settings.balance.groups[name]
        out = []
        for c in view.catalog.lookup(model_id):
            if c.model_id != model_id or c.provider not in group.deployments:
                continue
            if c.provider in present:
                continue
            out.append(f"{c.provider} ({usable(c) or 'not in the chain'})")
            present = (*present, c.provider)
        return out

    return absent


def most_likely(view: View, chain: Chain, usable: Usable) -> balance.Balanced:
    """For `orchestrator rank --chain`: the chain with the deployments in their most likely
    order (by weight; no calls in flight or latencies are known there)."""
    return balance.rebalance(chain, view.config.settings.balance, inflight={},
                             latency=dict, draw=None, absent=missing(view, usable))  # fmt: skip
