"""One intercepted request, start to finish, in plain values (no mitmproxy types).

`Dispatcher.handle(Incoming)` decides, runs the attempt engine and returns what the
mitmproxy adapter must do: pass the request through untouched, answer it, or point it at
the loopback pipe for a live stream. `Dispatcher.finish(Pending, ...)` turns what happened
into exactly one ledger row. Every routed endpoint is handled the same way, in its own API's
terms (`addon.proxy.apis`): only providers that speak the request's API are candidates, a
Responses turn that continues stored state is pinned where that state lives
(`addon.proxy.responsestate`), and an embeddings request stays in one embedding space.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from addon.proxy import apis, budgetgate, followups, modellist, recording, responsestate, screens
from addon.proxy.balancing import Balancing
from addon.proxy.cachegate import CacheGate
from addon.proxy.eligible import eligible, embedding_space, state_filter
from addon.proxy.exchange import (
    Canned,
    Incoming,
    Passthrough,
    Pending,
    Reply,
    ToPipe,
    internal_error_reply,
    json_reply,
    request_id,
)
from addon.proxy.health import Health
from addon.proxy.metrics import Metrics
from addon.proxy.outbound import has_client_key
from addon.proxy.pipe import Pipe
from addon.proxy.plan import Plan, Shape, vector_check
from addon.proxy.ratelimitgate import RateLimitGate
from addon.proxy.replies import reply_for
from addon.proxy.rescue import Acquire
from addon.proxy.responsestate import Refusal
from addon.proxy.streamfacts import StreamReport, reader_for
from addon.proxy.telemetry import Telemetry
from addon.proxy.upstream import Engine, EngineResult
from addon.proxy.view import View, local_hosts
from addon.routing import catalog as catmod
from addon.routing import chains, decide
from addon.routing.scoring import Scored
from addon.state import memory
from addon.state.response_homes import LocalResponseHomes, ResponseHomes
from addon.store.ledgers import LedgerWriter
from addon.store.sqlite_ledger import LedgerRow
from addon.wire.request import ParsedBody, WireError, parse_request

log = logging.getLogger("orchestrator")


class Dispatcher(Health):
    """The request path: routing, the attempt engine, the pipe, and the ledger row of each
    call. Holds the config version in force (`view`) and the live state it routes by
    (target and provider breakers, latency, rate-limit cooldowns, budgets, Responses homes)."""

    def __init__(
        self,
        view: View,
        ledger: LedgerWriter | None,
        budgets: memory.Budgets | None = None,
        metrics: Metrics | None = None,
        *,
        breakers: memory.Breakers | None = None,
        latency: memory.Latency | None = None,
        homes: ResponseHomes | None = None,
        provider_breakers: memory.Breakers | None = None,
    ) -> None:
        self.view = view
        self.ledger = ledger
        self.budgets: memory.Budgets = budgets if budgets is not None else memory.LocalBudgets()
        self.metrics = metrics
        self.engine = Engine(view.config.settings.resilience)
        self.pipe = Pipe()
        self.breakers: memory.Breakers = (
            breakers if breakers is not None else memory.LocalBreakers()
        )
        self.provider_breakers: memory.Breakers = (
            provider_breakers if provider_breakers is not None else memory.LocalProviderBreakers()
        )
        self.latency: memory.Latency = latency if latency is not None else memory.LocalLatency()
        self.homes: ResponseHomes = homes if homes is not None else LocalResponseHomes()
        self.cooldown: dict[str, float] = {}  # candidate key -> monotonic time it may be retried
        self.dimensions: dict[str, int] = {}  # embedding model id -> the vector length it gave
        self.balancing = Balancing()  # deployments' order, calls in flight (`balance:`)
        self.cache = CacheGate()  # the response cache (`cache:`); no store: off
        self.limits = RateLimitGate()  # rpm/tpm per client, policy, provider (`limits:`)
        self.telemetry: Telemetry | None = None  # OpenTelemetry export (`telemetry:`); off
        self.swap(view)

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
        """The record of an LLM call (a POST to a routed endpoint), opened before any work so
        that every way the call ends, an internal error too, writes its one ledger row and
        gives back its budget hold. None for anything else: forwarded untouched, unrecorded."""
        ep = apis.endpoint(inc.method, inc.path)
        if ep is None:
            return None
        return Pending(request_id(), time.monotonic(), inc, "unrouted", endpoint=ep)

    async def own_answer(self, inc: Incoming) -> Canned | None:
        """The router's own answer to a request that is no LLM call: the model list for
        `GET …/models` (`addon.proxy.modellist`), a stored Responses answer's retrieve, items,
        delete or cancel sent to the provider that holds it (`addon.proxy.followups`), a 426
        for a WebSocket upgrade on a routed endpoint (`addon.proxy.screens`); None for the rest."""
        if modellist.is_listing(inc):
            return await modellist.answer(self.view, self.engine, inc)
        home = await followups.answer(self.view, self.engine, self.homes, inc, time.time())
        if home is not None:  # a call about a stored Responses answer, sent where it lives
            return home
        return screens.websocket_refused(inc)

    def too_large(self, inc: Incoming, size: int, pending: Pending | None = None) -> Reply | None:
        """413 (in the API's format) for an LLM request whose body is over `max_request_bytes`."""
        return screens.too_large(inc, size, self.view.config.settings.max_request_bytes, pending)

    def screen(self, inc: Incoming) -> Reply | None:
        """Before the body is read (`inc.body` empty): 411 for an LLM request of unknown
        size, 413 for one announced over `max_request_bytes` (`addon.proxy.screens`); None
        to read the body as usual."""
        return screens.screen(inc, self.view.config.settings.max_request_bytes)

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
        ep = pending.endpoint
        if ep is None:  # not opened by `begin`: no LLM call
            return Passthrough(None)
        plain = screens.decoded(inc, pending, view.config.settings.max_request_bytes)
        if isinstance(plain, Reply):
            return plain
        pending.incoming = inc = plain  # a compressed body, decoded (sent on as identity)
        try:
            parsed: ParsedBody | WireError = parse_request(inc.body)
        except WireError as e:
            parsed = e
        if isinstance(parsed, WireError):
            refused = screens.unreadable(inc, pending)  # JSON no API reads: 400, not forwarded
            if refused is not None:
                return refused
            pending.reasons.append(f"body not routable ({parsed}); forwarded as sent")
            pending.error = str(parsed)
            return Passthrough(pending)
        pending.requested_model = parsed.model  # the one read of `model`, for the ledger
        read = apis.read_request(ep, parsed, view.difficulty)  # learned complexity, if on
        space = (
            embedding_space(view.catalog, parsed.model, inc.host)
            if ep.api == "embeddings"
            else None
        )
        if isinstance(space, str):
            pending.reasons.append(space)
            return Passthrough(pending)
        pending.kind = "routed"
        features = read.features
        pending.stream = features.stream
        if view.config.settings.log_prompts != "off":
            pending.prompt = apis.prompt_text(ep.api, parsed.data)
        req = decide.RoutingRequest(
            features=features,
            host=inc.host,
            path=inc.path.split("?", 1)[0],
            headers={k.lower(): v for k, v in inc.headers},
            client_addr=inc.client_addr,
            client_key=has_client_key(inc.headers),
            client_name=inc.client_name,
            allowed_policies=_allowed_policies(view, inc.client_name),
            api=ep.api,
        )
        if isinstance(space, Refusal):
            return _refuse(space, pending)
        targets = space  # the embedding space, or None
        if read.responses is not None:
            pending.stored = read.responses.store is not False
        ok = await eligible(view, self.homes, inc, ep.api, features, read.responses, time.time())
        if isinstance(ok, Refusal):
            return _refuse(ok, pending)
        pending.reasons.extend(ok.reasons)
        allowed, pin = ok.allowed, ok.pin
        pending.pinned = pin.reason if pin is not None else None
        res = view.config.settings.resilience
        up, usable = state_filter(ok, self.breakers, self.provider_breakers, self.cooldown,
                                  time.monotonic(), res.breaker.cooldown_s)  # fmt: skip
        usable = self.limits.filter(view, usable, pending)  # providers at their limit

        def again(r: decide.RoutingRequest) -> decide.RoutingDecision | decide.NoRoute:
            # a few spare targets beyond max_attempts: a context-length failure skips ahead
            # to one with a larger window
            return decide.decide(view.router, r, usable, res.max_attempts + 4, allowed,
                                 speaking=ok.speaking, space=targets, diverse=True)  # fmt: skip

        decision = again(req)
        if isinstance(decision, decide.NoRoute):
            full = self.limits.no_room(pending, decision)  # left out for their limits
            if full is not None:  # 429, as for the client's own limit
                return full
            msg = decision.message if pin is None else f"{pin.reason}, but: {decision.message}"
            return _refuse(Refusal(decision.status, msg, decision.code), pending)
        limited = None if ep.count_tokens else await self.limits.admit(view, pending, req, decision)
        if limited is not None:  # 429: the client's or the policy's rpm/tpm (ratelimitgate)
            return limited
        if not ep.count_tokens:  # counting tokens is free: no budget
            gated = await budgetgate.gate(self.budgets, self.metrics, view.config.policies,
                                          pending, req, decision, again)  # fmt: skip
            if isinstance(gated, Reply):
                return gated
            decision = gated
        pending.decision = decision
        pending.reasons.extend(decision.reasons)
        readers = None
        if read.responses is not None and read.responses.encrypted_reasoning:
            readers = await responsestate.reasoning_readers(
                self.homes, responsestate.blobs_of(parsed.data), view.catalog.providers,
                inc.host, time.time())  # fmt: skip
        inject_usage = features.stream and not parsed.wants_usage and apis.injects_usage(ep.api)
        shape = Shape(inc, parsed, ep, inject_usage, features.stream and not ep.count_tokens,
                      readers, vector_check(read.embeddings, self.dimensions))  # fmt: skip
        shaped = chains.tried_order(decision.chain, decision.mode, up)
        shaped = self.balancing.order(view, shaped, self.latency, usable, pending.reasons)
        pending.reasons.extend(f"chain {line}" for line in shaped.lines())
        hit = await self.cache.lookup(view, pending, parsed.data, shaped.targets, self.pipe,
                                      inject_usage)  # fmt: skip
        if hit is not None:  # answered from the response cache: no attempt, no spend
            return hit
        plan = Plan(view, shaped.targets, shape, pending)

        async def acquire(c: catmod.Candidate) -> bool:
            if not await self._acquire(c):
                return False
            mark = len(pending.reasons)
            if not await budgetgate.topup(self.budgets, pending, c, features):
                why = pending.reasons.pop() if len(pending.reasons) > mark else "budget"
                plan.refusals[c.key] = why.removeprefix(f"skipped {c.key}: ")  # said once
            elif (limited := await self.limits.claim(view, pending, c, features)) is not None:
                plan.refusals[c.key] = limited  # its provider's rate limit
            else:
                return True
            self.breakers.release(c.key)  # give back any half-open probe just claimed
            self.provider_breakers.release(c.provider)
            return False

        # a stream's success is known at its clean end (the pipe says so), not at hand-off
        streaming = features.stream and not ep.count_tokens
        on_outcome = self._on_stream_outcome if streaming else self._on_outcome
        claim, told = self.balancing.track(pending.id, acquire, on_outcome, streaming)
        result = await self.engine.run(plan, on_outcome=told, acquire=claim,
                                       traceparent=self._trace(pending))  # fmt: skip
        self.cache.ran(pending, result, view)  # `x-orchestrator-cache: miss`; record the answer
        pending.reasons.extend(f"skipped {key}: {why}" for key, why in result.skipped)
        pending.attempts = result.attempts
        if not result.attempts and (full := self.limits.exhausted(pending)) is not None:
            return full  # nothing tried, some for their provider's limit: 429, not 503
        return await self._answer(view, pending, result, decision, inject_usage,
                                  tried=shaped.targets, acquire=claim)  # fmt: skip

    async def _answer(self, view: View, pending: Pending, result: EngineResult,
                      decision: decide.RoutingDecision, inject_usage: bool, *,
                      tried: Sequence[Scored], acquire: Acquire) -> Reply | ToPipe:  # fmt: skip
        """Hand the answer to the adapter: a whole reply, or an open stream on the pipe."""
        api = pending.api
        note = f"{pending.pinned}; not sent to another provider" if pending.pinned else None
        reply = reply_for(result, request_id=pending.id, profile=decision.profile, api=api,
                          note=note)  # fmt: skip
        pending.answered_by = reply.answered_by
        if reply.error is not None:
            pending.error = reply.error
        who = reply.answered_by.candidate if reply.answered_by is not None else None
        if who is not None and pending.stripped.get(who.provider):
            pending.reasons.append(f"stripped {pending.stripped[who.provider]} encrypted "
                                   f"reasoning item(s) {who.provider} cannot read")  # fmt: skip
        if reply.stream is None:
            if who is not None and api == "responses" and 200 <= reply.status < 300:
                facts = apis.answer_facts(api, reply.body)
                self._home(pending, who.provider, facts.response_id, facts.encrypted_reasoning)
            return Reply(reply.status, reply.headers, reply.body, pending)
        if who is not None and api == "responses":  # known before the client sees a byte
            self._home(pending, who.provider, responsestate.first_response_id(reply.stream.first))
        report = StreamReport(keep_text=view.config.settings.log_prompts == "full")
        pending.report = report
        port = await self.pipe.ensure_started()
        rescue = self.pipe.rescuer(view, pending, tried, reply.answered_by, inject_usage,
                                   engine=self.engine, on_outcome=self._on_stream_outcome,
                                   acquire=acquire, ended=self._stream_ended,
                                   trace=self._trace(pending))  # fmt: skip
        stall_s = view.config.settings.resilience.stall_timeout_ms / 1000
        pending.token = self.pipe.register(reply.stream, reply.status, reply.headers,
                                           strip_usage=inject_usage, stall_s=stall_s,
                                           report=report, reader=reader_for(api),
                                           rescue=rescue)  # fmt: skip
        return ToPipe(port, pending.token, pending)

    def _trace(self, pending: Pending) -> Callable[[int], str] | None:
        """What names attempt `n`'s span upstream, when spans are exported."""
        return self.telemetry.trace(pending).attempt_traceparent if self.telemetry else None

    def _home(self, pending: Pending, provider: str, response_id: str | None,
              blobs: tuple[str, ...] = ()) -> None:  # fmt: skip
        """A Responses answer from `provider`: its id and reasoning now live there."""
        responsestate.remember(self.homes, provider, time.time(), response_id=response_id,
                               stored=pending.stored, blobs=blobs)  # fmt: skip

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
        row, usage = self.cache.finished(pending, row, usage)  # a hit: cached, bills nothing
        budgetgate.settle(self.budgets, pending, usage, row.cost_usd)
        self.limits.finished(pending, usage)  # rate-limit holds become the real usage
        self.balancing.done(pending.id)
        r, s = pending.report, pending.answered_by
        if r is not None and s is not None and pending.api == "responses":
            self._home(pending, s.candidate.provider, r.response_id, r.encrypted_reasoning)
        if self.ledger is not None:
            self.ledger.record(row)
        if self.metrics is not None:
            self.metrics.observe(row, pending.api)
        if self.telemetry is not None:  # queued only: spans are built off the request path
            self.telemetry.record(row, pending, view.catalog.providers)
        recording.log_line(row, status)
        return row


def _refuse(r: Refusal, pending: Pending) -> Reply:
    """The router's refusal, in the API's format: the request's fault (400) or the router's
    state (503)."""
    kind = "invalid_request_error" if r.status == 400 else "service_unavailable"
    return json_reply(r.status, r.message, type_=kind, code=r.code, pending=pending)


def _allowed_policies(view: View, name: str | None) -> frozenset[str] | None:
    c = next((c for c in view.config.settings.clients if c.name == name), None)
    return frozenset(c.policies) if c is not None and c.policies else None
