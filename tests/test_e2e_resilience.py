"""End to end: every upstream fault class through a real proxy process (issue 4).

The routing config is the shared one (tests/e2e.py). Routes used here:
  rl-route:    delta -> beta        (delta is reserved for rate-limit tests: cooldowns stick)
  delta-only:  delta
  ctx-route:   beta (32k) -> gamma (8k) -> alpha (128k)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import re
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e import (
    CLIENT_KEY,
    ENV,
    FIRST_TOKEN_MS,
    RULES,
    STALL_MS,
    _clean,
    _config,
    all_ledger_rows,
    chat,
    client,
    ledger_row,
    proxy,
    ups,
)
from tests.fakeupstream import (
    RATE_LIMIT,
    CutAfterEnd,
    CutStream,
    Delay,
    FakeUpstream,
    LingerAfterEnd,
    MalformedEvent,
    NoDone,
    Reset,
    SlowFirstToken,
    Stall,
    Status,
    content_policy,
    context_length_exceeded,
)
from tests.proxyproc import ProxyProcess

__all__ = ["_clean", "client", "proxy", "ups"]
pytestmark = pytest.mark.e2e
QUALITY = {"X-Orchestrator-Profile": "quality"}


def stream_text(client: openai.OpenAI, model: str = "gpt-4o", **kw: Any) -> tuple[str, Any]:
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True, **kw
    ) as resp:
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
        return text, resp.headers


# --------------------------------------------------------------------------- 1-2: 429


def test_429_retry_after_fails_over_at_once_and_holds_the_target_back(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["delta"].fail(RATE_LIMIT)  # Retry-After: 1
    raw = chat(client, model="rl-route")
    assert raw.headers["x-orchestrator-provider"] == "beta"
    assert raw.headers["x-orchestrator-attempts"] == "2"
    first = ups["delta"].requests()[0].at
    # the bound is the point: a router that honoured Retry-After here would reach beta >= 1 s
    # after delta's 429. Timed between the two upstreams' arrivals, so the client's own
    # connection set-up on a loaded machine does not count against it.
    assert ups["beta"].requests()[0].at - first < 1.0, "failed over at once, did not wait"
    # Poll with real requests: delta must not see another one before its Retry-After.
    deadline = time.monotonic() + 5
    while len(ups["delta"].requests()) < 2 and time.monotonic() < deadline:
        assert chat(client, model="rl-route").headers["x-orchestrator-provider"] in (
            "beta",
            "delta",
        )
        time.sleep(0.05)
    seen = ups["delta"].requests()
    assert len(seen) == 2 and seen[1].at - first >= 1.0


def test_429_retry_after_waits_when_nowhere_else(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["delta"].fail(Status(429, "slow down", type="requests", retry_after="1"))
    deadline = time.monotonic() + 5  # delta may still be cooling down from another test
    raw = None
    while raw is None and time.monotonic() < deadline:
        try:
            raw = chat(client, model="delta-only")
        except openai.APIStatusError as e:
            assert e.status_code == 503 and "rate_limited" in str(e)
            time.sleep(0.1)
    assert raw is not None
    assert raw.headers["x-orchestrator-provider"] == "delta"
    assert raw.headers["x-orchestrator-attempts"] == "2"
    a, b = ups["delta"].requests()[-2:]
    assert b.at - a.at >= 1.0


def test_429_without_retry_after_backs_off_then_fails_over(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["delta"].always(Status(429, "rate limited", type="requests"))
    try:
        deadline = time.monotonic() + 5
        while True:  # wait out any cooldown left by another test
            raw = chat(client, model="rl-route")
            if ups["delta"].requests() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        ups["delta"].always(None)
    seen = ups["delta"].requests()
    assert len(seen) == 3  # first try + two backoff retries
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    assert all(g >= 0.1 for g in gaps), gaps  # never a tight loop
    assert raw.headers["x-orchestrator-provider"] == "beta"
    assert raw.headers["x-orchestrator-attempts"] == "4"


# --------------------------------------------------------------------------- 3-4: 5xx


def test_500_once_then_healthy_is_retried_on_the_same_target(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].fail(Status(500))
    raw = chat(client, extra_headers=QUALITY)
    assert raw.headers["x-orchestrator-provider"] == "alpha"
    assert raw.headers["x-orchestrator-attempts"] == "2"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_503_with_nowhere_left_returns_the_upstream_status_and_message(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], stream: bool
) -> None:
    ups["gamma"].always(Status(503, "gamma is overloaded, try later"))
    try:
        with pytest.raises(openai.APIStatusError) as ei:
            chat(client, model="gamma-only", stream=stream)
    finally:
        ups["gamma"].always(None)
    assert ei.value.status_code == 503
    assert "gamma is overloaded, try later" in str(ei.value)
    assert len(ups["gamma"].requests()) == 1  # 503 is not retried on the same target


# --------------------------------------------------------------------------- 7: slow first token


def test_slow_first_token_fails_over_before_any_byte(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].fail(SlowFirstToken(delay=FIRST_TOKEN_MS / 1000 + 2))
    text, headers = stream_text(client, extra_headers=QUALITY)
    assert headers["x-orchestrator-provider"] != "alpha"
    assert text == f"Hello from {headers['x-orchestrator-provider']}"  # nothing of alpha's
    # the bound is the point: the first-token timeout (1.5 s) must move on well before alpha's
    # first event (2 s later still). Timed between the upstreams' arrivals: the client's own
    # set-up on a loaded machine is not what is measured.
    fallback = ups[headers["x-orchestrator-provider"]].requests()[0]
    gave_up = fallback.at - ups["alpha"].requests()[0].at
    assert gave_up < FIRST_TOKEN_MS / 1000 + 1.5, gave_up


# --------------------------------------------------------------------------- 9-11: streams


def test_stall_mid_stream_is_truncated_and_proxy_stays_healthy(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["alpha"].fail(Stall(after_events=2))
    rid = ""
    with (
        pytest.raises((openai.APIError, httpx.HTTPError)),
        client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers=QUALITY,
        ) as resp,
    ):  # fmt: skip
        rid = resp.headers["x-orchestrator-request-id"]
        for _ in resp.parse():
            pass
    row = ledger_row(proxy, rid)
    assert row["outcome"] == "truncated" and "stalled" in row["error"]
    assert chat(client, extra_headers=QUALITY).parse().choices[0].message.content


def test_malformed_event_is_dropped_rest_flows_usage_recorded(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["alpha"].fail(MalformedEvent(at_index=2))
    text, headers = stream_text(client, extra_headers=QUALITY)
    assert text == "Hello from alpha"
    row = ledger_row(proxy, headers["x-orchestrator-request-id"])
    assert row["outcome"] == "ok" and row["completion_tokens"] == 7
    assert "malformed" in row["reasons"]


def test_client_leaving_after_done_is_a_complete_answer(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    # the openai SDK closes the connection as soon as it reads data: [DONE]; an upstream
    # that holds its connection a while after that must not turn the answer into an abort
    ups["alpha"].fail(LingerAfterEnd(seconds=1.5))
    t0 = time.monotonic()
    text, headers = stream_text(client, extra_headers=QUALITY)
    assert time.monotonic() - t0 < 1.5, "[DONE] waited for the upstream's end of body"
    assert text == "Hello from alpha"
    row = ledger_row(proxy, headers["x-orchestrator-request-id"])
    assert row["outcome"] == "ok" and row["completion_tokens"] == 7, row
    assert not row["error"]
    # the relay still reads the upstream to its end, then gives its connection back
    deadline = time.monotonic() + 5.0
    while (rt := _admin_status(proxy)["runtime"])["upstream_connections"]["active"]:
        assert time.monotonic() < deadline, f"upstream connection still held: {rt}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "fault", [CutAfterEnd(), LingerAfterEnd(seconds=STALL_MS / 1000 + 5)], ids=["cut", "stall"]
)
def test_upstream_breaking_after_the_end_is_a_clean_end(
    proxy: ProxyProcess, ups: dict[str, FakeUpstream], fault: Any
) -> None:
    # a client that reads to the end of the body (curl does) got the whole answer: a cut
    # or a stall of the upstream after data: [DONE] must not append an error event and cut
    # its connection, nor count against the target
    ups["alpha"].fail(fault)
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=STALL_MS / 1000 + 10) as c:  # noqa: SIM117
        with c.stream("POST", "https://api.openai.com/v1/chat/completions",
                      json={"model": "gpt-4o", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]},
                      headers={**QUALITY, "Authorization": f"Bearer {CLIENT_KEY}"}) as r:  # fmt: skip
            body = b"".join(r.iter_raw())  # raises if the body is cut
            rid = r.headers["x-orchestrator-request-id"]
    lines = [x for x in body.decode().splitlines() if x.startswith(("data:", "event:"))]
    assert lines[-1] == "data: [DONE]" and "event: error" not in lines, lines[-3:]
    row = ledger_row(proxy, rid)
    assert (row["outcome"], row["error"], row["completion_tokens"]) == ("ok", None, 7), row
    assert [a["outcome"] for a in json.loads(row["attempt_log"])] == ["ok"]


def test_stream_without_done_is_finalized_promptly(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["alpha"].fail(NoDone())
    t0 = time.monotonic()
    text, headers = stream_text(client, extra_headers=QUALITY)
    # the bound is the point: the stream ends when the upstream closes, not when the stall
    # timeout gives up on it (STALL_MS after the last event, itself ~0.1 s in)
    assert time.monotonic() - t0 < STALL_MS / 1000, "waited for the stall timeout"
    assert text == "Hello from alpha"
    row = ledger_row(proxy, headers["x-orchestrator-request-id"])
    assert row["outcome"] == "ok" and row["prompt_tokens"] == 11
    assert "without [DONE]" in row["reasons"]


# --------------------------------------------------------------------------- 12-13: 400s


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_context_length_exceeded_goes_to_a_larger_context(
    client: openai.OpenAI, ups: dict[str, FakeUpstream], stream: bool
) -> None:
    ups["beta"].fail(context_length_exceeded(limit=32000, requested=40000))
    if stream:
        text, headers = stream_text(client, model="ctx-route")
    else:
        raw = chat(client, model="ctx-route")
        headers, text = raw.headers, raw.parse().choices[0].message.content
    assert headers["x-orchestrator-provider"] == "alpha" and text == "Hello from alpha"
    assert headers["x-orchestrator-attempts"] == "2"
    assert ups["gamma"].requests() == []  # 8k < 32k: skipped, not tried
    assert len(ups["beta"].requests()) == 1  # never retried on the same model


def test_content_policy_is_not_retried_and_reason_reaches_client(
    client: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].fail(content_policy())
    with pytest.raises(openai.BadRequestError) as ei:
        chat(client, extra_headers=QUALITY)
    body = ei.value.body
    assert isinstance(body, dict) and body.get("code") == "content_policy_violation"
    assert len(ups["alpha"].requests()) == 1
    assert not ups["beta"].requests() and not ups["gamma"].requests()


# --------------------------------------------------------------------------- 15: accounting


def test_failover_accounting(client: openai.OpenAI, ups: dict[str, FakeUpstream],
                             proxy: ProxyProcess) -> None:  # fmt: skip
    ups["alpha"].fail(Status(502, "bad gateway"))
    raw = chat(client, model="gpt-4o", extra_headers=QUALITY)
    body = raw.parse()
    row = ledger_row(proxy, raw.headers["x-orchestrator-request-id"])
    attempts = json.loads(row["attempt_log"])
    assert [a["outcome"] for a in attempts] == ["server_error", "ok"]
    assert body.model == row["routed_model"] == raw.headers["x-orchestrator-model"]
    assert row["provider"] == raw.headers["x-orchestrator-provider"] != "alpha"
    # billed once, for the answer, at the answering model's price
    assert row["prompt_tokens"] == 11 and row["completion_tokens"] == 7
    assert row["cost_usd"] is not None and row["cost_usd"] < (11 * 10 + 7 * 30) / 1e6


# --------------------------------------------------------------------------- 14: breaker


def test_flapping_primary_breaker_opens_probes_once_and_closes(
    ups: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    cfg = _config(ups)
    cfg["resilience"]["breaker"] = {"failures": 3, "cooldown_s": 1.0}
    p = ProxyProcess(tmp_path, cfg, RULES, ENV).start()
    c = httpx.Client(
        proxy=p.url,
        verify=ssl.create_default_context(cafile=str(p.ca_cert)),
        headers={**QUALITY, "Authorization": f"Bearer {CLIENT_KEY}"},
        timeout=10,
    )

    def call() -> str:
        r = c.post(
            "https://api.openai.com/v1/chat/completions", json={"model": "gpt-4o", "messages": []}
        )
        assert r.status_code == 200, r.text
        return r.headers["x-orchestrator-provider"]

    try:
        ups["alpha"].always(Status(503, "flapping"))
        assert [call() for _ in range(3)] == ["beta"] * 3  # each: alpha fails, beta serves
        assert len(ups["alpha"].requests()) == 3
        # the breaker opened after alpha's third failure, so its 1 s cooldown lasts at least
        # until `cooled`; the calls below stop half-way there, so none can be routed after
        # the cooldown even when the machine is slow (the cooldown is the point)
        cooled = ups["alpha"].requests()[-1].at + 1.0
        assert [call() for _ in range(3)] == ["beta"] * 3  # open: alpha is not tried
        assert len(ups["alpha"].requests()) == 3
        p.wait_for_log(re.compile(re.escape("breaker alpha:m-premium: closed -> open")))
        assert "breaker gamma" not in p.log()
        ups["alpha"].always(Delay(0.8))  # healthy again, but slow: the probe is in flight
        while time.monotonic() < cooled - 0.5:  # still cooling down: all traffic to beta
            assert call() == "beta"
            time.sleep(0.05)
        # bursts of 6 concurrent calls until the half-open probe reaches alpha: never more
        # than one call of a burst may go there
        deadline = time.monotonic() + 5
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            while len(ups["alpha"].requests()) == 3:
                answered = list(pool.map(lambda _: call(), range(6)))
                assert answered.count("alpha") <= 1, answered
                assert time.monotonic() < deadline, "no half-open probe after the cooldown"
                time.sleep(0.05)
        assert len(ups["alpha"].requests()) == 4, "exactly one half-open probe"
        assert ups["alpha"].requests()[-1].at >= cooled, "probed before the cooldown ended"
        assert answered.count("alpha") == 1
        assert call() == "alpha"  # the probe succeeded: closed again
    finally:
        ups["alpha"].always(None)
        c.close()
        p.stop()
    assert "half_open -> closed" in p.log() or "-> closed" in p.log()


# --------------------------------------------------------------------------- 16: client abort


def _admin_status(p: ProxyProcess) -> dict[str, Any]:
    return httpx.get(f"{p.admin_url()}/status", timeout=10).json()


def test_client_abort_mid_stream_closes_the_upstream(
    proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].events, ups["alpha"].event_gap = 20, 0.2  # a 4 s answer
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    try:
        with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as c:  # noqa: SIM117
            with c.stream("POST", "https://api.openai.com/v1/chat/completions",
                          json={"model": "gpt-4o", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]},
                          headers={**QUALITY, "Authorization": f"Bearer {CLIENT_KEY}"}) as r:  # fmt: skip
                rid = r.headers["x-orchestrator-request-id"]
                got = 0
                for line in r.iter_lines():
                    got += line.startswith("data: ")
                    if got == 3:
                        break
        aborted = time.monotonic()
        row = ledger_row(proxy, rid)
        assert row["outcome"] == "client_abort"
        # these bounds are the point: the upstream would stream for ~4 s; an abort ~0.6 s in
        # must close it at once, not when the upstream is done
        assert row["latency_ms"] < 2500, "recorded long before the upstream would have finished"
        deadline = aborted + 2.0
        while True:
            rt = _admin_status(proxy)["runtime"]
            if rt["upstream_connections"]["active"] == 0 and rt["streams_waiting"] == 0:
                break
            assert time.monotonic() < deadline, f"upstream stream still open: {rt}"
            time.sleep(0.05)
    finally:
        ups["alpha"].events = 5


# --------------------------------------------------------------------------- soak


def test_soak_2000_requests_mixed_faults(proxy: ProxyProcess, ups: dict[str, FakeUpstream]) -> None:
    faults = [Status(500), Status(503, "busy"), Reset(), Status(502), CutStream(after_events=1)]
    ups["alpha"].fail(*(faults[i % len(faults)] for i in range(250)))
    before = _admin_status(proxy)["runtime"]
    rss_at: dict[int, int] = {}

    def rss() -> int:
        assert proxy.proc is not None
        status = Path(f"/proc/{proxy.proc.pid}/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])

    async def run() -> list[tuple[int, str, str]]:
        ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
        sem = asyncio.Semaphore(32)
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(proxy=proxy.url, verify=ctx, timeout=20, limits=limits) as c:

            async def one(i: int) -> tuple[int, str, str]:
                body = {"model": "gpt-4o", "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": f"request {i}"}]}  # fmt: skip
                async with sem:
                    if i in (1000, 1999):
                        rss_at[i] = rss()
                    try:
                        async with c.stream(
                            "POST", "https://api.openai.com/v1/chat/completions", json=body,
                            headers={**QUALITY, "Authorization": f"Bearer {CLIENT_KEY}"},
                        ) as r:  # fmt: skip
                            text = (await r.aread()).decode()
                            return (
                                r.status_code,
                                r.headers.get("x-orchestrator-request-id", ""),
                                text,
                            )
                    except httpx.RemoteProtocolError as e:  # a cut stream: a clean, visible error
                        return -1, "", repr(e)

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(2000))), 300)

    results = asyncio.run(run())
    complete = [r for r in results if r[0] == 200 and ("[DONE]" in r[2] or '"choices"' in r[2])]
    clean_errors = [r for r in results if r[0] == -1 or r[0] >= 400]
    assert len(complete) + len(clean_errors) == 2000
    assert len(complete) >= 1900, f"{len(clean_errors)} errors"
    # one ledger row per request that reached the router
    ids = {r[1] for r in results if r[1]}
    deadline = time.monotonic() + 15
    while True:
        rows = {r["id"] for r in all_ledger_rows(proxy)}
        if ids <= rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ids <= rows
    # nothing leaked: tasks, waiting streams and upstream connections back to their level
    deadline = time.monotonic() + 5
    while True:
        after = _admin_status(proxy)["runtime"]
        settled = (after["streams_waiting"] == 0
                   and after["upstream_connections"]["active"] == 0
                   and after["tasks"] <= before["tasks"] + 5)  # fmt: skip
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert settled, (before, after)
    assert rss_at[1999] <= rss_at[1000] * 1.10 + 4096, rss_at  # flat within 10% (+4 MB slack)
