"""End to end (issue 16): the openai SDK's Responses and embeddings and the anthropic SDK's
Messages through a real `orchestrator run` and HTTPS_PROXY (trusting its CA), against
loopback fakes speaking each wire format: model swap, fallback on a 500 and on a hung
upstream, streams delivered before the upstream finished, pinned Responses state, errors in
each API's own format, ledger tokens and cost, and no client key at another provider."""

from __future__ import annotations

import base64
import json
import ssl
import struct
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests import fake_embeddings
from tests.e2e import ledger_row
from tests.e2e_apis import (
    ANTHROPIC_CLIENT_KEY,
    BUDGET,
    COMPLETION_TOKENS,
    FIRST_TOKEN_MS,
    OPENAI_CLIENT_KEY,
    PROMPT_TOKENS,
    QUALITY,
    _clean,
    ant,
    apis_config,
    assert_own_keys_only,
    cost_usd,
    embedding_models_among_chat,
    forget_outside_hosts,
    guarded_proxy,
    oai,
    outside_hosts,
    proxy,
    slow_stamped,
    stays_on_loopback,
    unstamp,
    ups,
)
from tests.fakeupstream import (
    CutStream,
    FakeUpstream,
    Hang,
    LingerAfterEnd,
    Status,
    overloaded,
)
from tests.proxyproc import ProxyProcess

__all__ = [
    "_clean",
    "ant",
    "oai",
    "proxy",
    "stays_on_loopback",
    "ups",
]  # fixtures used by this module
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stays_on_loopback")]

RESPONSES_EVENTS = [
    "response.created", "response.in_progress", "response.output_item.added",
    "response.content_part.added", *["response.output_text.delta"] * 5,
    "response.output_text.done", "response.content_part.done", "response.output_item.done",
    "response.completed",
]  # fmt: skip
ANTHROPIC_BETA = "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"
MESSAGES = [{"role": "user", "content": "Say hi"}]


# =========================================================================== Responses


@pytest.mark.parametrize(
    ("headers", "upstream", "model", "price"),
    [
        (QUALITY, "alpha", "m-premium", (10, 2.5, 30)),
        (BUDGET, "beta", "m-cheap", (0.1, 0.025, 0.4)),
    ],
    ids=["quality", "budget"],
)
def test_responses_create_swaps_model(
    oai: openai.OpenAI,
    ups: dict[str, FakeUpstream],
    proxy: ProxyProcess,
    headers: dict[str, str],
    upstream: str,
    model: str,
    price: tuple[float, float, float],
) -> None:
    ups[upstream].cached_tokens, ups[upstream].reasoning_tokens = 3, 2
    body = {"model": "gpt-4o", "input": "Say hi", "instructions": "Be brief.",
            "temperature": 0.25, "metadata": {"k": "v"}}  # fmt: skip
    raw = oai.responses.with_raw_response.create(**body, extra_headers=headers)
    resp = raw.parse()
    assert resp.model == model and resp.output_text == f"Hello from {upstream}"
    h = raw.headers
    assert (h["x-orchestrator-model"], h["x-orchestrator-provider"]) == (model, upstream)
    assert h["x-orchestrator-attempts"] == "1"
    [seen] = ups[upstream].requests()
    assert seen.path == "/v1/responses"
    assert seen.json.pop("model") == model
    body.pop("model")
    assert seen.json == body  # only `model` changed
    assert all(not f.requests() for n, f in ups.items() if n != upstream)
    assert_own_keys_only(ups)
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["provider"], row["routed_model"]) == ("responses", upstream, model)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (3, 2)
    usage = (PROMPT_TOKENS - 3, 3, 0, COMPLETION_TOKENS)
    assert row["cost_usd"] == pytest.approx(cost_usd(usage, price))
    assert row["unpriced"] == 0 and row["outcome"] == "ok" and row["requested_model"] == "gpt-4o"


