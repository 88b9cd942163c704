"""wire: body parsing with spans, model splicing, usage, SSE, error classification."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addon import wire
from addon.fallback import OutcomeKind


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"gpt-4o","messages":[]}',
        b'{ "messages": [ {"role": "user", "content": "h\\u00e9"} ] , "model" : "x" }',
        '{"model": "a", "messages": [{"content": "caf\u00e9 \u2603"}], "t": 1.0}'.encode(),
        b'{"messages": [], "temperature": 1e-7, "seed": 123456789012345678901234567890}',
        b"{}",
        b'{"model": null}',
    ],
)
def test_rewrite_changes_only_model(raw: bytes) -> None:
    parsed = wire.parse_request(raw)
    out = wire.rewrite(parsed, model="m-new")
    before, after = json.loads(raw), json.loads(out)
    assert after.pop("model") == "m-new"
    before.pop("model", None)
    assert after == before
    if b'"model"' in raw and b"null" not in raw:
        # bytes outside the model value are untouched
        s, e = parsed.spans["model"]
        assert out[:s] == raw[:s] and out.endswith(raw[e:])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"model":"x","stream":true}', {"include_usage": True}),
        (
            b'{"model":"x","stream":true,"stream_options":{"foo":1}}',
            {"foo": 1, "include_usage": True},
        ),
        (b'{"model":"x","stream":true,"stream_options":null}', {"include_usage": True}),
        (b'{"stream":true}', {"include_usage": True}),
    ],
)
def test_include_usage_injected(raw: bytes, expected: dict) -> None:
    out = json.loads(wire.rewrite(wire.parse_request(raw), model="m", include_usage=True))
    assert out["stream_options"] == expected and out["model"] == "m"


def test_include_usage_left_alone_when_client_asked() -> None:
    raw = b'{"model":"x","stream":true,"stream_options":{"include_usage":true}}'
    parsed = wire.parse_request(raw)
    assert parsed.wants_usage
    assert wire.rewrite(parsed, model="x", include_usage=True) == raw


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not a JSON object"),
        (b"[1,2]", "not a JSON object"),
        (b'{"model": "x",}', "expected a key"),
        (b'{"model": "x"} trailing', "trailing data"),
        (b'{"a": [}', "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "not a JSON object"),
    ],
)
def test_parse_errors_are_clean(raw: bytes, fragment: str) -> None:
    with pytest.raises(wire.WireError, match=fragment):
        wire.parse_request(raw)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_clean_error(raw: bytes) -> None:
    try:
        parsed = wire.parse_request(raw)
    except wire.WireError:
        return
    out = wire.rewrite(parsed, model="m")
    assert json.loads(out)["model"] == "m"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.text(max_size=20))
def test_round_trip_except_model(body: dict, model: str) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode()
    out = json.loads(wire.rewrite(wire.parse_request(raw), model=model))
    assert out.pop("model") == model
    body.pop("model", None)
    assert out == body


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 5}, wire.Usage(10, 5, 0, 0)),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
            wire.Usage(10, 5, 4, 2),
        ),
        ({"input_tokens": 3, "output_tokens": 2}, wire.Usage(3, 2, 0, 0)),
        ({"prompt_tokens": -1, "completion_tokens": "x"}, wire.Usage(0, 0, 0, 0)),
        (None, None),
    ],
)
def test_usage_from_obj(obj: object, expected: wire.Usage | None) -> None:
    assert wire.Usage.from_obj(obj) == expected


def test_sse_parser_splits_across_chunks() -> None:
    p = wire.SSEParser()
    stream = b'data: {"a":1}\n\ndata: {"b":\n\r\n\r\ndata: [DONE]\n\n'
    events = []
    for i in range(len(stream)):
        events += p.feed(stream[i : i + 1])
    assert [e.data for e in events] == [b'{"a":1}', b'{"b":', b"[DONE]"]
    assert events[-1].done
    assert wire.event_json(events[1]) is None  # malformed: no exception
    assert p.flush() == []


def test_sse_leftover_flushed() -> None:
    p = wire.SSEParser()
    assert p.feed(b'data: {"x": 1}') == []
    (ev,) = p.flush()
    assert wire.event_json(ev) == {"x": 1}


def test_usage_only_chunk() -> None:
    assert wire.is_usage_only_chunk({"choices": [], "usage": {"prompt_tokens": 1}})
    assert not wire.is_usage_only_chunk({"choices": [{}], "usage": None})


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "kind", "ra"),
    [
        (
            429,
            b'{"error":{"message":"slow down","type":"requests"}}',
            "2",
            OutcomeKind.RATE_LIMITED,
            2.0,
        ),
        (500, b'{"error":{"message":"boom"}}', None, OutcomeKind.SERVER_ERROR, None),
        (503, b"<html>down</html>", None, OutcomeKind.SERVER_ERROR, None),
        (401, b'{"error":{"message":"bad key"}}', None, OutcomeKind.AUTH_ERROR, None),
        (404, b'{"error":{"message":"no such model"}}', None, OutcomeKind.NOT_FOUND, None),
        (
            400,
            b'{"error":{"message":"This model\'s maximum context length is 8192 tokens","code":"context_length_exceeded"}}',
            None,
            OutcomeKind.CONTEXT_TOO_LONG,
            None,
        ),
        (
            400,
            b'{"error":{"message":"rejected","code":"content_policy_violation"}}',
            None,
            OutcomeKind.CONTENT_POLICY,
            None,
        ),
        (400, b'{"error":{"message":"bad temperature"}}', None, OutcomeKind.CLIENT_ERROR, None),
        (429, b"", "Wed, 21 Oct 2015 07:28:00 GMT", OutcomeKind.RATE_LIMITED, None),
    ],
)
def test_classify_failure(
    status: int, body: bytes, retry_after: str | None, kind: OutcomeKind, ra: float | None
) -> None:
    o = wire.classify_failure(status, body, retry_after)
    assert o.kind is kind and o.status == status and o.retry_after == ra


def test_error_message_prefers_upstream_text() -> None:
    assert wire.error_message(b'{"error":{"message":"quota exceeded"}}') == "quota exceeded"
    assert wire.error_message(b"plain text failure") == "plain text failure"
