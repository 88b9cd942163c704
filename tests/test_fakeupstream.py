"""Tests of the loopback fake upstream itself (wire format + every fault)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from addon.routing.fallback import OutcomeKind
from addon.wire import embeddings, messages, responses
from addon.wire.usage import Usage
from tests.fakeupstream import (
    RATE_LIMIT,
    CutStream,
    Delay,
    FakeUpstream,
    Hang,
    MalformedEvent,
    NoDone,
    Reset,
    SlowFirstToken,
    Stall,
    Status,
    content_policy,
    context_length_exceeded,
    overloaded,
    prompt_too_long,
)

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


@pytest.fixture(autouse=True)
def quiet_server(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a test does to it, the fake must not log warnings/errors (aiohttp, asyncio)."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    yield
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    noisy = [
        r
        for r in records
        if r.levelno >= logging.WARNING and r.name.startswith(("aiohttp", "asyncio"))
    ]
    assert not noisy, [r.getMessage() for r in noisy]


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("up-a", cached_tokens=3, reasoning_tokens=2) as f:
        yield f


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


@pytest.fixture
def sdk(fake: FakeUpstream) -> Iterator[OpenAI]:
    with OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as client:
        yield client


def sse_data(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def read_sse(http: httpx.Client, url: str, body: dict, **kw) -> tuple[list[str], Exception | None]:
    """Collect raw SSE lines until the stream ends or fails; return (lines, error)."""
    lines: list[str] = []
    try:
        with http.stream("POST", url, json=body, **kw) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                lines.append(line)
    except (httpx.TransportError, httpx.TimeoutException) as exc:
        return lines, exc
    return lines, None


def content_of(data: list[str]) -> str:
    out = []
    for d in data:
        if d == "[DONE]":
            continue
        with_choices = json.loads(d)["choices"]
        out += [c["delta"].get("content") or "" for c in with_choices]
    return "".join(out)


# --------------------------------------------------------------------------- normal behaviour


def test_sdk_non_streaming_shape(fake: FakeUpstream, sdk: OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="m1", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-fake-upstream"] == "up-a"
    assert raw.headers["content-type"] == "application/json"
    c = raw.parse()
    assert c.id.startswith("chatcmpl-") and c.object == "chat.completion" and c.created > 0
    assert c.model == "m1" and c.system_fingerprint
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == "Hello from fake"
    assert c.choices[0].finish_reason == "stop"
    u = c.usage
    assert u is not None and (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (11, 7, 18)
    assert u.prompt_tokens_details.cached_tokens == 3
    assert u.completion_tokens_details.reasoning_tokens == 2


def test_sdk_streaming_with_usage(fake: FakeUpstream, sdk: OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" and ch.model == "m1" for ch in chunks)
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        == "Hello from fake"
    )
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    *body, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens == 18
    assert all(ch.usage is None for ch in body)
    assert len(body) == 1 + 5 + 1  # role, content events, finish


def test_stream_timing_and_no_usage_key_without_include_usage(http: httpx.Client) -> None:
    with FakeUpstream(events=3, first_event_delay=0.15, event_gap=0.05) as f:
        t0 = time.monotonic()
        lines, err = read_sse(http, f.base_url + "/chat/completions", {**CHAT, "stream": True})
        elapsed = time.monotonic() - t0
    data = sse_data(lines)
    assert err is None and data[-1] == "[DONE]"
    assert all("usage" not in json.loads(d) for d in data[:-1])
    assert len(data) == 1 + 3 + 1 + 1 and content_of(data) == "Hello from fake"
    assert elapsed >= 0.15 + 2 * 0.05


def test_sdk_legacy_completions_embeddings_models(fake: FakeUpstream, sdk: OpenAI) -> None:
    c = sdk.completions.create(model="m2", prompt="hi")
    assert (
        c.object == "text_completion" and c.model == "m2" and c.choices[0].text == "Hello from fake"
    )
    assert c.usage is not None and c.usage.total_tokens == 18
    chunks = list(
        sdk.completions.create(
            model="m2", prompt="hi", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Hello from fake"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    # by default the SDK asks for base64 and decodes it into floats itself
    for e in (
        sdk.embeddings.create(model="e1", input=["a", "b"]),
        sdk.embeddings.create(model="e1", input=["a", "b"], encoding_format="float"),
    ):
        assert [d.index for d in e.data] == [0, 1] and len(e.data[0].embedding) == 8
        assert all(isinstance(x, float) and -1 < x < 1 for x in e.data[1].embedding)
        assert e.usage.prompt_tokens == 11 and e.model == "e1"
    assert [m.id for m in sdk.models.list()] == ["fake-model"]
    assert [s.path for s in fake.requests()] == [
        "/v1/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/embeddings",
        "/v1/models",
    ]


def test_unknown_path_and_bad_json(fake: FakeUpstream, http: httpx.Client) -> None:
    r = http.post(fake.base_url + "/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    r = http.post(
        fake.base_url + "/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] is None
    bad = fake.requests("/chat/completions")
    assert len(bad) == 1 and bad[0].body == b"{not json" and bad[0].json is None


def test_seen_records_request(fake: FakeUpstream, http: httpx.Client) -> None:
    t0 = time.monotonic()
    http.post(fake.base_url + "/chat/completions", json=CHAT, headers={"X-Custom": "v"})
    (s,) = fake.requests()
    assert (s.method, s.path, s.json) == ("POST", "/v1/chat/completions", CHAT)
    assert s.headers["x-custom"] == "v" and all(k == k.lower() for k in s.headers)
    assert json.loads(s.body) == CHAT and t0 <= s.at <= time.monotonic()
    fake.clear()
    assert fake.requests() == []


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "code", "etype", "ecode", "retry_after"),
    [
        (Status(500), 500, "server_error", None, None),
        (Status(503, "overloaded", retry_after="7"), 503, "server_error", None, "7"),
        (RATE_LIMIT, 429, "rate_limit_exceeded", "rate_limit_exceeded", "1"),
        (context_length_exceeded(), 400, "invalid_request_error", "context_length_exceeded", None),
        (content_policy(), 400, "invalid_request_error", "content_policy_violation", None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_status_faults(
    fake: FakeUpstream,
    http: httpx.Client,
    fault: Status,
    code: int,
    etype: str,
    ecode: str | None,
    retry_after: str | None,
    stream: bool,
) -> None:
    fake.fail(fault)
    r = http.post(fake.base_url + "/chat/completions", json={**CHAT, "stream": stream})
    assert r.status_code == code and r.headers.get("retry-after") == retry_after
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"], err["message"]) == (etype, ecode, fault.message)


@pytest.mark.parametrize(
    ("fault", "exc"),
    [
        (RATE_LIMIT, openai.RateLimitError),
        (context_length_exceeded(), openai.BadRequestError),
        (Status(502), openai.InternalServerError),
        (Reset(), openai.APIConnectionError),
    ],
)
def test_faults_seen_by_sdk(fake: FakeUpstream, sdk: OpenAI, fault, exc) -> None:
    fake.fail(fault)
    with pytest.raises(exc):
        sdk.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    assert len(fake.requests()) == 1


def test_reset_aborts_before_any_byte(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.fail(Reset(), Reset())
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        http.post(fake.base_url + "/chat/completions", json=CHAT)
    with pytest.raises(httpx.TransportError):
        http.post(fake.base_url + "/chat/completions", json={**CHAT, "stream": True})
    assert len(fake.requests()) == 2


def test_hang_times_out_and_does_not_block_stop(http: httpx.Client) -> None:
    f = FakeUpstream().start()
    f.always(Hang())
    with pytest.raises(httpx.ReadTimeout):
        http.post(f.base_url + "/chat/completions", json=CHAT, timeout=httpx.Timeout(5.0, read=0.2))
    assert len(f.requests()) == 1

    def hung_while_stopping() -> None:
        with pytest.raises(httpx.TransportError):
            http.post(f.base_url + "/chat/completions", json=CHAT)

    t = threading.Thread(target=hung_while_stopping)
    t.start()
    f.wait_for_requests(2)
    t0 = time.monotonic()
    f.stop()
    t.join(5)
    assert time.monotonic() - t0 < 1.0 and not t.is_alive()


def test_cut_stream(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.fail(CutStream(2))
    lines, err = read_sse(http, fake.base_url + "/chat/completions", STREAM)
    data = sse_data(lines)
    assert isinstance(err, httpx.RemoteProtocolError)
    assert len(data) == 3 and "[DONE]" not in data and content_of(data) == "Hello "


def test_stall(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.fail(Stall(1))
    lines, err = read_sse(
        http, fake.base_url + "/chat/completions", STREAM, timeout=httpx.Timeout(5.0, read=0.25)
    )
    assert isinstance(err, httpx.ReadTimeout)
    assert content_of(sse_data(lines)) == "Hel"


def test_no_done(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.fail(NoDone())
    lines, err = read_sse(http, fake.base_url + "/chat/completions", STREAM)
    data = sse_data(lines)
    assert err is None and "[DONE]" not in data
    assert (
        json.loads(data[-1])["usage"]["total_tokens"] == 18
        and content_of(data) == "Hello from fake"
    )


def test_malformed_event(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.fail(MalformedEvent(1))
    lines, err = read_sse(http, fake.base_url + "/chat/completions", STREAM)
    data = sse_data(lines)
    bad = []
    for i, d in enumerate(data[:-1]):
        try:
            json.loads(d)
        except json.JSONDecodeError:
            bad.append(i)
    assert err is None and bad == [2] and data[-1] == "[DONE]"
    good = [d for i, d in enumerate(data) if i not in bad]
    assert content_of(good) == "Hello from fake" and json.loads(good[-2])["usage"] is not None


def test_slow_first_token(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.fail(SlowFirstToken(0.3))
    t0 = time.monotonic()
    with http.stream("POST", fake.base_url + "/chat/completions", json=STREAM) as r:
        headers_at = time.monotonic() - t0
        it = r.iter_lines()
        first = next(it)
        first_at = time.monotonic() - t0
        rest = list(it)
    assert r.status_code == 200 and headers_at < 0.2 <= 0.3 <= first_at
    assert first.startswith("data: ") and rest[-2] == "data: [DONE]"


def test_delay(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.fail(Delay(0.3), Delay(0.3))
    with pytest.raises(httpx.ReadTimeout):
        http.post(
            fake.base_url + "/chat/completions", json=CHAT, timeout=httpx.Timeout(5.0, read=0.1)
        )
    t0 = time.monotonic()
    r = http.post(fake.base_url + "/chat/completions", json=CHAT)
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.3


def test_fault_queue_fifo_model_filter_and_always(fake: FakeUpstream, http: httpx.Client) -> None:
    def status(model: str) -> int:
        return http.post(
            fake.base_url + "/chat/completions", json={**CHAT, "model": model}
        ).status_code

    fake.fail(Status(500), Status(502))
    fake.fail(Status(503), model="b")
    assert [status("a"), status("a"), status("a"), status("b"), status("b")] == [
        500,
        502,
        200,
        503,
        200,
    ]
    fake.fail(Status(504), model="b")
    assert [status("a"), status("b")] == [200, 504]  # a model-b fault is skipped by model a
    fake.always(Status(500), model="a")
    fake.fail(Status(429))
    assert [status("a"), status("a"), status("b")] == [429, 500, 200]  # queue before persistent
    fake.always(Status(502))
    assert [status("a"), status("b")] == [500, 502]  # model-specific persistent wins
    fake.always(None, model="a")
    assert status("a") == 502
    fake.clear()
    assert status("a") == 200 and len(fake.requests()) == 1


def test_wait_for_requests(fake: FakeUpstream) -> None:
    def later() -> None:
        with httpx.Client() as c:
            for _ in range(3):
                c.post(fake.base_url + "/chat/completions", json=CHAT)
            c.get(fake.base_url + "/models")

    t = threading.Thread(target=later)
    t.start()
    got = fake.wait_for_requests(3, path_suffix="/chat/completions")
    assert len(got) == 3
    assert len(fake.wait_for_requests(4)) == 4
    t.join()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        fake.wait_for_requests(5, timeout=0.05)
    assert time.monotonic() - t0 < 1.0


def test_client_disconnect_mid_stream_is_quiet(http: httpx.Client) -> None:
    with FakeUpstream(events=20, event_gap=0.02) as f:
        with http.stream("POST", f.base_url + "/chat/completions", json=STREAM) as r:
            next(r.iter_lines())
        # the server keeps writing into the closed socket; it must shrug that off
        assert http.post(f.base_url + "/chat/completions", json=CHAT).status_code == 200
        with FakeUpstream() as g:  # and a clean run on another instance, same process
            assert http.get(g.base_url + "/models").status_code == 200


def test_start_is_idempotent(http: httpx.Client) -> None:
    f = FakeUpstream("x")
    assert f.start() is f
    port = f.port
    assert f.start().port == port and f.base_url == f"http://127.0.0.1:{port}/v1"
    assert http.get(f.base_url + "/models").headers["x-fake-upstream"] == "x"
    f.stop()
    f.stop()
    with f:  # restarting rebinds the same port
        assert f.port == port and http.get(f.base_url + "/models").status_code == 200


def test_cli_entry_point(http: httpx.Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "tests.fakeupstream",
        "--port",
        str(port),
        "--events",
        "3",
        "--delay-ms",
        "1",
    ]
    with subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            url = f"http://127.0.0.1:{port}/v1"
            deadline = time.monotonic() + 10
            while True:  # poll until it answers
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    r = http.get(url + "/models", timeout=0.5)
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "CLI fake never answered"
                    time.sleep(0.02)
            assert r.status_code == 200
            lines, err = read_sse(http, url + "/chat/completions", STREAM)
            assert err is None and len(sse_data(lines)) == 1 + 3 + 1 + 1 + 1
        finally:
            proc.terminate()
            rc = proc.wait(10)
    assert rc == 0


# --------------------------------------------------------------------------- Responses, Messages, embeddings

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
MESSAGES = {
    "model": "claude-x",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "hi"}],
}
RESPONSES = {"model": "m1", "input": "hi"}
RESPONSES_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 5,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
MESSAGES_ORDER = [
    "message_start",
    "content_block_start",
    "ping",
    *["content_block_delta"] * 5,
    "content_block_stop",
    "message_delta",
    "message_stop",
]
# endpoint path, request body, headers, the content delta's event type, events before them
STREAMS = {
    "responses": ("/responses", RESPONSES, {}, "response.output_text.delta", 4),
    "messages": ("/messages", MESSAGES, ANTHROPIC_HEADERS, "content_block_delta", 3),
}


def read_events(
    http: httpx.Client, url: str, body: dict, headers: dict[str, str], **kw: Any
) -> tuple[list[tuple[str | None, str]], Exception | None]:
    """(event name, data) of each SSE event until the stream ends or fails, and the error."""
    lines, err = read_sse(http, url, body, headers=headers, **kw)
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, line.removeprefix("data: ")))
            name = None
    return events, err


def parsed(events: list[tuple[str | None, str]]) -> list[dict[str, Any]]:
    return [json.loads(d) for _, d in events]


def test_responses_sdk_json_and_remembered_ids(fake: FakeUpstream, sdk: OpenAI) -> None:
    raw = sdk.responses.with_raw_response.create(model="m1", input="hi", instructions="Be brief.")
    assert raw.headers["content-type"] == "application/json"
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert (r.model, r.output_text, r.instructions) == ("m1", "Hello from fake", "Be brief.")
    u = r.usage
    assert u is not None and (u.input_tokens, u.output_tokens, u.total_tokens) == (11, 7, 18)
    assert (u.input_tokens_details.cached_tokens, u.output_tokens_details.reasoning_tokens) == (
        3,
        2,
    )
    follow = sdk.responses.create(model="m1", input="and?", previous_response_id=r.id, store=False)
    assert follow.previous_response_id == r.id and follow.store is False
    assert fake.stored_responses() == {r.id}  # store=False: not kept
    for missing in ("resp_unknown", follow.id):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.responses.create(model="m1", input="x", previous_response_id=missing)
        assert info.value.code == "previous_response_not_found"
        assert info.value.param == "previous_response_id"
        assert info.value.message.endswith(f"Previous response with id '{missing}' not found.")


def test_responses_sdk_stream_order_sequence_and_usage(fake: FakeUpstream, sdk: OpenAI) -> None:
    events = list(sdk.responses.create(model="m1", input="hi", stream=True))
    assert [e.type for e in events] == RESPONSES_ORDER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "Hello from fake"
    )
    created, completed = events[0], events[-1]
    assert created.response.status == "in_progress" and created.response.usage is None
    assert completed.response.id == created.response.id in fake.stored_responses()
    assert completed.response.output_text == "Hello from fake"
    assert completed.response.usage is not None and completed.response.usage.total_tokens == 18
    with sdk.responses.stream(model="m1", input="hi") as stream:  # the SDK's own accumulator
        for _ in stream:
            pass
        assert stream.get_final_response().output_text == "Hello from fake"


def test_responses_stream_names_every_event_and_reads_back_with_wire(
    fake: FakeUpstream, http: httpx.Client
) -> None:
    events, err = read_events(http, fake.base_url + "/responses", {**RESPONSES, "stream": True}, {})
    assert err is None and all(name == json.loads(d)["type"] for name, d in events)
    assert "[DONE]" not in [d for _, d in events]
    objs = parsed(events)
    answer = responses.event_answer(objs[-1])
    assert responses.is_terminal(objs[-1]) and not any(map(responses.is_terminal, objs[:-1]))
    assert "".join(map(responses.delta_text, objs)) == "Hello from fake"
    assert answer is not None and answer.usage == Usage(11, 7, cached_tokens=3, reasoning_tokens=2)


def test_messages_json_records_anthropic_headers(fake: FakeUpstream, http: httpx.Client) -> None:
    r = http.post(fake.base_url + "/messages", json=MESSAGES, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    m = r.json()
    assert m["id"].startswith("msg_01") and (m["type"], m["role"], m["model"]) == (
        "message", "assistant", "claude-x",
    )  # fmt: skip
    assert m["content"] == [{"type": "text", "text": "Hello from fake"}]
    assert (m["stop_reason"], m["stop_sequence"]) == ("end_turn", None)
    assert messages.answer_facts(r.content) == messages.MessagesAnswer(
        m["id"], "claude-x", "end_turn", Usage(11, 7, cached_tokens=3, reasoning_tokens=2),
        "Hello from fake",
    )  # fmt: skip
    (seen,) = fake.requests("/messages")
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"


def test_messages_stream_order_and_usage(http: httpx.Client) -> None:
    with FakeUpstream(cached_tokens=3, cache_write_tokens=4, reasoning_tokens=2) as f:
        body = {**MESSAGES, "stream": True}
        events, err = read_events(http, f.base_url + "/messages", body, ANTHROPIC_HEADERS)
    assert err is None and [name for name, _ in events] == MESSAGES_ORDER
    objs = parsed(events)
    assert [o["type"] for o in objs] == MESSAGES_ORDER
    start = objs[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 11 - 3 - 4 and start["usage"]["output_tokens"] == 1
    assert (
        objs[-2]["usage"]["output_tokens"] == 7 and objs[-2]["delta"]["stop_reason"] == "end_turn"
    )
    usage = None
    for o in objs:
        usage = messages.stream_usage(usage, o)
    assert usage == Usage(11, 7, cached_tokens=3, reasoning_tokens=2, cache_write_tokens=4)
    assert "".join(map(messages.delta_text, objs)) == "Hello from fake"


@pytest.mark.parametrize(
    ("fault", "status", "etype", "retry_after", "kind"),
    [
        (overloaded(), 529, "overloaded_error", "1", OutcomeKind.SERVER_ERROR),
        (RATE_LIMIT, 429, "rate_limit_error", "1", OutcomeKind.RATE_LIMITED),
        (Status(500), 500, "api_error", None, OutcomeKind.SERVER_ERROR),
        (prompt_too_long(), 400, "invalid_request_error", None, OutcomeKind.CONTEXT_TOO_LONG),
        (Status(401, "invalid x-api-key", type="authentication_error"), 401,
         "authentication_error", None, OutcomeKind.AUTH_ERROR),
    ],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/messages", "/messages/count_tokens"])
def test_messages_errors_have_anthropics_shape(
    fake: FakeUpstream,
    http: httpx.Client,
    fault: Status,
    status: int,
    etype: str,
    retry_after: str | None,
    kind: OutcomeKind,
    path: str,
) -> None:
    fake.fail(fault)
    r = http.post(fake.base_url + path, json=MESSAGES, headers=ANTHROPIC_HEADERS)
    assert r.status_code == status and r.headers.get("retry-after") == retry_after
    body = r.json()
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert body["error"] == {"type": etype, "message": fault.message}
    failure = messages.classify_failure(r.status_code, r.content, r.headers.get("retry-after"))
    assert OutcomeKind(failure.kind) is kind


def test_messages_bad_json_and_count_tokens(fake: FakeUpstream, http: httpx.Client) -> None:
    r = http.post(
        fake.base_url + "/messages", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.post(
        fake.base_url + "/messages/count_tokens",
        json={**messages.count_tokens_request(MESSAGES), "stream": True},
        headers=ANTHROPIC_HEADERS,
    )
    assert r.status_code == 200 and r.json() == {"input_tokens": 11}
    assert messages.count_tokens_answer(r.content) == 11


@pytest.mark.parametrize("fmt", ["base64", "float"])
def test_embeddings_dimensions(
    sdk: OpenAI, http: httpx.Client, fake: FakeUpstream, fmt: str
) -> None:
    # without encoding_format the SDK asks for base64 and decodes it into floats itself
    kw: dict[str, Any] = {} if fmt == "base64" else {"encoding_format": "float"}
    short = sdk.embeddings.create(model="e1", input="a", **kw)
    long = sdk.embeddings.create(model="e1", input="a", dimensions=16, **kw)
    assert len(short.data[0].embedding) == 8 and len(long.data[0].embedding) == 16
    assert long.data[0].embedding[:8] == pytest.approx(short.data[0].embedding)
    assert [s.json.get("encoding_format") for s in fake.requests()] == [fmt, fmt]
    r = http.post(fake.base_url + "/embeddings",
                  json={"model": "e1", "input": [[1, 2], [3]], "dimensions": 12,
                        "encoding_format": fmt})  # fmt: skip
    facts = embeddings.answer_facts(r.content)
    assert facts is not None and facts.dimension_error(12, 2) is None
    assert isinstance(r.json()["data"][0]["embedding"], str if fmt == "base64" else list)


@pytest.mark.parametrize("api", sorted(STREAMS))
def test_cut_stall_and_malformed_count_content_deltas(
    fake: FakeUpstream, http: httpx.Client, api: str
) -> None:
    path, body, headers, delta, before = STREAMS[api]
    url, body = fake.base_url + path, {**body, "stream": True}
    fake.fail(CutStream(2))
    events, err = read_events(http, url, body, headers)
    assert isinstance(err, httpx.RemoteProtocolError)
    assert [n for n, _ in events].count(delta) == 2 and len(events) == before + 2
    fake.fail(Stall(1))
    events, err = read_events(http, url, body, headers, timeout=httpx.Timeout(5.0, read=0.25))
    assert isinstance(err, httpx.ReadTimeout) and len(events) == before + 1
    fake.fail(MalformedEvent(1))
    events, err = read_events(http, url, body, headers)
    bad = []
    for i, (_, d) in enumerate(events):
        try:
            json.loads(d)
        except json.JSONDecodeError:
            bad.append(i)
    assert err is None and bad == [before + 1] and events[before + 1][0] == delta
    good = parsed([e for i, e in enumerate(events) if i not in bad])
    read = responses.delta_text if api == "responses" else messages.delta_text
    assert "".join(map(read, good)) == "Hello from fake"


@pytest.mark.parametrize(("api", "terminal"), [("responses", "response.completed"),
                                               ("messages", "message_stop")])  # fmt: skip
def test_no_done_leaves_out_the_final_event(
    fake: FakeUpstream, http: httpx.Client, api: str, terminal: str
) -> None:
    path, body, headers, _, _ = STREAMS[api]
    fake.fail(NoDone())
    events, err = read_events(http, fake.base_url + path, {**body, "stream": True}, headers)
    names = [n for n, _ in events]
    order = RESPONSES_ORDER if api == "responses" else MESSAGES_ORDER
    assert err is None and names == order[:-1] and terminal not in names


@pytest.mark.parametrize("api", sorted(STREAMS))
def test_connection_faults_on_new_endpoints(
    fake: FakeUpstream, http: httpx.Client, api: str
) -> None:
    path, body, headers, _, _ = STREAMS[api]
    url = fake.base_url + path
    fake.fail(Reset())
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(url, json=body, headers=headers)
    fake.fail(Hang())
    with pytest.raises(httpx.ReadTimeout):
        http.post(url, json=body, headers=headers, timeout=httpx.Timeout(5.0, read=0.2))
    fake.fail(Delay(0.3))
    t0 = time.monotonic()
    assert http.post(url, json=body, headers=headers).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    fake.fail(SlowFirstToken(0.3))
    t0 = time.monotonic()
    with http.stream("POST", url, json={**body, "stream": True}, headers=headers) as r:
        headers_at = time.monotonic() - t0
        lines = r.iter_lines()
        first = next(lines)
        first_at = time.monotonic() - t0
        rest = list(lines)
    assert headers_at < 0.2 <= 0.3 <= first_at and first.startswith("event: ")
    order = RESPONSES_ORDER if api == "responses" else MESSAGES_ORDER
    assert len([x for x in rest if x.startswith("data: ")]) == len(order)
    fake.fail(CutStream(1))  # a whole JSON answer: half of it, then the cut
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(url, json=body, headers=headers)
    fake.fail(Status(503, "busy"), model="other")
    assert http.post(url, json=body, headers=headers).status_code == 200  # another model's fault
    assert http.post(url, json={**body, "model": "other"}, headers=headers).status_code == 503
