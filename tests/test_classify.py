"""classify: token estimate, needs, task, complexity."""

from __future__ import annotations

import pytest

from addon.classify import CHARS_PER_TOKEN, TOKENS_PER_IMAGE, features


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
