"""End to end (issue 17): a stream that breaks mid-answer is finished on another target,
through a real `orchestrator run` with loopback fakes (`tests/fake_prefill.py`).

Every chat fake holds the same 60-word answer (`ANSWER`, one word per event), so a
continuation of what the client got is the rest of that same answer. Routes:

  rescue-assistant  alpha -> beta   (beta continues a trailing assistant message)
  rescue-prefix     alpha -> delta  (delta needs `prefix: true` and repeats the prefix)
  rescue-continue   alpha -> eps    (eps needs `continue_final_message: true`)
  rescue-reject     alpha -> gamma  (gamma is declared capable but refuses any prefill)
  claude-rescue     claude-a -> claude-b  (Anthropic Messages, native prefill)

The soak sends 1,000 streams at concurrency 16 with 30 % of them cut at a random event
(about 10 s here).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e import all_ledger_rows, ledger_row
from tests.e2e_apis import ANTHROPIC_CLIENT_KEY, OPENAI_CLIENT_KEY, guarded_proxy
from tests.fakeupstream import CutStream, Delay, FakeUpstream, Stall
from tests.otlpreceiver import OtlpReceiver, attrs
from tests.proxyproc import ProxyProcess

pytestmark = pytest.mark.e2e

WORDS = 60
ANSWER = "".join(f" w{i:02d}" for i in range(WORDS))  # 60 events of 4 characters
PROMPT_TOKENS = 11
STALL_MS = 800
# name -> (fake's prefill behaviour, declared capability, APIs, price in/out per Mtok)
FAKES: dict[str, tuple[str | None, str | bool, tuple[str, ...], tuple[float, float]]] = {
    "alpha": (None, False, ("chat",), (10, 30)),
    "beta": ("assistant", "assistant", ("chat",), (1, 2)),
    "gamma": ("reject", "assistant", ("chat",), (1, 2)),
    "delta": ("prefix", "prefix", ("chat",), (1, 2)),
    "eps": ("continue_final_message", "continue_final_message", ("chat",), (1, 2)),
    "claude-a": (None, False, ("messages",), (3, 15)),
    "claude-b": ("assistant", "assistant", ("messages",), (1, 5)),
}
ROUTES = {
    "rescue-assistant": ["alpha", "beta"],
    "rescue-prefix": ["alpha", "delta"],
    "rescue-continue": ["alpha", "eps"],
    "rescue-reject": ["alpha", "gamma"],
    "claude-rescue": ["claude-a", "claude-b"],
}


def model_of(provider: str) -> str:
    """The model id a fake's provider offers."""
    return f"m-{provider}"


def config(fakes: dict[str, FakeUpstream]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`orchestrator.yaml` and `rules/` for these tests."""
    providers = {
        n: {"base_url": fakes[n].base_url, "api_key_env": f"ORQ_RESCUE_{i}", "local": True,
            "apis": list(FAKES[n][2])}
        for i, n in enumerate(FAKES)
    }  # fmt: skip
    cfg = {
        "listen": "127.0.0.1:0", "mode": "regular",
        "intercept": ["api.openai.com", "api.anthropic.com"],
        "default_profile": "quality", "rules": "rules/",
        "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
        "providers": providers,
        "resilience": {"max_attempts": 4, "connect_timeout_ms": 1000,
                       "first_token_timeout_ms": 3000, "stall_timeout_ms": STALL_MS,
                       "breaker": {"failures": 1000, "cooldown_s": 60}},
        "log_level": "info", "admin": {"listen": "127.0.0.1:0"},
    }  # fmt: skip
    models = [
        {"id": model_of(n), "provider": n, "input_per_mtok": price[0], "output_per_mtok": price[1],
         "context_tokens": 100000, "quality": 1300,
         "capabilities": {"tools": True, "prefill": declared}}
        for n, (_, declared, _, price) in FAKES.items()
    ]  # fmt: skip
    routes = {
        r: [{"provider": p, "model": model_of(p)} for p in chain] for r, chain in ROUTES.items()
    }
    rules = {
        "profiles.yaml": {"profiles": {"quality": {"weights": {"quality": 1.0}}}},
        "routes.yaml": {"routes": routes},
        "models.yaml": {"models": models},
    }
    return cfg, rules


def env() -> dict[str, str]:
    """Every provider's key variable."""
    return {f"ORQ_RESCUE_{i}": f"sk-rescue-{i}-key-0123456789" for i in range(len(FAKES))}


def start_fakes(events: int = WORDS) -> dict[str, FakeUpstream]:
    """One fake per provider, each answering `ANSWER` (cut into `events` pieces)."""
    return {
        n: FakeUpstream(n, content=ANSWER, events=events, prompt_tokens=PROMPT_TOKENS,
                        completion_tokens=WORDS, prefill=FAKES[n][0],
                        tool_calls=n == "alpha").start()
        for n in FAKES
    }  # fmt: skip


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeUpstream]]:
    """The fakes, for the module."""
    fakes = start_fakes()
    yield fakes
    for f in fakes.values():
        f.stop()


