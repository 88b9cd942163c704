"""One intercepted request, start to finish, in plain values (no mitmproxy types).

`Dispatcher.handle(Incoming)` decides, runs the attempt engine and returns what the
mitmproxy adapter must do: pass the request through untouched, answer it, or point it at
the loopback pipe for a live stream. `Dispatcher.finish(Pending, ...)` turns what happened
into exactly one ledger row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import overload

from addon.config.schema import LLM_PATHS, ROUTED_PATHS
from addon.proxy import budgetgate, recording
from addon.proxy.exchange import (
    Incoming,
    Passthrough,
    Pending,
    Reply,
    ToPipe,
    internal_error_reply,
    json_reply,
    request_id,
)
from addon.proxy.metrics import Metrics
from addon.proxy.outbound import has_client_key, outbound_headers, upstream_url
from addon.proxy.pipe import Pipe, StreamReport
from addon.proxy.replies import reply_for
from addon.proxy.upstream import Engine, EngineResult, Target
from addon.proxy.view import View, local_hosts
from addon.routing import breaker as brk
from addon.routing import catalog as catmod
from addon.routing import classify, decide
from addon.routing.fallback import Outcome, OutcomeKind
from addon.routing.scoring import Scored
from addon.state import memory
from addon.store.ledgers import LedgerWriter
from addon.store.sqlite_ledger import LedgerRow
from addon.wire.chat import prompt_text
from addon.wire.request import ParsedBody, WireError, parse_request, rewrite

log = logging.getLogger("orchestrator")


class Dispatcher:
    """The request path: routing, the attempt engine, the pipe, and the ledger row of each
    call. Holds the config version in force (`view`) and the live state it routes by
    (breakers, latency, rate-limit cooldowns, budgets)."""

    def __init__(
        self,
        view: View,
        ledger: LedgerWriter | None,
        budgets: memory.Budgets | None = None,
        metrics: Metrics | None = None,
        *,
        breakers: memory.Breakers | None = None,
        latency: memory.Latency | None = None,
    ) -> None:
        self.view = view
        self.ledger = ledger
        self.budgets: memory.Budgets = budgets if budgets is not None else memory.LocalBudgets()
        self.metrics = metrics
        self.engine = Engine(view.config.settings.resilience)
        self.engine.local_hosts = local_hosts(view)
        self.engine.set_limits(
            {n: p.max_connections for n, p in view.config.settings.providers.items()}
        )
        self.pipe = Pipe()
        self.breakers: memory.Breakers = (
            breakers if breakers is not None else memory.LocalBreakers()
        )
        self.latency: memory.Latency = latency if latency is not None else memory.LocalLatency()
        self.cooldown: dict[str, float] = {}  # candidate key -> monotonic time it may be retried

    def swap(self, view: View) -> None:
        """Serve a new config version from the next request on (calls in flight keep theirs)."""
        self.view = view
        self.engine.resilience = view.config.settings.resilience
        self.engine.local_hosts = local_hosts(view)
        self.engine.set_limits(
            {n: p.max_connections for n, p in view.config.settings.providers.items()}
        )

    async def close(self) -> None:
        """Close the pipe and the upstream connection pool."""
        await self.pipe.close()
        await self.engine.close()

    # ------------------------------------------------------------------ decide & attempt

    def begin(self, inc: Incoming) -> Pending | None:
        """The record of an LLM call (a POST to an LLM endpoint), opened before any work so
        that every way the call ends, an internal error too, writes its one ledger row and
        gives back its budget hold. None for anything else: forwarded untouched, unrecorded."""
        if _endpoint(inc) is None:
            return None
        return Pending(request_id(), time.monotonic(), inc, "unrouted")

    def too_large(self, inc: Incoming, size: int, pending: Pending | None = None) -> Reply | None:
        """413 in OpenAI format for an LLM request whose body is over `max_request_bytes`."""
        limit = self.view.config.settings.max_request_bytes
        if size <= limit or _endpoint(inc) is None:
            return None
        msg = (f"request body of {size} bytes is over max_request_bytes ({limit}); send a "
               "smaller request or raise `max_request_bytes` in orchestrator.yaml")  # fmt: skip
        return json_reply(413, msg, type_="invalid_request_error", code="request_too_large",
                          pending=_routed(inc, pending))  # fmt: skip

    def length_required(self, inc: Incoming) -> Reply | None:
        """411 for an LLM request sent without Content-Length (chunked, size unknown)."""
        if _endpoint(inc) is None:
            return None
        msg = ("request body sent without Content-Length; send it with a Content-Length "
               "header (a body of unknown size could exhaust the router's memory)")  # fmt: skip
        return json_reply(411, msg, type_="invalid_request_error", code="length_required",
                          pending=_routed(inc, None))  # fmt: skip

    def screen(self, inc: Incoming) -> Reply | None:
        """Before the body is read (`inc.body` empty): 411 for an LLM request of unknown
        size (chunked, no Content-Length: it could grow without bound in memory; every
        OpenAI SDK sends Content-Length), 413 for one announced over `max_request_bytes`;
        None to read the body as usual."""
        length = _header(inc, "content-length")
        if length is None and "chunked" in (_header(inc, "transfer-encoding") or ""):
            return self.length_required(inc)
        try:
            size = int(length or "0")
        except ValueError:
            return None
        return self.too_large(inc, size)

    def internal_error(self, pending: Pending, exc: Exception) -> Reply:
        """The 500 for a call the router itself failed on: an unfetched stream is closed,
        and the reply and the row name only the exception's type (its text could quote a
        key). Finishing the row gives back any budget hold, as no usage was billed."""
        if pending.token is not None:
            self.pipe.discard(pending.token)
            pending.token = None
        pending.kind = "routed"
        return internal_error_reply(pending, type(exc).__name__)

    async def handle(self, pending: Pending) -> Passthrough | Reply | ToPipe:
        """Route one LLM call opened by `begin`: what the adapter must do with the flow."""
        view = self.view  # one config version for the whole request
        inc = pending.incoming
        too_large = self.too_large(inc, len(inc.body), pending)  # a chunked body, seen whole
        if too_large is not None:
            return too_large
        path = inc.path.split("?", 1)[0]
        endpoint = _endpoint(inc)
        if endpoint is None:  # not opened by `begin`: no LLM call
            return Passthrough(None)
        try:
            parsed: ParsedBody | WireError = parse_request(inc.body)
        except WireError as e:
            parsed = e
        if isinstance(parsed, ParsedBody):  # the one read of `model`, for the ledger
            pending.requested_model = parsed.model
        if endpoint not in ROUTED_PATHS:
            pending.reasons.append(f"endpoint {endpoint} is not routed; forwarded as sent")
            return Passthrough(pending)
        if isinstance(parsed, WireError):
            pending.reasons.append(f"body not routable ({parsed}); forwarded as sent")
            pending.error = str(parsed)
            return Passthrough(pending)
        pending.kind = "routed"
        pending.stream = parsed.stream
        if view.config.settings.log_prompts != "off":
            pending.prompt = prompt_text(parsed.data)
        headers = {k.lower(): v for k, v in inc.headers}
        client_key = has_client_key(inc.headers)
        req = decide.RoutingRequest(
            features=classify.features(parsed.data, requested_model=parsed.model),
            host=inc.host,
            path=path,
            headers=headers,
            client_addr=inc.client_addr,
            client_key=client_key,
            client_name=inc.client_name,
            allowed_policies=_allowed_policies(view, inc.client_name),
        )
        res = view.config.settings.resilience
        now = time.monotonic()

        keyed = view.keyed(inc.host if client_key else None)
        breakers_get, cooldown = self.breakers.get, self.cooldown
        cooldown_s = res.breaker.cooldown_s

        def usable(c: catmod.Candidate) -> str | None:
            if c.provider not in keyed:
                return "no_key"
            st = breakers_get(c.key)
            if st is not None and not brk.available(st, now, cooldown_s):
                return "breaker_open"
            if cooldown and cooldown.get(c.key, 0.0) > now:
                return "rate_limited"
            return None

        # a few spare targets beyond max_attempts: a context-length failure skips ahead to
        # one with a larger window
        decision = decide.decide(view.router, req, usable, res.max_attempts + 4, keyed)
        if isinstance(decision, decide.NoRoute):
            kind = "invalid_request_error" if decision.status == 400 else "service_unavailable"
            return json_reply(decision.status, decision.message, type_=kind, code=decision.code,
                              pending=pending)  # fmt: skip
        gated = await budgetgate.gate(self.budgets, self.metrics, view.config.policies, view.router,
                                pending, req, decision, usable, res.max_attempts + 4)  # fmt: skip
        if isinstance(gated, Reply):
            return gated
        decision = gated
        pending.decision = decision
        pending.reasons.extend(decision.reasons)
        inject_usage = parsed.stream and not parsed.wants_usage
        plan = _Plan(
            decision.chain,
            lambda s: self._target(view, s, inc, parsed, endpoint, inject_usage),
        )
        features = req.features

        async def acquire(c: catmod.Candidate) -> bool:
            return await self._acquire(c) and await budgetgate.topup(
                self.budgets, pending, c, features
            )

        result = await self.engine.run(plan, on_outcome=self._on_outcome, acquire=acquire)
        for key in result.skipped:
            pending.reasons.append(f"skipped {key}: breaker half-open, probe in flight")
        pending.attempts = result.attempts
        return await self._answer(view, pending, result, decision, inject_usage)

    def _target(self, view: View, s: Scored, inc: Incoming, parsed: ParsedBody, endpoint: str,
                inject_usage: bool) -> Target:  # fmt: skip
        """The attempt at chain entry `s`: its URL, headers and rewritten body."""
        c = s.candidate
        prov = view.catalog.providers[c.provider]
        headers = outbound_headers(inc.headers, same_host=prov.host == inc.host,
                                   provider_headers=prov.headers,
                                   provider_key=view.keys.get(c.provider))  # fmt: skip
        body = rewrite(parsed, model=c.provider_model_id, include_usage=inject_usage)
        return Target(s, upstream_url(prov.base_url, endpoint, inc.path), headers, body,
                      parsed.stream)  # fmt: skip

    async def _acquire(self, c: catmod.Candidate) -> bool:
        """Claim the right to try `c` now; an open breaker past its cooldown lets exactly
        one request through as the half-open probe."""
        if self.breakers.get(c.key) is None:
            return True
        return await self.breakers.acquire(
            c.key, self.view.config.settings.resilience.breaker.cooldown_s
        )

    def _on_outcome(self, c: catmod.Candidate, outcome: Outcome, elapsed_ms: float) -> None:
        res = self.view.config.settings.resilience
        now = time.monotonic()
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            # never send this target another request sooner than it asked (or a short
            # backoff when it did not say)
            wait = outcome.retry_after if outcome.retry_after is not None else 1.0
            self.cooldown[c.key] = max(self.cooldown.get(c.key, 0.0), now + wait)
        if outcome.ok:
            self.latency.observe(c.key, elapsed_ms)
        if outcome.ok or outcome.counts_against_target:
            self.breakers.record(c.key, success=outcome.ok, threshold=res.breaker.failures)
        else:
            self.breakers.release(c.key)

    async def _answer(
        self,
        view: View,
        pending: Pending,
        result: EngineResult,
        decision: decide.RoutingDecision,
        inject_usage: bool,
    ) -> Reply | ToPipe:
        """Hand the answer to the adapter: a whole reply, or an open stream on the pipe."""
        reply = reply_for(result, request_id=pending.id, profile=decision.profile)
        pending.answered_by = reply.answered_by
        if reply.error is not None:
            pending.error = reply.error
        if reply.stream is None:
            return Reply(reply.status, reply.headers, reply.body, pending)
        report = StreamReport(keep_text=view.config.settings.log_prompts == "full")
        pending.report = report
        port = await self.pipe.ensure_started()
        pending.token = self.pipe.register(
            reply.stream,
            reply.status,
            reply.headers,
            strip_usage=inject_usage,
            stall_s=view.config.settings.resilience.stall_timeout_ms / 1000,
            report=report,
        )
        return ToPipe(port, pending.token, pending)

    # ------------------------------------------------------------------ record

    def failed(self, pending: Pending, *, status: int | None, error: str) -> LedgerRow:
        """The flow ended in mitmproxy's error hook: close a stream nobody fetched, and
        record the row (`client_abort` when the message says the client went away)."""
        if pending.token is not None:
            self.pipe.discard(pending.token)
        low = error.lower()
        gone = "client disconnected" in low or "connection closed by client" in low
        return self.finish(pending, status=status, body=None, error=error, client_abort=gone)

    def finish(
        self,
        pending: Pending,
        *,
        status: int | None,
        body: bytes | None,
        error: str | None = None,
        client_abort: bool = False,
    ) -> LedgerRow:
        """Build and queue the one ledger row for this request; settle its budget."""
        view = self.view
        row, usage = recording.build_row(view.catalog, view.config.settings, pending,
                                         status=status, body=body, error=error,
                                         client_abort=client_abort)  # fmt: skip
        budgetgate.settle(self.budgets, pending, usage, row.cost_usd)
        if self.ledger is not None:
            self.ledger.record(row)
        if self.metrics is not None:
            self.metrics.observe(row)
        # one line per request only at debug: every log record costs mitmproxy a hook
        # dispatch across all addons (~0.8 ms); the ledger has all of it anyway
        log.debug(
            "%s %s %s -> %s/%s status=%s outcome=%s attempts=%d tokens=%s/%s cost=%s %.0fms",
            row.id, row.profile or "-", row.requested_model, row.provider or "-",
            row.routed_model or "-", status, row.outcome, row.attempts, row.prompt_tokens,
            row.completion_tokens, "unpriced" if row.unpriced else row.cost_usd,
            row.latency_ms or 0,
        )  # fmt: skip
        return row


class _Plan(Sequence[Target]):
    """The chain's targets, each built (headers, rewritten body) only when it is tried."""

    def __init__(self, chain: Sequence[Scored], build: Callable[[Scored], Target]) -> None:
        self._chain = chain
        self._build = build
        self._built: dict[int, Target] = {}

    def __len__(self) -> int:
        return len(self._chain)

    @overload
    def __getitem__(self, i: int) -> Target: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Target]: ...
    def __getitem__(self, i: int | slice) -> Target | Sequence[Target]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i not in self._built:
            self._built[i] = self._build(self._chain[i])
        return self._built[i]


def _allowed_policies(view: View, name: str | None) -> frozenset[str] | None:
    c = next((c for c in view.config.settings.clients if c.name == name), None)
    return frozenset(c.policies) if c is not None and c.policies else None


def _header(inc: Incoming, name: str) -> str | None:
    """A request header's value, repeated ones joined as mitmproxy joins them; None if absent."""
    values = [v for k, v in inc.headers if k.lower() == name]
    return ", ".join(values) if values else None


def _endpoint(inc: Incoming) -> str | None:
    """The LLM endpoint (`/chat/completions`, ...) a POST is for; None if it is no LLM call."""
    if inc.method != "POST":
        return None
    path = inc.path.split("?", 1)[0]
    return next((p for p in LLM_PATHS if path.endswith(p)), None)


def _routed(inc: Incoming, pending: Pending | None) -> Pending:
    """The record of a call the router answers itself (`pending`, or a new one)."""
    if pending is None:
        pending = Pending(request_id(), time.monotonic(), inc, "routed")
    pending.kind = "routed"
    return pending
