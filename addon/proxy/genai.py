"""One finished request in the OpenTelemetry GenAI semantic conventions: its spans and its
metric observations. Pure: built from the ledger row and the attempts, never from the
request or answer bodies — no prompt, completion, header value or key can reach them.

Spans: the request (SERVER, `{gen_ai.operation.name} {gen_ai.request.model}`, from when
the router got the request to when it finished, a stream's end included), and one CLIENT
span per upstream attempt (`{operation} {model sent}`, from the attempt's start until its
answer arrived: a stream's first event). The request span's parent is the client's span
when it sent a `traceparent` (`addon.proxy.tracecontext`). The router's own facts are
`orchestrator.*` attributes.

Metrics (attributes bounded by the config: operation, provider, served model, error type):
`gen_ai.server.request.duration`, `gen_ai.server.time_to_first_token` (s) and
`gen_ai.client.token.usage` (tokens, by `gen_ai.token.type`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from addon.proxy.metrics import served_model
from addon.proxy.otlp import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_SERVER,
    Attrs,
    AttrValue,
    Instrument,
    Span,
)
from addon.proxy.tracecontext import TraceContext
from addon.routing.catalog import ProviderInfo
from addon.routing.fallback import AttemptRecord
from addon.store.sqlite_ledger import LedgerRow

# gen_ai.operation.name per API (Messages and Responses are chat turns)
OPERATION = {"chat": "chat", "completions": "text_completion", "responses": "chat",
             "messages": "chat", "embeddings": "embeddings"}  # fmt: skip
FAILED = ("error", "truncated")  # outcomes whose request span has status ERROR
MAX_NAME = 128  # a client-chosen model name, in a span name: cut to this length

DURATION = Instrument(
    "gen_ai.server.request.duration", "s", "Time from the router receiving a GenAI request "
    "to its end, per served model and provider.",
    (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
)  # fmt: skip
TTFT = Instrument(
    "gen_ai.server.time_to_first_token", "s", "Time to the first answer event of a streamed "
    "GenAI request, per served model and provider.",
    (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
)  # fmt: skip
TOKENS = Instrument(
    "gen_ai.client.token.usage", "{token}", "Tokens used per GenAI request, by type "
    "(input, output), per served model and provider.",
    tuple(float(4**k) for k in range(13)),  # 1, 4, 16, … 16777216
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Finished:
    """What the exporter needs of one finished request, taken at `Dispatcher.finish`:
    its ledger row, its start (`Pending.started`, monotonic s), its attempts, the client's
    headers (read for `traceparent` only) and the providers of the config it ran under."""

    row: LedgerRow
    started: float
    attempts: tuple[AttemptRecord, ...]
    headers: tuple[tuple[str, str], ...]
    providers: Mapping[str, ProviderInfo]


def operation(row: LedgerRow) -> str:
    """The row's `gen_ai.operation.name`."""
    return OPERATION.get(row.api or "chat", "chat")


def error_type(row: LedgerRow, attempts: tuple[AttemptRecord, ...]) -> str | None:
    """`error.type` of a request that did not end well: its HTTP status (>= 400), else what
    its last attempt came to, else its outcome; None for a success."""
    if row.outcome in ("ok", "rescued", "cached", "unrouted") and not (row.status or 0) >= 400:
        return None
    if row.status is not None and row.status >= 400:
        return str(row.status)
    if row.outcome == "error" and attempts and not attempts[-1].outcome.ok:
        return attempts[-1].outcome.kind.value
    return row.outcome


