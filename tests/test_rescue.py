"""Mid-stream rescue, the pure parts: which targets continue an answer and in which form
(`routing.continuation`), what the client holds and the prefilled request
(`wire.prefill`), the splice of a continuation into the client's stream (`wire.splice`),
and the billing of a rescued stream (`proxy.recording.legs_cost`)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from addon.config.rules import Capabilities
from addon.proxy.recording import leg_columns, legs_cost
from addon.proxy.streamfacts import Leg
from addon.routing.catalog import Candidate
from addon.routing.continuation import (
    broken_leg_usage,
    can_continue,
    default_prefill,
    estimate_tokens,
    prefill_form,
    total_usage,
)
from addon.routing.cost import Price
from addon.wire import prefill
from addon.wire.splice import ChatSplice, Echo, MessagesSplice, add_usage, splice_for
from addon.wire.usage import Usage

# --------------------------------------------------------------------------- capability


@pytest.mark.parametrize(
    ("base_url", "form"),
    [
        ("https://api.anthropic.com/v1", "assistant"),
        ("https://api.mistral.ai/v1", "prefix"),
        ("https://api.deepseek.com/beta", "prefix"),
        ("https://api.deepseek.com/v1", "none"),
        ("https://api.openai.com/v1", "none"),
        ("https://openrouter.ai/api/v1", "none"),
        ("http://127.0.0.1:11434/v1", "none"),
    ],
)
def test_default_prefill_by_provider_host(base_url: str, form: str) -> None:
    assert default_prefill(base_url) == form
    assert prefill_form(None, base_url) == form


@pytest.mark.parametrize(
    ("declared", "form"),
    [(True, "assistant"), (False, "none"), ("prefix", "prefix"),
     ("continue_final_message", "continue_final_message")],
)  # fmt: skip
def test_declared_prefill_wins_over_the_default(declared: Any, form: str) -> None:
    assert Capabilities(prefill=declared).prefill == declared
    assert prefill_form(declared, "https://api.anthropic.com/v1") == form


def test_capability_refuses_an_unknown_form() -> None:
    with pytest.raises(pydantic.ValidationError):
        Capabilities(prefill="suffix")  # type: ignore[arg-type]
    assert Capabilities().prefill is None


@pytest.mark.parametrize(
    ("form", "delivered", "ok"),
    [("none", "", False), ("none", "Hel", False), ("assistant", "Hel", True), ("prefix", "", True)],
)
def test_can_continue(form: str, delivered: str, ok: bool) -> None:
    assert can_continue(form, delivered) is ok


# --------------------------------------------------------------------------- delivered


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {"id": "c1", "model": "m1", "created": 5, "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}  # fmt: skip


ROLE = chunk({"role": "assistant", "content": ""})
TOOL = chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})


@pytest.mark.parametrize(
    ("events", "text", "blocker", "finished"),
    [
        ([ROLE, chunk({"content": "Hel"}), chunk({"content": "lo"})], "Hello", None, False),
        ([ROLE, TOOL], "", prefill.TOOL_IN_FLIGHT, False),
        ([ROLE, chunk({"content": "a"}, index=1)], "", "the answer has several choices (n > 1)",
         False),
        ([ROLE, chunk({"content": "a"}), chunk({}, "stop")], "a", None, True),
        ([ROLE, "not an object", None], "", None, False),
    ],
    ids=["text", "tool", "choices", "finished", "junk"],
)  # fmt: skip
def test_delivered_chat(events: list[Any], text: str, blocker: str | None, finished: bool) -> None:
    got = prefill.delivered("chat", events)
    assert (got.text, got.blocker, got.finished) == (text, blocker, finished)
    if events[0] is ROLE:
        assert got.identity == {"id": "c1", "model": "m1", "created": 5}


def start(btype: str, index: int = 0) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": {"type": btype}}


def tdelta(text: str, index: int = 0) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}}  # fmt: skip


STOP0 = {"type": "content_block_stop", "index": 0}


@pytest.mark.parametrize(
    ("events", "text", "blocker", "blocks", "open_"),
    [
        ([start("text"), tdelta("Hi "), tdelta("there")], "Hi there", None, 1, True),
        ([start("text"), tdelta("Hi"), STOP0], "Hi", None, 1, False),
        ([start("tool_use")], "", prefill.TOOL_IN_FLIGHT, 1, False),
        ([start("thinking")], "", "a thinking block was delivered; only text is continued",
         1, False),
    ],
    ids=["open", "closed", "tool", "thinking"],
)  # fmt: skip
def test_delivered_messages(
    events: list[Any], text: str, blocker: str | None, blocks: int, open_: bool
) -> None:
    got = prefill.delivered("messages", events)
    assert (got.text, got.blocker, got.blocks, got.block_open) == (text, blocker, blocks, open_)


def test_responses_is_not_continuable() -> None:
    assert prefill.delivered("responses", []).blocker
    assert prefill.continuation_request("responses", "assistant", {"input": "x"}, "a") is None


# --------------------------------------------------------------------------- the request

USER = {"role": "user", "content": "count"}


@pytest.mark.parametrize(
    ("form", "last", "top"),
    [
        ("assistant", {"role": "assistant", "content": "Hel"}, {}),
        ("prefix", {"role": "assistant", "content": "Hel", "prefix": True}, {}),
        ("continue_final_message", {"role": "assistant", "content": "Hel"},
         {"continue_final_message": True, "add_generation_prompt": False}),
    ],
)  # fmt: skip
def test_chat_prefill_in_each_form(form: str, last: dict[str, Any], top: dict[str, Any]) -> None:
    data = {"model": "m", "stream": True, "messages": [USER]}
    pre = prefill.continuation_request("chat", form, data, "Hel")
    assert pre is not None
    assert pre.body == {"model": "m", "stream": True, "messages": [USER, last], **top}
    assert pre.echo == "Hel"
    assert data["messages"] == [USER]  # the original is not changed


@pytest.mark.parametrize(
    ("api", "data", "text", "body", "echo"),
    [
        ("chat", {"messages": [USER, {"role": "assistant", "content": "He"}]}, "llo",
         {"messages": [USER, {"role": "assistant", "content": "Hello"}]}, "llo"),
        ("chat", {"messages": [USER]}, "", {"messages": [USER]}, ""),
        ("completions", {"prompt": "Once"}, " upon", {"prompt": "Once upon"}, ""),
        ("messages", {"messages": [USER]}, "Hi there ",
         {"messages": [USER, {"role": "assistant", "content": "Hi there"}]}, " "),
        ("messages", {"messages": [USER]}, "  ", {"messages": [USER]}, "  "),
    ],
    ids=["merge-client-prefill", "nothing-yet", "completions", "messages-trailing-space",
         "messages-only-space"],
)  # fmt: skip
def test_continuation_request(
    api: str, data: dict[str, Any], text: str, body: dict[str, Any], echo: str
) -> None:
    pre = prefill.continuation_request(api, "assistant", data, text)
    assert pre is not None and (pre.body, pre.echo) == (body, echo)


@pytest.mark.parametrize(
    ("api", "data"),
    [
        ("chat", {"messages": [USER], "n": 2}),
        ("chat", {"prompt": "x"}),
        ("completions", {"prompt": ["a", "b"]}),
        ("messages", {"messages": [USER], "thinking": {"type": "enabled", "budget_tokens": 9}}),
    ],
    ids=["n2", "no-messages", "prompt-list", "thinking"],
)
def test_requests_that_cannot_be_continued(api: str, data: dict[str, Any]) -> None:
    assert prefill.continuation_request(api, "assistant", data, "x") is None


@pytest.mark.parametrize(
    ("status", "body", "refuses"),
    [
        (400, b'{"error": {"message": "This model does not support assistant message prefill."}}',
         True),
        (400, b'{"type": "error", "error": {"type": "invalid_request_error", "message": '
              b'"Expected last role User or Tool (or Assistant with prefix True)"}}', True),
        (400, b'{"error": {"message": "max_tokens is too large"}}', False),
        (500, b'{"error": {"message": "prefill backend crashed"}}', False),
    ],
    ids=["openai-shape", "anthropic-shape", "other-400", "5xx"],
)  # fmt: skip
def test_rejects_prefill(status: int, body: bytes, refuses: bool) -> None:
    assert prefill.rejects_prefill(status, body) is refuses


# --------------------------------------------------------------------------- the splice


@pytest.mark.parametrize(
    ("expect", "pieces", "shown"),
    [
        ("", ["a", "b"], ["a", "b"]),
        ("Hel", ["He", "l", " wor", "ld"], ["", "", " wor", "ld"]),
        ("Hel", ["Hello"], ["lo"]),
        ("Hel", ["He", "y"], ["", "Hey"]),
        ("Hel", [" wor"], [" wor"]),
    ],
    ids=["none", "echo-in-pieces", "echo-and-more", "not-an-echo-after-all", "no-echo"],
)
def test_echo(expect: str, pieces: list[str], shown: list[str]) -> None:
    e = Echo(expect)
    assert [e.take(p) for p in pieces] == shown


def test_chat_splice_reads_as_the_first_attempts_stream() -> None:
    first = prefill.delivered("chat", [ROLE, chunk({"content": "Hel"})])
    splice = splice_for("chat", first, Usage(11, 1), "")
    assert isinstance(splice, ChatSplice)
    other = {"id": "c2", "model": "m2", "created": 9}
    role = chunk({"role": "assistant", "content": ""}) | other
    assert splice.rewrite(role) == []  # no second role chunk
    [out] = splice.rewrite(chunk({"role": "assistant", "content": "lo"}) | other)
    assert (out["id"], out["model"], out["created"]) == ("c1", "m1", 5)
    assert out["choices"][0]["delta"] == {"content": "lo"}
    [fin] = splice.rewrite(chunk({}, "stop") | other)
    assert fin["choices"][0]["finish_reason"] == "stop"
    usage = {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16,
             "prompt_tokens_details": {"cached_tokens": 3}}  # fmt: skip
    [u] = splice.rewrite({**other, "choices": [], "usage": usage})
    assert u["usage"] == {"prompt_tokens": 25, "completion_tokens": 3, "total_tokens": 28,
                          "prompt_tokens_details": {"cached_tokens": 3}}  # fmt: skip
    assert splice.render(u).startswith(b"data: {") and splice.render(u).endswith(b"\n\n")


def test_chat_splice_drops_an_echoed_prefill() -> None:
    splice = splice_for("chat", prefill.Delivered("Hel", identity={"id": "c1"}), None, "Hel")
    assert splice.rewrite(chunk({"content": "He"})) == []
    [out] = splice.rewrite(chunk({"content": "llo"}))
    assert out["choices"][0]["delta"]["content"] == "lo"


def test_messages_splice_continues_the_open_block() -> None:
    got = prefill.delivered("messages", [start("text"), tdelta("Hi")])
    splice = splice_for("messages", got, Usage(11, 4), " ")
    assert isinstance(splice, MessagesSplice)
    opening = {
        "type": "message_start",
        "message": {"id": "msg_2", "usage": {"input_tokens": 13, "output_tokens": 1}},
    }
    assert splice.rewrite(opening) == []  # the client has its message_start
    assert splice.rewrite(start("text")) == []  # ... and its text block open
    assert splice.rewrite(tdelta(" ")) == []  # the whitespace the prefill dropped
    assert splice.rewrite(tdelta("there")) == [tdelta("there")]
    assert splice.rewrite(STOP0) == [STOP0]
    [tail] = splice.rewrite({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                             "usage": {"output_tokens": 5}})  # fmt: skip
    assert tail["usage"] == {
        "output_tokens": 9,
        "input_tokens": 24,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert splice.rewrite({"type": "message_stop"}) == [{"type": "message_stop"}]
    assert splice.render(STOP0).startswith(b"event: content_block_stop\ndata: ")  # fmt: skip


def test_messages_splice_shifts_later_blocks() -> None:
    got = prefill.delivered("messages", [start("text"), tdelta("Hi"), STOP0])
    splice = splice_for("messages", got, None, "")
    assert splice.rewrite(start("text")) == [start("text", 1)]
    assert splice.rewrite(tdelta("x")) == [tdelta("x", 1)]
    open_again = splice_for("messages", prefill.delivered("messages", [start("text")]), None, "")
    assert open_again.rewrite(start("tool_use")) == [STOP0, start("tool_use", 1)]


# --------------------------------------------------------------------------- billing


@pytest.mark.parametrize(
    ("reported", "chars", "prompt_est", "usage", "estimated"),
    [
        (None, 35, 20, Usage(20, 10), True),
        (Usage(11, 1), 35, 20, Usage(11, 10), True),
        (Usage(11, 12), 35, 20, Usage(11, 12), False),
        (None, 0, 20, Usage(20, 0), True),
    ],
    ids=["chat-nothing-reported", "messages-start", "all-reported", "no-text"],
)
def test_broken_leg_usage(
    reported: Usage | None, chars: int, prompt_est: int, usage: Usage, estimated: bool
) -> None:
    assert broken_leg_usage(reported, chars, prompt_est) == (usage, estimated)


def test_usage_sums() -> None:
    assert estimate_tokens(0) == 0 and estimate_tokens(7) == 2
    assert add_usage(Usage(1, 2, 3, 4, 5), Usage(10, 20, 30, 40, 50)) == Usage(11, 22, 33, 44, 55)
    assert total_usage([None, Usage(1, 1), Usage(2, 3)]) == Usage(3, 4)
    assert total_usage([None]) is None


def cand(key: str, price: Price) -> Candidate:
    return Candidate(key, key, key, key.split(":")[0], key.split(":")[1], price, 1000, None,
                     False, False, False, False, None, 0.5, "models.yaml", "assistant")  # fmt: skip


def test_a_rescued_stream_costs_each_attempt_at_its_price() -> None:
    legs = [Leg(cand("a:x", Price(10, 30)), Usage(100, 10), True, 0),
            Leg(cand("b:y", Price(1, 2)), Usage(110, 50), False, 1)]  # fmt: skip
    assert legs_cost(legs) == pytest.approx((100 * 10 + 10 * 30 + 110 * 1 + 50 * 2) / 1e6)
    assert leg_columns(legs[0]) == {"prompt_tokens": 100, "completion_tokens": 10,
                                    "usage_estimated": True}  # fmt: skip
    unpriced = [*legs, Leg(cand("c:z", Price(None, None)), Usage(1, 1), False, 2)]
    assert legs_cost(unpriced) is None
