"""Rescuing a streamed answer that broke after the client got bytes: go on elsewhere.

With every stream it hands to the pipe, the dispatcher gives a `Rescue` (`Pipe.rescuer`):
the request's chain, the attempt engine and its own outcome callbacks. When the relay sees
the stream cut, stall, send a malformed event or report an error itself, it calls
`Rescue.broke`, which

1. counts the break as a failure of the target that broke (its breakers, through the
   dispatcher's outcome callback) and rewrites that attempt's record, which said `ok` at
   hand-off;
2. reads what the client holds (`addon.wire.prefill.delivered`): a tool call in flight,
   a thinking block or several choices are not continued, and the client's error says so;
3. walks the rest of the chain, skipping targets that cannot continue
   (`addon.routing.continuation`), each sent the original request with the delivered text
   prefilled in its form, through the engine (fallback, breakers as for any attempt);
   a target that refuses the prefill (a 400 saying so) is marked incapable for the process
   lifetime and the next one is tried: that 400 never reaches the client;
4. returns the continuation (its live stream and the `addon.wire.splice` that makes it read
   as the rest of the first), or the message the client's error event carries.

`settle` bills a rescued stream once it ended: every leg's usage, the broken ones' as
reported or estimated from the text they delivered (flagged in the ledger's reasons).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from addon.proxy import apis
from addon.proxy.exchange import Pending
from addon.proxy.plan import Plan, Shape
from addon.proxy.streamfacts import Leg, StreamReport
from addon.proxy.upstream import Engine, LiveStream, Target
from addon.proxy.view import View
from addon.routing.catalog import Candidate
from addon.routing.continuation import (
    broken_leg_usage,
    can_continue,
    estimate_tokens,
    total_usage,
)
from addon.routing.domains import Judgement, dead_providers, judge
from addon.routing.fallback import Outcome, OutcomeKind
from addon.routing.scoring import Scored
from addon.wire import prefill
from addon.wire.request import parse_request
from addon.wire.splice import Splice, splice_for
from addon.wire.usage import Usage

log = logging.getLogger("orchestrator")

OnOutcome = Callable[[Candidate, Outcome, float, Judgement], None]
Acquire = Callable[[Candidate], Awaitable[bool]]
Ended = Callable[[Candidate], None]  # a stream this target answered ended cleanly


@dataclass(frozen=True)
class Continuation:
    """A continuation that produced its first event: its stream, its target, and the
    splice its events go through to the client."""

    live: LiveStream
    target: Target
    splice: Splice


class Rescue:
    """One streamed request's way out of a mid-stream break (see the module docstring).
    `incapable` is the process-wide set of target keys that refused a prefill."""

    def __init__(self, view: View, pending: Pending, chain: Sequence[Scored],
                 answered: Scored | None, inject_usage: bool, *, engine: Engine,
                 on_outcome: OnOutcome, acquire: Acquire, ended: Ended,
                 incapable: set[str], trace: Callable[[int], str] | None = None
                 ) -> None:  # fmt: skip
        self._view, self._pending, self._chain = view, pending, chain
        self._inject_usage, self._engine = inject_usage, engine
        self._on_outcome, self._acquire, self._incapable = on_outcome, acquire, incapable
        self._ended, self._trace = ended, trace
        self._api = pending.api
        self._current = answered.candidate if answered is not None else None
        self._attempt = len(pending.attempts) - 1  # the record of the attempt streaming now
        self._leg_from = 0  # characters of answer delivered before the current leg began
        self._plan: Plan | None = None
        self._prompt: int | None = None

    def _left(self) -> list[int]:
        """The chain entries (indexes) not tried in this request, at providers it did not
        show down."""
        tried = {f"{a.provider}:{a.model}" for a in self._pending.attempts}
        dead = dead_providers(self._pending.attempts)
        return [i for i, s in enumerate(self._chain)
                if s.candidate.key not in tried and s.candidate.provider not in dead]  # fmt: skip

    @property
    def possible(self) -> bool:
        """Whether a break could be rescued at all: a continuable API, and targets left."""
        return (self._api in prefill.CONTINUABLE_APIS and self._current is not None
                and bool(self._left()))  # fmt: skip

    def has_capable(self) -> bool:
        """Whether a target that continues a prefix is left (a malformed or error event is
        a break only then; otherwise it is handled as without rescue)."""
        return self.possible and any(
            self._chain[i].candidate.prefill != "none"
            and self._chain[i].candidate.key not in self._incapable
            for i in self._left()
        )

    async def broke(
        self, kind: OutcomeKind, why: str, events: list[Any], report: StreamReport
    ) -> Continuation | str:
        """The stream broke (`kind`, `why`) after the client got `events` (their JSON):
        count it, and continue elsewhere if that can be done; else the client's error text."""
        self._record_break(kind, why)
        if not self.possible:
            return why
        got = prefill.delivered(self._api, events)
        if got.blocker is not None:
            return f"{why}; not continued: {got.blocker}"
        if got.finished:
            return why
        assert self._current is not None
        chars = len(got.text) - self._leg_from
        usage, estimated = broken_leg_usage(report.usage, chars, self._prompt_estimate())
        leg = Leg(self._current, usage, estimated, self._attempt)
        prior = total_usage([*(x.usage for x in report.legs), usage])
        found = await self._continue(got, prior)
        if isinstance(found, str):
            if report.legs:  # an earlier leg was spliced in: this one is billed too
                report.legs.append(leg)
            return f"{why}; {found}"
        report.legs.append(leg)
        if estimated:
            self._pending.reasons.append(
                f"usage of {self._current.key} estimated: it broke after {chars} characters"
            )
        self._pending.reasons.append(
            f"rescued: {self._current.key} broke ({why}) after {chars} characters; "
            f"continued on {found.target.candidate.key}")  # fmt: skip
        self._current = found.target.candidate
        self._attempt = len(self._pending.attempts) - 1
        self._leg_from = len(got.text)
        report.usage = None  # the new leg's usage, read from its own events
        report.rescued = True
        return found

    def settle(self, report: StreamReport) -> None:
        """The stream ended: when cleanly (its terminal event, no break or upstream error),
        a success for the target that answered last; a rescued one gets its last leg and
        its usage summed."""
        if (report.outcome == "pending" and report.saw_done and not report.failure
                and self._current is not None):  # fmt: skip
            self._ended(self._current)
        if not report.legs:
            return
        if report.legs[-1].attempt != self._attempt and self._current is not None:
            report.legs.append(Leg(self._current, report.usage, False, self._attempt))
        report.usage = total_usage(x.usage for x in report.legs)

    # ------------------------------------------------------------------ internals

    def _record_break(self, kind: OutcomeKind, why: str) -> None:
        """The attempt that broke: a failure for its breakers, and in its record."""
        c, attempts = self._current, self._pending.attempts
        if c is None or not 0 <= self._attempt < len(attempts):
            return
        rec = attempts[self._attempt]
        elapsed = (time.monotonic() - rec.started) * 1000
        outcome = Outcome(kind, rec.outcome.status, f"mid-stream: {why}")
        attempts[self._attempt] = replace(rec, outcome=outcome, elapsed_ms=round(elapsed, 1))
        self._on_outcome(c, outcome, elapsed, judge(attempts[: self._attempt + 1]))

    def _prompt_estimate(self) -> int:
        """The prompt tokens of the current leg, estimated (the request, plus the prefill
        a continuation leg was sent)."""
        if self._prompt is None:
            ep = self._pending.endpoint
            inc = self._pending.incoming
            self._prompt = (apis.read_request(ep, parse_request(inc.body)).features.prompt_tokens
                            if ep is not None else 0)  # fmt: skip
        return self._prompt + estimate_tokens(self._leg_from)

    def _targets(self, got: prefill.Delivered) -> list[tuple[Target, prefill.Prefilled]] | str:
        """The rest of the chain that can continue `got`, each with its prefilled body."""
        pending = self._pending
        if self._plan is None:
            assert pending.endpoint is not None
            shape = Shape(pending.incoming, parse_request(pending.incoming.body),
                          pending.endpoint, self._inject_usage, True)  # fmt: skip
            self._plan = Plan(self._view, self._chain, shape, pending)
        out = []
        for i in self._left():
            c = self._chain[i].candidate
            if c.key in self._incapable:
                continue
            if not can_continue(c.prefill, got.text):
                continue
            t = self._plan[i]
            pre = prefill.continuation_request(self._api, c.prefill, parse_request(t.body).data,
                                               got.text)  # fmt: skip
            if pre is None:
                return "this request cannot be continued elsewhere (see README: Resilience)"
            out.append((replace(t, body=prefill.encode(pre.body)), pre))
        return out

    def _traced(self) -> Callable[[int], str] | None:
        """What names the span of the next engine run's attempt n upstream: they are
        recorded after the request's attempts so far."""
        trace, base = self._trace, len(self._pending.attempts)
        return None if trace is None else lambda n: trace(base + n)

    async def _continue(self, got: prefill.Delivered, prior: Usage | None) -> Continuation | str:
        """Walk the targets that can continue `got` until one streams; else why not."""
        targets = self._targets(got)
        if isinstance(targets, str):
            return targets
        if not targets:
            return "no other target can continue it"
        # by key: the target the engine answers with may be a copy (its traceparent set)
        echoes = {t.candidate.key: pre.echo for t, pre in targets}
        remaining = [t for t, _ in targets]
        while remaining:
            res = await self._engine.run(remaining, on_outcome=self._on_outcome,
                                         acquire=self._acquire, traceparent=self._traced())  # fmt: skip
            self._pending.attempts.extend(res.attempts)
            ans = res.answer
            if ans is not None and ans.stream is not None:
                splice = splice_for(self._api, got, prior, echoes[ans.target.candidate.key])
                return Continuation(ans.stream, ans.target, splice)
            if ans is not None:
                return f"{ans.target.candidate.key} answered the continuation without a stream"
            failed = res.failed_answer
            if failed is None or not prefill.rejects_prefill(failed.status, failed.body):
                last = res.last.message if res.last is not None else "nothing could be tried"
                return f"no target could continue it (last: {last})"
            key = failed.target.candidate.key
            self._incapable.add(key)
            log.warning("%s refused an assistant prefill; not asked to continue again", key)
            self._pending.reasons.append(f"{key} refused the prefill: marked incapable")
            at = next(i for i, t in enumerate(remaining) if t.candidate.key == key)
            remaining = remaining[at + 1 :]
        return "no other target can continue it"
