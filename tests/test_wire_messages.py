"""Anthropic Messages wire format: request facts, usage, events, errors, count_tokens.

Bodies and events are shaped like the API's (and anthropic-sdk-python's `types`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from addon.routing.fallback import OutcomeKind
from addon.wire import messages, sse
from addon.wire.usage import Usage

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iV=="}}
TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": "Hello, Claude"}],
            },
            {
                "texts": ("Hello, Claude",),
                "turns": 1,
                "last_user": "Hello, Claude",
                "max_tokens": 1024,
                "stream": False,
                "needs_tools": False,
                "thinking": False,
            },
        ),
        (
            {
                "model": "claude-opus-4-1",
                "max_tokens": 16000,
                "stream": True,
                "system": [
                    {
                        "type": "text",
                        "text": "You are terse.",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
                "thinking": {"type": "enabled", "budget_tokens": 10000},
                "tools": [
                    TOOL,
                    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                    {"type": "bash_20250124", "name": "bash"},
                    {"type": "custom", "name": "t2", "input_schema": {}},
                ],
                "output_config": {"format": {"type": "json_schema", "schema": {}}},
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            IMAGE,
                            {"type": "text", "text": "What is in this image?"},
                            {
                                "type": "document",
                                "source": {
                                    "type": "text",
                                    "media_type": "text/plain",
                                    "data": "plain doc",
                                },
                            },
                            {
                                "type": "document",
                                "source": {
                                    "type": "base64",
                                    "media_type": "application/pdf",
                                    "data": "JVBERi0=",
                                },
                            },
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": "Let me look.", "signature": "EqQB"},
                            {"type": "redacted_thinking", "data": "EmwKAhgB"},
                            {"type": "text", "text": "A cat."},
                            {
                                "type": "tool_use",
                                "id": "toolu_01",
                                "name": "get_weather",
                                "input": {"location": "Paris"},
                            },
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_01",
                                "content": [{"type": "text", "text": "15 degrees"}, IMAGE],
                            },
                        ],
                    },
                ],
            },
            {
                "texts": (
                    "You are terse.",
                    "What is in this image?",
                    "plain doc",
                    "Let me look.",
                    "A cat.",
                    "get_weather",
                    '{"location": "Paris"}',
                    "15 degrees",
                    json.dumps([TOOL, {"type": "custom", "name": "t2", "input_schema": {}}]),
                ),
                "images": 2,
                "documents": 2,
                "turns": 4,
                "last_user": "15 degrees",
                "custom_tools": True,
                "server_tools": frozenset({"web_search_20250305", "bash_20250124"}),
                "thinking": True,
                "thinking_budget": 10000,
                "needs_json_schema": True,
                "stream": True,
                "max_tokens": 16000,
                "needs_vision": True,
            },
        ),
        (
            {
                "system": "Be nice.",
                "thinking": {"type": "adaptive"},
                "max_tokens": True,
                "output_format": {"type": "json_schema", "schema": {}},
                "tools": [{"type": "code_execution_20250825", "name": "code_execution"}],
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {
                                    "type": "content",
                                    "content": [{"type": "text", "text": "chunk"}],
                                },
                            }
                        ],
                    }
                ],
            },
            {
                "texts": ("Be nice.", "chunk"),
                "turns": 2,
                "thinking": True,
                "thinking_budget": None,
                "max_tokens": None,
                "needs_json_schema": True,
                "custom_tools": False,
                "server_tools": frozenset({"code_execution_20250825"}),
                "needs_tools": True,
                "chars": 13,
            },
        ),
        ({"messages": "nope", "thinking": {"type": "disabled"}}, {"turns": 0, "thinking": False}),
    ],
)
def test_read_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    facts = messages.read_request(body)
    assert {k: getattr(facts, k) for k in expected} == expected


def test_prompt_text_is_canonical() -> None:
    text = messages.prompt_text({"messages": [{"role": "user", "content": "é"}], "system": "s"})
    assert text == '{"messages": [{"content": "é", "role": "user"}], "system": "s"}'


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"input_tokens": 25, "output_tokens": 1}, Usage(25, 1)),
        (
            {
                "input_tokens": 5,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 900,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 0,
                },
                "output_tokens": 40,
                "output_tokens_details": {"thinking_tokens": 30},
                "server_tool_use": {"web_search_requests": 1},
                "service_tier": "standard",
            },
            Usage(1005, 40, cached_tokens=900, reasoning_tokens=30, cache_write_tokens=100),
        ),
        ({"input_tokens": None, "cache_read_input_tokens": -3, "output_tokens": "x"}, Usage()),
        (None, None),
    ],
)
def test_usage_from_obj(obj: Any, expected: Usage | None) -> None:
    assert messages.usage_from_obj(obj) == expected


START = {
    "type": "message_start",
    "message": {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-opus-4-6",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 10,
                  "cache_read_input_tokens": 5, "output_tokens": 1},
    },
}  # fmt: skip
BLOCK_START = {
    "type": "content_block_start",
    "index": 0,
    "content_block": {"type": "text", "text": ""},
}
PING = {"type": "ping"}
DELTA = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
STOP_BLOCK = {"type": "content_block_stop", "index": 0}
MESSAGE_DELTA = {
    "type": "message_delta",
    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    "usage": {"output_tokens": 15},
}
STOP = {"type": "message_stop"}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


@pytest.mark.parametrize(
    ("events", "usage"),
    [
        ([START, BLOCK_START, PING, DELTA, STOP_BLOCK, MESSAGE_DELTA, STOP],
         Usage(40, 15, cached_tokens=5, cache_write_tokens=10)),
        # server tool use: message_delta repeats the input side, cumulative
        ([START, {**MESSAGE_DELTA, "usage": {"input_tokens": 30, "cache_read_input_tokens": 7,
                                             "cache_creation_input_tokens": None,
                                             "output_tokens": 20,
                                             "output_tokens_details": {"thinking_tokens": 9}}}],
         Usage(47, 20, cached_tokens=7, reasoning_tokens=9, cache_write_tokens=10)),
        ([MESSAGE_DELTA], Usage(0, 15)),  # a stream that lost its message_start
        ([PING, DELTA], None),
    ],
)  # fmt: skip
def test_stream_usage(events: list[Any], usage: Usage | None) -> None:
    so_far = None
    for ev in events:
        so_far = messages.stream_usage(so_far, ev)
    assert so_far == usage


@pytest.mark.parametrize(
    ("event", "text", "start", "terminal", "error"),
    [
        (START, "", ("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "claude-opus-4-6"), False, None),
        (BLOCK_START, "", None, False, None),
        (PING, "", None, False, None),
        (DELTA, "Hi", None, False, None),
        ({**DELTA, "delta": {"type": "thinking_delta", "thinking": "hmm"}}, "", None, False, None),
        ({**DELTA, "delta": {"type": "input_json_delta", "partial_json": '{"a'}}, "", None, False,
         None),
        ({**DELTA, "delta": {"type": "signature_delta", "signature": "Eq"}}, "", None, False, None),
        (STOP_BLOCK, "", None, False, None),
        (MESSAGE_DELTA, "", None, False, None),
        (STOP, "", None, True, None),
        (OVERLOADED, "", None, True,
         messages.Failure("server_error", None, "overloaded_error", "Overloaded")),
        ({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}, "", None,
         True, messages.Failure("rate_limited", None, "rate_limit_error", "slow")),
        ({"type": "error", "error": {"type": "invalid_request_error",
                                     "message": "prompt is too long: 208656 tokens > 200000 maximum"}},
         "", None, True,
         messages.Failure("context_too_long", None, "invalid_request_error",
                          "prompt is too long: 208656 tokens > 200000 maximum")),
        ({"type": "error"}, "", None, True, messages.Failure("server_error", None, "api_error", "")),
        ([1], "", None, False, None),
    ],
)  # fmt: skip
def test_stream_events(
    event: Any,
    text: str,
    start: tuple[str, str] | None,
    terminal: bool,
    error: messages.Failure | None,
) -> None:
    assert messages.delta_text(event) == text
    got = messages.event_message(event)
    assert (got and (got.message_id, got.model)) == start
    assert messages.is_terminal(event) is terminal
    assert messages.event_error(event) == error


MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "...", "signature": "EqQB"},
        {"type": "text", "text": "Hi! My name is Claude."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 2095, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 0, "output_tokens": 503},
}  # fmt: skip


def test_answer_facts() -> None:
    assert messages.answer_facts(json.dumps(MESSAGE).encode()) == messages.MessagesAnswer(
        message_id="msg_013Zva2CMHLNnXjNJJKqJ2EF",
        model="claude-sonnet-4-5-20250929",
        stop_reason="tool_use",
        usage=Usage(2095, 503),
        text="Hi! My name is Claude.",
    )
    assert messages.answer_facts(b"{broken") is None


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (418, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_body(status: int, error_type: str) -> None:
    body = json.loads(messages.error_body(status, "no target left", request_id="req_011CW"))
    assert body == {
        "type": "error",
        "error": {"type": error_type, "message": "no target left"},
        "request_id": "req_011CW",
    }
    assert "request_id" not in json.loads(messages.error_body(status, "x"))


def test_error_event_is_one_sse_event_the_sdk_raises_on() -> None:
    raw = messages.error_event("overloaded_error", "Overloaded")
    (ev,) = sse.SSEParser().feed(raw)
    assert raw.startswith(b"event: error\n") and sse.event_json(ev) == OVERLOADED


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "kind", "error_type", "message", "ra"),
    [
        (429, messages.error_body(429, "Number of request tokens has exceeded your per-minute rate limit"),
         "12", OutcomeKind.RATE_LIMITED, "rate_limit_error",
         "Number of request tokens has exceeded your per-minute rate limit", 12.0),
        (529, json.dumps(OVERLOADED).encode(), "3", OutcomeKind.SERVER_ERROR, "overloaded_error",
         "Overloaded", 3.0),
        (500, messages.error_body(500, "Internal server error"), None, OutcomeKind.SERVER_ERROR,
         "api_error", "Internal server error", None),
        (502, b"<html>bad gateway</html>", None, OutcomeKind.SERVER_ERROR, "api_error",
         "<html>bad gateway</html>", None),
        (401, messages.error_body(401, "invalid x-api-key"), None, OutcomeKind.AUTH_ERROR,
         "authentication_error", "invalid x-api-key", None),
        (402, messages.error_body(402, "Your credit balance is too low"), None,
         OutcomeKind.AUTH_ERROR, "billing_error", "Your credit balance is too low", None),
        (403, messages.error_body(403, "no access to model"), None, OutcomeKind.AUTH_ERROR,
         "permission_error", "no access to model", None),
        (404, messages.error_body(404, "model: claude-x"), "5", OutcomeKind.NOT_FOUND,
         "not_found_error", "model: claude-x", None),
        (413, b"<html>413 Request Entity Too Large</html>", None, OutcomeKind.CONTEXT_TOO_LONG,
         "request_too_large", "<html>413 Request Entity Too Large</html>", None),
        (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too '
              b'long: 208656 tokens > 200000 maximum"},"request_id":"req_011CWdepJvA2D819tdYYq4h7"}',
         None, OutcomeKind.CONTEXT_TOO_LONG, "invalid_request_error",
         "prompt is too long: 208656 tokens > 200000 maximum", None),
        (400, messages.error_body(400, "input length and `max_tokens` exceed context limit: "
                                       "187254 + 20000 > 200000"), None,
         OutcomeKind.CONTEXT_TOO_LONG, "invalid_request_error",
         "input length and `max_tokens` exceed context limit: 187254 + 20000 > 200000", None),
        (400, messages.error_body(400, "Output blocked by content filtering policy"), None,
         OutcomeKind.CONTENT_POLICY, "invalid_request_error",
         "Output blocked by content filtering policy", None),
        (400, messages.error_body(400, "max_tokens: Field required"), None,
         OutcomeKind.CLIENT_ERROR, "invalid_request_error", "max_tokens: Field required", None),
    ],
)  # fmt: skip
def test_classify_failure(
    status: int,
    body: bytes,
    retry_after: str | None,
    kind: OutcomeKind,
    error_type: str,
    message: str,
    ra: float | None,
) -> None:
    f = messages.classify_failure(status, body, retry_after)
    assert (OutcomeKind(f.kind), f.status, f.error_type, f.message, f.retry_after) == (
        kind, status, error_type, message, ra,
    )  # fmt: skip


def test_every_kind_is_an_outcome_kind() -> None:
    kinds = {OutcomeKind(messages._kind(s, t, m)) for s in (None, 400, 413, 429, 503)
             for t in (*messages.ERROR_TYPES.values(), "new_error")
             for m in ("", "prompt is too long", "content filtering")}  # fmt: skip
    assert OutcomeKind.OK not in kinds and len(kinds) >= 6


def test_count_tokens_shapes() -> None:
    req = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": True,
        "temperature": 0.2,
        "system": "s",
        "messages": [{"role": "user", "content": "Hello"}],
        "tools": [TOOL],
        "thinking": {"type": "enabled", "budget_tokens": 2000},
    }
    assert messages.count_tokens_request(req) == {
        k: req[k] for k in ("model", "system", "messages", "tools", "thinking")
    }
    assert messages.count_tokens_answer(b'{"input_tokens": 2095}') == 2095
    assert messages.count_tokens_answer(b'{"input_tokens": -1}') is None
    assert messages.count_tokens_answer(b"nope") is None
    assert json.loads(messages.count_tokens_body(14)) == {"input_tokens": 14}


def test_error_body_detail_goes_into_the_error_object() -> None:
    body = json.loads(messages.error_body(529, "all failed", detail={"attempts": [{"p": "a"}]}))
    assert body == {"type": "error", "error": {"type": "overloaded_error", "message": "all failed",
                                               "attempts": [{"p": "a"}]}}  # fmt: skip
