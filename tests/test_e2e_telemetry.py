"""End to end: OpenTelemetry export (issue 21). A real `orchestrator run` with `telemetry:`
pointing at a loopback OTLP/HTTP receiver the test starts, driven by the openai SDK: spans
and metrics arrive with the GenAI attributes and the parent/child structure, a client's
`traceparent` is continued, no prompt, answer or key bytes are in any payload; with the
receiver down requests still succeed and the drops are counted."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e import (
    ENV,
    KEY_ALPHA,
    KEY_BETA,
    RULES,
    _clean,
    _config,
    _free_port,
    ledger_row,
    ups,
)
from tests.fakeupstream import FakeUpstream, Status
from tests.otlpreceiver import OtlpReceiver, attrs
from tests.proxyproc import ProxyProcess

__all__ = ["_clean", "ups"]  # fixtures: the fakes, forgotten before each test
pytestmark = pytest.mark.e2e

CLIENT_KEY = "sk-otel-DISTINCT-client-key-5f3a9c"
PROMPT = "the purple walrus recites prime numbers at midnight 4711"
OTLP_TOKEN = "Bearer otlp-receiver-token-77"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def _proxy(ups: dict[str, FakeUpstream], tmp: Any, endpoint: str) -> ProxyProcess:
    cfg = _config(ups)
    cfg["telemetry"] = {"endpoint": endpoint, "export_interval_s": 0.2, "timeout_s": 2,
                        "service_name": "orq-e2e", "headers": {"x-otlp-test": "yes"},
                        "headers_env": {"authorization": "ORQ_TEST_OTLP_TOKEN"}}  # fmt: skip
    return ProxyProcess(tmp, cfg, RULES, {**ENV, "ORQ_TEST_OTLP_TOKEN": OTLP_TOKEN}).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def proxy(ups: dict[str, FakeUpstream], receiver: OtlpReceiver,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:  # fmt: skip
    p = _proxy(ups, tmp_path_factory.mktemp("otel"), receiver.url)
    yield p
    p.stop()


def _client(p: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> openai.OpenAI:
    for k, v in p.client_env().items():
        monkeypatch.setenv(k, v)
    return openai.OpenAI(api_key=CLIENT_KEY, base_url="https://api.openai.com/v1", max_retries=0)


def _ask(c: openai.OpenAI, model: str, **kw: Any) -> str:
    """Send one chat request with PROMPT; its request id (x-orchestrator-request-id)."""
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], **kw
    )
    raw.parse()
    assert raw.status_code == 200
    return raw.headers["x-orchestrator-request-id"]


def _by_request(receiver: OtlpReceiver) -> dict[str, dict[str, Any]]:
    """Request spans (SERVER) by their orchestrator.request_id."""
    return {attrs(s)["orchestrator.request_id"]: s for s in receiver.spans() if s["kind"] == 2}


def _duration_count(receiver: OtlpReceiver) -> int:
    """Requests counted in the latest metrics POST's gen_ai.server.request.duration."""
    posts = receiver.snapshot("/v1/metrics")
    if not posts:
        return 0
    total = 0
    for rm in posts[-1].json()["resourceMetrics"]:
        for sm in rm["scopeMetrics"]:
            for m in sm["metrics"]:
                if m["name"] == "gen_ai.server.request.duration":
                    total += sum(int(dp["count"]) for dp in m["histogram"]["dataPoints"])
    return total


