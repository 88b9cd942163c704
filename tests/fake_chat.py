"""The fake upstream's chat completions and legacy completions (`/v1/chat/completions`,
`/v1/completions`): whole answers, and streams of chunks ending in `data: [DONE]`.

A chat stream opens with the role chunk, then one chunk per content piece, the finish chunk
and, with `stream_options.include_usage`, the usage-only chunk (`choices: []`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from tests.fake_stream import StreamPlan, Tokens

MALFORMED = b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "choices": [\n\n'
DONE = b"data: [DONE]\n\n"
FINGERPRINT = "fp_fake0001"


def usage(t: Tokens, chat: bool) -> dict[str, Any]:
    """An answer's `usage` (chat adds the token details; legacy completions do not)."""
    out: dict[str, Any] = {
        "prompt_tokens": t.prompt,
        "completion_tokens": t.completion,
        "total_tokens": t.prompt + t.completion,
    }
    if chat:
        out["prompt_tokens_details"] = {"cached_tokens": t.cached, "audio_tokens": 0}
        out["completion_tokens_details"] = {
            "reasoning_tokens": t.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return out


def completion(path: str, model: str, content: str, t: Tokens) -> dict[str, Any]:
    """A whole answer: a chat completion, or a legacy text completion for `/v1/completions`."""
    head = {"created": int(time.time()), "model": model}
    if path == "/v1/completions":
        choice = {"text": content, "index": 0, "logprobs": None, "finish_reason": "stop"}
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            **head,
            "choices": [choice],
            "usage": usage(t, False),
        }
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        **head,
        "choices": [choice],
        "usage": usage(t, True),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }


def plan(path: str, model: str, req: dict[str, Any], pieces: list[str], t: Tokens) -> StreamPlan:
    """The streamed answer with `pieces` as its content chunks."""
    opts = req.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    chat = path == "/v1/chat/completions"
    base: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}" if chat else f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if chat:
        base["service_tier"], base["system_fingerprint"] = "default", FINGERPRINT

    def event(choice: dict[str, Any] | None, usage_: Any = None) -> bytes:
        chunk = base | {"choices": [] if choice is None else [choice]}
        if include_usage:
            chunk["usage"] = usage_
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def choice(piece: str | dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if chat:
            return {"index": 0, "delta": piece, "logprobs": None, "finish_reason": finish}
        return {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}

    def render(i: int, piece: str) -> bytes:
        return event(choice({"content": piece} if chat else piece))

    role = {"role": "assistant", "content": "", "refusal": None}
    head = [event(choice(role))] if chat else []
    body = [render(i, p) for i, p in enumerate(pieces)]
    tail = [event(choice({} if chat else "", "stop"))]
    if include_usage:
        tail.append(event(None, usage(t, chat)))
    return StreamPlan(head, body, tail, DONE, MALFORMED, render)
