"""The fake upstream's Anthropic Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`).

A stream is the API's event sequence, each event with its `event:` line: message_start
(usage with input tokens, output_tokens 1), content_block_start, ping, content_block_delta…,
content_block_stop, message_delta (stop reason, cumulative output_tokens), message_stop.
Errors are `{"type": "error", "error": {"type", "message"}, "request_id"}`.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

import orjson

from tests.fake_stream import StreamPlan, Tokens, sse

MALFORMED = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":\n\n'
)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_BASE62 = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id like the API's (`msg_01…`, `req_011…`)."""
    return f"{prefix}_01" + "".join(secrets.choice(_BASE62) for _ in range(22))


def error_type(status: int, given: str | None = None) -> str:
    """The error type an answer with `status` has: `given` if it is one of Anthropic's."""
    if given in ERROR_TYPES.values():
        return str(given)
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, given_type: str | None = None) -> bytes:
    """An Anthropic error body (with a fresh `request_id`)."""
    error = {"type": error_type(status, given_type), "message": message}
    return orjson.dumps({"type": "error", "error": error, "request_id": new_id("req")})


def usage(t: Tokens, *, output_tokens: int | None = None) -> dict[str, Any]:
    """A message's `usage`: `input_tokens` is the uncached part of `t.prompt`."""
    fresh = max(0, t.prompt - t.cached - t.cache_write)
    out: dict[str, Any] = {
        "input_tokens": fresh,
        "cache_creation_input_tokens": t.cache_write,
        "cache_read_input_tokens": t.cached,
        "cache_creation": {"ephemeral_5m_input_tokens": t.cache_write,
                           "ephemeral_1h_input_tokens": 0},
        "output_tokens": t.completion if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }  # fmt: skip
    if t.reasoning and output_tokens is None:
        out["output_tokens_details"] = {"thinking_tokens": t.reasoning}
    return out


def message(mid: str, model: str, text: str | None, t: Tokens) -> dict[str, Any]:
    """A message object: as `message_start` opens it (`text` None), or complete."""
    done = text is not None
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}] if done else [],
        "stop_reason": "end_turn" if done else None,
        "stop_sequence": None,
        "usage": usage(t) if done else usage(t, output_tokens=1),
    }


def plan(mid: str, model: str, pieces: list[str], t: Tokens) -> StreamPlan:
    """The streamed answer with `pieces` as its text deltas."""
    head = [
        sse({"type": "message_start", "message": message(mid, model, None, t)}, "message_start"),
        sse({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        sse({"type": "ping"}, "ping"),
    ]  # fmt: skip

    def render(i: int, piece: str) -> bytes:
        delta = {"type": "text_delta", "text": piece}
        return sse({"type": "content_block_delta", "index": 0, "delta": delta},
                   "content_block_delta")  # fmt: skip

    final_usage: dict[str, Any] = {"output_tokens": t.completion}
    if t.reasoning:
        final_usage["output_tokens_details"] = {"thinking_tokens": t.reasoning}
    tail = [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": final_usage}, "message_delta"),
    ]  # fmt: skip
    end = sse({"type": "message_stop"}, "message_stop")
    body = [render(i, p) for i, p in enumerate(pieces)]
    return StreamPlan(head, body, tail, end, MALFORMED, render)
