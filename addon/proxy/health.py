"""A target's and a provider's health as the request path sees it: claiming the right to try
a target (its provider's breaker first, then its own, with the half-open probe), and telling
the breakers, the latency stats and the rate-limit cooldowns what each attempt did. A mixin of
`addon.proxy.dispatch.Dispatcher`, kept apart so the request path stays readable."""

from __future__ import annotations

import time
from dataclasses import replace

from addon.proxy.metrics import Metrics
from addon.proxy.view import View
from addon.routing import breaker as brk
from addon.routing import catalog as catmod
from addon.routing.domains import Judgement, Verdict
from addon.routing.fallback import Outcome, OutcomeKind
from addon.state import memory


class Health:
    """The breaker and latency bookkeeping of the `Dispatcher` (which owns the state)."""

    view: View
    metrics: Metrics | None
    breakers: memory.Breakers
    provider_breakers: memory.Breakers
    latency: memory.Latency
    cooldown: dict[str, float]

    async def _acquire(self, c: catmod.Candidate) -> bool:
        """Claim the right to try `c` now, its provider's breaker first, then its own; an
        open breaker past its cooldown lets exactly one request through as the half-open
        probe. A refused target gives back the provider's probe it claimed."""
        cooldown_s = self.view.config.settings.resilience.breaker.cooldown_s
        prov = self.provider_breakers
        before = prov.get(c.provider)
        if before is not None:
            claimed = await prov.acquire(c.provider, cooldown_s)
            self._moved(c.provider, before)
            if not claimed:
                return False
        if self.breakers.get(c.key) is None or await self.breakers.acquire(c.key, cooldown_s):
            return True
        if before is not None:
            prov.release(c.provider)
        return False

    def _moved(self, provider: str, before: brk.BreakerState | None) -> None:
        if self.metrics is not None:  # count a provider breaker's transitions
            self.metrics.provider_breaker_moved(provider, before,
                                                self.provider_breakers.get(provider))  # fmt: skip

    def _on_outcome(self, c: catmod.Candidate, outcome: Outcome, elapsed_ms: float,
                    j: Judgement) -> None:  # fmt: skip
        res = self.view.config.settings.resilience
        now = time.monotonic()
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            # never send this target another request sooner than it asked (or a short
            # backoff when it did not say)
            wait = outcome.retry_after if outcome.retry_after is not None else 1.0
            self.cooldown[c.key] = max(self.cooldown.get(c.key, 0.0), now + wait)
        if outcome.ok:
            self.latency.observe(c.key, elapsed_ms)
        memory.tell(self.breakers, c.key, j.target, res.breaker.failures)
        before = self.provider_breakers.get(c.provider)
        memory.tell(self.provider_breakers, c.provider, j.provider, res.breaker.failures)
        self._moved(c.provider, before)

    def _on_stream_outcome(self, c: catmod.Candidate, outcome: Outcome, elapsed_ms: float,
                           j: Judgement) -> None:  # fmt: skip
        """`_on_outcome` for a streamed attempt: a hand-off is no verdict yet (a claimed probe
        goes back); `_stream_ended` records the success once the stream ended cleanly, and a
        mid-stream break is recorded as the failure it is (`Rescue`)."""
        if outcome.ok:
            j = replace(j, target=Verdict.RELEASE, provider=Verdict.RELEASE)
        self._on_outcome(c, outcome, elapsed_ms, j)

    def _stream_ended(self, c: catmod.Candidate) -> None:
        """A stream `c` answered ended cleanly (its terminal event, no break): a success for
        its breakers."""
        threshold = self.view.config.settings.resilience.breaker.failures
        memory.tell(self.breakers, c.key, Verdict.SUCCESS, threshold)
        before = self.provider_breakers.get(c.provider)
        memory.tell(self.provider_breakers, c.provider, Verdict.SUCCESS, threshold)
        self._moved(c.provider, before)
