"""End to end: a real `orchestrator run` process, the real openai SDK and curl through
HTTPS_PROXY (trusting the proxy's CA), loopback upstreams speaking the OpenAI wire format."""

from __future__ import annotations

import json
import re
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e import (
    CLIENT_KEY,
    ENV,
    FIRST_TOKEN_MS,
    KEY_ALPHA,
    KEY_BETA,
    RULES,
    _auth_seen,
    _clean,
    _config,
    all_ledger_rows,
    chat,
    client,
    ledger_row,
    proxy,
    ups,
    wait_for_request_lines,
)
from tests.fakeupstream import CutStream, FakeUpstream, Hang, Reset, Status
from tests.proxyproc import ProxyProcess

__all__ = ["_clean", "client", "proxy", "ups"]  # fixtures used by this module

pytestmark = pytest.mark.e2e

# --------------------------------------------------------------------------- model swap


@pytest.mark.parametrize(
    ("how", "upstream", "model"),
    [
        ({"extra_headers": {"X-Orchestrator-Profile": "quality"}}, "alpha", "m-premium"),
        ({"model": "orchestrator/budget"}, "beta", "m-cheap"),
        ({"extra_headers": {"x-workload": "batch"}}, "beta", "m-cheap"),
        ({"model": "route-me"}, "beta", "m-cheap"),
    ],
    ids=["header-quality", "alias-budget", "policy-budget", "explicit-route"],
)
def test_model_swapped_per_profile(
    client: openai.OpenAI,
    ups: dict[str, FakeUpstream],
    proxy: ProxyProcess,
    how: dict[str, Any],
    upstream: str,
    model: str,
) -> None:
    kw = dict(how)
    raw = chat(client, model=kw.pop("model", "gpt-4o"), **kw)
    completion = raw.parse()
    assert completion.model == model
    assert completion.choices[0].message.content == f"Hello from {upstream}"
    assert raw.headers["x-orchestrator-model"] == model
    assert raw.headers["x-orchestrator-provider"] == upstream
    assert raw.headers["x-orchestrator-attempts"] == "1"
    seen = ups[upstream].requests()
    assert len(seen) == 1 and seen[0].json["model"] == model
    # provider keys: each upstream only ever sees its own key, never the client's
    own = {"alpha": KEY_ALPHA, "beta": KEY_BETA}[upstream]
    assert _auth_seen(ups[upstream]) == [f"Bearer {own}"]
    row = ledger_row(proxy, raw.headers["x-orchestrator-request-id"])
    assert row["routed_model"] == model and row["provider"] == upstream
    assert row["outcome"] == "ok"


def test_only_model_field_changes(client: openai.OpenAI, ups: dict[str, FakeUpstream]) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "héllo \u2603"}],
        "temperature": 0.25,
        "seed": 12345678901234,
        "logit_bias": {"50256": -100},
        "x_vendor_extension": {"nested": [1, 2.5, None, True]},
    }
    raw = client.post(
        "/chat/completions",
        body=body,
        cast_to=httpx.Response,
        options={"headers": {"X-Orchestrator-Profile": "quality"}},
    )
    assert raw.status_code == 200
    got = ups["alpha"].requests()[-1].json
    assert got.pop("model") == "m-premium"
    body.pop("model")
    assert got == body


def test_no_key_provider_is_never_a_candidate(client: openai.OpenAI) -> None:
    # m-secret would win every profile (best quality, cheapest, largest context) but its
    # provider has no key configured and is not the host the client's key is for.
    for profile in ("quality", "budget", "long_context"):
        raw = chat(client, extra_headers={"X-Orchestrator-Profile": profile})
        assert raw.headers["x-orchestrator-provider"] != "nokey"


# --------------------------------------------------------------------------- fallback


