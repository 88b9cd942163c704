"""Continuing a streamed answer elsewhere: what the client already has, and the request
that asks another target to go on from there (pure).

`delivered` reads the events the client received (their JSON, in order) as the answer so
far: its text, whether it may be continued at all (`blocker`), whether it already ended,
and what the continuation must fit into (the first chunk's id, model and created; the
Messages content blocks the client saw open). `continuation_request` is the original
request with that text as an assistant prefill in the target's form:

- chat: a trailing assistant message (merged into one the client sent last), with
  `prefix: true` on it (form ``prefix``) or with top-level `continue_final_message: true`
  and `add_generation_prompt: false` (form ``continue_final_message``);
- completions: the prompt string with the text appended (every form);
- Messages: Anthropic's native prefill, a trailing assistant message, minus trailing
  whitespace (the API refuses a final assistant turn that ends in it; the continuation's
  echo of it is dropped by `wire.splice`); never with extended thinking on, which the API
  does not accept with a prefill;
- Responses: not continuable. An assistant `output_text` input item is read as a finished
  earlier turn, so the model answers anew instead of finishing the sentence, and the
  spliced answer would not be the response stored under its id upstream.

What was delivered with nothing but text so far is continued; a tool call that was in
flight (its arguments partly sent), a thinking block, or several choices are not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from addon.wire.failures import error_message

CONTINUABLE_APIS = frozenset({"chat", "completions", "messages"})
TOOL_IN_FLIGHT = "a tool call was in flight, and a tool call is never continued elsewhere"
_REJECTION_WORDS = ("prefill", "prefix", "continue_final_message", "final assistant",
                    "last message", "must end with a user", "assistant message",
                    "expected last role")  # fmt: skip


@dataclass(frozen=True)
class Delivered:
    """The answer a client holds when its stream broke.

    `text` is the answer text; `blocker` why it cannot be continued (None: it can);
    `finished` whether the client already got its end (a finish or stop reason);
    `identity` the first chat chunk's `id`, `model` and `created` (for the continuation's
    chunks); `blocks` the Messages content blocks that started, `block_open` whether the
    last one is a text block still open."""

    text: str = ""
    blocker: str | None = None
    finished: bool = False
    identity: dict[str, Any] = field(default_factory=dict)
    blocks: int = 0
    block_open: bool = False


@dataclass(frozen=True)
class Prefilled:
    """A continuation request's body (JSON), and the text the continuation may repeat
    first (`echo`: the whole prefill for a server that echoes it, the whitespace a
    Messages prefill had to drop), which the splice removes."""

    body: dict[str, Any]
    echo: str


def delivered(api: str | None, events: Iterable[Any]) -> Delivered:
    """What the client got of an `api` answer, from the JSON of the events it received."""
    if api == "messages":
        return _delivered_messages(events)
    if api in ("chat", "completions"):
        return _delivered_chat(events)
    return Delivered(blocker=f"a {api or 'unknown'} stream cannot be continued elsewhere")


def _delivered_chat(events: Iterable[Any]) -> Delivered:
    text: list[str] = []
    identity: dict[str, Any] = {}
    blocker, finished = None, False
    for obj in events:
        if not isinstance(obj, dict):
            continue
        if not identity and "id" in obj:
            identity = {k: obj[k] for k in ("id", "model", "created") if k in obj}
        for ch in obj.get("choices") or ():
            if not isinstance(ch, dict):
                continue
            if ch.get("index", 0) != 0:
                blocker = blocker or "the answer has several choices (n > 1)"
                continue
            delta = ch.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else ch.get("text")
            if isinstance(delta, dict) and (delta.get("tool_calls") or delta.get("function_call")):
                blocker = TOOL_IN_FLIGHT
            if isinstance(piece, str):
                text.append(piece)
            if ch.get("finish_reason") is not None:
                finished = True
    return Delivered("".join(text), blocker, finished, identity)


def _delivered_messages(events: Iterable[Any]) -> Delivered:
    text: list[str] = []
    blocker, finished, blocks, open_ = None, False, 0, False
    for obj in events:
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "content_block_start":
            block = obj.get("content_block")
            btype = block.get("type") if isinstance(block, dict) else None
            blocks += 1
            open_ = btype == "text"
            if btype in ("tool_use", "server_tool_use"):
                blocker = TOOL_IN_FLIGHT
            elif btype != "text":
                blocker = blocker or f"a {btype} block was delivered; only text is continued"
        elif kind == "content_block_stop":
            open_ = False
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                piece = delta.get("text")
                text.append(piece if isinstance(piece, str) else "")
        elif kind == "message_delta":
            delta = obj.get("delta")
            finished = finished or (
                isinstance(delta, dict) and delta.get("stop_reason") is not None
            )
    return Delivered("".join(text), blocker, finished, blocks=blocks, block_open=open_)


def continuation_request(
    api: str | None, form: str, data: dict[str, Any], text: str
) -> Prefilled | None:
    """The request body (`data`, the target's own) that continues `text` in `form`; None
    when this request cannot be continued (see the module docstring). With no text yet,
    the request as it is."""
    if api not in CONTINUABLE_APIS:
        return None
    if api == "messages":
        return _messages_request(data, text)
    if api == "completions":
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            return None
        return Prefilled({**data, "prompt": prompt + text}, "")
    if not isinstance(data.get("messages"), list) or (data.get("n") or 1) != 1:
        return None
    if not text:
        return Prefilled(data, "")
    messages = list(data["messages"])
    last = messages[-1] if messages else None
    if (
        isinstance(last, dict)
        and last.get("role") == "assistant"
        and isinstance(last.get("content"), str)
    ):
        turn = {**messages.pop(), "content": last["content"] + text}
    else:
        turn = {"role": "assistant", "content": text}
    if form == "prefix":
        turn["prefix"] = True
    body = {**data, "messages": [*messages, turn]}
    if form == "continue_final_message":
        body |= {"continue_final_message": True, "add_generation_prompt": False}
    return Prefilled(body, text)


def _messages_request(data: dict[str, Any], text: str) -> Prefilled | None:
    thinking = data.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        return None
    if not isinstance(data.get("messages"), list):
        return None
    prefill = text.rstrip()
    if not prefill:
        return Prefilled(data, text)
    messages = list(data["messages"])
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        content = last.get("content")
        if isinstance(content, str):
            turn = {**last, "content": content + prefill}
        elif isinstance(content, list):
            turn = {**last, "content": [*content, {"type": "text", "text": prefill}]}
        else:
            return None
        messages.pop()
    else:
        turn = {"role": "assistant", "content": prefill}
    return Prefilled({**data, "messages": [*messages, turn]}, text[len(prefill) :])


def encode(body: dict[str, Any]) -> bytes:
    """A continuation request's body as the bytes sent."""
    return json.dumps(body, ensure_ascii=False).encode()


def rejects_prefill(status: int, body: bytes) -> bool:
    """Whether an error answer refuses the prefill itself (a 400 or 422 that says so),
    rather than anything else about the request."""
    if status not in (400, 422):
        return False
    low = error_message(body).lower()
    return any(w in low for w in _REJECTION_WORDS)
