"""OpenTelemetry's pure parts: W3C trace context (`addon.proxy.tracecontext`), the OTLP/HTTP
JSON encoding (`addon.proxy.otlp`) and one request's GenAI spans and metric observations
(`addon.proxy.genai`). No sockets, no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from addon.proxy import genai, otlp, tracecontext
from addon.proxy.tracecontext import TraceParent
from addon.routing.catalog import ProviderInfo
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.store.sqlite_ledger import LedgerRow

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"

# --------------------------------------------------------------------------- trace context


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (f"00-{TID}-{SID}-01", TraceParent(TID, SID, True)),
        (f"00-{TID}-{SID}-00", TraceParent(TID, SID, False)),
        (f"00-{TID}-{SID}-03", TraceParent(TID, SID, True)),  # other flag bits: still sampled
        (f"  00-{TID}-{SID}-01 ", TraceParent(TID, SID, True)),  # surrounding blanks
        (f"01-{TID}-{SID}-01-extra", TraceParent(TID, SID, True)),  # a later version's tail
        (f"00-{TID}-{SID}-01-extra", None),  # version 00 is exactly 55 characters
        (f"ff-{TID}-{SID}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{SID}-01", None),  # all-zero trace id
        (f"00-{TID}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TID.upper()}-{SID}-01", None),  # upper-case hex
        (f"00-{TID[:-1]}-{SID}-01", None),  # short trace id
        (f"00_{TID}_{SID}_01", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_parse_traceparent(header: str, want: TraceParent | None) -> None:
    assert tracecontext.parse_traceparent(header) == want


def test_incoming_parent_reads_the_first_traceparent_any_case() -> None:
    headers = (("Content-Type", "application/json"), ("TraceParent", f"00-{TID}-{SID}-01"),
               ("traceparent", f"00-{TID}-{'1' * 16}-01"))  # fmt: skip
    assert tracecontext.incoming_parent(headers) == TraceParent(TID, SID, True)
    assert tracecontext.incoming_parent((("x", "y"),)) is None


def test_context_continues_the_parent_and_derives_stable_ids() -> None:
    ctx = tracecontext.context("orq-0123456789abcdef", TraceParent(TID, SID, False), 1.0)
    assert (ctx.trace_id, ctx.parent_span_id, ctx.sampled) == (TID, SID, False)  # parent decides
    again = tracecontext.context("orq-0123456789abcdef", None, 1.0)
    assert again.span_id == ctx.span_id and again.parent_span_id is None and again.sampled
    assert again.trace_id != TID and len(again.trace_id) == 32
    other = tracecontext.context("orq-fedcba9876543210", None, 1.0)
    assert len({ctx.span_id, other.span_id, ctx.attempt_span_id(0), ctx.attempt_span_id(1)}) == 4
    assert ctx.attempt_traceparent(1) == f"00-{TID}-{ctx.attempt_span_id(1)}-00"
    assert tracecontext.parse_traceparent(again.attempt_traceparent(0)) == TraceParent(
        again.trace_id, again.attempt_span_id(0), True
    )


@pytest.mark.parametrize(
    ("low64", "ratio", "kept"),
    [
        ("0" * 16, 0.0, False),
        ("0" * 15 + "1", 0.0, False),
        ("f" * 16, 1.0, True),
        ("7" + "f" * 15, 0.5, True),
        ("8" + "0" * 15, 0.5, False),
        ("0" * 16, 0.001, True),
    ],
)
def test_root_sampling_by_trace_id(low64: str, ratio: float, kept: bool) -> None:
    assert tracecontext.root_sampled("a" * 16 + low64, ratio) is kept


def test_root_sampling_keeps_about_the_ratio() -> None:
    kept = sum(tracecontext.context(f"orq-{i:016x}", None, 0.25).sampled for i in range(4000))
    assert 800 < kept < 1200


# --------------------------------------------------------------------------- OTLP JSON


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("x", {"stringValue": "x"}),
        (True, {"boolValue": True}),
        (False, {"boolValue": False}),
        (12, {"intValue": "12"}),  # int64 as a decimal string
        (2**62, {"intValue": str(2**62)}),
        (0.25, {"doubleValue": 0.25}),
        (float("inf"), {"doubleValue": "inf"}),
    ],
)
def test_any_value(value: otlp.AttrValue, want: dict[str, Any]) -> None:
    assert otlp.any_value(value) == want


def test_attributes_leave_out_none() -> None:
    assert otlp.attributes([("a", 1), ("b", None), ("c", "x")]) == [
        {"key": "a", "value": {"intValue": "1"}}, {"key": "c", "value": {"stringValue": "x"}}]  # fmt: skip


def test_traces_request_shape() -> None:
    span = otlp.Span(TID, SID, "1" * 16, "chat m", otlp.SPAN_KIND_SERVER, 10**18, 10**18 + 5,
                     (("k", "v"),), error="500")  # fmt: skip
    root = otlp.Span(TID, "2" * 16, None, "chat m", otlp.SPAN_KIND_CLIENT, 7, 3, ())
    res = otlp.resource("svc", "1.2")
    body = json.loads(json.dumps(otlp.traces_request(res, "1.2", [span, root])))
    (rs,) = body["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": "svc"}} in rs["resource"]["attributes"]
    (ss,) = rs["scopeSpans"]
    assert ss["scope"] == {"name": "local-ai-orchestrator", "version": "1.2"}
    a, b = ss["spans"]
    assert a == {"traceId": TID, "spanId": SID, "parentSpanId": "1" * 16, "name": "chat m",
                 "kind": 2, "startTimeUnixNano": str(10**18), "endTimeUnixNano": str(10**18 + 5),
                 "attributes": [{"key": "k", "value": {"stringValue": "v"}}],
                 "status": {"code": 2, "message": "500"}}  # fmt: skip
    assert "parentSpanId" not in b and "status" not in b and b["kind"] == 3
    assert b["endTimeUnixNano"] == "7"  # never before its start


def test_histograms_cumulative_buckets_and_json() -> None:
    inst = otlp.Instrument("h", "s", "d", (1.0, 2.0))
    h = otlp.Histograms(start_ns=5)
    for v in (0.5, 1.0, 1.5, 3.0):  # a value on a bound is in the bucket it closes
        h.observe(inst, (("m", "a"),), v)
    h.observe(inst, (("m", "b"),), 2.0)
    body = h.request(otlp.resource("svc", "1"), "1", now_ns=9)
    ((metric,),) = [sm["metrics"] for rm in body["resourceMetrics"] for sm in rm["scopeMetrics"]]
    assert metric["name"] == "h" and metric["unit"] == "s"
    hist = metric["histogram"]
    assert hist["aggregationTemporality"] == 2
    a, b = hist["dataPoints"]
    assert a == {"attributes": [{"key": "m", "value": {"stringValue": "a"}}],
                 "startTimeUnixNano": "5", "timeUnixNano": "9", "count": "4", "sum": 6.0,
                 "bucketCounts": ["2", "1", "1"], "explicitBounds": [1.0, 2.0],
                 "min": 0.5, "max": 3.0}  # fmt: skip
    assert b["bucketCounts"] == ["0", "1", "0"] and b["count"] == "1"


# --------------------------------------------------------------------------- GenAI


def _attempt(provider: str, model: str, kind: OutcomeKind, status: int | None, at: float,
             ms: float) -> AttemptRecord:  # fmt: skip
    return AttemptRecord(provider, model, Outcome(kind, status, "Incorrect API key sk-abc"), at, ms)


PROVIDERS = {
    "beta": ProviderInfo("beta", "https://beta.example:8443/v1", "beta.example:8443", "K", True,
                         False),
    "alpha": ProviderInfo("alpha", "https://alpha.example/v1", "alpha.example", "K", True, False),
}  # fmt: skip


def _finished(**row: Any) -> genai.Finished:
    base: dict[str, Any] = dict(
        id="orq-00000000000000aa", ts=1000.0, outcome="ok", client="app", host="api.openai.com",
        path="/v1/chat/completions", profile="balanced", policy="p", requested_model="gpt-4o",
        routed_model="m-premium", provider="alpha", attempts=2, status=200, stream=True,
        prompt_tokens=11, completion_tokens=7, cached_tokens=3, cost_usd=0.002,
        requested_cost_usd=0.005, ttft_ms=120.0, latency_ms=500.0, api="chat",
        attempt_log=[{"provider": "beta", "model": "m-cheap"},
                     {"provider": "alpha", "model": "m-premium"}],
        prompt="SECRET PROMPT", completion="SECRET ANSWER", prompt_sha256="abc",
        error=None, reasons=["secret reason sk-abc"],
    )  # fmt: skip
    base.update(row)
    attempts = (_attempt("beta", "m-cheap", OutcomeKind.SERVER_ERROR, 500, 50.1, 20.0),
                _attempt("alpha", "m-premium", OutcomeKind.OK, 200, 50.2, 80.0))  # fmt: skip
    headers = (("authorization", "Bearer sk-client"), ("traceparent", f"00-{TID}-{SID}-01"))
    return genai.Finished(LedgerRow(**base), 50.0, attempts, headers, PROVIDERS)


def test_request_spans_structure_and_attributes() -> None:
    f = _finished()
    ctx = tracecontext.context(f.row.id, tracecontext.incoming_parent(f.headers), 1.0)
    req, a0, a1 = genai.request_spans(f, ctx)
    assert (req.name, req.kind, req.parent_span_id, req.trace_id) == ("chat gpt-4o", 2, SID, TID)
    assert (req.start_ns, req.end_ns) == (999_500_000_000, 1_000_000_000_000)
    attrs = dict(req.attrs)
    assert attrs == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "alpha", "gen_ai.system": "alpha",
        "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "m-premium",
        "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 7,
        "gen_ai.usage.cache_read.input_tokens": 3, "gen_ai.server.time_to_first_token": 0.12,
        "server.address": "api.openai.com", "http.request.method": "POST",
        "url.path": "/v1/chat/completions", "http.response.status_code": 200,
        "orchestrator.request_id": "orq-00000000000000aa", "orchestrator.api": "chat",
        "orchestrator.profile": "balanced", "orchestrator.policy": "p",
        "orchestrator.provider": "alpha", "orchestrator.attempts": 2, "orchestrator.outcome": "ok",
        "orchestrator.stream": True, "orchestrator.client": "app", "orchestrator.cost_usd": 0.002,
        "orchestrator.saved_usd": pytest.approx(0.003),
    }  # fmt: skip
    assert req.error is None
    assert [s.parent_span_id for s in (a0, a1)] == [ctx.span_id] * 2
    assert [s.span_id for s in (a0, a1)] == [ctx.attempt_span_id(0), ctx.attempt_span_id(1)]
    assert (a0.name, a0.kind, a0.error) == ("chat m-cheap", 3, "server_error")
    assert a0.start_ns == pytest.approx(999_600_000_000, abs=1000)  # 0.1 s after the request
    assert a0.end_ns - a0.start_ns == pytest.approx(20_000_000, abs=1000)
    at0, at1 = dict(a0.attrs), dict(a1.attrs)
    assert at0["server.address"] == "beta.example" and at0["server.port"] == 8443
    assert at0["http.response.status_code"] == 500
    assert at1["orchestrator.attempt"] == 2 and "error.type" not in at1
    assert at1["server.address"] == "alpha.example" and "server.port" not in at1
    blob = json.dumps(otlp.traces_request(otlp.resource("s", "1"), "1", [req, a0, a1]))
    for secret in ("SECRET", "sk-", "Bearer", "secret reason", 'abc"'):
        assert secret not in blob


@pytest.mark.parametrize(
    ("row", "error_type", "span_error"),
    [
        ({}, None, None),
        ({"outcome": "error", "status": 503}, "503", "503"),
        ({"outcome": "error", "status": None}, "server_error", "server_error"),  # its last attempt
        ({"outcome": "truncated", "status": 200}, "truncated", "truncated"),
        ({"outcome": "client_abort", "status": 200}, "client_abort", None),
        ({"outcome": "unrouted", "status": 404}, "404", None),
        ({"outcome": "cached", "status": 200}, None, None),
    ],
)
def test_error_type(row: dict[str, Any], error_type: str | None, span_error: str | None) -> None:
    f = _finished(**row)
    if row.get("status", 200) is None:  # the failed attempt last
        f = genai.Finished(f.row, f.started, f.attempts[::-1], f.headers, f.providers)
    assert genai.error_type(f.row, f.attempts) == error_type
    ctx = tracecontext.context(f.row.id, None, 1.0)
    req = genai.request_spans(f, ctx)[0]
    assert dict(req.attrs).get("error.type") == error_type
    assert req.error == span_error  # status ERROR only for error and truncated


@pytest.mark.parametrize(
    ("api", "op"),
    [("chat", "chat"), ("completions", "text_completion"), ("responses", "chat"),
     ("messages", "chat"), ("embeddings", "embeddings"), (None, "chat")],
)  # fmt: skip
def test_operation_per_api(api: str | None, op: str) -> None:
    assert genai.operation(LedgerRow("x", 0.0, "ok", api=api)) == op


def test_observations_bounded_attributes() -> None:
    f = _finished(outcome="error", status=502)
    obs = {(i.name, a): v for i, a, v in genai.observations(f.row, f.attempts)}
    base = (
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "alpha"),
        ("gen_ai.response.model", "m-premium"),
    )  # the served model, never "gpt-4o"
    assert obs == {
        ("gen_ai.server.request.duration", (*base, ("error.type", "502"))): 0.5,
        ("gen_ai.server.time_to_first_token", base): 0.12,
        ("gen_ai.client.token.usage", (*base, ("gen_ai.token.type", "input"))): 11.0,
        ("gen_ai.client.token.usage", (*base, ("gen_ai.token.type", "output"))): 7.0,
    }  # fmt: skip
    unrouted = LedgerRow("x", 0.0, "unrouted", routed_model="free-text", latency_ms=3.0)
    ((_, attrs, _),) = genai.observations(unrouted, ())
    assert attrs == (("gen_ai.operation.name", "chat"),)  # nothing the client chose
