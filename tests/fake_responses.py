"""The fake upstream's OpenAI Responses API (`POST /v1/responses`): answers and streams.

A stream is the API's event sequence, each event with its `event:` line and a
`sequence_number` counting from 0: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta…,
response.output_text.done, response.content_part.done, response.output_item.done,
response.completed (with usage). There is no `[DONE]`.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from tests.fake_stream import StreamPlan, Tokens, sse

MALFORMED = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","item_id":"msg_broken","delta":\n\n'
)
_ECHOED = (
    "instructions",
    "max_output_tokens",
    "previous_response_id",
    "reasoning",
    "text",
    "tool_choice",
    "tools",
    "metadata",
    "temperature",
    "top_p",
    "truncation",
    "store",
    "parallel_tool_calls",
)
_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "tool_choice": "auto",
    "tools": [],
    "metadata": {},
    "temperature": 1.0,
    "top_p": 1.0,
    "truncation": "disabled",
    "store": True,
    "parallel_tool_calls": True,
}


def new_id(prefix: str) -> str:
    """An id like the API's (`resp_…`, `msg_…`): the prefix and 48 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}{uuid.uuid4().hex[:16]}"


def usage(t: Tokens) -> dict[str, Any]:
    """A response's `usage` block."""
    return {
        "input_tokens": t.prompt,
        "input_tokens_details": {"cached_tokens": t.cached, "cache_write_tokens": t.cache_write},
        "output_tokens": t.completion,
        "output_tokens_details": {"reasoning_tokens": t.reasoning},
        "total_tokens": t.prompt + t.completion,
    }


def _message(item_id: str, text: str | None) -> dict[str, Any]:
    """The output message item: in progress and empty (None) or completed with `text`."""
    content = [] if text is None else [_part(text)]
    status = "in_progress" if text is None else "completed"
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response(
    rid: str,
    model: str,
    req: dict[str, Any],
    *,
    created_at: int,
    item_id: str,
    text: str | None,
    tokens: Tokens | None,
) -> dict[str, Any]:
    """A response object: in progress (`text` None, no usage) or completed with `text`."""
    done = text is not None
    body: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": "completed" if done else "in_progress",
        "background": False,
        "completed_at": created_at if done else None,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [_message(item_id, text)] if done else [],
        "service_tier": "default",
        "usage": usage(tokens) if done and tokens is not None else None,
        "user": None,
    }
    body |= {k: req.get(k, _DEFAULTS[k]) for k in _ECHOED}
    return body


def plan(
    rid: str, model: str, req: dict[str, Any], pieces: list[str], tokens: Tokens, created_at: int
) -> StreamPlan:
    """The streamed answer with `pieces` as its text deltas."""
    item_id = new_id("msg")
    text = "".join(pieces)
    head_events: list[tuple[str, dict[str, Any]]] = []
    for kind in ("response.created", "response.in_progress"):
        r = response(rid, model, req, created_at=created_at, item_id=item_id, text=None,
                     tokens=None)  # fmt: skip
        head_events.append((kind, {"response": r}))
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    head_events.append(
        ("response.output_item.added", {"output_index": 0, "item": _message(item_id, None)})
    )
    head_events.append(("response.content_part.added", {**where, "part": _part("")}))
    head = [_event(kind, fields, n) for n, (kind, fields) in enumerate(head_events)]

    def render(i: int, piece: str) -> bytes:
        fields = {**where, "delta": piece, "logprobs": []}
        return _event("response.output_text.delta", fields, len(head) + i)

    body = [render(i, p) for i, p in enumerate(pieces)]
    n = len(head) + len(body)
    tail = [
        _event("response.output_text.done", {**where, "text": text, "logprobs": []}, n),
        _event("response.content_part.done", {**where, "part": _part(text)}, n + 1),
        _event("response.output_item.done",
               {"output_index": 0, "item": _message(item_id, text)}, n + 2),
    ]  # fmt: skip
    final = response(rid, model, req, created_at=created_at, item_id=item_id, text=text,
                     tokens=tokens)  # fmt: skip
    end = _event("response.completed", {"response": final}, n + 3)
    return StreamPlan(head, body, tail, end, MALFORMED, render)


def _event(kind: str, fields: dict[str, Any], sequence_number: int) -> bytes:
    return sse({"type": kind, **fields, "sequence_number": sequence_number}, kind)


def previous_not_found(previous_id: str) -> bytes:
    """The API's 400 body for a `previous_response_id` it does not hold."""
    error = {
        "message": f"Previous response with id '{previous_id}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    return orjson.dumps({"error": error})