def request_spans(f: Finished, ctx: TraceContext) -> list[Span]:
    """The request span and its attempts' spans, timed on the wall clock."""
    row = f.row
    latency_s = (row.latency_ms or 0.0) / 1000
    start_s = row.ts - latency_s
    op = operation(row)
    err = error_type(row, f.attempts)
    saved = (row.requested_cost_usd - row.cost_usd
             if row.requested_cost_usd is not None and row.cost_usd is not None else None)  # fmt: skip
    host, port = _split(row.host or "")
    attrs: list[tuple[str, AttrValue | None]] = [
        ("gen_ai.operation.name", op),
        ("gen_ai.provider.name", row.provider), ("gen_ai.system", row.provider),
        ("gen_ai.request.model", row.requested_model),
        ("gen_ai.response.model", row.routed_model),
        ("gen_ai.usage.input_tokens", row.prompt_tokens),
        ("gen_ai.usage.output_tokens", row.completion_tokens),
        ("gen_ai.usage.cache_read.input_tokens", row.cached_tokens),
        ("gen_ai.usage.cache_creation.input_tokens", row.cache_write_tokens),
        ("gen_ai.server.time_to_first_token",
         row.ttft_ms / 1000 if row.ttft_ms is not None else None),
        ("server.address", host), ("server.port", port),
        ("http.request.method", "POST"), ("url.path", row.path),
        ("http.response.status_code", row.status), ("error.type", err),
        ("orchestrator.request_id", row.id), ("orchestrator.api", row.api),
        ("orchestrator.profile", row.profile), ("orchestrator.policy", row.policy),
        ("orchestrator.provider", row.provider), ("orchestrator.attempts", row.attempts),
        ("orchestrator.outcome", row.outcome), ("orchestrator.stream", row.stream),
        ("orchestrator.client", row.client), ("orchestrator.cost_usd", row.cost_usd),
        ("orchestrator.saved_usd", saved),
        ("orchestrator.usage.reasoning_tokens", row.reasoning_tokens),
    ]  # fmt: skip
    asked = (row.requested_model or "")[:MAX_NAME]
    spans = [Span(ctx.trace_id, ctx.span_id, ctx.parent_span_id, f"{op} {asked}".strip(),
                  SPAN_KIND_SERVER, _ns(start_s), _ns(row.ts), _present(attrs),
                  err if row.outcome in FAILED else None)]  # fmt: skip
    for i, a in enumerate(f.attempts):
        a_start = start_s + (a.started - f.started)
        prov = f.providers.get(a.provider)
        a_host, a_port = _split(prov.host) if prov is not None else (None, None)
        a_err = None if a.outcome.ok else a.outcome.kind.value
        a_attrs: list[tuple[str, AttrValue | None]] = [
            ("gen_ai.operation.name", op),
            ("gen_ai.provider.name", a.provider), ("gen_ai.system", a.provider),
            ("gen_ai.request.model", a.model),
            ("server.address", a_host), ("server.port", a_port),
            ("http.response.status_code", a.outcome.status), ("error.type", a_err),
            ("orchestrator.attempt", i + 1), ("orchestrator.outcome", a.outcome.kind.value),
        ]  # fmt: skip
        spans.append(Span(ctx.trace_id, ctx.attempt_span_id(i), ctx.span_id,
                          f"{op} {a.model}"[:MAX_NAME + 20], SPAN_KIND_CLIENT, _ns(a_start),
                          _ns(a_start + a.elapsed_ms / 1000), _present(a_attrs), a_err))  # fmt: skip
    return spans


def observations(row: LedgerRow, attempts: tuple[AttemptRecord, ...]) -> list[
        tuple[Instrument, Attrs, float]]:  # fmt: skip
    """What the request adds to each histogram: (instrument, attributes, value)."""
    model = served_model(row)
    base: list[tuple[str, AttrValue | None]] = [
        ("gen_ai.operation.name", operation(row)), ("gen_ai.provider.name", row.provider),
        ("gen_ai.response.model", model if model != "-" else None),
    ]  # fmt: skip
    common = _present(base)
    out: list[tuple[Instrument, Attrs, float]] = []
    if row.latency_ms is not None:
        err = error_type(row, attempts)
        attrs = common if err is None else (*common, ("error.type", err))
        out.append((DURATION, attrs, row.latency_ms / 1000))
    if row.ttft_ms is not None:
        out.append((TTFT, common, row.ttft_ms / 1000))
    for kind, n in (("input", row.prompt_tokens), ("output", row.completion_tokens)):
        if n is not None:
            out.append((TOKENS, (*common, ("gen_ai.token.type", kind)), float(n)))
    return out


def _present(attrs: list[tuple[str, AttrValue | None]]) -> Attrs:
    return tuple((k, v) for k, v in attrs if v is not None)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _split(host: str) -> tuple[str | None, int | None]:
    """`host[:port]` (an IPv6 literal in brackets) as (host, port)."""
    if not host:
        return None, None
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and ":" not in name and port.isdigit():
        return name, int(port)
    return host, None
