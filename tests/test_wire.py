"""wire: body parsing with spans, model splicing, usage, SSE, error classification."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addon.routing.fallback import OutcomeKind, classify_failure
from addon.wire import chat, failures, request, sse, usage


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
    parsed = request.parse_request(raw)
    out = request.rewrite(parsed, model="m-new")
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
    out = json.loads(request.rewrite(request.parse_request(raw), model="m", include_usage=True))
    assert out["stream_options"] == expected and out["model"] == "m"


def test_include_usage_left_alone_when_client_asked() -> None:
    raw = b'{"model":"x","stream":true,"stream_options":{"include_usage":true}}'
    parsed = request.parse_request(raw)
    assert parsed.wants_usage
    assert request.rewrite(parsed, model="x", include_usage=True) == raw


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
    with pytest.raises(request.WireError, match=fragment):
        request.parse_request(raw)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_clean_error(raw: bytes) -> None:
    try:
        parsed = request.parse_request(raw)
    except request.WireError:
        return
    out = request.rewrite(parsed, model="m")
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
    out = json.loads(request.rewrite(request.parse_request(raw), model=model))
    assert out.pop("model") == model
    body.pop("model", None)
    assert out == body


# --------------------------------------------------------------------------- model spans


def reference_spans(raw: bytes) -> dict[str, tuple[int, int]]:
    """Top-level value spans as json's own scanner finds them, over the decoded text,
    character offsets turned into byte offsets (what parse_request did before orjson)."""
    text = raw.decode("utf-8")

    def skip(i: int) -> int:
        return len(text) - len(text[i:].lstrip(" \t\n\r"))

    def at_byte(i: int) -> int:
        return len(text[:i].encode("utf-8"))

    spans: dict[str, tuple[int, int]] = {}
    i = skip(skip(0) + 1)
    while text[i] == '"':
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = skip(skip(i) + 1)
        _, end = json.JSONDecoder().raw_decode(text, i)
        spans[key] = (at_byte(i), at_byte(end))
        i = skip(end)
        if text[i] == ",":
            i = skip(i + 1)
    return spans


def assert_spliced(raw: bytes) -> None:
    """parse_request reads `raw` as json does; rewrite changes the model value and no other byte."""
    parsed = request.parse_request(raw)
    expected = json.loads(raw)
    assert repr(parsed.data) == repr(expected)  # repr: 1 and 1.0 differ, so do key orders
    ref = reference_spans(raw)
    assert parsed.span("model") == ref.get("model")  # the span parse_request found
    out = request.rewrite(parsed, model="m-new")
    expected["model"] = "m-new"
    assert repr(json.loads(out)) == repr(expected)
    if "model" in ref:
        s, e = ref["model"]
        assert out == raw[:s] + b'"m-new"' + raw[e:]
    else:
        close = len(raw.rstrip()) - 1
        assert out[:close] == raw[:close] and out.endswith(raw[close:])
    assert request.parse_request(raw).span("stream_options") == ref.get("stream_options")
    assert parsed.spans == ref


@pytest.mark.parametrize(
    "raw",
    [
        # a tool's JSON schema with a "model" property, before and after the top-level key
        b'{"model":"a","tools":[{"type":"function","function":{"name":"pick",'
        b'"parameters":{"properties":{"model":{"type":"string"}}}}}]}',
        b'{"tools":[{"function":{"parameters":{"properties":{"model":{}}}}}],"model":"a"}',
        b'{"response_format":{"model":"x"},"model":"a","metadata":{"model":"y"}}',
        # the text "model": "x" inside a message
        b'{"messages":[{"content":"set \\"model\\": \\"x\\" in the config"}],"model":"a"}',
        b'{"messages":[{"content":"\\"model\\":"}],"model":"a"}',
        # strings ending in \"model, or in an escaped backslash, right before a key
        b'{"say \\"model": 1, "model": "a"}',
        b'{"a": "say \\"model", "model": "a"}',
        b'{"a": ["\\"model"], "model": "a"}',
        b'{"path": "C:\\\\", "model": "a"}',
        b'{"path": "C:\\\\\\\\", "model": "a", "b": "\\\\\\"model\\\\"}',
        # "model" as a value, not a key
        b'{"name": "model", "model": "a", "kind": ["model", "model"]}',
        # repeated top-level keys: json keeps the last one
        b'{"model":"a","messages":[],"model":"b"}',
        b'{"model":"a","model":"a"}',
        b'{"model":"a","mod\\u0065l":"a"}',
        b'{"mod\\u0065l":"a","model":"b"}',
        # the top-level key spelled with escapes, a plain one nested
        b'{"mod\\u0065l":"a","tools":[{"model":1}]}',
        b'{"\\u006d\\u006F\\u0064\\u0065\\u006C":"a"}',
        # whitespace around everything
        b'{ "model" : "a" }',
        b'{\n\t"model"\r\n:\n"a"\n,"stream"  :true}\n',
        b' \r\n{"messages":[] ,\t"model":\t"a"}  \n',
        # multi-byte text before and in the model value
        '{"messages":[{"content":"caf\u00e9 \u2603 \U0001f600"}],"model":"\u00e9-a"}'.encode(),
        '{"\u00e9":"\u2019","model":"a","z":"\U0001f600"}'.encode(),
        # model values that are not plain strings
        b'{"model":"a\\"b"}',
        b'{"model":"a\\\\"}',
        b'{"model":"\\u0061"}',
        b'{"model":5,"messages":[]}',
        b'{"model":{"id":"a"}}',
        b'{"messages":[{"model":"x"}]}',
        # stream_options, repeated and nested
        b'{"model":"a","stream_options":{"x":1},"messages":[{"stream_options":null}]}',
        b'{"stream_options":null,"model":"a","stream_options":{"include_usage":false}}',
    ],
)
def test_model_span_is_the_top_level_one(raw: bytes) -> None:
    assert_spliced(raw)


def test_repeated_model_key_rewrites_the_one_json_reads() -> None:
    raw = b'{"model":"cheap","messages":[],"model":"expensive"}'
    parsed = request.parse_request(raw)
    assert parsed.model == "expensive"
    out = request.rewrite(parsed, model="routed")
    assert json.loads(out)["model"] == "routed"
    assert out == b'{"model":"cheap","messages":[],"model":"routed"}'


def test_model_after_long_prompts() -> None:
    """Bodies large enough that the search steps over long strings one by one."""
    prompt = "word " * 8_000 + 'and a quote: \\"model\\": \\"x\\"'
    for raw in (
        json.dumps({"messages": [{"role": "user", "content": prompt}] * 3, "model": "a"}),
        json.dumps({"messages": [{"content": prompt}], "tools": [{"model": 1}], "model": "a"}),
        json.dumps({"messages": [{"content": prompt}], "mod\u0065l": "a"}).replace(
            '"model"', '"mod\\u0065l"'
        ),
        json.dumps({"pad": "x" * 40_000, "k": [{"model": 1}], "model": "a", "z": "\u00e9" * 9}),
        json.dumps({"model": "a", "pad": "x" * 40_000, "k": [{"model": "x"}], "z": "\u00e9" * 9}),
        json.dumps({"pad": "x" * 40_000, "messages": ["y"] * 5_000, "model": "a"}),
    ):
        assert_spliced(raw.encode())


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"model": "a", "messages": [{"role": "user", "content": "hi"}], "n": 1}),
        # the OpenAI Python client's order, escaped newlines and non-ASCII text
        json.dumps({"messages": [{"role": "user", "content": "caf\u00e9\nline"}], "model": "a"}),
        json.dumps({"messages": [{"content": "caf\u00e9"}], "model": "a"}, ensure_ascii=False),
        json.dumps({"messages": [{"content": 'set "model": "x"'}], "model": "a"}),
        json.dumps({"messages": [{"tool_calls": [{"arguments": '{"model": "x"}'}]}], "model": "a"}),
        json.dumps({"name": "model", "model": "a", "stream": True}),
        json.dumps({"messages": [{"content": "word\n" * 50_000}], "model": "a"}),
    ],
)
def test_common_bodies_are_searched_not_walked(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def walk(raw: bytes) -> None:
        raise AssertionError("walked the whole body")

    monkeypatch.setattr(request, "_member_spans", walk)
    out = request.rewrite(request.parse_request(raw.encode()), model="m", include_usage=True)
    assert json.loads(out)["model"] == "m"


@pytest.mark.parametrize(
    ("raw", "key", "value"),
    [
        # orjson reads these integers as floats, or refuses these values: json reads them
        (
            b'{"model":"a","seed":123456789012345678901234567890}',
            "seed",
            123456789012345678901234567890,
        ),
        (b'{"model":"a","n":-9223372036854775809}', "n", -9223372036854775809),
        (b'{"model":"a","x":[{"n":18446744073709551616}]}', "x", [{"n": 18446744073709551616}]),
        (
            b'{"model":"a","pad":"' + b"x" * 5_000 + b'","x":[{"n":-1' + b"0" * 19 + b"}]}",
            "x",
            [{"n": -(10**19)}],
        ),
        (b'{"model":"a","id":"1234567890123456789","f":0.5}', "f", 0.5),
        (b'{"model":"a","t":NaN}', "t", math.nan),
        (b'{"model":"a","t":-Infinity}', "t", -math.inf),
        (b'{"model":"a","t":1e999}', "t", math.inf),
        (b'{"model":"a","s":"\\ud800"}', "s", "\ud800"),
        # ... and these both read the same way
        (b'{"model":"a","n":18446744073709551615}', "n", 18446744073709551615),
        (b'{"model":"a","n":-9223372036854775808}', "n", -9223372036854775808),
        (b'{"model":"a","f":1e19}', "f", 1e19),
        (b'{"model":"a","f":-0.0}', "f", -0.0),
    ],
)
def test_bodies_only_json_reads_exactly(raw: bytes, key: str, value: object) -> None:
    parsed = request.parse_request(raw)
    assert repr(parsed.data[key]) == repr(value)
    assert_spliced(raw)


LONG = b"9" * 100_000  # Python reads integers of up to 4300 digits


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"model":"gpt-4o","n":' + LONG + b"}", "n"),
        (b'{"model":"gpt-4o","messages":[{"seed":-' + LONG + b"}]}", "messages"),
        (b'{"max_tokens":' + b"1" * 4301 + b',"model":"m"}', "max_tokens"),
    ],
)
def test_an_integer_too_long_to_read_is_a_clean_error(raw: bytes, key: str) -> None:
    with pytest.raises(request.WireError, match=f"`{key}` holds an integer of more than 4300 "
                       "digits, which the router cannot read"):  # fmt: skip
        request.parse_request(raw)


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        (b'{"model":"gpt-4o","n":' + LONG + b"}", 100_000),
        (b'{"a":[1,-' + b"2" * 4301 + b"]}", 4301),
        (b'{"model":"gpt-4o","n":' + b"9" * 4300 + b"}", None),  # read: no refusal
        (b'{"model":"gpt-4o","n":' + LONG + b",}", None),  # not JSON: passed through
        (b"[" + LONG + b"]", None),  # not an object: passed through
        (b'{"n":' + LONG + b"} trailing", None),
        (b"\xff" + LONG, None),
    ],
)
def test_overlong_integer_names_only_well_formed_bodies(raw: bytes, digits: int | None) -> None:
    problem = request.overlong_integer(raw)
    if digits is None:
        assert problem is None
    else:
        assert problem == (f"request body holds an integer of {digits} digits; integers of more "
                           "than 4300 digits cannot be read: send such a number as a string")  # fmt: skip


def test_deep_nesting_is_a_clean_error() -> None:
    deep = 100_000
    with pytest.raises(request.WireError, match="too deeply"):
        request.parse_request(b'{"a":' + b"[" * deep + b"]" * deep + b"}")
    ok = 900
    assert request.parse_request(b'{"a":' + b"[" * ok + b"]" * ok + b',"model":"m"}').model == "m"


@given(st.text())
def test_model_is_encoded_as_json_dumps_does(model: str) -> None:
    out = request.rewrite(request.parse_request(b'{"model": "x"}'), model=model)
    assert out == b'{"model": ' + json.dumps(model, ensure_ascii=False).encode() + b"}"


_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])
_KEYS = st.sampled_from(
    ["model", "model", "stream_options", "messages", "\u00e9", 'say "model', "C:\\"]
)
_TEXTS = st.sampled_from(
    ["model", '"model": "x"', 'say "model', "C:\\", "\u00e9\u2019 \U0001f600", ""]
)
_NUMBERS = (
    st.sampled_from(["0", "-0", "1.5e3", "123456789012345678901234567890", "NaN", "-Infinity"])
    | st.integers().map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
)


@st.composite
def _json_string(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    s = draw(texts | st.text(max_size=5))
    style = draw(st.sampled_from(["plain", "ascii", "letters escaped", "lone surrogate"]))
    if style == "plain":
        return json.dumps(s, ensure_ascii=False)
    if style == "ascii":
        return json.dumps(s)
    if style == "lone surrogate":
        return '"' + json.dumps(s)[1:-1] + '\\udc00"'
    return (
        '"'
        + "".join(
            f"\\u{ord(c):04x}"
            if c.isascii() and c.isalpha()
            else json.dumps(c, ensure_ascii=False)[1:-1]
            for c in s
        )
        + '"'
    )


@st.composite
def _json_value(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(
        st.sampled_from(["literal", "number", "string", "array", "object"][: 5 if depth < 3 else 3])
    )
    if kind == "literal":
        return draw(st.sampled_from(["null", "true", "false"]))
    if kind == "number":
        return draw(_NUMBERS)
    if kind == "string":
        return draw(_json_string(_TEXTS))
    if kind == "array":
        items = draw(st.lists(_json_value(depth + 1), max_size=3))
        return "[" + ",".join(draw(_SPACE) + v + draw(_SPACE) for v in items) + "]"
    return _json_object(draw, depth)


def _json_object(draw: st.DrawFn, depth: int) -> str:
    members = [
        draw(_json_string(_KEYS)) + draw(_SPACE) + ":" + draw(_SPACE) + draw(_json_value(depth + 1))
        for _ in range(draw(st.integers(0, 4)))
    ]
    return "{" + ",".join(draw(_SPACE) + m + draw(_SPACE) for m in members) + draw(_SPACE) + "}"


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """JSON object bodies with "model" keys at any depth, repeated, or spelled with escapes,
    any whitespace, multi-byte text, numbers orjson reads differently, and sometimes a long
    string so the search steps over strings."""
    body = _json_object(draw, 0)
    model = draw(st.sampled_from(["", '"model": "a"', '"model":"\\u00e9"', '"model": null']))
    if model:
        body = "{" + model + ("," if body[1:].strip() != "}" else "") + body[1:]
    pad = f'"pad":"{"x" * 60_000}"'
    where = draw(st.sampled_from(["", "", "first", "last"]))
    if where == "first":
        body = "{" + pad + ("," if body[1:-1].strip() else "") + body[1:]
    elif where == "last":
        body = body[:-1] + ("," if body[1:-1].strip() else "") + pad + "}"
    if draw(st.booleans()):
        body = body.replace('{"model"', '{"stream_options":{"include_usage":false},"model"', 1)
    return (draw(_SPACE) + body + draw(_SPACE)).encode()


@given(request_bodies())
def test_fast_model_search_agrees_with_json(raw: bytes) -> None:
    assert_spliced(raw)
    parsed = request.parse_request(raw)
    so = parsed.data.get("stream_options")
    if "\\ud" in repr(so):
        return  # a lone surrogate in stream_options: re-encoding it as UTF-8 fails, as before
    out = json.loads(request.rewrite(parsed, model="m", include_usage=True))
    assert repr(out["stream_options"]) == repr(
        {**(so if isinstance(so, dict) else {}), "include_usage": True}
    )


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 5}, usage.Usage(10, 5, 0, 0)),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
            usage.Usage(10, 5, 4, 2),
        ),
        ({"input_tokens": 3, "output_tokens": 2}, usage.Usage(3, 2, 0, 0)),
        ({"prompt_tokens": -1, "completion_tokens": "x"}, usage.Usage(0, 0, 0, 0)),
        (None, None),
    ],
)
def test_usage_from_obj(obj: object, expected: usage.Usage | None) -> None:
    assert usage.Usage.from_obj(obj) == expected


def test_sse_parser_splits_across_chunks() -> None:
    p = sse.SSEParser()
    stream = b'data: {"a":1}\n\ndata: {"b":\n\r\n\r\ndata: [DONE]\n\n'
    events = []
    for i in range(len(stream)):
        events += p.feed(stream[i : i + 1])
    assert [e.data for e in events] == [b'{"a":1}', b'{"b":', b"[DONE]"]
    assert events[-1].done
    assert sse.event_json(events[1]) is None  # malformed: no exception
    assert p.flush() == []


def test_sse_leftover_flushed() -> None:
    p = sse.SSEParser()
    assert p.feed(b'data: {"x": 1}') == []
    (ev,) = p.flush()
    assert sse.event_json(ev) == {"x": 1}


def test_usage_only_chunk() -> None:
    assert chat.is_usage_only_chunk({"choices": [], "usage": {"prompt_tokens": 1}})
    assert not chat.is_usage_only_chunk({"choices": [{}], "usage": None})


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
    o = classify_failure(status, body, retry_after)
    assert o.kind is kind and o.status == status and o.retry_after == ra


def test_error_message_prefers_upstream_text() -> None:
    assert failures.error_message(b'{"error":{"message":"quota exceeded"}}') == "quota exceeded"
    assert failures.error_message(b"plain text failure") == "plain text failure"
