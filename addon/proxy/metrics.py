"""Prometheus metrics, on a registry owned by the running proxy (no global state).

Labels carry names only (api, profile, model, provider, outcome, target): never keys,
prompts or client-chosen free text. `model` is the *served* model (the catalog's id of the
target that answered, "-" when nothing did), never the requested string, so every label's
values are bounded by the config: `orchestrator_request_latency_seconds` and
`orchestrator_ttft_seconds` are histograms per served model and provider, like the status
page's p50/p95.

Breakers: `orchestrator_breaker_state` (per target) and `orchestrator_provider_breaker_state`
(per provider) are read at scrape time; `orchestrator_provider_breaker_transitions` counts
each status change of a provider breaker that this replica's requests made (a change seen
from the fleet through Redis is counted by the replica that made it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from addon.routing.breaker import BreakerState, BreakerStatus
from addon.store.sqlite_ledger import LedgerRow

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class _Live(Collector):
    """Gauges read at scrape time from the proxy's state: the snapshot `Metrics.render` was
    given on this thread (taken on the event loop, which owns that state), else `read()`."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read
        self.given = threading.local()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = getattr(self.given, "state", None) or self.read()
        br = GaugeMetricFamily(
            "orchestrator_breaker_state",
            "Circuit breaker per target: 0 closed, 1 half-open, 2 open.",
            labels=["target"],
        )
        for b in state.get("breakers", []):
            br.add_metric([b["target"]], BREAKER_VALUE.get(b["state"], 0))
        yield br
        pbr = GaugeMetricFamily(
            "orchestrator_provider_breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        for b in state.get("provider_breakers", []):
            pbr.add_metric([b["provider"]], BREAKER_VALUE.get(b["state"], 0))
        yield pbr
        age = GaugeMetricFamily(
            "orchestrator_benchmark_db_age_seconds", "Age of the benchmark DB file in use."
        )
        if state.get("benchmarks_age_s") is not None:
            age.add_metric([], state["benchmarks_age_s"])
        yield age
        bud = GaugeMetricFamily(
            "orchestrator_budget_spend_ratio",
            "Spent plus in-flight share of each budget window.",
            labels=["budget", "scope"],
        )
        for b in state.get("budgets", []):
            bud.add_metric([b["rule"], b["scope"]], b["share"])
        yield bud


class Metrics:
    """The proxy's Prometheus metrics, on a registry of its own; live gauges are read from
    `read_state()` at scrape time."""

    def __init__(self, read_state: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "orchestrator_requests", "Intercepted LLM requests by API (chat, completions, "
            "responses, messages, embeddings), profile, served model, provider and outcome.",
            ["api", "profile", "model", "provider", "outcome"], registry=r,
        )  # fmt: skip
        self.api_requests = Counter(
            "orchestrator_api_requests", "Intercepted LLM requests by API (chat, completions, "
            "responses, messages, embeddings).", ["api", "provider", "outcome"], registry=r,
        )  # fmt: skip
        self.attempts = Counter(
            "orchestrator_attempts", "Upstream attempts.", ["provider", "model", "outcome"],
            registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "orchestrator_fallbacks", "Requests answered by a target other than the first.",
            ["profile"], registry=r,
        )  # fmt: skip
        self.rescues = Counter(
            "orchestrator_stream_rescues", "Streams that broke mid-answer and were finished "
            "on another target (ledger outcome `rescued`).", ["api", "provider"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "orchestrator_cost_usd", "Spend in USD (priced requests).", ["provider", "model"],
            registry=r,
        )  # fmt: skip
        self.unpriced = Counter(
            "orchestrator_unpriced_requests", "Requests whose cost is unknown.",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "orchestrator_tokens", "Tokens by kind.", ["kind", "provider", "model"], registry=r
        )
        self.latency = Histogram(
            "orchestrator_request_latency_seconds", "Total request latency through the router, "
            "per served model.", ["model", "provider"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "orchestrator_upstream_latency_seconds", "Latency of each upstream attempt.",
            ["provider"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "orchestrator_ttft_seconds", "Time to first token (streaming), per served model.",
            ["model", "provider"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "orchestrator_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.budget_alerts = Counter(
            "orchestrator_budget_alerts", "Budget alert thresholds crossed.", ["budget"],
            registry=r,
        )  # fmt: skip
        self.budget_blocks = Counter(
            "orchestrator_budget_blocked", "Requests refused or downgraded by a budget.",
            ["budget", "action"], registry=r,
        )  # fmt: skip
        self.provider_breaker_transitions = Counter(
            "orchestrator_provider_breaker_transitions",
            "Provider breaker status changes made by this replica, by the status entered.",
            ["provider", "to"], registry=r,
        )  # fmt: skip
        self.cache_lookups = Counter(
            "orchestrator_cache_lookups", "Response cache lookups by result (hit, miss, "
            "bypass: not cacheable or Cache-Control: no-store).", ["result"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(  # addon.proxy.ratelimitgate
            "orchestrator_rate_limited", "Requests refused (client, policy) or attempts skipped "
            "(provider) at a rate limit, by scope and name (client name or anonymous, policy, "
            "provider).", ["scope", "name"], registry=r,
        )  # fmt: skip
        self._live = _Live(read_state)
        r.register(self._live)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus_client validates and locks on
        every `labels()` call, and `observe` makes a dozen per request. Children live as
        long as their metric either way, so this adds no label set prometheus would not
        keep."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def provider_breaker_moved(
        self, provider: str, before: BreakerState | None, after: BreakerState | None
    ) -> None:
        """Count the transition of `provider`'s breaker from `before` to `after` (None:
        closed, no state), if its status changed."""
        old = before.status if before is not None else BreakerStatus.CLOSED
        new = after.status if after is not None else BreakerStatus.CLOSED
        if new is not old:
            self.provider_breaker_transitions.labels(provider, new.value).inc()

    def observe(self, row: LedgerRow, api: str | None = None) -> None:
        """Count one finished request of `api` from its ledger row."""
        model = served_model(row)
        provider = row.provider or "-"
        api = api or "-"
        child = self._child
        child(self.requests, api, row.profile or "-", model, provider, row.outcome).inc()
        child(self.api_requests, api, provider, row.outcome).inc()
        for a in row.attempt_log:
            child(self.attempts, a["provider"], a["model"], a["outcome"]).inc()
            if a.get("ms") is not None:
                child(self.upstream_latency, a["provider"]).observe(a["ms"] / 1000)
        if row.attempts > 1 and row.outcome == "ok":
            child(self.fallbacks, row.profile or "-").inc()
        if row.outcome == "rescued":
            child(self.rescues, api, provider).inc()
        if row.cost_usd is not None:
            child(self.cost, provider, model).inc(row.cost_usd)
        elif row.unpriced:
            child(self.unpriced, provider, model).inc()
        for kind, n in (
            ("prompt", row.prompt_tokens),
            ("completion", row.completion_tokens),
            ("cached", row.cached_tokens),
            ("reasoning", row.reasoning_tokens),
        ):
            if n:
                child(self.tokens, kind, provider, model).inc(n)
        if row.latency_ms is not None:
            child(self.latency, model, provider).observe(row.latency_ms / 1000)
        if row.ttft_ms is not None:
            child(self.ttft, model, provider).observe(row.ttft_ms / 1000)

    def render(self, live: dict[str, Any] | None = None) -> bytes:
        """The Prometheus text exposition of every metric. `live`: the live state taken on
        the event loop, for a render in a worker thread (which must not walk the breaker,
        budget and limit tables while the loop changes them)."""
        self._live.given.state = live
        try:
            return generate_latest(self.registry)
        finally:
            self._live.given.state = None


def served_model(row: LedgerRow) -> str:
    """The `model` label of a row: the catalog id of the target that answered (its last
    attempt's), "-" when no target answered. Never the requested string, which the client
    chooses freely."""
    if not row.provider:
        return "-"
    for a in reversed(row.attempt_log):
        if a.get("provider") == row.provider and a.get("model"):
            return str(a["model"])
    return "-"
