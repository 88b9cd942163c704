"""Anthropic Messages (`POST /v1/messages`, `/v1/messages/count_tokens`; spoken by Claude Code).

Request: `read_request` (text, images, documents, turns; tools, thinking, structured output,
`stream`, `max_tokens`). Answer: `answer_facts` for a JSON body; a stream is `message_start`
(id, model, the input side of usage), `content_block_start`, `ping`, `content_block_delta`…,
`content_block_stop`, `message_delta` (stop reason, cumulative usage), `message_stop`.

Usage is normalised to `wire.usage.Usage`'s meaning: Anthropic's `input_tokens` counts only
the uncached input, so `prompt_tokens` = input_tokens + cache_creation_input_tokens +
cache_read_input_tokens, `cached_tokens` = cache reads, `cache_write_tokens` = cache writes,
`reasoning_tokens` = output_tokens_details.thinking_tokens.

Errors: `{"type": "error", "error": {"type": …, "message": …}, "request_id": …}`, the type
fixed by the status (`ERROR_TYPES`); `classify_failure` reads one as an attempt's outcome.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from addon.wire import failures
from addon.wire.usage import Usage

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
               529: "overloaded_error"}  # fmt: skip
CUSTOM_TOOL_TYPES = frozenset({None, "custom"})  # every other tool `type` is Anthropic's own
TERMINAL_EVENTS = frozenset({"message_stop", "error"})
# the top-level fields /v1/messages/count_tokens accepts (max_tokens, stream… it refuses)
COUNT_TOKENS_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking",
    "output_config", "output_format", "cache_control", "mcp_servers", "context_management",
    "speed"})  # fmt: skip
_TOO_LONG = ("prompt is too long", "exceed context limit", "context window", "context_length")
_POLICY = ("content filtering", "content_policy", "usage policy")


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """What a Messages request asks for, read once from its JSON body.

    `texts` holds every piece of prompt text (system, text blocks, tool calls and results,
    plain-text documents, thinking, the JSON of custom tools); `turns` counts the system
    prompt and the messages; `last_user` is the last user turn's text.
    """

    texts: tuple[str, ...]
    images: int
    documents: int
    turns: int
    last_user: str
    custom_tools: bool
    server_tools: frozenset[str]  # versioned types: web_search_20250305, bash_20250124…
    thinking: bool  # `thinking.type` is "enabled" or "adaptive"
    thinking_budget: int | None  # `thinking.budget_tokens`, a part of max_tokens
    needs_json_schema: bool  # output_config.format (or output_format) is a json_schema
    stream: bool
    max_tokens: int | None

    @property
    def chars(self) -> int:
        """Characters of prompt text, the basis of the size estimate."""
        return sum(map(len, self.texts))

    @property
    def needs_vision(self) -> bool:
        """Whether any message (tool results included) carries an image."""
        return self.images > 0

    @property
    def needs_tools(self) -> bool:
        """Whether the request offers the model any tool, custom or Anthropic's."""
        return self.custom_tools or bool(self.server_tools)


def read_request(data: dict[str, Any]) -> MessagesRequest:
    """The facts of a Messages (or count_tokens) request body (already parsed JSON)."""
    texts: list[str] = []
    counts = {"images": 0, "documents": 0}
    turns = 0
    last_user = ""
    system = data.get("system")
    if isinstance(system, str | list):
        texts += _blocks(system, counts)
        turns += 1
    messages = data.get("messages")
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict):
            continue
        turns += 1
        pieces = _blocks(m.get("content"), counts)
        texts += pieces
        if m.get("role") == "user" and any(pieces):
            last_user = "\n".join(pieces)
    tools = data.get("tools")
    tools = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    custom = [t for t in tools if t.get("type") in CUSTOM_TOOL_TYPES]
    server = {k for t in tools if isinstance(k := t.get("type"), str) and k != "custom"}
    if custom:
        texts.append(json.dumps(custom, ensure_ascii=False))
    thinking = data.get("thinking")
    thinking = thinking if isinstance(thinking, dict) else {}
    thinking_on = thinking.get("type") in ("enabled", "adaptive")
    config = data.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    fmt = fmt if isinstance(fmt, dict) else data.get("output_format")
    return MessagesRequest(
        texts=tuple(texts),
        images=counts["images"],
        documents=counts["documents"],
        turns=turns,
        last_user=last_user,
        custom_tools=bool(custom),
        server_tools=frozenset(server),
        thinking=thinking_on,
        thinking_budget=_positive(thinking.get("budget_tokens")) if thinking_on else None,
        needs_json_schema=isinstance(fmt, dict) and fmt.get("type") == "json_schema",
        stream=data.get("stream") is True,
        max_tokens=_positive(data.get("max_tokens")),
    )


