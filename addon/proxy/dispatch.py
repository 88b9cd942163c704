"""One intercepted request, start to finish, in plain values (no mitmproxy types).

`Dispatcher.handle(Incoming)` decides, runs the attempt engine and returns what the
mitmproxy adapter must do: pass the request through untouched, answer it, or point it at
the loopback pipe for a live stream. `Dispatcher.finish(Pending, ...)` turns what happened
into exactly one ledger row.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload
from urllib.parse import urlsplit

from addon.config.loaded import Config
from addon.config.schema import LLM_PATHS, ROUTED_PATHS
from addon.proxy import budgetgate, clients, recording
from addon.proxy.exchange import (
    Incoming,
    Passthrough,
    Pending,
    Reply,
    ToPipe,
    json_reply,
    request_id,
)
from addon.proxy.metrics import Metrics
from addon.proxy.pipe import Pipe, StreamReport
from addon.proxy.upstream import HOP_BY_HOP, Engine, EngineResult, Target
from addon.routing import breaker as brk
from addon.routing import catalog as catmod
from addon.routing import classify, decide, ranking
from addon.routing.fallback import Outcome, OutcomeKind
from addon.routing.scoring import Scored
from addon.state import memory
from addon.store import benchmarks
from addon.store.ledgers import LedgerWriter
from addon.store.sqlite_ledger import LedgerRow
from addon.wire.chat import prompt_text
from addon.wire.failures import error_body
from addon.wire.request import ParsedBody, WireError, parse_request, rewrite
from addon.wire.usage import response_model

log = logging.getLogger("orchestrator")

CLIENT_KEY_HEADERS = ("authorization", "api-key", "x-api-key")
# Headers that identify the client's account at its own provider: never sent elsewhere.
ACCOUNT_HEADERS = ("openai-organization", "openai-project", "cookie")


@dataclass(frozen=True)
class View:
    """Everything derived from one config version; replaced whole on reload."""

    config: Config
    catalog: catmod.Catalog
    router: ranking.Router
    keys: Mapping[str, str] = field(repr=False)
    client_digests: Mapping[str, str] = field(default_factory=dict, repr=False)
    _keyed: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)

    def keyed(self, client_key_host: str | None) -> frozenset[str]:
        """Providers a request can be sent to with a key: keyless ones, ours (a configured
        key), and, when the client sent its own key, those at the host it meant it for."""
        host = client_key_host or ""
        got = self._keyed.get(host)
        if got is None:
            got = frozenset(
                name
                for name, p in self.catalog.providers.items()
                if p.keyless or name in self.keys or (host and p.host == host)
            )
            if len(self._keyed) > 256:  # hosts come from clients: keep the memo bounded
                self._keyed.clear()
            self._keyed[host] = got
        return got


def build_view(cfg: Config, env: Mapping[str, str], latency: Mapping[str, float]) -> View:
    rows, source, warnings = benchmarks.load_catalog_rows(cfg)
    catalog = catmod.build_catalog(cfg, rows, env, source, warnings)
    keys = {
        name: env[p.api_key_env]
        for name, p in cfg.settings.providers.items()
        if p.api_key_env and env.get(p.api_key_env)
    }
    return View(cfg, catalog, ranking.build_router(cfg, catalog, latency), keys,
                clients.key_digests(cfg.settings, env))  # fmt: skip


def intercepted(host: str, intercept: tuple[str, ...] | list[str]) -> bool:
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return any(entry in (host, bare) for entry in intercept)


class Dispatcher:
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
        self.engine.local_hosts = _local_hosts(view)
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
        pending = Pending(request_id(), time.monotonic(), inc, "routed")
        msg = (f"request body of {size} bytes is over max_request_bytes ({limit}); send a "
               "smaller request or raise `max_request_bytes` in orchestrator.yaml")  # fmt: skip
        return json_reply(413, msg, type_="invalid_request_error", code="request_too_large",
                          pending=pending)  # fmt: skip

    def length_required(self, inc: Incoming) -> Reply | None:
        """411 for an LLM request sent without Content-Length (chunked, size unknown)."""
        path = inc.path.split("?", 1)[0]
        if inc.method != "POST" or not path.endswith(LLM_PATHS):
            return None
        pending = Pending(request_id(), time.monotonic(), inc, "routed")
        msg = ("request body sent without Content-Length; send it with a Content-Length "
               "header (a body of unknown size could exhaust the router's memory)")  # fmt: skip
        return json_reply(411, msg, type_="invalid_request_error", code="length_required",
                          pending=pending)  # fmt: skip

    async def handle(self, inc: Incoming) -> Passthrough | Reply | ToPipe:
        view = self.view  # one config version for the whole request
        too_large = self.too_large(inc, len(inc.body))  # a chunked body, seen whole
        if too_large is not None:
            return too_large
        path = inc.path.split("?", 1)[0]
        endpoint = next((p for p in LLM_PATHS if path.endswith(p)), None)
        if inc.method != "POST" or endpoint is None:
            return Passthrough(None)
        pending = Pending(request_id(), time.monotonic(), inc, "unrouted")
        if endpoint not in ROUTED_PATHS:
            pending.reasons.append(f"endpoint {endpoint} is not routed; forwarded as sent")
            pending.requested_model = response_model(inc.body)
            return Passthrough(pending)
        try:
            parsed = parse_request(inc.body)
        except WireError as e:
            pending.reasons.append(f"body not routable ({e}); forwarded as sent")
            pending.error = str(e)
            return Passthrough(pending)
        pending.kind = "routed"
        pending.requested_model = parsed.model
        pending.stream = parsed.stream
        if view.config.settings.log_prompts != "off":
            pending.prompt = prompt_text(parsed.data)
        headers = {k.lower(): v for k, v in inc.headers}
        client_key = any(h in headers for h in CLIENT_KEY_HEADERS)
        req = decide.RoutingRequest(
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
            lambda s: self._target(view, s, inc, headers, parsed, endpoint, inject_usage),
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

    def _target(
        self,
        view: View,
        s: Scored,
        inc: Incoming,
        headers: Mapping[str, str],
        parsed: ParsedBody,
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
        body = rewrite(parsed, model=c.provider_model_id, include_usage=inject_usage)
        return Target(c, url, tuple(out), body, parsed.stream)

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
            error_body(
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


def _local_hosts(view: View) -> frozenset[str]:
    return frozenset(
        (urlsplit(p.base_url).hostname or "").lower()
        for p in view.config.settings.providers.values()
        if p.local
    )


def environ() -> Mapping[str, str]:
    return dict(os.environ)
