"""Streams per API: the pass-through SSE tap (bytes unchanged, usage noted on the side),
each API's reading of its events, the error event that ends a cut stream, and the first
event that makes an attempt fail."""

from __future__ import annotations

from typing import Any

import pytest

from addon.proxy import apis
from addon.proxy.exchange import Incoming, Pending
from addon.proxy.streamfacts import StreamReport, reader_for, usage_tap
from addon.routing.fallback import OutcomeKind
from addon.wire.sse import SSEParser, event_json
from tests import fake_messages, fake_responses
from tests.fake_stream import StreamPlan, Tokens

CHAT = (b'data: {"model":"m","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
        b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n")  # fmt: skip
RESPONSES = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
             b'event: response.completed\ndata: {"type":"response.completed","response":'
             b'{"usage":{"input_tokens":7,"output_tokens":3}}}\n\n')  # fmt: skip


@pytest.mark.parametrize(("stream", "usage"), [(CHAT, (5, 2)), (RESPONSES, (7, 3))])
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_tap_passes_bytes_and_reads_usage(stream: bytes, usage: tuple[int, int], step: int) -> None:
    p = Pending("orq-x", 0.0, Incoming("POST", "h", "/v1/responses", (), b"", "127.0.0.1"),
                "unrouted")  # fmt: skip
    p.report = StreamReport(outcome="ok")
    tap = usage_tap(p.report)
    out = b"".join(tap(stream[i : i + step]) for i in range(0, len(stream), step)) + tap(b"")
    assert out == stream
    assert p.report is not None and p.report.usage is not None
    assert (p.report.usage.prompt_tokens, p.report.usage.completion_tokens) == usage


# --------------------------------------------------------------------------- per API


def _play(plan: StreamPlan) -> bytes:
    assert plan.end is not None
    return b"".join([*plan.head, *plan.body, *plan.tail, plan.end])


MESSAGES = _play(fake_messages.plan("msg_1", "claude-x", ["Hel", "lo"],
                                    Tokens(20, 9, cached=5, reasoning=2, cache_write=4)))  # fmt: skip
RESPONSES_FULL = _play(fake_responses.plan("resp_1", "gpt-x", {}, ["Hel", "lo"],
                                           Tokens(12, 6, cached=3, reasoning=1), 0))  # fmt: skip


@pytest.mark.parametrize(
    ("api", "stream", "want"),
    [
        # Messages: usage from message_start plus the last message_delta, in Usage's terms
        ("messages", MESSAGES, ("claude-x", "msg_1", (20, 9, 5, 2, 4), True)),
        ("responses", RESPONSES_FULL, ("gpt-x", "resp_1", (12, 6, 3, 1, 0), True)),
        ("chat", CHAT, ("m", None, (5, 2, 0, 0, 0), True)),
    ],
)  # fmt: skip
def test_each_apis_stream_is_read_in_its_own_terms(api: str, stream: bytes, want: Any) -> None:
    report = StreamReport(outcome="ok", keep_text=True)
    tap = usage_tap(report, reader_for(api))
    assert b"".join(tap(stream[i : i + 9]) for i in range(0, len(stream), 9)) + tap(b"") == stream
    u = report.usage
    assert u is not None
    got = (report.model, report.response_id,
           (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens,
            u.cache_write_tokens), report.saw_done)  # fmt: skip
    assert got == want


@pytest.mark.parametrize(
    ("api", "event", "failure"),
    [("messages", b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                  b'"message":"Overloaded"}}\n\n', "overloaded_error: Overloaded"),
     ("responses", b'event: error\ndata: {"type":"error","code":"server_error","message":"boom",'
                   b'"param":null,"sequence_number":3}\n\n', "server_error: boom")],
)  # fmt: skip
def test_an_error_the_upstream_sends_in_band_is_noted(api: str, event: bytes, failure: str) -> None:
    report = StreamReport(outcome="ok")
    tap = usage_tap(report, reader_for(api))
    tap(event)
    tap(b"")
    assert report.failure == failure and report.saw_done  # it ends the stream too


@pytest.mark.parametrize(
    ("api", "check"),
    [("chat", lambda ev: ev["error"]["code"] == "stream_truncated"),
     ("responses", lambda ev: ev["type"] == "error" and ev["code"] == "stream_truncated"
      and ev["sequence_number"] == 7),
     ("messages", lambda ev: ev == {"type": "error", "error": {
         "type": "api_error", "message": "stream interrupted: upstream stalled"}})],
)  # fmt: skip
def test_a_cut_stream_ends_with_its_apis_error_event(api: str, check: Any) -> None:
    raw = reader_for(api).cut("upstream stalled", StreamReport(events=7))
    (ev,) = SSEParser().feed(raw)
    assert raw.startswith(b"event: error\n") and check(event_json(ev))


@pytest.mark.parametrize(
    ("api", "first", "kind"),
    [("messages", b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                  b'"message":"Overloaded"}}\n\n', OutcomeKind.SERVER_ERROR),
     ("messages", b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
                  b'"message":"slow"}}\n\n', OutcomeKind.RATE_LIMITED),
     ("messages", MESSAGES, None),
     ("responses", b'event: error\ndata: {"type":"error","code":"rate_limit_exceeded",'
                   b'"message":"slow","param":null,"sequence_number":0}\n\n',
      OutcomeKind.RATE_LIMITED),
     ("responses", RESPONSES_FULL, None)],
)  # fmt: skip
def test_a_stream_opening_with_an_error_is_a_failed_attempt(
    api: str, first: bytes, kind: OutcomeKind | None
) -> None:
    check = apis.first_event_check(api)
    assert check is not None and apis.first_event_check("chat") is None
    got = check(SSEParser().feed(first))
    assert (got.kind if got is not None else None) is kind