def _blocks(content: Any, counts: dict[str, int]) -> list[str]:
    """The text of a `content` (a string or a list of blocks), counting images and
    documents in `counts`; tool results are read recursively."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            out.append(block["text"])
        elif kind == "image":
            counts["images"] += 1
        elif kind == "document":
            counts["documents"] += 1
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text":
                out += _blocks(source.get("data"), counts)
            elif isinstance(source, dict) and source.get("type") == "content":
                out += _blocks(source.get("content"), counts)
        elif kind in ("tool_use", "server_tool_use"):
            if isinstance(block.get("name"), str):
                out.append(block["name"])
            out.append(json.dumps(block.get("input"), ensure_ascii=False))
        elif kind in ("tool_result", "search_result"):
            out += _blocks(block.get("content"), counts)
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            out.append(block["thinking"])
    return out


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _num(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _positive(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def prompt_text(data: dict[str, Any]) -> str:
    """The request's prompt (system and messages) as canonical JSON, for the ledger."""
    prompt = {"system": data.get("system"), "messages": data.get("messages")}
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------- usage


def usage_from_obj(u: Any) -> Usage | None:
    """A `usage` object (a message's, or `message_start`'s) in `Usage`'s meaning."""
    if not isinstance(u, dict):
        return None
    fresh, written = _num(u.get("input_tokens")), _num(u.get("cache_creation_input_tokens"))
    read = _num(u.get("cache_read_input_tokens"))
    details = u.get("output_tokens_details")
    thinking = _num(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    return Usage(
        prompt_tokens=fresh + written + read,
        completion_tokens=_num(u.get("output_tokens")),
        cached_tokens=read,
        reasoning_tokens=thinking,
        cache_write_tokens=written,
    )


def merge_usage(so_far: Usage | None, u: Any) -> Usage | None:
    """`so_far` updated by a `message_delta` event's `usage`: its counts are cumulative, and
    each one it carries (output_tokens always; the input side sometimes) replaces the old."""
    if not isinstance(u, dict):
        return so_far
    b = so_far or Usage()
    old = {"input_tokens": b.prompt_tokens - b.cached_tokens - b.cache_write_tokens,
           "cache_creation_input_tokens": b.cache_write_tokens,
           "cache_read_input_tokens": b.cached_tokens, "output_tokens": b.completion_tokens,
           "output_tokens_details": {"thinking_tokens": b.reasoning_tokens}}  # fmt: skip
    return usage_from_obj({k: v if u.get(k) is None else u[k] for k, v in old.items()})


def stream_usage(so_far: Usage | None, obj: Any) -> Usage | None:
    """The usage of a stream after event `obj`: set by `message_start`, updated by
    `message_delta`, unchanged by every other event."""
    kind = event_type(obj)
    if kind == "message_start" and isinstance(obj.get("message"), dict):
        return usage_from_obj(obj["message"].get("usage")) or so_far
    if kind == "message_delta":
        return merge_usage(so_far, obj.get("usage"))
    return so_far


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class MessagesAnswer:
    """A message object's facts: from a JSON answer, or from `message_start`."""

    message_id: str | None
    model: str | None
    stop_reason: str | None  # end_turn, max_tokens, stop_sequence, tool_use, refusal…
    usage: Usage | None
    text: str  # its text blocks, joined


def read_message(obj: Any) -> MessagesAnswer | None:
    """The facts of a message object; None if it is not one (not a dict)."""
    if not isinstance(obj, dict):
        return None
    texts = [
        b["text"]
        for b in obj.get("content") or ()
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    ]
    usage = usage_from_obj(obj.get("usage"))
    ids = _str(obj.get("id")), _str(obj.get("model")), _str(obj.get("stop_reason"))
    return MessagesAnswer(*ids, usage=usage, text="".join(texts))


def answer_facts(body: bytes) -> MessagesAnswer | None:
    """The facts of a whole (non-streamed) JSON answer; None if it is not a JSON object."""
    return read_message(_loads(body))


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------- stream events


def event_type(obj: Any) -> str | None:
    """An event's `type` (`message_start`, `content_block_delta`, `ping`, `error`…)."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def delta_text(obj: Any) -> str:
    """The answer text a `content_block_delta` with a `text_delta` adds ("" otherwise:
    thinking, tool-input JSON, signatures and citations are not answer text)."""
    if event_type(obj) != "content_block_delta":
        return ""
    delta = obj.get("delta")
    if isinstance(delta, dict) and delta.get("type") == "text_delta":
        text = delta.get("text")
        return text if isinstance(text, str) else ""
    return ""


def event_message(obj: Any) -> MessagesAnswer | None:
    """The message `message_start` opens with (id, model, input usage); None otherwise."""
    if event_type(obj) != "message_start":
        return None
    return read_message(obj.get("message"))


def event_error(obj: Any) -> Failure | None:
    """The error an `error` event in a 200 stream reports, classified by its type alone
    (`overloaded_error`, unknown types: server_error); None for any other event."""
    fields = _error_fields(obj)
    if fields is None:
        return None
    return Failure(_kind(None, *fields), None, *fields)


def _error_fields(obj: Any) -> tuple[str, str] | None:
    """(type, message) of an Anthropic error object (an `error` event or body)."""
    if event_type(obj) != "error":
        return None
    err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
    kind, message = err.get("type"), err.get("message")
    return _str(kind) or "api_error", _str(message) or ""


def is_terminal(obj: Any) -> bool:
    """Whether the event ends the stream: `message_stop`, or an `error` event."""
    return event_type(obj) in TERMINAL_EVENTS


# --------------------------------------------------------------------------- errors


def error_type_for(status: int) -> str:
    """Anthropic's error type for an HTTP status (other 4xx: invalid_request_error, other
    5xx: api_error)."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, *, request_id: str | None = None,
               detail: dict[str, Any] | None = None) -> bytes:  # fmt: skip
    """The router's own non-2xx answer to a Messages client, as the anthropic SDK reads it;
    `detail` adds fields to its `error` object (e.g. the router's attempts)."""
    error = {"type": error_type_for(status), "message": message, **(detail or {})}
    body = {"type": "error", "error": error}
    extra = {"request_id": request_id} if request_id is not None else {}
    return json.dumps(body | extra, ensure_ascii=False).encode()