@pytest.mark.parametrize(
    ("faults", "attempts"),
    [
        ((Status(500), Status(500)), 3),  # one retry on the same target, then fall back
        ((Status(503, "overloaded"),), 2),
        ((Reset(),), 2),
    ],
    ids=["500", "503", "reset"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_fallback(
    client: openai.OpenAI,
    ups: dict[str, FakeUpstream],
    proxy: ProxyProcess,
    faults: tuple[Any, ...],
    attempts: int,
    stream: bool,
) -> None:
    ups["alpha"].fail(*faults)
    hdrs = {"X-Orchestrator-Profile": "quality"}
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers=hdrs,
        ) as resp:
            headers = resp.headers
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    else:
        raw = chat(client, extra_headers=hdrs)
        headers = raw.headers
        text = raw.parse().choices[0].message.content
    assert headers["x-orchestrator-attempts"] == str(attempts)
    assert headers["x-orchestrator-provider"] != "alpha"
    answered = headers["x-orchestrator-provider"]
    assert text == f"Hello from {answered}"
    assert len(ups["alpha"].requests()) == attempts - 1
    row = ledger_row(proxy, headers["x-orchestrator-request-id"])
    assert row["attempts"] == attempts and row["outcome"] == "ok"
    log = json.loads(row["attempt_log"])
    assert [a["provider"] for a in log][: attempts - 1] == ["alpha"] * (attempts - 1)
    assert row["prompt_tokens"] == 11 and row["completion_tokens"] == 7


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_connection_refused_falls_back(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], stream: bool
) -> None:
    raw = chat(client, model="dead-first", stream=stream)
    assert raw.headers["x-orchestrator-provider"] == "beta"
    assert raw.headers["x-orchestrator-attempts"] == "2"
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content
    assert text == "Hello from beta"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_hung_upstream_times_out_and_falls_back(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], stream: bool
) -> None:
    ups["alpha"].fail(Hang())
    t0 = time.monotonic()
    raw = chat(client, extra_headers={"X-Orchestrator-Profile": "quality"}, stream=stream)
    elapsed = time.monotonic() - t0
    if stream:
        for _ in raw.parse():
            pass
    assert raw.headers["x-orchestrator-provider"] != "alpha"
    # the bounds are the point: a silent target is given up on at the first-token timeout,
    # not before it and not much later; the 2 s above it leave room for the client's own
    # set-up on a loaded machine
    assert FIRST_TOKEN_MS / 1000 <= elapsed < FIRST_TOKEN_MS / 1000 + 2.0
    assert len(ups["alpha"].requests()) == 1  # a silent target is not retried


def test_all_candidates_fail_gives_openai_error(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["beta"].always(Status(503, "beta is down"))
    ups["alpha"].always(Status(503, "alpha is down"))
    try:
        with pytest.raises(openai.APIStatusError) as ei:
            chat(client, model="route-me")
    finally:
        ups["beta"].always(None)
        ups["alpha"].always(None)
    err = ei.value
    assert err.status_code == 503
    body = err.body
    assert isinstance(body, dict) and body["code"] == "all_attempts_failed"
    assert [a["provider"] for a in body["attempts"]] == ["beta", "alpha"]
    assert "alpha is down" in body["message"]
    assert CLIENT_KEY not in json.dumps(body) and KEY_ALPHA not in json.dumps(body)


def test_client_error_is_passed_through_not_retried(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].fail(Status(400, "Invalid value for 'temperature'", type="invalid_request_error"))
    with pytest.raises(openai.BadRequestError) as ei:
        chat(client, extra_headers={"X-Orchestrator-Profile": "quality"})
    assert "temperature" in str(ei.value)
    assert len(ups["alpha"].requests()) == 1
    assert ups["beta"].requests() == [] and ups["gamma"].requests() == []


# --------------------------------------------------------------------------- streaming


def test_stream_usage_recorded_and_injected_chunk_hidden(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"X-Orchestrator-Profile": "quality"},
    ) as resp:
        chunks = list(resp.parse())
        rid = resp.headers["x-orchestrator-request-id"]
    assert all(c.choices for c in chunks), "the usage-only chunk the router asked for leaked"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from alpha"
    sent = ups["alpha"].requests()[-1].json
    assert sent["stream_options"] == {"include_usage": True}
    row = ledger_row(proxy, rid)
    assert (row["prompt_tokens"], row["completion_tokens"], row["stream"]) == (11, 7, 1)
    assert row["cost_usd"] == pytest.approx((11 * 10 + 7 * 30) / 1e6)


def test_stream_usage_kept_when_client_asked(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Orchestrator-Profile": "quality"},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7


def test_streamed_fallback_delivers_first_event_before_upstream_finishes(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].fail(Status(502, "bad gateway"))
    ups["beta"].event_gap = 0.25  # 5 content events: the upstream needs >= 1.25 s to finish
    ups["gamma"].event_gap = 0.25
    arrivals = []
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"X-Orchestrator-Profile": "quality"},
    ) as resp:
        assert resp.headers["x-orchestrator-attempts"] == "2"
        for chunk in resp.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.9, "events were buffered, not streamed"


