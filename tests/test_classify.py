"""classify: token estimate, needs, task, complexity."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.routing import classify
from addon.routing.classify import CHARS_PER_TOKEN, TOKENS_PER_IMAGE, RequestFeatures
from addon.wire import embeddings, messages, responses
from addon.wire.request import parse_request


def features(body: dict[str, Any]) -> RequestFeatures:
    """Features as the dispatcher computes them: the body parsed once, its model carried."""
    parsed = parse_request(json.dumps(body).encode())
    return classify.features(parsed.data, requested_model=parsed.model)


def msg(text: str, role: str = "user") -> dict:
    return {"role": role, "content": text}


def test_token_estimate_is_conservative() -> None:
    text = "word " * 1000  # ~1000 real tokens in BPE tokenizers
    f = features({"model": "x", "messages": [msg(text)]})
    assert f.prompt_tokens >= len(text) / 4
    assert f.prompt_tokens == int(len(text) / CHARS_PER_TOKEN + 0.999) + 4 + 3


@pytest.mark.parametrize(
    ("body", "attr"),
    [
        (
            {"messages": [msg("hi")], "tools": [{"type": "function", "function": {"name": "f"}}]},
            "needs_tools",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AAAA"},
                            },
                        ],
                    }
                ]
            },
            "needs_vision",
        ),
        (
            {
                "messages": [msg("hi")],
                "response_format": {"type": "json_schema", "json_schema": {}},
            },
            "needs_json_schema",
        ),
    ],
)
def test_needs(body: dict, attr: str) -> None:
    f = features(body)
    assert getattr(f, attr) is True
    for other in {"needs_tools", "needs_vision", "needs_json_schema"} - {attr}:
        assert getattr(f, other) is False


def test_image_tokens_counted() -> None:
    f = features(
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        }
    )
    assert f.prompt_tokens >= TOKENS_PER_IMAGE


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("```python\nprint(1)\n```\nwhy does this fail?", "code"),
        ("Solve the equation x^2 = 4", "math"),
        ("Write a poem about the sea", "creative"),
        ("Summarize this article for me", "summarize"),
        ("Extract the names from this text", "extraction"),
        ("How are you today?", "chat"),
    ],
)
def test_task(text: str, task: str) -> None:
    assert features({"messages": [msg(text)]}).task == task


@pytest.mark.parametrize(
    ("body", "cls"),
    [
        ({"messages": [msg("hi")]}, "simple"),
        (
            {"messages": [msg("Design a system and analyze the trade-offs step by step. " * 200)]},
            "medium",
        ),
        (
            {
                "messages": [
                    msg(
                        "Prove this and explain why:\n```python\ndef f(x):\n  return x\n```\n"
                        + "context " * 20000
                    )
                ],
                "tools": [{"type": "function"}],
            },
            "complex",
        ),
    ],
)
def test_complexity_class(body: dict, cls: str) -> None:
    assert features(body).complexity_class == cls


def test_max_tokens_and_model() -> None:
    f = features({"model": "gpt-4o", "messages": [], "max_completion_tokens": 300, "stream": True})
    assert (f.requested_model, f.max_output_tokens, f.stream) == ("gpt-4o", 300, True)
    assert features({"max_tokens": True}).max_output_tokens is None


def test_legacy_completions_prompt() -> None:
    f = features({"model": "x", "prompt": "Write a haiku"})
    assert f.task == "creative" and f.prompt_tokens > 0


@pytest.mark.parametrize(
    "junk",
    [{"messages": "nope"}, {"messages": [1, None, {"content": 5}]}, {"prompt": [1, "a"]}, {}],
)
def test_junk_does_not_raise(junk: dict) -> None:
    features(junk)


def test_junk_tool_calls_are_ignored() -> None:
    body = {"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}
    assert (
        features(body).prompt_tokens
        == features({"messages": [msg("x", "assistant")]}).prompt_tokens
    )


# --------------------------------------------------------------------------- keyword rules


def flags(text: str) -> tuple[str, bool]:
    """(task, whether the reasoning term is in the complexity) of a user turn."""
    f = features({"messages": [msg(text)]})
    size = 0.35 * min(1.0, max(0.0, math.log10(f.prompt_tokens / 100) / 2))
    rest = f.complexity - size - (0.15 if f.task == "code" else 0.0)
    assert min(abs(rest), abs(rest - 0.25)) < 0.002, f
    return f.task, abs(rest - 0.25) < 0.002


@pytest.mark.parametrize(
    "text",
    [
        "How can I improve this?",  # prove
        "A short history of Rome",  # story
        "Is that reasonable?",  # reason
        "How do I resolve a merge conflict?",  # solve
        "The unsolved ones",  # solve
        "Count the labeled rows",  # label
        "tradeoffsx and xdesign",  # tradeoffs, design
        "approve, disprove, prover",  # prove
    ],
)
def test_keywords_inside_longer_words_do_not_count(text: str) -> None:
    assert flags(text) == ("chat", False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Prove: the sum is even", ("chat", True)),
        ("a plan (design) for it", ("chat", True)),
        ("list the trade-offs", ("chat", True)),
        ("what is the trade-off?", ("chat", True)),
        ("think step-by-step", ("chat", True)),
        ("RE-DESIGN the page", ("chat", True)),
        ("the story's end", ("creative", False)),
        ("Summarize; then stop", ("summarize", False)),
        ("tl;dr please", ("summarize", False)),
        ("TL;DR", ("summarize", False)),
        ("'parse' it", ("extraction", False)),
        ("solve_it", ("math", False)),  # "_" is neither an ASCII letter nor a digit
        ("x-prove", ("chat", True)),
    ],
)
def test_keywords_next_to_punctuation_count(text: str, expected: tuple[str, bool]) -> None:
    assert flags(text) == expected


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("def foo(x): pass", "code"),
        ("(def foo(", "code"),
        ("undef foo(", "chat"),
        ("predef foo(", "chat"),
        ("x = 1\nimport os", "code"),
        ("reimport os", "chat"),
        ("éimport os", "chat"),  # é is alphanumeric: not a word start
        ("subclass Foo:", "chat"),
        ("class Foo:", "code"),
        ("function  go (", "code"),
        ("malfunction go(", "chat"),
        ("SELECT a FROM b", "code"),
        ("preselect a from b", "chat"),
        ("a => b", "code"),
        ("the class of function words", "chat"),
    ],
)
def test_code_prefixes_count_only_at_word_starts(text: str, task: str) -> None:
    assert features({"messages": [msg(text)]}).task == task


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Résumé: prove that naïve café ☕ works", ("chat", True)),
        ("’design’ it", ("chat", True)),
        ("🤔 solve x", ("math", False)),
        ("naïve summary — please", ("summarize", False)),
        ("日本語のpoemを書いて", ("creative", False)),
        ("ÜBERSICHT: extract names", ("extraction", False)),
        ("é" * 990 + " prove " + "ü" * 3000, ("chat", True)),  # in the head
        ("é" * 3000 + " (prove) " + "ü" * 990, ("chat", True)),  # in the tail
        ("\ud800prove\udfff", ("chat", True)),  # lone surrogates (valid JSON escapes)
        ("\ud800improve", ("chat", False)),
    ],
)
def test_multibyte_text_around_keywords(text: str, expected: tuple[str, bool]) -> None:
    assert flags(text) == expected


def test_only_head_and_tail_are_read() -> None:
    middle = "prove " + "x" * 3000
    assert flags("y" * 1500 + middle + "z" * 1500) == ("chat", False)
    assert flags("a " + "y" * 3000 + " prove") == ("chat", True)


# Reference: the documented rules, written plainly (regex lookarounds, one search each).
FILLER = ["im", "un", "re", "s", "ed", "able", "x", "foo", "9", "é", "ü", "’", "日本", "🤔", "_"]
PUNCT = [" ", " ", "-", ";", "'", ":", "(", ")", "\n", ".", ",", "\t", "/"]
PATTERNS = sorted(
    {w for _, words in classify._KEYWORDS for w in words}
    | {p for _, phrases in classify._PHRASES for p in phrases}
    | {lit for lit, _ in classify._CODE_PATTERNS}
    | {"foo(", "foo:", "os", "from", "improve", "history", "labeled"}
)


def reference_categories(low: str) -> set[str]:
    found = set()
    for category, words in classify._KEYWORDS:
        for w in words:
            if re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", low):
                found.add(category)
    for category, phrases in classify._PHRASES:
        if any(p in low for p in phrases):
            found.add(category)
    for literal, rx in classify._CODE_PATTERNS:
        for m in re.finditer(f"(?={re.escape(literal)})", low):
            i = m.start()
            if (i == 0 or not low[i - 1].isalnum()) and rx.match(low, i):
                found.add("code")
    return found


def reference_task(found: set[str], low: str) -> str:
    if "code" in found:
        return "code"
    if "math" in found or classify._has_math_expr(low):
        return "math"
    for task in ("creative", "summarize", "extraction"):
        if task in found:
            return task
    return "chat"


piece = st.one_of(
    st.sampled_from(PATTERNS).flatmap(lambda w: st.sampled_from([w, w.upper(), w.title()])),
    st.sampled_from(FILLER),
    st.sampled_from(PUNCT),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(piece, max_size=40).map("".join))
def test_keyword_detection_matches_the_reference(text: str) -> None:
    low = "".join(c.lower() if c.isascii() else c for c in text)
    expected = reference_categories(low)
    found = classify._categories(classify._ascii_lower(text))
    if {"code", "reasoning"} <= found:  # the scan stops there; nothing else matters
        assert {"code", "reasoning"} <= expected
    else:
        assert found == expected
    assert features({"messages": [msg(text)]}).task == reference_task(expected, low)


# --------------------------------------------------------------------------- tool sizes

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city: temperature, humidity, a short summary.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.sampled_from("ab '\"\\\b\f\n\x00\x7f,:-éü\u2028\u200b☕")),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_repr_len_is_never_below_the_repr(value: Any) -> None:
    assert classify._repr_len(value) >= len(str(value))


@pytest.mark.parametrize(
    ("value", "slack"),
    [
        ([TOOL] * 5, 1.01),
        ({"name": "f", "arguments": json.dumps({"query": "it's", "n": -1.5e-07})}, 1.2),
        ([2**70, "x"], 1.0),  # beyond orjson: the exact path
        (["\ud800"], 1.0),
        (["naïve ☕"], 1.0),
    ],
)
def test_repr_len_is_close_to_the_repr(value: Any, slack: float) -> None:
    exact = len(str(value))
    assert exact <= classify._repr_len(value) <= exact * slack


def test_tools_count_at_least_as_before() -> None:
    body = {"messages": [msg("hi")], "tools": [TOOL] * 3}
    before = int((2 + len(str(body["tools"]))) / CHARS_PER_TOKEN + 0.999) + 4 + 3
    assert features(body).prompt_tokens >= before


# --------------------------------------------------------------------------- per API

WEATHER = {"type": "function", "name": "weather", "parameters": {"type": "object"}}


def _responses(body: dict[str, Any]) -> RequestFeatures:
    return classify.responses_features(responses.read_request(body), requested_model="m")


def _messages(body: dict[str, Any]) -> RequestFeatures:
    return classify.messages_features(messages.read_request(body), requested_model="m")


@pytest.mark.parametrize(
    ("body", "want"),
    [
        # (stream, max output, tools, vision, json schema, hosted tools, task)
        ({"input": "Say hi"}, (False, None, False, False, False, (), "chat")),
        ({"input": "hi", "stream": True, "max_output_tokens": 64, "tools": [WEATHER]},
         (True, 64, True, False, False, (), "chat")),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "what is this"},
                                                  {"type": "input_image", "image_url": "x"}]}]},
         (False, None, False, True, False, (), "chat")),
        ({"input": "write a haiku", "text": {"format": {"type": "json_schema", "name": "x",
                                                         "schema": {}}}},
         (False, None, False, False, True, (), "creative")),
        # built-in tools: need tools, and name the types for the host restriction
        ({"input": "news?", "tools": [{"type": "web_search"}, {"type": "file_search"}, WEATHER]},
         (False, None, True, False, False, ("file_search", "web_search"), "chat")),
    ],
)  # fmt: skip
def test_responses_features(body: dict[str, Any], want: tuple[Any, ...]) -> None:
    f = _responses(body)
    got = (f.stream, f.max_output_tokens, f.needs_tools, f.needs_vision, f.needs_json_schema,
           f.hosted_tools, f.task)  # fmt: skip
    assert got == want and f.requested_model == "m"


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"max_tokens": 100, "messages": [msg("hi")]}, (False, 100, False, False, False, "chat")),
        ({"max_tokens": 50, "stream": True, "system": "be brief",
          "tools": [{"name": "t", "input_schema": {}}], "messages": [msg("def f(): pass")]},
         (True, 50, True, False, False, "code")),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "data": "x"}},
            {"type": "text", "text": "what is it"}]}],
          "output_config": {"format": {"type": "json_schema", "schema": {}}}},
         (False, None, False, True, True, "chat")),
        # Anthropic's server tools: tools only, no host restriction
        ({"messages": [msg("search")], "tools": [{"type": "web_search_20250305", "name": "w"}]},
         (False, None, True, False, False, "chat")),
    ],
)  # fmt: skip
def test_messages_features(body: dict[str, Any], want: tuple[Any, ...]) -> None:
    f = _messages(body)
    got = (f.stream, f.max_output_tokens, f.needs_tools, f.needs_vision, f.needs_json_schema,
           f.task)  # fmt: skip
    assert got == want and f.hosted_tools == ()


def test_the_size_estimate_is_the_same_across_apis() -> None:
    text = "word " * 700
    chat = features({"messages": [msg("sys", "system"), msg(text)]}).prompt_tokens
    assert _responses({"instructions": "sys", "input": text}).prompt_tokens == chat
    assert _messages({"system": "sys", "messages": [msg(text)]}).prompt_tokens == chat
    image = _responses({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "x"}]}]}).prompt_tokens  # fmt: skip
    assert image >= TOKENS_PER_IMAGE


@pytest.mark.parametrize(
    ("body", "tokens", "items"),
    [({"input": "x" * 35}, 10, 1),
     ({"input": ["a" * 7, "b" * 7]}, 4, 2),
     ({"input": [[1, 2, 3], [4, 5]]}, 5, 2)],  # token arrays: counted exactly
)  # fmt: skip
def test_embeddings_features(body: dict[str, Any], tokens: int, items: int) -> None:
    f = classify.embeddings_features(embeddings.read_request(body), requested_model="e")
    assert (f.prompt_tokens, f.messages, f.task, f.stream, f.max_output_tokens) == (
        tokens, items, "embedding", False, None)  # fmt: skip
    assert not (f.needs_tools or f.needs_vision or f.needs_json_schema)