def test_responses_stream_passes_event_by_event(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    slow_stamped(ups["alpha"])
    ups["alpha"].cached_tokens = 4
    kinds, seq, pieces = [], [], []
    first_at, final = None, None
    with oai.responses.with_streaming_response.create(
        model="gpt-4o", input="Say hi", stream=True, extra_headers=QUALITY
    ) as resp:
        h = resp.headers
        for event in resp.parse():
            kinds.append(event.type)
            seq.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                first_at = first_at or time.perf_counter_ns()
                pieces.append(event.delta)
            if event.type == "response.completed":
                final = event.response
    assert kinds == RESPONSES_EVENTS and seq == list(range(len(RESPONSES_EVENTS)))
    text, sent = unstamp(pieces)
    assert text == "Hello from alpha"
    assert first_at is not None and first_at < sent[-1], "events were buffered, not streamed"
    assert final is not None and final.model == "m-premium" and final.usage is not None
    assert (h["x-orchestrator-provider"], h["x-orchestrator-model"]) == ("alpha", "m-premium")
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["stream"], row["outcome"]) == ("responses", 1, "ok")
    assert (row["prompt_tokens"], row["cached_tokens"]) == (PROMPT_TOKENS, 4)
    assert row["completion_tokens"] == COMPLETION_TOKENS
    usage = (PROMPT_TOKENS - 4, 4, 0, COMPLETION_TOKENS)
    assert row["cost_usd"] == pytest.approx(cost_usd(usage, (10, 2.5, 30)))


def _responses_call(oai: openai.OpenAI, stream: bool, **kw: Any) -> tuple[httpx.Headers, str]:
    """One Responses call (streamed or not): the answer's headers and its text."""
    if not stream:
        raw = oai.responses.with_raw_response.create(model="gpt-4o", input="Say hi", **kw)
        return raw.headers, raw.parse().output_text
    with oai.responses.with_streaming_response.create(
        model="gpt-4o", input="Say hi", stream=True, **kw
    ) as resp:
        deltas = [e.delta for e in resp.parse() if e.type == "response.output_text.delta"]
        return resp.headers, "".join(deltas)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_fallback_on_500(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess, stream: bool
) -> None:
    ups["alpha"].fail(Status(500), Status(500))  # one retry on the same target, then beta
    h, text = _responses_call(oai, stream, extra_headers=QUALITY)
    assert (h["x-orchestrator-provider"], h["x-orchestrator-model"]) == ("beta", "m-cheap")
    assert h["x-orchestrator-attempts"] == "3"
    assert text == "Hello from beta"
    assert len(ups["alpha"].requests()) == 2
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["attempts"], row["outcome"]) == ("responses", 3, "ok")
    assert [a["provider"] for a in json.loads(row["attempt_log"])] == ["alpha", "alpha", "beta"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    usage = (PROMPT_TOKENS, 0, 0, COMPLETION_TOKENS)
    assert row["cost_usd"] == pytest.approx(cost_usd(usage, (0.1, 0.025, 0.4)))
    assert_own_keys_only(ups)


def test_responses_streamed_fallback_arrives_before_upstream_finished(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].fail(Status(503, "overloaded"))
    slow_stamped(ups["beta"])
    pieces, first_at = [], None
    with oai.responses.with_streaming_response.create(
        model="gpt-4o", input="Say hi", stream=True, extra_headers=QUALITY
    ) as resp:
        assert resp.headers["x-orchestrator-attempts"] == "2"
        for e in resp.parse():
            if e.type == "response.output_text.delta":
                first_at = first_at or time.perf_counter_ns()
                pieces.append(e.delta)
    text, sent = unstamp(pieces)
    assert text == "Hello from beta"
    assert first_at is not None and first_at < sent[-1], "events were buffered, not streamed"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_hung_upstream_times_out_and_falls_back(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess, stream: bool
) -> None:
    ups["alpha"].fail(Hang())
    t0 = time.monotonic()
    h, text = _responses_call(oai, stream, extra_headers=QUALITY)
    elapsed = time.monotonic() - t0
    assert h["x-orchestrator-provider"] == "beta" and text == "Hello from beta"
    # given up on at the first-token timeout, not before it and not much later
    assert FIRST_TOKEN_MS / 1000 <= elapsed < FIRST_TOKEN_MS / 1000 + 2.0
    assert len(ups["alpha"].requests()) == 1  # a silent target is not retried
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["attempts"], row["routed_model"]) == ("responses", 2, "m-cheap")
    assert json.loads(row["attempt_log"])[0]["outcome"] == "timeout"
    assert row["completion_tokens"] == COMPLETION_TOKENS and row["cost_usd"] is not None
    assert_own_keys_only(ups)


