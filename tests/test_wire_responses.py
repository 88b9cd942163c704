"""OpenAI Responses wire format: request facts, encrypted reasoning, answers, events, errors.

Bodies and events are shaped like the API's (and openai-python's `types/responses`)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from addon.wire import responses, sse
from addon.wire.request import parse_request
from addon.wire.usage import Usage

IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}
FUNCTION = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
REASONING = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [{"type": "summary_text", "text": "thinking about weather"}],
    "encrypted_content": "gAAAAABo-opaque==",
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "gpt-5", "input": "Say hi", "instructions": "Be brief."},
            {"texts": ("Be brief.", "Say hi"), "turns": 2, "last_user": "Say hi", "images": 0},
        ),
        (
            {
                "model": "gpt-5",
                "input": [
                    {"role": "developer", "content": "Use tools."},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "What is here?"}, IMAGE],
                    },
                    {
                        "type": "message",
                        "id": "msg_1",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": "A cat.", "annotations": []}],
                    },
                    REASONING,
                    {
                        "type": "function_call",
                        "call_id": "call_1",
                        "name": "get_weather",
                        "arguments": '{"city":"Paris"}',
                    },
                    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                    {
                        "type": "function_call_output",
                        "call_id": "call_2",
                        "output": [{"type": "input_text", "text": "chart"}, IMAGE],
                    },
                    {"type": "input_file_holder_unknown"},
                    {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]},
                ],
                "tools": [FUNCTION, {"type": "web_search_preview"}, {"type": "file_search"}],
                "text": {"format": {"type": "json_schema", "name": "x", "schema": {}}},
                "stream": True,
                "max_output_tokens": 500,
                "previous_response_id": "resp_abc",
                "store": False,
            },
            {
                "texts": (
                    "Use tools.",
                    "What is here?",
                    "A cat.",
                    "thinking about weather",
                    "get_weather",
                    '{"city":"Paris"}',
                    "sunny",
                    "chart",
                    json.dumps([FUNCTION]),
                ),
                "turns": 4,
                "images": 2,
                "files": 1,
                "last_user": "What is here?",  # the file-only user turn has no text
                "function_tools": True,
                "builtin_tools": frozenset({"web_search_preview", "file_search"}),
                "needs_json_schema": True,
                "stream": True,
                "max_output_tokens": 500,
                "previous_response_id": "resp_abc",
                "store": False,
                "encrypted_reasoning": 1,
                "needs_vision": True,
                "depends_on_state": True,
            },
        ),
        (
            {
                "input": [{"role": "user", "content": "hi"}],
                "tools": [
                    {"type": "code_interpreter", "container": {"type": "auto"}},
                    {"type": "mcp", "server_label": "x", "server_url": "https://x"},
                    {"type": "image_generation"},
                    {"type": "local_shell"},
                    {"type": "computer_use_preview", "display_width": 1, "display_height": 1},
                ],
                "conversation": {"id": "conv_1"},
                "max_output_tokens": 0,
                "text": {"format": {"type": "text"}},
            },
            {
                "function_tools": False,
                "builtin_tools": frozenset(
                    {
                        "code_interpreter",
                        "mcp",
                        "image_generation",
                        "local_shell",
                        "computer_use_preview",
                    }
                ),
                "needs_tools": True,
                "conversation_id": "conv_1",
                "previous_response_id": None,
                "depends_on_state": True,
                "max_output_tokens": None,
                "needs_json_schema": False,
                "store": None,
                "stream": False,
            },
        ),
        (
            {"input": [], "conversation": "conv_2", "tools": [{"type": "custom", "name": "t"}]},
            {"conversation_id": "conv_2", "function_tools": True, "turns": 0, "chars": 33},
        ),
    ],
)
def test_read_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    facts = responses.read_request(body)
    assert {k: getattr(facts, k) for k in expected} == expected


def test_prompt_text_is_canonical() -> None:
    a = responses.prompt_text({"input": [{"role": "user", "content": "é"}], "instructions": "x"})
    assert a == '{"input": [{"content": "é", "role": "user"}], "instructions": "x"}'


ENC = json.dumps(REASONING)
MSG = '{"role":"user","content":"hi"}'


@pytest.mark.parametrize(
    ("raw", "expected", "removed"),
    [
        (f'{{"model":"m","input":[{ENC},{MSG}]}}', f'{{"model":"m","input":[{MSG}]}}', 1),
        (f'{{"input":[{MSG}, {ENC}],"x":1}}', f'{{"input":[{MSG}],"x":1}}', 1),
        (
            f'{{"input": [\n  {MSG},\n  {ENC},\n  {MSG}\n], "store": false}}',
            f'{{"input": [\n  {MSG},\n  {MSG}\n], "store": false}}',
            1,
        ),
        (f'{{"input":[ {ENC} , {ENC} ]}}', '{"input":[  ]}', 2),
        (
            '{"input":[{"type":"reasoning","id":"rs_2","summary":[]},' + MSG + "]}",
            '{"input":[{"type":"reasoning","id":"rs_2","summary":[]},' + MSG + "]}",
            0,
        ),
        ('{"input":"just text"}', '{"input":"just text"}', 0),
        (
            '{"input":[{"role":"user","content":"ünï ☃ \\u00e9"},'
            + ENC
            + ',{"n":123456789012345678901234567890}]}',
            '{"input":[{"role":"user","content":"ünï ☃ \\u00e9"},'
            '{"n":123456789012345678901234567890}]}',
            1,
        ),
    ],
)
def test_strip_encrypted_reasoning_keeps_every_other_byte(
    raw: str, expected: str, removed: int
) -> None:
    body = parse_request(raw.encode())
    out, n = responses.strip_encrypted_reasoning(body)
    assert (out.decode(), n) == (expected, removed)
    assert responses.read_request(json.loads(out)).encrypted_reasoning == 0


def test_strip_encrypted_reasoning_falls_back_to_reserialising_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def too_deep(*_: object) -> list[tuple[int, int]]:
        raise RecursionError

    monkeypatch.setattr(responses, "_element_spans", too_deep)
    body = parse_request(f'{{"model": "m", "input": [{ENC}, {MSG}]}}'.encode())
    out, n = responses.strip_encrypted_reasoning(body)
    assert (out, n) == (b'{"model": "m", "input": [{"role":"user","content":"hi"}]}', 1)


USAGE = {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 4},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 123,
}
RESPONSE = {
    "id": "resp_67ccd2bed1ec8190b14f964abc054267",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "In a peaceful grove", "annotations": []},
                {"type": "refusal", "refusal": "no"},
                {"type": "output_text", "text": "...", "annotations": []},
            ],
        },
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "store": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": USAGE,
}


def test_answer_facts() -> None:
    facts = responses.answer_facts(json.dumps(RESPONSE).encode())
    assert facts == responses.ResponsesAnswer(
        response_id="resp_67ccd2bed1ec8190b14f964abc054267",
        model="gpt-4.1-2025-04-14",
        status="completed",
        usage=Usage(36, 87, cached_tokens=10, reasoning_tokens=64, cache_write_tokens=4),
        text="In a peaceful grove...",
    )
    assert responses.answer_facts(b"not json") is None
    assert responses.answer_facts(b"[1]") is None


IN_PROGRESS = {**RESPONSE, "status": "in_progress", "output": [], "usage": None}
FAILED = {
    **RESPONSE,
    "status": "failed",
    "usage": None,
    "error": {"code": "server_error", "message": "The model failed."},
}


@pytest.mark.parametrize(
    ("event", "text", "answer", "error", "terminal"),
    [
        (
            {"type": "response.created", "sequence_number": 0, "response": IN_PROGRESS},
            "",
            ("resp_67ccd2bed1ec8190b14f964abc054267", "gpt-4.1-2025-04-14", "in_progress", None),
            None,
            False,
        ),
        (
            {"type": "response.in_progress", "sequence_number": 1, "response": IN_PROGRESS},
            "",
            ("resp_67ccd2bed1ec8190b14f964abc054267", "gpt-4.1-2025-04-14", "in_progress", None),
            None,
            False,
        ),
        (
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hel",
                "logprobs": [],
                "sequence_number": 4,
            },
            "Hel",
            None,
            None,
            False,
        ),
        (
            {
                "type": "response.output_text.done",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "text": "Hello",
                "logprobs": [],
                "sequence_number": 9,
            },
            "",
            None,
            None,
            False,
        ),
        (
            {"type": "response.completed", "sequence_number": 12, "response": RESPONSE},
            "",
            (
                "resp_67ccd2bed1ec8190b14f964abc054267",
                "gpt-4.1-2025-04-14",
                "completed",
                Usage(36, 87, 10, 64, 4),
            ),
            None,
            True,
        ),
        (
            {
                "type": "response.incomplete",
                "sequence_number": 12,
                "response": {
                    **RESPONSE,
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"},
                },
            },
            "",
            (
                "resp_67ccd2bed1ec8190b14f964abc054267",
                "gpt-4.1-2025-04-14",
                "incomplete",
                Usage(36, 87, 10, 64, 4),
            ),
            None,
            True,
        ),
        (
            {"type": "response.failed", "sequence_number": 3, "response": FAILED},
            "",
            ("resp_67ccd2bed1ec8190b14f964abc054267", "gpt-4.1-2025-04-14", "failed", None),
            responses.StreamError("server_error", "The model failed."),
            True,
        ),
        (
            {
                "type": "error",
                "code": "rate_limit_exceeded",
                "message": "Slow down",
                "param": None,
                "sequence_number": 2,
            },
            "",
            None,
            responses.StreamError("rate_limit_exceeded", "Slow down"),
            True,
        ),
        (
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": None, "message": "Bad input"},
            },
            "",
            None,
            responses.StreamError("invalid_request_error", "Bad input"),
            True,
        ),
        ("not a dict", "", None, None, False),
    ],
)
def test_stream_events(
    event: Any,
    text: str,
    answer: tuple[str, str, str, Usage | None] | None,
    error: responses.StreamError | None,
    terminal: bool,
) -> None:
    assert responses.delta_text(event) == text
    got = responses.event_answer(event)
    assert (got and (got.response_id, got.model, got.status, got.usage)) == answer
    assert responses.event_error(event) == error
    assert responses.is_terminal(event) is terminal


@pytest.mark.parametrize(
    ("status", "body", "message", "exc", "code", "param"),
    [
        (400, responses.error_body("Previous response with id 'resp_x' not found.",
                                   type_="invalid_request_error",
                                   code="previous_response_not_found",
                                   param="previous_response_id"),
         "Previous response with id 'resp_x' not found.", openai.BadRequestError,
         "previous_response_not_found", "previous_response_id"),
        (503, responses.error_body("no target left", type_="router_error"),
         "no target left", openai.InternalServerError, None, None),
    ],
)  # fmt: skip
def test_error_body_is_what_the_openai_sdk_raises_on(
    status: int,
    body: bytes,
    message: str,
    exc: type[Exception],
    code: str | None,
    param: str | None,
) -> None:
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    transport = httpx.MockTransport(
        lambda _: httpx.Response(status, content=body, headers={"content-type": "application/json"})
    )
    with (
        openai.OpenAI(
            base_url="http://router.test/v1",
            api_key="k",
            max_retries=0,
            http_client=httpx.Client(transport=transport),
        ) as client,
        pytest.raises(exc) as info,
    ):
        client.responses.create(model="m", input="hi")
    err = info.value
    assert isinstance(err, openai.APIStatusError)
    assert (err.message.endswith(message), err.code, err.param) == (True, code, param)
    assert responses.previous_response_missing(status, body) is (code is not None)


def test_error_event_is_one_flat_sse_event() -> None:
    raw = responses.error_event("stream interrupted", code="stream_truncated", sequence_number=7)
    (ev,) = sse.SSEParser().feed(raw)
    assert raw.startswith(b"event: error\n") and ev.raw == raw
    assert sse.event_json(ev) == {
        "type": "error",
        "code": "stream_truncated",
        "message": "stream interrupted",
        "param": None,
        "sequence_number": 7,
    }
    assert responses.event_error(sse.event_json(ev)) == responses.StreamError(
        "stream_truncated", "stream interrupted"
    )


@pytest.mark.parametrize(
    ("output", "want"),
    [
        ([{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA1"},
          {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
          {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAA2"}],
         ("gAAA1", "gAAA2")),
        ([{"type": "reasoning", "summary": []}, {"type": "reasoning", "encrypted_content": ""}], ()),
        ([], ()),
    ],
)  # fmt: skip
def test_an_answer_names_its_encrypted_reasoning(output: list[Any], want: tuple[str, ...]) -> None:
    got = responses.read_response({"id": "resp_1", "output": output})
    assert got is not None and got.encrypted_reasoning == want
