"""One intercepted request, start to finish, in plain values (no mitmproxy types).

`Dispatcher.handle(Incoming)` decides, runs the attempt engine and returns what the
mitmproxy adapter must do: pass the request through untouched, answer it, or point it at
the loopback pipe for a live stream. `Dispatcher.finish(Pending, ...)` turns what happened
into exactly one ledger row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from addon import breaker as brk
from addon import budget, budgetgate, classify, clients, configload, cost, routing, wire
from addon import catalog as catmod
from addon.config import LLM_PATHS, ROUTED_PATHS
from addon.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.ledger import Ledger, LedgerRow
from addon.metrics import Metrics
from addon.pipe import Pipe, StreamReport
from addon.scoring import Scored
from addon.upstream import HOP_BY_HOP, Engine, EngineResult, Target

log = logging.getLogger("orchestrator")

CLIENT_KEY_HEADERS = ("authorization", "api-key", "x-api-key")
# Headers that identify the client's account at its own provider: never sent elsewhere.
ACCOUNT_HEADERS = ("openai-organization", "openai-project", "cookie")
LATENCY_ALPHA = 0.3


@dataclass(frozen=True)
class Incoming:
    method: str
    host: str  # host[:port] the client addressed (default port omitted)
    path: str  # path with query
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client_addr: str
    reverse: bool = False
    client_name: str | None = None  # authenticated router client (`clients:`)

    @property
    def client(self) -> str:
        """The identity for the ledger, policies and budgets: the client's name if it
        authenticated, else its address."""
        return self.client_name or self.client_addr


@dataclass
class Pending:
    """What the ledger needs when the flow ends. Lives only in the addon, never in metadata."""

    id: str
    started: float
    incoming: Incoming
    kind: str  # routed | unrouted
    requested_model: str | None = None
    stream: bool = False
    decision: routing.RoutingDecision | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    answered_by: Scored | None = None
    report: StreamReport | None = None
    error: str | None = None
    reasons: list[str] = field(default_factory=list)
    token: str | None = None
    reservation: budget.Reservation | None = None
    prompt: str | None = None  # only with log_prompts: hash | full
    extra: list[budget.Reservation] = field(default_factory=list)  # top-ups for dearer fallbacks
    budget_scope: tuple[budget.BudgetRule, str] | None = None
    charge: tuple[budget.BudgetRule, str] | None = None  # downgraded call: count its spend


@dataclass(frozen=True)
class Passthrough:
    pending: Pending | None


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    pending: Pending


@dataclass(frozen=True)
class ToPipe:
    port: int
    token: str
    pending: Pending


@dataclass(frozen=True)
class View:
    """Everything derived from one config version; replaced whole on reload."""

    config: configload.Config
    catalog: catmod.Catalog
    router: routing.Router
    keys: Mapping[str, str] = field(repr=False)
    client_digests: Mapping[str, str] = field(default_factory=dict, repr=False)


def build_view(
    cfg: configload.Config, env: Mapping[str, str], latency: Mapping[str, float]
) -> View:
    rows, source, warnings = catmod.load_rows(cfg)
    catalog = catmod.build_catalog(cfg, rows, env, source, warnings)
    keys = {
        name: env[p.api_key_env]
        for name, p in cfg.settings.providers.items()
        if p.api_key_env and env.get(p.api_key_env)
    }
    return View(cfg, catalog, routing.build_router(cfg, catalog, latency), keys,
                clients.key_digests(cfg.settings, env))  # fmt: skip


def intercepted(host: str, intercept: tuple[str, ...] | list[str]) -> bool:
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return any(entry in (host, bare) for entry in intercept)


def _request_id() -> str:
    return "orq-" + secrets.token_hex(8)


class Dispatcher:
    def __init__(self, view: View, ledger: Ledger | None, budgets: budget.BudgetBook | None = None,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        self.view = view
        self.ledger = ledger
        self.budgets = budgets if budgets is not None else budget.BudgetBook()
        self.metrics = metrics
        self.engine = Engine(view.config.settings.resilience)
        self.engine.local_hosts = _local_hosts(view)
        self.engine.set_limits(
            {n: p.max_connections for n, p in view.config.settings.providers.items()}
        )
        self.pipe = Pipe()
        self.breakers: dict[str, brk.BreakerState] = {}
        self.cooldown: dict[str, float] = {}  # candidate key -> monotonic time it may be retried
        self.latency: dict[str, float] = {}
        self.latency_dirty = False

    def swap(self, view: View) -> None:
        self.view = view
        self.engine.resilience = view.config.settings.resilience
        self.engine.local_hosts = _local_hosts(view)
        self.engine.set_limits(
            {n: p.max_connections for n, p in view.config.settings.providers.items()}
        )

    async def close(self) -> None:
        await self.pipe.close()
        await self.engine.close()

    # ------------------------------------------------------------------ decide & attempt

    def too_large(self, inc: Incoming, size: int) -> Reply | None:
        """413 in OpenAI format for an LLM request whose body is over `max_request_bytes`."""
        limit = self.view.config.settings.max_request_bytes
        path = inc.path.split("?", 1)[0]
        if size <= limit or inc.method != "POST" or not path.endswith(LLM_PATHS):
            return None
        pending = Pending(_request_id(), time.monotonic(), inc, "routed")
        msg = (f"request body of {size} bytes is over max_request_bytes ({limit}); send a "
               "smaller request or raise `max_request_bytes` in orchestrator.yaml")  # fmt: skip
        pending.error = msg
        pending.reasons.append(msg)
        return Reply(413, [("content-type", "application/json"),
                           ("x-orchestrator-request-id", pending.id)],
                     wire.error_body(msg, type_="invalid_request_error",
                                     code="request_too_large"), pending)  # fmt: skip

    async def handle(self, inc: Incoming) -> Passthrough | Reply | ToPipe:
        view = self.view  # one config version for the whole request
        too_large = self.too_large(inc, len(inc.body))  # a chunked body, seen whole
        if too_large is not None:
            return too_large
        path = inc.path.split("?", 1)[0]
        endpoint = next((p for p in LLM_PATHS if path.endswith(p)), None)
        if inc.method != "POST" or endpoint is None:
            return Passthrough(None)
        pending = Pending(_request_id(), time.monotonic(), inc, "unrouted")
        if endpoint not in ROUTED_PATHS:
            pending.reasons.append(f"endpoint {endpoint} is not routed; forwarded as sent")
            pending.requested_model = wire.response_model(inc.body)
            return Passthrough(pending)
        try:
            parsed = wire.parse_request(inc.body)
        except wire.WireError as e:
            pending.reasons.append(f"body not routable ({e}); forwarded as sent")
            pending.error = str(e)
            return Passthrough(pending)
        pending.kind = "routed"
        pending.requested_model = parsed.model
        pending.stream = parsed.stream
        if view.config.settings.log_prompts != "off":
            pending.prompt = wire.prompt_text(parsed.data)
        headers = {k.lower(): v for k, v in inc.headers}
        client_key = any(h in headers for h in CLIENT_KEY_HEADERS)
        req = routing.RoutingRequest(
            features=classify.features(parsed.data),
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

        def usable(c: catmod.Candidate) -> str | None:
            prov = view.catalog.providers[c.provider]
            if not (
                prov.keyless or c.provider in view.keys or (client_key and prov.host == inc.host)
            ):
                return "no_key"
            state = self.breakers.get(c.key)
            if state is not None and not brk.available(state, now, res.breaker.cooldown_s):
                return "breaker_open"
            if self.cooldown.get(c.key, 0.0) > now:
                return "rate_limited"
            return None

        # a few spare targets beyond max_attempts: a context-length failure skips ahead to
        # one with a larger window
        keyed = frozenset(
            name for name, p in view.catalog.providers.items()
            if p.keyless or name in view.keys or (client_key and p.host == inc.host)
        )  # fmt: skip
        decision = routing.decide(view.router, req, usable, res.max_attempts + 4, keyed)
        if isinstance(decision, routing.NoRoute):
            pending.error = decision.message
            pending.reasons.append(decision.message)
            return Reply(
                decision.status,
                [("content-type", "application/json"), ("x-orchestrator-request-id", pending.id)],
                wire.error_body(
                    decision.message,
                    type_="invalid_request_error"
                    if decision.status == 400
                    else "service_unavailable",
                    code=decision.code,
                ),
                pending,
            )
        gated = self._budget_gate(view, pending, req, decision, usable, res.max_attempts + 4)
        if isinstance(gated, Reply):
            return gated
        decision = gated
        pending.decision = decision
        pending.reasons.extend(decision.reasons)
        inject_usage = parsed.stream and not parsed.wants_usage
        plan = [
            self._target(view, s, inc, headers, parsed, endpoint, inject_usage)
            for s in decision.chain
        ]
        features = req.features

        def acquire(c: catmod.Candidate) -> bool:
            return self._acquire(c) and self._topup(pending, c, features)

        result = await self.engine.run(plan, on_outcome=self._on_outcome, acquire=acquire)
        for key in result.skipped:
            pending.reasons.append(f"skipped {key}: breaker half-open, probe in flight")
        pending.attempts = result.attempts
        return await self._answer(view, pending, result, decision, inject_usage)

    def _budget_gate(
        self,
        view: View,
        pending: Pending,
        req: routing.RoutingRequest,
        decision: routing.RoutingDecision,
        usable: Callable[[catmod.Candidate], str | None],
        max_chain: int,
    ) -> routing.RoutingDecision | Reply:
        """Reserve the call's maximum cost against its policy's budget, or refuse / downgrade."""
        policy = next((p for p in view.config.policies if p.name == decision.policy), None)
        rule = budgetgate.rule_of(policy) if policy else None
        if rule is None:
            return decision
        now = time.time()
        key = budget.scope_key(rule, req.client_name or req.client_addr, rule.name,
                               decision.profile)  # fmt: skip
        # reserve for the first target; a fallback to a dearer one tops the hold up first
        # (see _topup), so the settled spend can never pass the budget
        first = budgetgate.estimate(decision.chain[:1], req.features)
        held = self.budgets.reserve(rule, key, first, now)
        if isinstance(held, budget.Reservation):
            pending.reservation = held
            pending.budget_scope = (rule, key)
            return decision
        down = rule.downgrade_to
        if self.metrics is not None:
            self.metrics.budget_blocks.labels(rule.name, "downgrade" if down else "block").inc()
        if down is None:
            pending.error = held.message
            pending.reasons.append(held.message)
            return Reply(
                429,
                [("content-type", "application/json"), ("retry-after", str(held.retry_after_s)),
                 ("x-orchestrator-request-id", pending.id)],
                wire.error_body(held.message, type_="budget_exceeded", code=held.code),
                pending,
            )  # fmt: skip
        forced = replace(req, headers={**req.headers, routing.PROFILE_HEADER: down})
        again = routing.decide(view.router, forced, usable, max_chain)
        if isinstance(again, routing.NoRoute):
            pending.error = again.message
            return Reply(again.status, [("content-type", "application/json")],
                         wire.error_body(again.message, type_="invalid_request_error",
                                         code=again.code), pending)  # fmt: skip
        pending.charge = (rule, key)
        pending.reasons.append(f"{held.message}: downgraded to profile {down}")
        return replace(again, policy=decision.policy, profile_reason=f"budget {rule.name} "
                       f"exceeded: downgraded from {decision.profile}")  # fmt: skip

    def _target(
        self,
        view: View,
        s: Scored,
        inc: Incoming,
        headers: Mapping[str, str],
        parsed: wire.ParsedBody,
        endpoint: str,
        inject_usage: bool,
    ) -> Target:
        c = s.candidate
        prov = view.catalog.providers[c.provider]
        same_host = prov.host == inc.host
        out: list[tuple[str, str]] = []
        for k, v in inc.headers:
            lk = k.lower()
            if lk in HOP_BY_HOP or lk in CLIENT_KEY_HEADERS or lk.startswith("x-orchestrator-"):
                continue
            if lk in ACCOUNT_HEADERS and not same_host:
                continue
            out.append((k, v))
        out.extend(prov.headers)
        if same_host and any(h in headers for h in CLIENT_KEY_HEADERS):
            out.extend((k, v) for k, v in inc.headers if k.lower() in CLIENT_KEY_HEADERS)
        elif c.provider in view.keys:
            out.append(("Authorization", f"Bearer {view.keys[c.provider]}"))
        out.append(("Accept-Encoding", "identity"))
        query = inc.path.split("?", 1)[1] if "?" in inc.path else ""
        url = prov.base_url + endpoint + (f"?{query}" if query else "")
        body = wire.rewrite(parsed, model=c.provider_model_id, include_usage=inject_usage)
        return Target(c, url, tuple(out), body, parsed.stream)

    def _acquire(self, c: catmod.Candidate) -> bool:
        """Claim the right to try `c` now; an open breaker past its cooldown lets exactly
        one request through as the half-open probe."""
        res = self.view.config.settings.resilience
        state = self.breakers.get(c.key)
        if state is None:
            return True
        ok, new = brk.acquire(state, time.monotonic(), res.breaker.cooldown_s)
        if new is not state:
            if new.status is not state.status:
                log.warning(
                    "breaker %s: %s -> %s (probe)", c.key, state.status.value, new.status.value
                )
            self.breakers[c.key] = new
        return ok

    def _on_outcome(self, c: catmod.Candidate, outcome: Outcome, elapsed_ms: float) -> None:
        res = self.view.config.settings.resilience
        now = time.monotonic()
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            # never send this target another request sooner than it asked (or a short
            # backoff when it did not say)
            wait = outcome.retry_after if outcome.retry_after is not None else 1.0
            self.cooldown[c.key] = max(self.cooldown.get(c.key, 0.0), now + wait)
        if outcome.ok:
            prev = self.latency.get(c.key)
            self.latency[c.key] = (
                elapsed_ms
                if prev is None
                else (LATENCY_ALPHA * elapsed_ms + (1 - LATENCY_ALPHA) * prev)
            )
            self.latency_dirty = True
        state = self.breakers.get(c.key, brk.CLOSED)
        if outcome.ok or outcome.counts_against_target:
            new = brk.record(state, success=outcome.ok, now=now, threshold=res.breaker.failures)
            if new.status is not state.status:
                log.warning("breaker %s: %s -> %s", c.key, state.status.value, new.status.value)
            self.breakers[c.key] = new
        elif state.probing:
            self.breakers[c.key] = brk.release(state)

    async def _answer(
        self,
        view: View,
        pending: Pending,
        result: EngineResult,
        decision: routing.RoutingDecision,
        inject_usage: bool,
    ) -> Reply | ToPipe:
        extra = [
            ("x-orchestrator-profile", decision.profile),
            ("x-orchestrator-attempts", str(len(result.attempts))),
            ("x-orchestrator-request-id", pending.id),
        ]
        ans = result.answer
        if ans is not None:
            chosen = next(s for s in decision.chain if s.candidate.key == ans.target.candidate.key)
            pending.answered_by = chosen
            extra = [
                ("x-orchestrator-model", chosen.candidate.provider_model_id),
                ("x-orchestrator-provider", chosen.candidate.provider),
                *extra,
            ]
            if ans.stream is not None:
                report = StreamReport(keep_text=view.config.settings.log_prompts == "full")
                pending.report = report
                port = await self.pipe.ensure_started()
                token = self.pipe.register(
                    ans.stream,
                    ans.status,
                    [*ans.headers, *extra],
                    strip_usage=inject_usage,
                    stall_s=view.config.settings.resilience.stall_timeout_ms / 1000,
                    report=report,
                )
                pending.token = token
                return ToPipe(port, token, pending)
            return Reply(ans.status, [*ans.headers, *extra], ans.body, pending)
        # every attempt failed
        last = result.last
        failed = result.failed_answer
        if (
            failed is not None
            and last is not None
            and last.kind
            in (OutcomeKind.CLIENT_ERROR, OutcomeKind.CONTENT_POLICY, OutcomeKind.CONTEXT_TOO_LONG)
        ):
            pending.answered_by = next(
                s for s in decision.chain if s.candidate.key == failed.target.candidate.key
            )
            pending.error = last.message
            return Reply(failed.status, [*failed.headers, *extra], failed.body, pending)
        status = (
            last.status
            if last and last.status
            else 504
            if last and last.kind is OutcomeKind.TIMEOUT
            else 502
        )
        attempts = [
            {
                "provider": a.provider,
                "model": a.model,
                "outcome": a.outcome.kind.value,
                "status": a.outcome.status,
                "message": a.outcome.message,
            }
            for a in result.attempts
        ]
        msg = (
            f"all {len(attempts)} upstream attempts failed; last: "
            f"{attempts[-1]['provider']}/{attempts[-1]['model']} "
            f"{last.kind.value if last else '?'}"
            f"{f' {last.status}' if last and last.status else ''}: {last.message if last else ''}"
        )
        pending.error = msg
        headers = [("content-type", "application/json"), *extra]
        if last and last.retry_after is not None:
            headers.append(("retry-after", str(int(last.retry_after + 0.999))))
        return Reply(
            status,
            headers,
            wire.error_body(
                msg,
                type_="upstream_error",
                code="all_attempts_failed",
                extra={"attempts": attempts},
            ),
            pending,
        )

    # ------------------------------------------------------------------ record

    def finish(
        self,
        pending: Pending,
        *,
        status: int | None,
        body: bytes | None,
        error: str | None = None,
        client_abort: bool = False,
    ) -> LedgerRow:
        """Build and queue the one ledger row for this request."""
        inc = pending.incoming
        now = time.monotonic()
        s = pending.answered_by
        usage: wire.Usage | None = None
        ttft = None
        outcome = "unrouted" if pending.kind == "unrouted" else "ok"
        report = pending.report
        routed_model = s.candidate.provider_model_id if s else None
        if report is not None:
            usage = report.usage
            if report.first_event_at is not None:
                ttft = (report.first_event_at - pending.started) * 1000
            if report.model:
                routed_model = report.model
            if report.malformed:
                pending.reasons.append(f"dropped {report.malformed} malformed SSE event(s)")
            if report.outcome == "ok" and not report.saw_done:
                pending.reasons.append("upstream ended the stream without [DONE]")
            if report.outcome in ("truncated", "client_abort"):
                outcome = report.outcome
                error = report.error or error
        elif body is not None:
            usage = wire.usage_from_json(body)
            routed_model = wire.response_model(body) or routed_model
        if client_abort and outcome == "ok":
            outcome = "client_abort"
        if (
            pending.kind == "routed"
            and outcome == "ok"
            and (status is None or status >= 400 or error or pending.error)
        ):
            outcome = "error"
        usd = requested_usd = None
        unpriced = False
        view = self.view
        if usage is not None:
            price = s.candidate.price if s else None
            if price is None and pending.kind == "unrouted" and pending.requested_model:
                found = view.catalog.lookup(pending.requested_model)
                same = [c for c in found if view.catalog.providers[c.provider].host == inc.host]
                price = (same or list(found))[0].price if found else None
            usd = cost.cost(usage, price) if price is not None else None
            unpriced = usd is None
            req_c = pending.decision.requested if pending.decision else None
            if req_c is not None:
                requested_usd = cost.cost(usage, req_c.price)
        d = pending.decision
        row = LedgerRow(
            id=pending.id,
            ts=time.time(),
            outcome=outcome,
            client=inc.client,
            host=inc.host,
            path=inc.path.split("?", 1)[0],
            profile=d.profile if d else None,
            profile_reason=d.profile_reason if d else None,
            policy=d.policy if d else None,
            requested_model=pending.requested_model,
            routed_model=routed_model,
            provider=s.candidate.provider if s else None,
            attempts=len(pending.attempts),
            attempt_log=[
                {
                    "provider": a.provider,
                    "model": a.model,
                    "outcome": a.outcome.kind.value,
                    "status": a.outcome.status,
                    "ms": a.elapsed_ms,
                    "message": a.outcome.message[:300],
                }
                for a in pending.attempts
            ],
            status=status,
            stream=pending.stream,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
            reasoning_tokens=usage.reasoning_tokens if usage else None,
            cost_usd=usd,
            unpriced=unpriced,
            requested_cost_usd=requested_usd,
            ttft_ms=round(ttft, 1) if ttft is not None else None,
            latency_ms=round((now - pending.started) * 1000, 1),
            reasons=pending.reasons,
            **self._prompt_columns(pending, body),
            error=error or pending.error,
        )
        self._settle_budget(pending, usage, usd)
        if self.ledger is not None:
            self.ledger.record(row)
        if self.metrics is not None:
            self.metrics.observe(row)
        log.info(
            "%s %s %s -> %s/%s status=%s outcome=%s attempts=%d tokens=%s/%s cost=%s %.0fms",
            row.id,
            row.profile or "-",
            row.requested_model,
            row.provider or "-",
            row.routed_model or "-",
            status,
            outcome,
            row.attempts,
            row.prompt_tokens,
            row.completion_tokens,
            "unpriced" if unpriced else row.cost_usd,
            row.latency_ms or 0,
        )
        return row

    def _topup(
        self, pending: Pending, c: catmod.Candidate, features: classify.RequestFeatures
    ) -> bool:
        """Before trying `c` under a budget: make the hold cover `c`'s maximum cost."""
        if pending.reservation is None or pending.budget_scope is None:
            return True
        need = budgetgate.estimate([c], features)
        have = pending.reservation.amount + sum(r.amount for r in pending.extra)
        if need <= have:
            return True
        rule, key = pending.budget_scope
        more = self.budgets.reserve(rule, key, need - have, time.time())
        if isinstance(more, budget.Exceeded):
            pending.reasons.append(f"skipped {c.key}: {more.message}")
            return False
        pending.extra.append(more)
        return True

    def _prompt_columns(self, pending: Pending, body: bytes | None) -> dict[str, str | None]:
        """Prompt and completion text only when `log_prompts` opts in (README: Security)."""
        mode = self.view.config.settings.log_prompts
        if mode == "off" or pending.prompt is None:
            return {}
        out: dict[str, str | None] = {
            "prompt_sha256": hashlib.sha256(pending.prompt.encode()).hexdigest()
        }
        if mode == "full":
            out["prompt"] = pending.prompt
            r = pending.report
            out["completion"] = (
                "".join(r.text)
                if r is not None
                else (wire.answer_text(body) if body is not None else None)
            )
        return out

    def _settle_budget(self, pending: Pending, usage: wire.Usage | None, usd: float | None) -> None:
        now = time.time()
        if pending.charge is not None and usd is not None:
            budgetgate.charge(self.budgets, *pending.charge, usd, now)
        for extra in pending.extra:  # the actual cost is charged once, to the first hold
            self.budgets.release(extra)
        r = pending.reservation
        if r is None:
            return
        if usage is None:  # nothing was billed: give the reservation back
            self.budgets.release(r)
            return
        for alert in self.budgets.settle(r, usd, now):
            log.warning("%s", alert.message)
            if self.metrics is not None:
                self.metrics.budget_alerts.labels(alert.rule).inc()


def _allowed_policies(view: View, name: str | None) -> frozenset[str] | None:
    c = next((c for c in view.config.settings.clients if c.name == name), None)
    return frozenset(c.policies) if c is not None and c.policies else None


def _local_hosts(view: View) -> frozenset[str]:
    return frozenset(
        (urlsplit(p.base_url).hostname or "").lower()
        for p in view.config.settings.providers.values()
        if p.local
    )


def environ() -> Mapping[str, str]:
    return dict(os.environ)