def test_responses_stream_cut_mid_answer_raises_and_is_truncated(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["alpha"].fail(CutStream(after_events=2))
    deltas, errors, rid = [], [], ""
    with (
        pytest.raises((openai.APIError, httpx.HTTPError)),
        oai.responses.with_streaming_response.create(
            model="gpt-4o", input="Say hi", stream=True, extra_headers=QUALITY
        ) as resp,
    ):
        rid = resp.headers["x-orchestrator-request-id"]
        for e in resp.parse():
            if e.type == "response.output_text.delta":
                deltas.append(e.delta)
            elif e.type == "error":
                errors.append(e.message)
            assert e.type != "response.completed"
    # what arrived before the break (aiohttp raises the break before the bytes that came
    # with it, so those may be lost), then a Responses error event
    assert len(deltas) <= 2
    assert len(errors) == 1 and errors[0]
    row = ledger_row(proxy, rid)
    assert (row["api"], row["outcome"]) == ("responses", "truncated")


def test_previous_response_id_stays_pinned_to_its_provider(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    first = oai.responses.with_raw_response.create(model="gpt-4o", input="Hi", extra_headers=BUDGET)
    turn1 = first.parse()
    assert first.headers["x-orchestrator-provider"] == "beta"
    assert turn1.id in ups["beta"].stored_responses()
    # alpha ranks first for `quality`, but only beta holds turn 1
    second = oai.responses.with_raw_response.create(
        model="gpt-4o", input="And again", previous_response_id=turn1.id, extra_headers=QUALITY
    )
    turn2 = second.parse()
    assert second.headers["x-orchestrator-provider"] == "beta"
    assert turn2.output_text == "Hello from beta"
    h, text = _responses_call(oai, True, previous_response_id=turn2.id, extra_headers=QUALITY)
    assert h["x-orchestrator-provider"] == "beta" and text == "Hello from beta"
    assert ups["alpha"].requests() == []
    sent = [s.json.get("previous_response_id") for s in ups["beta"].requests()]
    assert sent == [None, turn1.id, turn2.id]
    assert_own_keys_only(ups)
    row = ledger_row(proxy, second.headers["x-orchestrator-request-id"])
    assert (row["api"], row["provider"], row["outcome"]) == ("responses", "beta", "ok")


def test_a_stored_response_is_retrieved_and_deleted_where_it_lives(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    turn = oai.responses.create(model="gpt-4o", input="Hi", extra_headers=BUDGET)
    assert turn.id in ups["beta"].stored_responses()  # beta answered, not the addressed host
    raw = oai.responses.with_raw_response.retrieve(turn.id)
    assert raw.headers["x-orchestrator-provider"] == "beta"
    assert raw.parse().id == turn.id
    deleted = oai.responses.with_raw_response.delete(turn.id)
    assert deleted.status_code == 200 and deleted.headers["x-orchestrator-provider"] == "beta"
    assert turn.id not in ups["beta"].stored_responses()
    calls = [(s.method, s.path) for s in ups["beta"].requests() if s.method != "POST"]
    assert calls == [("GET", f"/v1/responses/{turn.id}"), ("DELETE", f"/v1/responses/{turn.id}")]
    assert_own_keys_only(ups)  # beta's own key there, never the client's
    with pytest.raises(openai.NotFoundError):  # gone at its home: the home's own 404
        oai.responses.retrieve(turn.id)


def test_pinned_provider_down_is_a_clear_error_never_sent_elsewhere(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    turn1 = oai.responses.create(model="gpt-4o", input="Hi", extra_headers=BUDGET)
    ups["beta"].always(Status(503, "beta is down"))
    try:
        with pytest.raises(openai.APIStatusError) as ei:
            oai.responses.create(model="gpt-4o", input="Again", previous_response_id=turn1.id,
                                 extra_headers=QUALITY)  # fmt: skip
    finally:
        ups["beta"].always(None)
    err = ei.value
    assert err.status_code == 503
    assert "x-orchestrator-request-id" in err.response.headers
    message = str(err.message)
    assert "beta" in message and ("previous_response_id" in message or turn1.id in message)
    assert ups["alpha"].requests() == []  # never sent where no such response lives
    assert OPENAI_CLIENT_KEY not in json.dumps(err.body)


def test_responses_all_attempts_failed_is_a_responses_error(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].always(Status(503, "alpha is down"))
    ups["beta"].always(Status(503, "beta is down"))
    try:
        with pytest.raises(openai.APIStatusError) as ei:
            oai.responses.create(model="gpt-4o", input="Hi", extra_headers=QUALITY)
    finally:
        ups["alpha"].always(None)
        ups["beta"].always(None)
    err = ei.value
    assert err.status_code == 503
    body = err.body
    assert isinstance(body, dict) and body["code"] == "all_attempts_failed"
    assert "alpha is down" in body["message"] or "beta is down" in body["message"]
    assert {a["provider"] for a in body["attempts"]} == {"alpha", "beta"}


def test_responses_websocket_upgrade_is_answered_here(proxy: ProxyProcess) -> None:
    """Codex CLI opens `wss://api.openai.com/v1/responses` first and uses HTTPS + SSE only
    when that fails; on a 426 it falls back at once (on a 404 or 502 after five retries).
    Passed through, the socket would reach the real host and bypass the router."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
               "Authorization": f"Bearer {OPENAI_CLIENT_KEY}"}  # fmt: skip
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as c:
        r = c.get("https://api.openai.com/v1/responses", headers=headers)
    try:
        assert outside_hosts(proxy) == [], "the upgrade was passed through to the real host"
        assert r.status_code == 426, (r.status_code, r.text[:300])
    finally:
        forget_outside_hosts(proxy)  # reported here, not once more by stays_on_loopback


# =========================================================================== embeddings


def _vectors(data: list[Any]) -> list[list[float]]:
    out = []
    for d in data:
        emb = d.embedding
        if isinstance(emb, str):
            raw = base64.b64decode(emb)
            emb = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        out.append(emb)
    return out


@pytest.mark.parametrize("encoding", ["float", "sdk-default-base64"])
def test_embeddings_create(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess, encoding: str
) -> None:
    kw: dict[str, Any] = {"encoding_format": "float"} if encoding == "float" else {}
    inputs = ["first text", "second text"]
    raw = oai.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=inputs, dimensions=16, **kw
    )
    got = raw.parse()
    h = raw.headers
    answered = h["x-orchestrator-provider"]
    assert answered in ("embed-a", "embed-b")
    assert h["x-orchestrator-model"] == "text-embedding-3-small"
    assert got.model == "text-embedding-3-small"
    for vec, item in zip(_vectors(got.data), inputs, strict=True):
        assert vec == pytest.approx(fake_embeddings.vector(item, 16), abs=1e-6)
    [seen] = ups[answered].requests()
    wire = "float" if encoding == "float" else "base64"
    assert (seen.json["dimensions"], seen.json["encoding_format"]) == (16, wire)
    assert seen.json["input"] == inputs and seen.json["model"] == "text-embedding-3-small"
    assert ups["gamma"].requests() == []
    assert_own_keys_only(ups)
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["outcome"], row["provider"]) == ("embeddings", "ok", answered)
    assert row["routed_model"] == "text-embedding-3-small"
    assert row["prompt_tokens"] == PROMPT_TOKENS
    assert row["cost_usd"] == pytest.approx(PROMPT_TOKENS * 0.02 / 1e6) and row["unpriced"] == 0


def test_embeddings_fall_back_to_the_same_model_elsewhere(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    healthy = oai.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
    first = healthy.headers["x-orchestrator-provider"]
    other = "embed-b" if first == "embed-a" else "embed-a"
    for f in ups.values():
        f.clear()
    ups[first].fail(Status(500), Status(500))
    raw = oai.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="x", encoding_format="float"
    )
    assert raw.headers["x-orchestrator-provider"] == other
    assert raw.headers["x-orchestrator-attempts"] == "3"
    assert len(raw.parse().data[0].embedding) == fake_embeddings.DEFAULT_DIMENSIONS
    assert [s.json["model"] for s in ups[other].requests()] == ["text-embedding-3-small"]
    assert ups["gamma"].requests() == []  # another model is never a fallback
    row = ledger_row(proxy, raw.headers["x-orchestrator-request-id"])
    assert (row["api"], row["attempts"], row["provider"]) == ("embeddings", 3, other)
    assert row["cost_usd"] == pytest.approx(PROMPT_TOKENS * 0.02 / 1e6)
    assert_own_keys_only(ups)


def test_embeddings_never_use_another_model(
    oai: openai.OpenAI, ups: dict[str, FakeUpstream]
) -> None:
    ups["embed-a"].always(Status(503, "embed-a is down"))
    ups["embed-b"].always(Status(503, "embed-b is down"))
    try:
        with pytest.raises(openai.APIStatusError) as ei:
            oai.embeddings.create(model="text-embedding-3-small", input="x")
    finally:
        ups["embed-a"].always(None)
        ups["embed-b"].always(None)
    assert ei.value.status_code == 503
    assert ups["gamma"].requests() == []  # text-embedding-3-large would be a different space
    assert ups["alpha"].requests() == [] and ups["beta"].requests() == []


@pytest.fixture(scope="module")
def mixed(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """A proxy whose alpha and beta also offer text-embedding-3-small beside their chat
    models, the cheapest offering of all."""
    p = guarded_proxy(tmp_path_factory.mktemp("mixed"), apis_config(ups),
                      embedding_models_among_chat()).start()  # fmt: skip
    yield p
    p.stop()


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_generation_never_goes_to_an_embedding_model(
    mixed: ProxyProcess, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    for k, v in mixed.client_env().items():
        monkeypatch.setenv(k, v)
    with openai.OpenAI(api_key=OPENAI_CLIENT_KEY, max_retries=0, timeout=20) as c:
        if api == "chat":
            raw: Any = c.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MESSAGES, extra_headers=BUDGET
            )
        else:
            raw = c.responses.with_raw_response.create(
                model="gpt-4o", input="Say hi", extra_headers=BUDGET
            )
        embedded = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
    assert raw.headers["x-orchestrator-model"] == "m-cheap", "routed to an embedding model"
    assert embedded.headers["x-orchestrator-model"] == "text-embedding-3-small"
    assert outside_hosts(mixed) == []


# =========================================================================== Messages


def _cache_usage(f: FakeUpstream) -> None:
    """Make `f` report 11 prompt tokens as 6 fresh, 3 read from cache and 2 written to it."""
    f.cached_tokens, f.cache_write_tokens = 3, 2


# budget first: once claude-a's latency is observed and the 5 s re-rank has run, its
# measured milliseconds can beat claude-b's price-based latency prior in the budget
# profile (latency weighs 0.1) — a re-rank landing between the two cases made that one
# flaky; quality (0.8 on quality) is not moved by claude-b's latency either way
@pytest.mark.parametrize(
    ("headers", "upstream", "model", "price"),
    [(BUDGET, "claude-b", "claude-haiku-4-5", (1, 0.1, 5)),
     (QUALITY, "claude-a", "claude-sonnet-4-5", (3, 0.3, 15))],
    ids=["budget", "quality"],
)  # fmt: skip
def test_messages_create_swaps_model(
    ant: anthropic.Anthropic,
    ups: dict[str, FakeUpstream],
    proxy: ProxyProcess,
    headers: dict[str, str],
    upstream: str,
    model: str,
    price: tuple[float, float, float],
) -> None:
    _cache_usage(ups[upstream])
    raw = ant.messages.with_raw_response.create(
        model="claude-opus-4-1", max_tokens=64, messages=MESSAGES, system="Be brief.",
        extra_headers={**headers, "anthropic-beta": ANTHROPIC_BETA},
    )  # fmt: skip
    msg = raw.parse()
    assert msg.model == model and msg.content[0].text == f"Hello from {upstream}"
    assert msg.usage.cache_read_input_tokens == 3 and msg.usage.cache_creation_input_tokens == 2
    h = raw.headers
    assert (h["x-orchestrator-model"], h["x-orchestrator-provider"]) == (model, upstream)
    [seen] = ups[upstream].requests()
    assert seen.path == "/v1/messages" and seen.json["model"] == model
    assert seen.json["system"] == "Be brief." and seen.json["messages"] == MESSAGES
    assert seen.headers["anthropic-version"] == ant.default_headers["anthropic-version"]
    assert seen.headers["anthropic-beta"] == ANTHROPIC_BETA
    # a cheaper model on a provider that does not speak Messages is never a candidate
    assert all(not f.requests() for n, f in ups.items() if n != upstream)
    assert_own_keys_only(ups)
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["provider"], row["routed_model"]) == ("messages", upstream, model)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert (row["cached_tokens"], row["cache_write_tokens"]) == (3, 2)
    usage = (PROMPT_TOKENS - 5, 3, 2, COMPLETION_TOKENS)
    assert row["cost_usd"] == pytest.approx(cost_usd(usage, price)) and row["unpriced"] == 0


def test_messages_stream_passes_event_by_event(
    ant: anthropic.Anthropic, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    slow_stamped(ups["claude-a"])
    _cache_usage(ups["claude-a"])
    pieces, first_at = [], None
    with ant.messages.stream(
        model="claude-opus-4-1", max_tokens=64, messages=MESSAGES, extra_headers=QUALITY
    ) as stream:
        h = stream.response.headers
        for piece in stream.text_stream:
            first_at = first_at or time.perf_counter_ns()
            pieces.append(piece)
        final = stream.get_final_message()
    text, sent = unstamp(pieces)
    assert text == "Hello from claude-a"
    assert first_at is not None and first_at < sent[-1], "events were buffered, not streamed"
    assert final.model == "claude-sonnet-4-5" and final.usage.output_tokens == COMPLETION_TOKENS
    assert final.usage.cache_read_input_tokens == 3
    assert h["x-orchestrator-provider"] == "claude-a"
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["stream"], row["outcome"]) == ("messages", 1, "ok")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert (row["cached_tokens"], row["cache_write_tokens"]) == (3, 2)
    usage = (PROMPT_TOKENS - 5, 3, 2, COMPLETION_TOKENS)
    assert row["cost_usd"] == pytest.approx(cost_usd(usage, (3, 0.3, 15)))


@pytest.mark.parametrize("api", ["responses", "messages"])
def test_a_client_leaving_at_the_streams_end_got_a_complete_answer(
    oai: openai.OpenAI, ant: anthropic.Anthropic, ups: dict[str, FakeUpstream],
    proxy: ProxyProcess, api: str,
) -> None:  # fmt: skip
    # agents stop reading at response.completed / message_stop; an upstream that holds its
    # connection open after that must not make the ledger call the answer an abort
    ups["alpha" if api == "responses" else "claude-a"].fail(LingerAfterEnd(seconds=1.5))
    t0 = time.monotonic()
    if api == "responses":
        with oai.responses.with_streaming_response.create(
            model="gpt-4o", input="Say hi", stream=True, extra_headers=QUALITY
        ) as resp:
            h = resp.headers
            last = next(e.type for e in resp.parse() if e.type == "response.completed")
    else:
        with ant.messages.stream(
            model="claude-opus-4-1", max_tokens=64, messages=MESSAGES, extra_headers=QUALITY
        ) as stream:
            h = stream.response.headers
            last = next(e.type for e in stream if e.type == "message_stop")
    assert time.monotonic() - t0 < 1.5, "the end event waited for the upstream's end of body"
    assert last in ("response.completed", "message_stop")
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["outcome"], row["error"]) == (api, "ok", None), row
    assert row["completion_tokens"] == COMPLETION_TOKENS


def _messages_call(ant: anthropic.Anthropic, stream: bool) -> tuple[httpx.Headers, str]:
    """One Messages call (streamed or not) with the `quality` profile: headers and text."""
    if not stream:
        raw = ant.messages.with_raw_response.create(
            model="claude-opus-4-1", max_tokens=64, messages=MESSAGES, extra_headers=QUALITY
        )
        return raw.headers, raw.parse().content[0].text
    with ant.messages.stream(
        model="claude-opus-4-1", max_tokens=64, messages=MESSAGES, extra_headers=QUALITY
    ) as s:
        text = "".join(s.text_stream)
        assert s.get_final_message().content[0].text == text
        return s.response.headers, text


@pytest.mark.parametrize(
    ("faults", "attempts"),
    [((Status(500), Status(500)), 3), ((overloaded(),), 2)],
    ids=["500", "529-overloaded"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_messages_fallback(
    ant: anthropic.Anthropic,
    ups: dict[str, FakeUpstream],
    proxy: ProxyProcess,
    faults: tuple[Status, ...],
    attempts: int,
    stream: bool,
) -> None:
    ups["claude-a"].fail(*faults)
    h, text = _messages_call(ant, stream)
    assert (h["x-orchestrator-provider"], h["x-orchestrator-model"]) == (
        "claude-b", "claude-haiku-4-5")  # fmt: skip
    assert text == "Hello from claude-b" and h["x-orchestrator-attempts"] == str(attempts)
    assert len(ups["claude-a"].requests()) == attempts - 1
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["attempts"], row["outcome"]) == ("messages", attempts, "ok")
    assert [a["provider"] for a in json.loads(row["attempt_log"])][-1] == "claude-b"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert_own_keys_only(ups)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_messages_hung_upstream_times_out_and_falls_back(
    ant: anthropic.Anthropic, ups: dict[str, FakeUpstream], proxy: ProxyProcess, stream: bool
) -> None:
    ups["claude-a"].fail(Hang())
    t0 = time.monotonic()
    h, text = _messages_call(ant, stream)
    elapsed = time.monotonic() - t0
    assert h["x-orchestrator-provider"] == "claude-b" and text == "Hello from claude-b"
    assert FIRST_TOKEN_MS / 1000 <= elapsed < FIRST_TOKEN_MS / 1000 + 2.0
    assert len(ups["claude-a"].requests()) == 1
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["attempts"], row["routed_model"]) == ("messages", 2, "claude-haiku-4-5")
    assert json.loads(row["attempt_log"])[0]["outcome"] == "timeout"
    usage = (PROMPT_TOKENS, 0, 0, COMPLETION_TOKENS)
    assert row["cost_usd"] == pytest.approx(cost_usd(usage, (1, 0.1, 5)))
    assert_own_keys_only(ups)


def test_messages_stream_cut_mid_answer_raises_and_is_truncated(
    ant: anthropic.Anthropic, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    ups["claude-a"].fail(CutStream(after_events=2))
    pieces, rid = [], ""
    with (
        pytest.raises(anthropic.APIStatusError) as ei,
        ant.messages.stream(
            model="claude-opus-4-1", max_tokens=64, messages=MESSAGES, extra_headers=QUALITY
        ) as stream,
    ):
        rid = stream.response.headers["x-orchestrator-request-id"]
        pieces.extend(stream.text_stream)
    assert len(pieces) <= 2  # what arrived before the break, then the router's error event
    body = ei.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["message"]
    row = ledger_row(proxy, rid)
    assert (row["api"], row["outcome"]) == ("messages", "truncated")


@pytest.mark.parametrize("fail", [False, True], ids=["healthy", "fallback-500"])
def test_count_tokens(
    ant: anthropic.Anthropic, ups: dict[str, FakeUpstream], proxy: ProxyProcess, fail: bool
) -> None:
    if fail:
        ups["claude-a"].fail(Status(500), Status(500))
    ups["claude-a"].prompt_tokens = ups["claude-b"].prompt_tokens = 42
    raw = ant.messages.with_raw_response.count_tokens(
        model="claude-opus-4-1", messages=MESSAGES, extra_headers=QUALITY
    )
    assert raw.parse().input_tokens == 42
    upstream = "claude-b" if fail else "claude-a"
    h = raw.headers
    assert h["x-orchestrator-provider"] == upstream
    seen = ups[upstream].requests()[-1]
    assert seen.path == "/v1/messages/count_tokens"
    assert seen.json["model"] == h["x-orchestrator-model"]
    assert seen.headers["anthropic-version"] == ant.default_headers["anthropic-version"]
    assert all(not f.requests() for n, f in ups.items() if not n.startswith("claude-"))
    assert_own_keys_only(ups)
    row = ledger_row(proxy, h["x-orchestrator-request-id"])
    assert (row["api"], row["outcome"], row["provider"]) == ("messages", "ok", upstream)
    assert row["attempts"] == (3 if fail else 1)
    assert not row["cost_usd"] and row["unpriced"] == 0  # free: not billed, not flagged


def test_messages_all_attempts_failed_is_an_anthropic_error(
    ant: anthropic.Anthropic, ups: dict[str, FakeUpstream]
) -> None:
    ups["claude-a"].always(Status(503, "claude-a is down"))
    ups["claude-b"].always(overloaded())
    try:
        with pytest.raises(anthropic.APIStatusError) as ei:
            ant.messages.create(model="claude-opus-4-1", max_tokens=64, messages=MESSAGES)
    finally:
        ups["claude-a"].always(None)
        ups["claude-b"].always(None)
    err = ei.value
    # the SDK's own class for the status: 529 (the last answer was overloaded) or 503
    assert isinstance(err, anthropic.InternalServerError) and err.status_code in (503, 529)
    body = err.body
    assert isinstance(body, dict) and body["type"] == "error", body
    want = "overloaded_error" if err.status_code == 529 else "api_error"
    assert body["error"]["type"] == want, body
    assert "claude-a is down" in json.dumps(body) and "Overloaded" in json.dumps(body)
    assert "x-orchestrator-request-id" in err.response.headers
    assert ANTHROPIC_CLIENT_KEY not in json.dumps(body)


def test_messages_unknown_profile_is_an_anthropic_400(
    ant: anthropic.Anthropic, ups: dict[str, FakeUpstream]
) -> None:
    with pytest.raises(anthropic.BadRequestError) as ei:
        ant.messages.create(model="claude-opus-4-1", max_tokens=64, messages=MESSAGES,
                            extra_headers={"X-Orchestrator-Profile": "turbo"})  # fmt: skip
    body = ei.value.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == "invalid_request_error"
    assert "turbo" in body["error"]["message"]
    assert all(not f.requests() for f in ups.values())