def test_spans_and_metrics_reach_the_receiver(
    proxy: ProxyProcess, receiver: OtlpReceiver, ups: dict[str, FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    c = _client(proxy, monkeypatch)
    sampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    continued = _ask(c, "route-me", extra_headers={"traceparent": sampled})
    ups["beta"].fail(Status(500), Status(500))  # a 500 is retried once, then alpha answers
    fallback = _ask(c, "route-me")
    unsampled = _ask(c, "route-me", extra_headers={
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"})  # fmt: skip
    raw = c.chat.completions.with_raw_response.create(
        model="route-me", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    streamed = raw.headers["x-orchestrator-request-id"]
    text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    assert "Hello from beta" in text
    c.close()
    # metrics go out after the spans of the same round: once they count all four requests,
    # every span the proxy will send for them has arrived
    receiver.wait_until(lambda r: _duration_count(r) >= 4)
    spans = list(receiver.spans())
    by_req = _by_request(receiver)
    assert set(by_req) == {continued, fallback, streamed}  # the unsampled trace: no spans
    assert unsampled not in by_req

    # the client's trace is continued: same trace id, its span is the request span's parent
    req = by_req[continued]
    a = attrs(req)
    row = ledger_row(proxy, continued)
    assert req["traceId"] == CLIENT_TRACE and req["parentSpanId"] == CLIENT_SPAN
    assert req["name"] == "chat route-me"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "route-me"
    assert a["gen_ai.response.model"] == row["routed_model"]
    assert a["gen_ai.provider.name"] == "beta" == a["orchestrator.provider"]
    assert a["gen_ai.usage.input_tokens"] == row["prompt_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == row["completion_tokens"] > 0
    assert a["http.response.status_code"] == 200 and "error.type" not in a
    assert a["orchestrator.profile"] == row["profile"] and a["orchestrator.outcome"] == "ok"
    assert a["orchestrator.attempts"] == 1 and a["orchestrator.api"] == "chat"
    assert a["orchestrator.cost_usd"] == pytest.approx(row["cost_usd"])
    assert a["server.address"] == "api.openai.com"
    assert int(req["endTimeUnixNano"]) > int(req["startTimeUnixNano"]) > 0
    kids = [s for s in spans if s.get("parentSpanId") == req["spanId"]]
    assert len(kids) == 1 and kids[0]["kind"] == 3 and kids[0]["traceId"] == CLIENT_TRACE
    ka = attrs(kids[0])
    assert ka["gen_ai.provider.name"] == "beta" and ka["http.response.status_code"] == 200
    assert ka["server.address"] == "127.0.0.1" and ka["server.port"] == ups["beta"].port

    # the fallback: a new trace, one child per attempt, the failed ones marked
    req = by_req[fallback]
    a = attrs(req)
    row = ledger_row(proxy, fallback)
    assert "parentSpanId" not in req and re.fullmatch(r"[0-9a-f]{32}", req["traceId"])
    assert a["orchestrator.attempts"] == row["attempts"] == 3 and a["orchestrator.outcome"] == "ok"
    assert a["gen_ai.provider.name"] == "alpha"
    kids = sorted((s for s in spans if s.get("parentSpanId") == req["spanId"]),
                  key=lambda s: int(s["startTimeUnixNano"]))  # fmt: skip
    assert [attrs(k)["gen_ai.provider.name"] for k in kids] == ["beta", "beta", "alpha"]
    assert all(k["traceId"] == req["traceId"] and k["kind"] == 3 for k in kids)
    for k in kids[:2]:
        assert attrs(k)["http.response.status_code"] == 500
        assert attrs(k)["error.type"] == "server_error" and k["status"]["code"] == 2
    assert "error.type" not in attrs(kids[2]) and "status" not in kids[2]
    assert len({k["spanId"] for k in kids} | {req["spanId"]}) == 4

    # the stream carries its time to first token
    a = attrs(by_req[streamed])
    assert a["orchestrator.stream"] is True and a["gen_ai.server.time_to_first_token"] > 0

    # metrics: cumulative GenAI histograms by served model and provider
    last = receiver.snapshot("/v1/metrics")[-1].json()
    metrics = {m["name"]: m for rm in last["resourceMetrics"] for sm in rm["scopeMetrics"]
               for m in sm["metrics"]}  # fmt: skip
    assert {"gen_ai.server.request.duration", "gen_ai.server.time_to_first_token",
            "gen_ai.client.token.usage"} <= set(metrics)  # fmt: skip
    dur = metrics["gen_ai.server.request.duration"]["histogram"]
    assert dur["aggregationTemporality"] == 2 and metrics["gen_ai.server.request.duration"][
        "unit"] == "s"  # fmt: skip
    points = {(attrs(p)["gen_ai.provider.name"], attrs(p)["gen_ai.response.model"]): p
              for p in dur["dataPoints"]}  # fmt: skip
    assert int(points[("beta", "m-cheap")]["count"]) == 3  # continued, unsampled, streamed
    assert int(points[("alpha", "m-premium")]["count"]) == 1
    assert all("gen_ai.request.model" not in attrs(p) for p in dur["dataPoints"])
    tokens = metrics["gen_ai.client.token.usage"]["histogram"]["dataPoints"]
    assert {attrs(p)["gen_ai.token.type"] for p in tokens} == {"input", "output"}

    # the receiver got the configured headers; the resource names the service
    post = receiver.snapshot("/v1/traces")[0]
    assert post.headers["content-type"] == "application/json"
    assert post.headers["x-otlp-test"] == "yes" and post.headers["authorization"] == OTLP_TOKEN
    resource = attrs(post.json()["resourceSpans"][0]["resource"])
    assert resource["service.name"] == "orq-e2e"

    # nothing secret or private in any payload
    for p in receiver.snapshot():
        body = p.body.decode()
        for secret in (PROMPT, "purple walrus", "Hello from", CLIENT_KEY, KEY_ALPHA, KEY_BETA,
                       "sk-otel", "Bearer"):  # fmt: skip
            assert secret not in body, f"{secret!r} exported to {p.path}"


def test_receiver_down_requests_succeed_and_drops_are_counted(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    p = _proxy(ups, tmp_path_factory.mktemp("otel-down"), f"http://127.0.0.1:{_free_port()}")
    try:
        admin = p.admin_url()
        c = _client(p, monkeypatch)
        ids = [_ask(c, "route-me") for _ in range(3)]
        c.close()
        assert all(ledger_row(p, i)["outcome"] == "ok" for i in ids)
        deadline = time.monotonic() + 15
        while True:
            text = urllib.request.urlopen(f"{admin}/metrics", timeout=5).read().decode()
            m = re.search(r'^orchestrator_telemetry_dropped_total\{kind="spans"\} (\S+)$', text,
                          re.M)  # fmt: skip
            if m and float(m.group(1)) > 0:
                break
            assert time.monotonic() < deadline, f"no span drops counted:\n{text[-2000:]}"
            time.sleep(0.1)
        status = json.loads(urllib.request.urlopen(f"{admin}/status", timeout=5).read())
        tel = status["telemetry"]
        assert tel["dropped"]["spans"] > 0 and tel["exported"]["spans"] == 0
        assert "ConnectionRefused" in tel["last_error"]
    finally:
        p.stop()
    assert "telemetry: cannot export to http://127.0.0.1:" in p.log()


def test_upstream_gets_the_attempt_span_as_its_parent(
    proxy: ProxyProcess, receiver: OtlpReceiver, ups: dict[str, FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    c = _client(proxy, monkeypatch)
    rid = _ask(c, "route-me", extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    c.close()
    receiver.wait_until(lambda r: rid in _by_request(r))
    req = _by_request(receiver)[rid]
    receiver.wait_until(lambda r: any(s.get("parentSpanId") == req["spanId"] for s in r.spans()))
    (attempt,) = [s for s in receiver.spans() if s.get("parentSpanId") == req["spanId"]]
    (seen,) = ups["beta"].requests("/chat/completions")
    assert seen.headers.get("traceparent") == f"00-{CLIENT_TRACE}-{attempt['spanId']}-01"