@pytest.fixture(autouse=True)
def _clean(ups: dict[str, FakeUpstream]) -> None:
    """Each test starts with fresh fakes; the primaries write their events apart, so the
    client has its share of the answer when the cut comes (aiohttp drops the bytes that
    arrive together with an abort)."""
    for f in ups.values():
        f.clear()
    ups["alpha"].event_gap = ups["claude-a"].event_gap = 0.002


@pytest.fixture(scope="module")
def proxy(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """One guarded proxy on `config`, for the module."""
    cfg, rules = config(ups)
    workdir = tmp_path_factory.mktemp("rescue")
    p = guarded_proxy(workdir, cfg, rules)
    p.env.update(env())
    p.start()
    yield p
    p.stop()


@pytest.fixture
def oai(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[openai.OpenAI]:
    """The openai SDK aimed at api.openai.com through the proxy."""
    for k, v in proxy.client_env().items():
        monkeypatch.setenv(k, v)
    c = openai.OpenAI(api_key=OPENAI_CLIENT_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture
def ant(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[anthropic.Anthropic]:
    """The anthropic SDK aimed at api.anthropic.com through the proxy."""
    for k, v in proxy.client_env().items():
        monkeypatch.setenv(k, v)
    c = anthropic.Anthropic(api_key=ANTHROPIC_CLIENT_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


def stream_chat(oai: openai.OpenAI, model: str, **kw: Any) -> tuple[list[Any], Any]:
    """Every chunk of a streamed chat answer, and the response headers."""
    with oai.chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": "count"}], stream=True, **kw
    ) as resp:
        return list(resp.parse()), resp.headers


def text_of(chunks: list[Any]) -> str:
    """The answer text the chunks carry."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --------------------------------------------------------------------------- chat


@pytest.mark.parametrize(
    ("route", "fault"),
    [
        ("rescue-assistant", CutStream(after_events=40)),
        ("rescue-assistant", Stall(after_events=40)),
        ("rescue-prefix", CutStream(after_events=40)),
        ("rescue-continue", CutStream(after_events=40)),
    ],
    ids=["cut", "stall", "prefix-form", "continue-form"],
)
def test_broken_stream_is_finished_on_a_fallback(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess, route: str, fault: Any
) -> None:
    fallback = ROUTES[route][1]
    ups["alpha"].fail(fault)
    chunks, headers = stream_chat(oai, route, stream_options={"include_usage": True})
    assert text_of(chunks) == ANSWER  # the whole answer, once, in order
    roles = [c for c in chunks if c.choices and c.choices[0].delta.role]
    assert len(roles) == 1  # no second role chunk
    assert len({c.id for c in chunks}) == 1 and len({c.model for c in chunks}) == 1
    assert chunks[0].model == model_of("alpha")
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    [cont] = ups[fallback].requests()
    sent = cont.json["messages"][-1]
    assert sent["role"] == "assistant" and ANSWER.startswith(sent["content"])
    assert 100 < len(sent["content"]) <= 40 * 4  # what the client got before the break
    if fallback == "delta":
        assert sent["prefix"] is True
    if fallback == "eps":
        assert cont.json["continue_final_message"] is True
        assert cont.json["add_generation_prompt"] is False
    row = ledger_row(proxy, headers["x-orchestrator-request-id"])
    assert row["outcome"] == "rescued" and row["attempts"] == 2
    log = json.loads(row["attempt_log"])
    kind = "timeout" if isinstance(fault, Stall) else "protocol_error"
    assert [(a["provider"], a["outcome"]) for a in log] == [("alpha", kind), (fallback, "ok")]
    assert log[0]["usage_estimated"] is True and log[1]["usage_estimated"] is False
    assert usage is not None
    assert (
        usage.prompt_tokens
        == row["prompt_tokens"]
        == log[0]["prompt_tokens"] + log[1]["prompt_tokens"]
    )
    assert usage.completion_tokens == row["completion_tokens"]
    assert row["completion_tokens"] == log[0]["completion_tokens"] + log[1]["completion_tokens"]
    price = {p: FAKES[p][3] for p in FAKES}
    want = sum((a["prompt_tokens"] * price[a["provider"]][0]
                + a["completion_tokens"] * price[a["provider"]][1]) / 1e6 for a in log)  # fmt: skip
    assert row["cost_usd"] == pytest.approx(want)


def test_a_continuation_names_its_own_span_upstream(
    ups: dict[str, FakeUpstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with spans exported, each attempt's upstream call carries its own span as the
    # parent: the rescue's continuation too, never the client's span or attempt 0's
    trace, span = "5c1e3a9f00b1d2e3f405162738495a6b", "a1b2c3d4e5f60718"
    receiver = OtlpReceiver().start()
    cfg, rules = config(ups)
    cfg["telemetry"] = {"endpoint": receiver.url, "export_interval_s": 0.2, "timeout_s": 2}
    p = guarded_proxy(tmp_path, cfg, rules)
    p.env.update(env())
    try:
        p.start()
        for k, v in p.client_env().items():
            monkeypatch.setenv(k, v)
        ups["alpha"].fail(CutStream(after_events=40))
        with openai.OpenAI(api_key=OPENAI_CLIENT_KEY, max_retries=0, timeout=20) as oai:
            chunks, headers = stream_chat(
                oai, "rescue-assistant", extra_headers={"traceparent": f"00-{trace}-{span}-01"}
            )
        assert text_of(chunks) == ANSWER
        rid = headers["x-orchestrator-request-id"]

        def attempts(r: OtlpReceiver) -> list[dict[str, Any]]:
            req = [s for s in r.spans() if attrs(s).get("orchestrator.request_id") == rid]
            if not req:
                return []
            kids = [s for s in r.spans() if s.get("parentSpanId") == req[0]["spanId"]]
            return sorted(kids, key=lambda s: attrs(s)["orchestrator.attempt"])

        receiver.wait_until(lambda r: len(attempts(r)) == 2)
        first, second = attempts(receiver)
        assert [attrs(s)["gen_ai.provider.name"] for s in (first, second)] == ["alpha", "beta"]
        sent = [ups[n].requests()[0].headers.get("traceparent") for n in ("alpha", "beta")]
        assert sent == [f"00-{trace}-{first['spanId']}-01", f"00-{trace}-{second['spanId']}-01"]
    finally:
        p.stop()
        receiver.stop()


def test_fallback_that_refuses_prefill_never_shows_its_400(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    for _ in range(2):
        ups["alpha"].fail(CutStream(after_events=40))
        got: list[Any] = []
        with (
            pytest.raises((openai.APIError, httpx.HTTPError)) as ei,
            oai.chat.completions.with_streaming_response.create(
                model="rescue-reject", messages=[{"role": "user", "content": "count"}], stream=True
            ) as resp,
        ):
            rid = resp.headers["x-orchestrator-request-id"]
            got.extend(resp.parse())
        assert "stream interrupted" in str(ei.value) and "prefill" not in str(ei.value)
        assert text_of(got) == ANSWER[: len(text_of(got))]
        row = ledger_row(proxy, rid)
        assert row["outcome"] == "truncated" and "prefill" not in (row["error"] or "")
    # the first refusal marked gamma incapable: the second break did not ask it again
    assert len(ups["gamma"].requests()) == 1
    assert "refused an assistant prefill" in proxy.log()


def test_tool_call_cut_mid_flight_is_a_clean_error(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["alpha"].fail(CutStream(after_events=10))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with (
        pytest.raises((openai.APIError, httpx.HTTPError)) as ei,
        oai.chat.completions.with_streaming_response.create(
            model="rescue-assistant", messages=[{"role": "user", "content": "weather?"}],
            stream=True, tools=tools,
        ) as resp,
    ):  # fmt: skip
        rid = resp.headers["x-orchestrator-request-id"]
        for _ in resp.parse():
            pass
    assert "tool call was in flight" in str(ei.value)
    assert ups["beta"].requests() == []
    row = ledger_row(proxy, rid)
    assert row["outcome"] == "truncated" and "tool call" in row["error"]


# --------------------------------------------------------------------------- Messages


def test_messages_stream_cut_is_rescued(
    ant: anthropic.Anthropic, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["claude-a"].fail(CutStream(after_events=40))
    with ant.messages.stream(
        model="claude-rescue", max_tokens=200, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        rid = stream.response.headers["x-orchestrator-request-id"]
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == ANSWER
    assert final.model == model_of("claude-a") and final.stop_reason == "end_turn"
    assert len(final.content) == 1 and final.content[0].text == ANSWER  # one text block
    [cont] = ups["claude-b"].requests()
    prefill = cont.json["messages"][-1]
    assert prefill["role"] == "assistant" and prefill["content"] == prefill["content"].rstrip()
    assert ANSWER.startswith(prefill["content"]) and len(prefill["content"]) > 100
    row = ledger_row(proxy, rid)
    assert row["outcome"] == "rescued" and row["attempts"] == 2
    log = json.loads(row["attempt_log"])
    assert [a["provider"] for a in log] == ["claude-a", "claude-b"]
    assert log[0]["prompt_tokens"] == PROMPT_TOKENS  # reported by message_start
    assert final.usage.output_tokens == row["completion_tokens"]
    assert final.usage.input_tokens == row["prompt_tokens"] == sum(a["prompt_tokens"] for a in log)


# --------------------------------------------------------------------------- soak


def soak(proxy: ProxyProcess, fakes: dict[str, FakeUpstream], n: int, concurrency: int = 16,
         cut_share: float = 0.3, seed: int = 17) -> dict[str, Any]:  # fmt: skip
    """`n` streamed chat requests at `concurrency` on the alpha -> beta route, alpha cutting
    `cut_share` of them at a random event: what came back, and the proxy's RSS (kB) after
    half of them and at the end."""
    rng = random.Random(seed)
    events = fakes["alpha"].events
    fakes["alpha"].fail(*(CutStream(after_events=rng.randrange(1, events))
                          if rng.random() < cut_share else Delay(0.0) for _ in range(n)))  # fmt: skip
    rss: dict[str, int] = {}

    def rss_kb() -> int:
        assert proxy.proc is not None
        status = Path(f"/proc/{proxy.proc.pid}/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])

    async def run() -> list[tuple[str, str, int, int]]:
        ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
        sem = asyncio.Semaphore(concurrency)
        done = 0
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(proxy=proxy.url, verify=ctx, timeout=30, limits=limits) as c:

            async def one(i: int) -> tuple[str, str, int, int]:
                nonlocal done
                body = {"model": "rescue-assistant", "stream": True,
                        "messages": [{"role": "user", "content": f"count {i}"}]}  # fmt: skip
                async with sem:
                    async with c.stream(
                        "POST", "https://api.openai.com/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {OPENAI_CLIENT_KEY}"},
                    ) as r:  # fmt: skip
                        raw = (await r.aread()).decode()
                    done += 1
                    if done in (n // 2, n):
                        rss[str(done)] = rss_kb()
                    text, roles, dones = read_sse(raw)
                    return r.headers.get("x-orchestrator-request-id", ""), text, roles, dones

            return await asyncio.gather(*(one(i) for i in range(n)))

    t0 = time.monotonic()
    results = asyncio.run(run())
    return {"results": results, "rss": rss, "seconds": time.monotonic() - t0}


def read_sse(raw: str) -> tuple[str, int, int]:
    """A raw chat stream's text, role chunks and `[DONE]` events."""
    text, roles, dones = [], 0, 0
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            dones += 1
            continue
        obj = json.loads(data)
        for ch in obj.get("choices") or ():
            delta = ch.get("delta") or {}
            roles += "role" in delta
            text.append(delta.get("content") or "")
    return "".join(text), roles, dones


def check_soak(proxy: ProxyProcess, out: dict[str, Any], n: int) -> None:
    """Every answer whole and alone, one ledger row each, memory flat."""
    results = out["results"]
    bad = [r for r in results if (r[1], r[2], r[3]) != (ANSWER, 1, 1)]
    assert not bad, f"{len(bad)} of {n} not complete; first: {bad[:1]}"
    ids = {r[0] for r in results}
    assert len(ids) == n
    deadline = time.monotonic() + 15
    while True:
        rows = [r for r in all_ledger_rows(proxy) if r["id"] in ids]
        if len(rows) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows) == n and len({r["id"] for r in rows}) == n
    assert {r["outcome"] for r in rows} <= {"ok", "rescued"}
    rescued = sum(r["outcome"] == "rescued" for r in rows)
    assert 0.2 * n < rescued < 0.4 * n, rescued  # the cut share, each one finished
    half, full = out["rss"][str(n // 2)], out["rss"][str(n)]
    assert full <= half * 1.10 + 4096, out["rss"]  # flat within 10 % (+4 MB slack)


def test_soak_cut_streams_all_complete(tmp_path: Path) -> None:
    n = 1000
    fakes = start_fakes()
    try:
        cfg, rules = config(fakes)
        p = guarded_proxy(tmp_path, cfg, rules)
        p.env.update(env())
        p.start()
        try:
            out = soak(p, fakes, n)
            check_soak(p, out, n)
            prefilled = [r for r in fakes["beta"].requests()
                         if r.json["messages"][-1]["role"] == "assistant"]  # fmt: skip
            assert prefilled, "no continuation was sent a prefill"
        finally:
            p.stop()
    finally:
        for f in fakes.values():
            f.stop()