def test_stream_cut_mid_answer_is_never_success(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["alpha"].fail(CutStream(after_events=2))
    got = []
    rid = ""
    with (
        pytest.raises((openai.APIError, httpx.HTTPError)),
        client.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"X-Orchestrator-Profile": "quality"},
        ) as resp,
    ):
        rid = resp.headers["x-orchestrator-request-id"]
        for chunk in resp.parse():
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert len(got) <= 3  # role chunk + the two content events that did arrive
    row = ledger_row(proxy, rid)
    assert row["outcome"] == "truncated" and "broke" in row["error"]


def test_unknown_profile_header_is_a_clear_400(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        chat(client, extra_headers={"X-Orchestrator-Profile": "turbo"})
    assert "unknown profile 'turbo'" in str(ei.value) and "budget" in str(ei.value)
    assert all(not f.requests() for f in ups.values())


# --------------------------------------------------------------------------- ledger & cost


def test_ledger_tokens_cost_and_savings(client: openai.OpenAI, proxy: ProxyProcess) -> None:
    raw = chat(client, model="m-premium", extra_headers={"X-Orchestrator-Profile": "budget"})
    assert raw.headers["x-orchestrator-model"] == "m-cheap"
    row = ledger_row(proxy, raw.headers["x-orchestrator-request-id"])
    assert row["requested_model"] == "m-premium" and row["routed_model"] == "m-cheap"
    assert row["cost_usd"] == pytest.approx((11 * 0.1 + 7 * 0.4) / 1e6)
    assert row["requested_cost_usd"] == pytest.approx((11 * 10 + 7 * 30) / 1e6)
    assert row["profile"] == "budget" and row["profile_reason"].startswith("header")
    assert row["unpriced"] == 0


def test_unpriced_model_is_null_not_zero(
    client: openai.OpenAI, proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    # gamma is `local: true` with no price: free by declaration, so cost is 0.0, not NULL;
    # the unrouted embeddings call below has no catalog price at all: NULL + unpriced.
    r = httpx.post(
        f"http://127.0.0.1:{ups['orig'].port}/v1/embeddings",
        json={"model": "text-embedding-unknown", "input": "x"},
        proxy=proxy.url,
        timeout=10,
    )
    assert r.status_code == 200
    rows = [x for x in all_ledger_rows(proxy) if x["path"] == "/v1/embeddings"]
    deadline = time.monotonic() + 5
    while not rows and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = [x for x in all_ledger_rows(proxy) if x["path"] == "/v1/embeddings"]
    assert rows and rows[-1]["cost_usd"] is None and rows[-1]["unpriced"] == 1
    assert rows[-1]["outcome"] == "unrouted"


# --------------------------------------------------------------------------- pass-through


def test_non_intercepted_host_untouched(proxy: ProxyProcess, ups: dict[str, FakeUpstream]) -> None:
    body = b'{"model": "gpt-4o", "messages": []}'
    r = httpx.post(
        f"http://127.0.0.1:{ups['outside'].port}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
        proxy=proxy.url,
        timeout=10,
    )
    assert r.status_code == 200 and "x-orchestrator-request-id" not in r.headers
    seen = ups["outside"].requests()[-1]
    assert seen.body == body and seen.headers["authorization"] == f"Bearer {CLIENT_KEY}"


def test_non_llm_path_untouched(proxy: ProxyProcess, ups: dict[str, FakeUpstream]) -> None:
    r = httpx.get(f"http://127.0.0.1:{ups['orig'].port}/v1/models", proxy=proxy.url, timeout=10)
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert ups["orig"].requests()[-1].path == "/v1/models"


def test_malformed_json_reaches_original_destination(
    proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    body = b'{"model": "gpt-4o", "messages": [}'
    r = httpx.post(
        f"http://127.0.0.1:{ups['orig'].port}/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"},
        proxy=proxy.url,
        timeout=10,
    )
    assert r.status_code == 400  # the original destination's own answer
    seen = ups["orig"].requests()[-1]
    assert seen.body == body
    assert seen.headers["authorization"] == f"Bearer {CLIENT_KEY}"  # its own host: key kept
    rows = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not rows:
        rows = [
            x
            for x in all_ledger_rows(proxy)
            if x["outcome"] == "unrouted" and x["path"] == "/v1/chat/completions"
        ]
        time.sleep(0.05)
    assert rows and "not routable" in rows[-1]["reasons"]


# --------------------------------------------------------------------------- curl


def test_curl_through_https_proxy(
    proxy: ProxyProcess, ups: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    head_file = tmp_path / "headers.txt"
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "--proxy",
            proxy.url,
            "--cacert",
            str(proxy.ca_cert),
            "-H",
            f"Authorization: Bearer {CLIENT_KEY}",
            "-H",
            "Content-Type: application/json",
            "-H",
            "X-Orchestrator-Profile: budget",
            "-D",
            str(head_file),
            "https://api.openai.com/v1/chat/completions",
            "-d",
            json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "x-orchestrator-model: m-cheap" in head_file.read_text().lower()
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "Hello from beta"


def test_curl_streaming(proxy: ProxyProcess, ups: dict[str, FakeUpstream]) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            "--proxy",
            proxy.url,
            "--cacert",
            str(proxy.ca_cert),
            "-H",
            f"Authorization: Bearer {CLIENT_KEY}",
            "-H",
            "Content-Type: application/json",
            "-H",
            "X-Orchestrator-Profile: quality",
            "https://api.openai.com/v1/chat/completions",
            "-d",
            json.dumps(
                {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            ),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    events = [line for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all('"choices":[]' not in e.replace(" ", "") for e in events)


# --------------------------------------------------------------------------- secrets


def test_keys_never_logged_or_recorded(
    client: openai.OpenAI, proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].fail(Status(500), Status(500))
    raw = chat(client, extra_headers={"X-Orchestrator-Profile": "quality"})
    rid = raw.headers["x-orchestrator-request-id"]
    # the row and the log lines are written after the response: wait until they are there,
    # or the checks below would pass on a ledger and a log without this request
    assert ledger_row(proxy, rid)["id"] == rid
    wait_for_request_lines(proxy, [rid])
    text = proxy.log()
    rows = json.dumps(all_ledger_rows(proxy))
    for secret in (CLIENT_KEY, KEY_ALPHA, KEY_BETA):
        assert secret not in text
        assert secret not in rows
    # beta never saw alpha's key or the client's
    assert ups[raw.headers["x-orchestrator-provider"]].requests()  # the fallback was reached
    for s in ups["beta"].requests() + ups["gamma"].requests():
        assert KEY_ALPHA not in json.dumps(s.headers) and CLIENT_KEY not in json.dumps(s.headers)


# --------------------------------------------------------------------------- reverse mode


@pytest.fixture(scope="module")
def reverse_proxy(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    cfg = _config(ups, mode=f"reverse:http://127.0.0.1:{ups['alpha'].port}")
    p = ProxyProcess(tmp_path_factory.mktemp("reverse"), cfg, RULES, ENV).start()
    yield p
    p.stop()


def test_reverse_mode_routes_and_isolates_keys(
    reverse_proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    c = openai.OpenAI(api_key=CLIENT_KEY, base_url=f"{reverse_proxy.url}/v1", max_retries=0)
    try:
        q = c.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Orchestrator-Profile": "quality"},
        )
        b = c.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Orchestrator-Profile": "budget"},
        )
    finally:
        c.close()
    assert q.headers["x-orchestrator-provider"] == "alpha"
    assert b.headers["x-orchestrator-provider"] == "beta"
    # alpha is the host the client addressed: its own key goes there; beta gets beta's key
    assert _auth_seen(ups["alpha"]) == [f"Bearer {CLIENT_KEY}"]
    assert _auth_seen(ups["beta"]) == [f"Bearer {KEY_BETA}"]


def test_reverse_mode_streams_are_handed_to_the_flow_whole(
    reverse_proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    """Reverse mode's layer stack takes the in-process handoff (`addon.proxy.handoff`):
    the whole stream, its usage in the ledger, and the next request on the same
    keep-alive connection served too."""
    before = len(reverse_proxy.lines)
    c = openai.OpenAI(api_key=CLIENT_KEY, base_url=f"{reverse_proxy.url}/v1", max_retries=0)
    try:
        rids, texts = [], []
        for _ in range(2):  # one client, one keep-alive connection
            with c.chat.completions.with_streaming_response.create(
                model="gpt-4o", stream=True, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Orchestrator-Profile": "quality"},
            ) as resp:  # fmt: skip
                rids.append(resp.headers["x-orchestrator-request-id"])
                texts.append("".join(ch.choices[0].delta.content or ""
                                     for ch in resp.parse() if ch.choices))  # fmt: skip
    finally:
        c.close()
    assert texts == [ups["alpha"].content] * 2
    for rid in rids:
        row = ledger_row(reverse_proxy, rid)
        assert (row["outcome"], row["completion_tokens"]) == ("ok", ups["alpha"].completion_tokens)
    line = reverse_proxy.wait_for_log(
        re.compile("stream body handed to the flow's in-process server"), since=before
    )
    assert "straight to its socket" in line  # an HTTP/1 client: written to it directly


def test_kill9_loses_no_completed_row(ups: dict[str, FakeUpstream], tmp_path: Path) -> None:
    p = ProxyProcess(tmp_path, _config(ups), RULES, ENV).start()
    ids: list[str] = []
    try:
        c = openai.OpenAI(
            api_key=CLIENT_KEY,
            base_url="https://api.openai.com/v1",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(
                proxy=p.url, verify=ssl.create_default_context(cafile=str(p.ca_cert))
            ),
        )
        for _ in range(5):
            raw = c.chat.completions.with_raw_response.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Orchestrator-Profile": "budget"},
            )
            ids.append(raw.headers["x-orchestrator-request-id"])
        c.close()
    finally:
        if ids:  # the writer commits promptly: the last row is on disk within a second
            # (the bound is the point: README promises a kill -9 loses no row for a response
            # completed a moment earlier; the writer gathers rows for 50 ms, 20x less)
            ledger_row(p, ids[-1], timeout=1.0)
        p.kill9()
    conn = sqlite3.connect(p.ledger_path)
    got = {r[0] for r in conn.execute("SELECT id FROM requests")}
    conn.close()
    assert set(ids) <= got


def test_plain_mitmdump_with_the_addon(ups: dict[str, FakeUpstream], tmp_path: Path) -> None:
    p = ProxyProcess(tmp_path, _config(ups), RULES, ENV).start(mitmdump=True)
    try:
        r = httpx.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "orchestrator/quality", "messages": []},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            proxy=p.url,
            verify=ssl.create_default_context(cafile=str(p.ca_cert)),
            timeout=10,
        )
    finally:
        p.stop()
    assert r.status_code == 200 and r.headers["x-orchestrator-provider"] == "alpha"
    assert "allow_hosts" not in p.log()  # derived silently, no option errors


def test_bundled_catalog_drives_routing(ups: dict[str, FakeUpstream], tmp_path: Path) -> None:
    """A provider joined to the bundled benchmark DB (`catalog: openai`) gets the model the
    scorer ranks first from the real catalog, under its own id."""
    from addon.config import loader
    from addon.proxy.view import build_view
    from addon.routing import classify, decide

    cfg = _config(ups)
    cfg["providers"] = {
        "openai": {
            "base_url": ups["alpha"].base_url,
            "api_key_env": "ORQ_TEST_KEY_ALPHA",
            "catalog": "openai",
            "local": True,
        }
    }
    rules = {
        **RULES,
        "models.yaml": {"models": []},
        "routes.yaml": {"routes": {}},
        "policies.yaml": {"policies": []},
    }
    p = ProxyProcess(tmp_path, cfg, rules, ENV)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    view = build_view(loader.load(p.config_path), ENV, {})
    req = decide.RoutingRequest(
        classify.features(body, requested_model=body.get("model")),
        "api.openai.com",
        "/v1/chat/completions",
        {"x-orchestrator-profile": "budget"},
        "127.0.0.1",
        True,
    )
    expected = decide.decide(view.router, req, lambda c: None, 4)
    assert isinstance(expected, decide.RoutingDecision)
    assert len(view.catalog.candidates) > 20  # real OpenAI models from the bundled DB
    p.start()
    try:
        r = httpx.post(
            "https://api.openai.com/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Orchestrator-Profile": "budget"},
            proxy=p.url,
            verify=ssl.create_default_context(cafile=str(p.ca_cert)),
            timeout=10,
        )
    finally:
        p.stop()
    assert r.status_code == 200
    want = expected.chain[0].candidate.provider_model_id
    assert ups["alpha"].requests()[-1].json["model"] == want == r.headers["x-orchestrator-model"]
    assert want != "gpt-4o"  # budget found something cheaper than what was asked for
