"""`telemetry:` (`addon.config.schema_telemetry`) and the exporter (`addon.proxy.telemetry`):
its queue, thread, batching and counts, with the HTTP send swapped for a recorder (the
real send is covered by tests/test_e2e_telemetry.py)."""

from __future__ import annotations

import json
import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from addon.config.schema import Settings
from addon.config.schema_telemetry import Telemetry as TelemetrySettings
from addon.proxy.telemetry import Collector, Telemetry
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.store.sqlite_ledger import LedgerRow

# --------------------------------------------------------------------------- schema


def test_off_unless_configured_and_defaults() -> None:
    assert Settings().telemetry is None
    t = Settings(telemetry={"endpoint": "http://127.0.0.1:4318/"}).telemetry  # type: ignore[arg-type]
    assert t is not None
    assert (t.endpoint, t.service_name, t.sampling, t.queue_size, t.export_interval_s,
            t.timeout_s, t.headers, t.headers_env) == (
        "http://127.0.0.1:4318", "local-ai-orchestrator", 1.0, 2048, 5.0, 10.0, {}, {})  # fmt: skip


@pytest.mark.parametrize(
    ("telemetry", "message"),
    [
        ({"endpoint": "127.0.0.1:4318"}, "is not an http(s) URL; write the collector's OTLP/HTTP"),
        ({"endpoint": "grpc://c:4317"}, "is not an http(s) URL"),
        ({"endpoint": "http://c:4318/v1/traces"},
         "names a signal path; write the base URL http://c:4318 (/v1/traces and /v1/metrics"),
        ({"endpoint": "https://u:pw@c/otel/v1/metrics"}, "'https://u:***@c/otel/v1/metrics'"),
        ({"endpoint": "http://c:4318?x=1"}, "has a query or fragment"),
        ({"endpoint": "http://c", "sampling": 1.5}, "less than or equal to 1"),
        ({"endpoint": "http://c", "sampling": -0.1}, "greater than or equal to 0"),
        ({"endpoint": "http://c", "queue_size": 0}, "greater than or equal to 1"),
        ({"endpoint": "http://c", "export_interval_s": 0}, "greater than 0"),
        ({"endpoint": "http://c", "headers": {"bad name": "x"}}, "is not an HTTP header name"),
        ({"endpoint": "http://c", "headers": {"x": "a\r\nb: c"}}, "headers.x holds a line break"),
        ({"endpoint": "http://c", "headers_env": {"authorization": "Bearer abc"}},
         "headers_env.authorization: 'Bearer abc' is not an environment variable name"),
        ({"endpoint": "http://c", "service_name": " "}, "service_name is empty"),
        ({"endpoint": "http://c", "sample": 1}, "Extra inputs are not permitted"),
        ({}, "Field required"),
    ],
)  # fmt: skip
def test_schema_errors_name_the_fix(telemetry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        TelemetrySettings(**telemetry)
    assert message in str(e.value)


# --------------------------------------------------------------------------- exporter


class Recorder:
    """Stands in for the HTTP send: keeps (path, decoded body); fails while `down`."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.down = False
        self.cond = threading.Condition()

    def __call__(self, path: str, body: bytes) -> None:
        with self.cond:
            if self.down:
                self.cond.notify_all()
                raise ConnectionRefusedError(111, "Connection refused")
            self.posts.append((path, json.loads(body)))
            self.cond.notify_all()

    def wait(self, ok: Any, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: ok(self), timeout), self.posts


def _pending(rid: str, traceparent: str | None = None) -> Any:
    headers = (("traceparent", traceparent),) if traceparent else ()
    attempt = AttemptRecord("alpha", "m-a", Outcome(OutcomeKind.OK, 200), 10.0, 5.0)
    return SimpleNamespace(id=rid, started=10.0, attempts=[attempt],
                           incoming=SimpleNamespace(headers=headers))  # fmt: skip


def _row(rid: str) -> LedgerRow:
    return LedgerRow(rid, 1000.0, "ok", provider="alpha", routed_model="m-a", latency_ms=9.0,
                     attempts=1, attempt_log=[{"provider": "alpha", "model": "m-a"}], api="chat",
                     status=200, prompt_tokens=3, completion_tokens=4)  # fmt: skip


def _exporter(rec: Recorder, **settings: Any) -> Telemetry:
    s = TelemetrySettings(**{"endpoint": "http://127.0.0.1:1", "export_interval_s": 0.05,
                             **settings})  # fmt: skip
    return Telemetry(s, {}, "9.9", post=rec)


def _spans(rec: Recorder) -> list[dict[str, Any]]:
    return [s for path, b in rec.posts if path == "/v1/traces" for rs in b["resourceSpans"]
            for ss in rs["scopeSpans"] for s in ss["spans"]]  # fmt: skip


def test_records_become_spans_and_metrics() -> None:
    rec = Recorder()
    t = _exporter(rec)
    t.start()
    try:
        for i in range(3):
            t.record(_row(f"orq-{i:016x}"), _pending(f"orq-{i:016x}"), {})
        rec.wait(lambda r: len(_spans(r)) == 6 and any(p == "/v1/metrics" for p, _ in r.posts))
    finally:
        t.close()
    assert t.health()["exported"]["spans"] == 6 and t.dropped() == {
        "requests": 0, "spans": 0, "metrics": 0}  # fmt: skip
    assert {s["kind"] for s in _spans(rec)} == {2, 3}


def test_sampling_zero_exports_metrics_but_no_spans_and_a_sampled_parent_wins() -> None:
    rec = Recorder()
    t = _exporter(rec, sampling=0.0)
    t.start()
    try:
        t.record(_row("orq-00000000000000a1"), _pending("orq-00000000000000a1"), {})
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        t.record(_row("orq-00000000000000a2"), _pending("orq-00000000000000a2", parent), {})
        rec.wait(lambda r: any(p == "/v1/metrics" for p, _ in r.posts) and _spans(r))
    finally:
        t.close()
    spans = _spans(rec)
    assert {s["traceId"] for s in spans} == {"4bf92f3577b34da6a3ce929d0e0e4736"} and len(spans) == 2
    metrics = [b for p, b in rec.posts if p == "/v1/metrics"][-1]
    (dur,) = [m for rm in metrics["resourceMetrics"] for sm in rm["scopeMetrics"]
              for m in sm["metrics"] if m["name"] == "gen_ai.server.request.duration"]  # fmt: skip
    assert sum(int(p["count"]) for p in dur["histogram"]["dataPoints"]) == 2  # both counted


def test_full_queue_drops_and_counts_without_waiting() -> None:
    t = _exporter(Recorder(), queue_size=2)  # not started: nothing takes from the queue
    for i in range(5):
        t.record(_row(f"orq-{i:016x}"), _pending(f"orq-{i:016x}"), {})
    assert t.dropped()["requests"] == 3 and t.queued() == 2
    registry = CollectorRegistry()
    registry.register(Collector(t))
    text = generate_latest(registry).decode()
    assert 'orchestrator_telemetry_dropped_total{kind="requests"} 3.0' in text
    assert "orchestrator_telemetry_queued 2.0" in text


def test_failed_sends_are_counted_logged_once_and_recovered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    rec.down = True
    t = _exporter(rec)
    t.start()
    try:
        with caplog.at_level(logging.INFO, logger="orchestrator"):
            t.record(_row("orq-00000000000000b1"), _pending("orq-00000000000000b1"), {})
            rec.wait(lambda r: t.dropped()["spans"] == 2 and t.dropped()["metrics"] >= 2)
            assert "ConnectionRefusedError" in (t.health()["last_error"] or "")
            with rec.cond:
                rec.down = False
            t.record(_row("orq-00000000000000b2"), _pending("orq-00000000000000b2"), {})
            rec.wait(lambda r: len(_spans(r)) == 2)
            rec.wait(lambda r: t.health()["last_error"] is None)
    finally:
        t.close()
    warnings = [r.getMessage() for r in caplog.records if "cannot export" in r.getMessage()]
    assert len(warnings) == 1 and "http://127.0.0.1:1/v1/" in warnings[0]
    assert any("exporting to http://127.0.0.1:1 again" in r.getMessage() for r in caplog.records)
    assert t.dropped()["spans"] == 2  # the first request's spans; the second's arrived


def test_close_sends_what_is_queued() -> None:
    rec = Recorder()
    t = _exporter(rec, export_interval_s=3600)  # only the final flush sends
    t.start()
    t.record(_row("orq-00000000000000c1"), _pending("orq-00000000000000c1"), {})
    t.close()
    assert len(_spans(rec)) == 2 and [p for p, _ in rec.posts] == ["/v1/traces", "/v1/metrics"]


def test_headers_env_resolved_and_a_missing_one_named(caplog: pytest.LogCaptureFixture) -> None:
    s = TelemetrySettings(endpoint="http://c", headers={"x-team": "ops"},
                          headers_env={"authorization": "OTLP_TOKEN", "x-key": "OTLP_MISSING"})  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="orchestrator"):
        t = Telemetry.for_settings(s, {"OTLP_TOKEN": "Bearer t0k"}, "1")
    assert t is not None
    assert t._headers["authorization"] == "Bearer t0k" and t._headers["x-team"] == "ops"
    assert "x-key" not in t._headers
    assert ("telemetry.headers_env.x-key names OTLP_MISSING, which is not set; exporting without "
            "that header — export OTLP_MISSING=… before starting") in caplog.text  # fmt: skip
    assert Telemetry.for_settings(None, {}, "1") is None


def test_trace_names_attempt_spans_as_the_export_does() -> None:
    rec = Recorder()
    t = _exporter(rec)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    pending = _pending("orq-00000000000000d1", parent)
    ctx = t.trace(pending)  # what the attempt engine would send upstream with attempt 0
    t.start()
    t.record(_row("orq-00000000000000d1"), pending, {})
    t.close()
    (attempt,) = [s for s in _spans(rec) if s["kind"] == 3]
    assert ctx.attempt_traceparent(0) == f"00-{attempt['traceId']}-{attempt['spanId']}-01"