def error_event(error_type: str, message: str) -> bytes:
    """One SSE `error` event, for a stream the router must end (the SDK raises on it)."""
    payload = {"type": "error", "error": {"type": error_type, "message": message}}
    return b"event: error\ndata: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class Failure:
    """An Anthropic upstream's failure as an attempt's outcome: `kind` is an `OutcomeKind`
    value (wire cannot import routing), so `Outcome(OutcomeKind(f.kind), f.status, f.message,
    f.retry_after)`; `status` is None for an `error` event inside a 200 stream."""

    kind: str
    status: int | None
    error_type: str
    message: str
    retry_after: float | None = None


def classify_failure(status: int, body: bytes, retry_after: str | None = None) -> Failure:
    """An Anthropic upstream's non-2xx answer (status, body bytes, `retry-after` header):
    429 rate_limited; 5xx (529 too) server_error; 401/402/403 auth_error; 404 not_found; 413
    or "prompt is too long" context_too_long; content filtering content_policy; else client_error.
    """
    error_type, message = _error_fields(_loads(body)) or (error_type_for(status), "")
    message = message or failures.error_message(body)
    ra = failures.parse_retry_after(retry_after) if status == 429 or status >= 500 else None
    return Failure(_kind(status, error_type, message), status, error_type, message, ra)


# kinds are `OutcomeKind` values; by status for an HTTP answer, by type for an in-band error
_KIND_BY_STATUS = {401: "auth_error", 402: "auth_error", 403: "auth_error", 404: "not_found",
                   413: "context_too_long", 429: "rate_limited"}  # fmt: skip
_KIND_BY_TYPE = {"rate_limit_error": "rate_limited", "authentication_error": "auth_error",
                 "permission_error": "auth_error", "billing_error": "auth_error",
                 "not_found_error": "not_found", "request_too_large": "context_too_long",
                 "invalid_request_error": "client_error"}  # fmt: skip


def _kind(status: int | None, error_type: str, message: str) -> str:
    if status is None:
        kind = _KIND_BY_TYPE.get(error_type, "server_error")
    else:
        kind = "server_error" if status >= 500 else _KIND_BY_STATUS.get(status, "client_error")
    if kind == "client_error":
        low = message.lower()
        if any(s in low for s in _TOO_LONG):
            return "context_too_long"
        if any(s in low for s in _POLICY):
            return "content_policy"
    return kind


# --------------------------------------------------------------------------- count_tokens


def count_tokens_request(data: dict[str, Any]) -> dict[str, Any]:
    """A Messages request cut down to what `/v1/messages/count_tokens` accepts."""
    return {k: v for k, v in data.items() if k in COUNT_TOKENS_FIELDS}


def count_tokens_answer(body: bytes) -> int | None:
    """`input_tokens` of a count_tokens answer (`{"input_tokens": N}`); None if absent."""
    obj = _loads(body)
    n = obj.get("input_tokens") if isinstance(obj, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def count_tokens_body(input_tokens: int) -> bytes:
    """A count_tokens answer, for when the router answers one itself (from its estimate)."""
    return json.dumps({"input_tokens": input_tokens}).encode()
