"""OpenAI Responses (`POST /v1/responses`, spoken by Codex CLI and the OpenAI Agents SDK).

Request: `read_request` (text, images, files, turns; function tools and the built-in tool
types used, structured output, `stream`, `max_output_tokens`, the provider-side state it leans
on: `previous_response_id`, `conversation`, `store`); `strip_encrypted_reasoning` removes the
encrypted reasoning items only the provider that wrote them can read.

Answer: `answer_facts` for a JSON body; for a stream, the `response.*` events (`delta_text`,
`event_answer`, `event_error`, `is_terminal`). Usage sits on the response object
(`usage.input_tokens`, `input_tokens_details.cached_tokens`, `output_tokens`,
`output_tokens_details.reasoning_tokens`), which streams carry on `response.completed`,
`response.incomplete` or `response.failed`; the stream has no `[DONE]`.

Errors: a non-2xx answer has the chat-completions envelope (`{"error": {"message", "type",
"param", "code"}}`, which the openai SDK raises on); a stream reports one as an `error` event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from addon.wire import failures
from addon.wire.request import ParsedBody
from addon.wire.usage import Usage

# Tools the client defines and runs itself; every other `type` is one the provider offers
# (web_search*, file_search, code_interpreter, computer*, image_generation, mcp, local_shell,
# shell, apply_patch, tool_search…), which a target must support to take the request.
FUNCTION_TOOL_TYPES = frozenset({"function", "custom", "namespace"})
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed",
                             "error"})  # fmt: skip
TEXT_DELTA = "response.output_text.delta"
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
_IMAGE_PARTS = frozenset({"input_image", "computer_screenshot"})


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """What a Responses request asks for, read once from its JSON body. `texts`: every piece
    of prompt text the model reads (instructions, messages, function calls and outputs,
    reasoning summaries, the JSON of function tools); `turns`: instructions and messages;
    `last_user`: the last user turn's text. Images and files are counted, not measured."""

    texts: tuple[str, ...]
    images: int
    files: int
    turns: int
    last_user: str
    function_tools: bool
    builtin_tools: frozenset[str]
    needs_json_schema: bool
    stream: bool
    max_output_tokens: int | None
    previous_response_id: str | None
    conversation_id: str | None
    store: bool | None  # None: not sent (the API then stores the response)
    encrypted_reasoning: int  # input items of type "reasoning" with `encrypted_content`

    @property
    def chars(self) -> int:
        """Characters of prompt text, the basis of the size estimate."""
        return sum(map(len, self.texts))

    @property
    def needs_vision(self) -> bool:
        """Whether any input carries an image."""
        return self.images > 0

    @property
    def needs_tools(self) -> bool:
        """Whether the request offers the model any tool, its own or the provider's."""
        return self.function_tools or bool(self.builtin_tools)

    @property
    def depends_on_state(self) -> bool:
        """Whether the request continues state kept by the provider that answered before
        (`previous_response_id` or `conversation`): only that provider can serve it."""
        return self.previous_response_id is not None or self.conversation_id is not None


def read_request(data: dict[str, Any]) -> ResponsesRequest:
    """The facts of a Responses request body (already parsed JSON)."""
    texts: list[str] = []
    counts = {"images": 0, "files": 0, "turns": 0}
    last_user = ""
    instructions = data.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
        counts["turns"] += 1
    items = data.get("input")
    if isinstance(items, str):
        texts.append(items)
        counts["turns"] += 1
        last_user = items
    elif isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                user = _read_item(item, texts, counts)
                if user is not None:
                    last_user = user
    tools = data.get("tools")
    tools = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    own = [t for t in tools if t.get("type") in FUNCTION_TOOL_TYPES]
    builtin = {k for t in tools if isinstance(k := t.get("type"), str)} - FUNCTION_TOOL_TYPES
    if own:
        texts.append(json.dumps(own, ensure_ascii=False))
    text = data.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    conversation = data.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    store = data.get("store")
    return ResponsesRequest(
        texts=tuple(texts),
        images=counts["images"],
        files=counts["files"],
        turns=counts["turns"],
        last_user=last_user,
        function_tools=bool(own),
        builtin_tools=frozenset(builtin),
        needs_json_schema=isinstance(fmt, dict) and fmt.get("type") == "json_schema",
        stream=data.get("stream") is True,
        max_output_tokens=_positive(data.get("max_output_tokens")),
        previous_response_id=_str(data.get("previous_response_id")) or None,
        conversation_id=_str(conversation) or None,
        store=store if isinstance(store, bool) else None,
        encrypted_reasoning=len(encrypted_reasoning_indexes(items)),
    )


def _read_item(item: dict[str, Any], texts: list[str], counts: dict[str, int]) -> str | None:
    """Add one input item's text to `texts` and its images/files/turns to `counts`; the
    item's text when it is a user message (None otherwise)."""
    kind = item.get("type")
    if kind == "message" or (kind is None and "role" in item):
        counts["turns"] += 1
        pieces = _content(item.get("content"), counts)
        texts += pieces
        return "\n".join(pieces) if item.get("role") == "user" and pieces else None
    for key in ("name", "arguments", "input", "code"):  # function/custom/mcp/shell calls
        if isinstance(item.get(key), str):
            texts.append(item[key])
    output = item.get("output")
    if isinstance(output, str):
        texts.append(output)
    elif isinstance(output, list | dict):
        texts += _content(output if isinstance(output, list) else [output], counts)
    for key in ("summary", "content"):  # reasoning items: summary_text / reasoning_text
        if isinstance(item.get(key), list):
            texts += _content(item[key], counts)
    return None


def _content(content: Any, counts: dict[str, int]) -> list[str]:
    """The text parts of a message `content` (a string or a list of parts), counting the
    image and file parts in `counts`."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in _IMAGE_PARTS:
            counts["images"] += 1
        elif kind == "input_file":
            counts["files"] += 1
        elif kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append(part["refusal"])
    return out


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _positive(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def prompt_text(data: dict[str, Any]) -> str:
    """The request's prompt (instructions and input) as canonical JSON, for the ledger."""
    prompt = {"instructions": data.get("instructions"), "input": data.get("input")}
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------- encrypted reasoning


def encrypted_reasoning_indexes(items: Any) -> tuple[int, ...]:
    """Positions in `input` (a list of items) of the reasoning items that carry
    `encrypted_content`: opaque blobs only the provider that wrote them can decrypt."""
    if not isinstance(items, list):
        return ()
    return tuple(
        i
        for i, item in enumerate(items)
        if isinstance(item, dict)
        and item.get("type") == "reasoning"
        and isinstance(item.get("encrypted_content"), str)
        and item["encrypted_content"]
    )


def strip_encrypted_reasoning(body: ParsedBody) -> tuple[bytes, int]:
    """The body without its encrypted reasoning items, and how many were removed.

    Only the `input` array changes: each such item is cut out together with the comma and
    whitespace that followed it (or, for the last one, that preceded it); every other byte,
    inside `input` too, stays as the client sent it. A body with none comes back as is.
    """
    items = body.data.get("input")
    drop = encrypted_reasoning_indexes(items)
    span = body.span("input")
    if not drop or span is None or not isinstance(items, list):
        return body.raw, 0
    start, end = span
    gone = set(drop)
    raw = body.raw
    try:
        elements = _element_spans(raw, start, end)
    except RecursionError:
        elements = []
    if len(elements) == len(items):
        kept = [i for i in range(len(items)) if i not in gone]
        parts = [raw[start : elements[0][0]]]  # "[" and any whitespace
        for n, i in enumerate(kept):
            if n == len(kept) - 1:  # the last kept element closes the array
                parts += (raw[elements[i][0] : elements[i][1]], raw[elements[-1][1] : end])
            else:
                parts.append(raw[elements[i][0] : elements[i + 1][0]])
        if not kept:
            parts.append(raw[elements[-1][1] : end])
        array = b"".join(parts)
    else:  # not expected for a body parse_request read; re-serialise `input` alone
        rest = [item for i, item in enumerate(items) if i not in gone]
        array = json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode()
    return raw[:start] + array + raw[end:], len(drop)


def _element_spans(raw: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Byte spans of the elements of the JSON array at raw[start:end] (read as latin-1,
    one character per byte, as `wire.request` does: offsets are byte offsets)."""
    text = raw[start:end].decode("latin-1")
    decoder = json.JSONDecoder()
    spans: list[tuple[int, int]] = []
    i = _skip_ws(text, 1)
    while text[i] != "]":
        _, stop = decoder.raw_decode(text, i)
        spans.append((start + i, start + stop))
        i = _skip_ws(text, stop)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return spans


def _skip_ws(text: str, i: int) -> int:
    while text[i] in " \t\n\r":
        i += 1
    return i


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class ResponsesAnswer:
    """A response object's facts: from a JSON answer, or from an event that carries one."""

    response_id: str | None
    model: str | None
    status: str | None  # queued, in_progress, completed, incomplete, failed, cancelled
    usage: Usage | None
    text: str  # the output_text parts of its message items, joined
    error: StreamError | None = None  # a failed response's `error`
    encrypted_reasoning: tuple[str, ...] = ()  # its reasoning items' `encrypted_content`


@dataclass(frozen=True, slots=True)
class StreamError:
    """An error an answer reports in-band: its code (or type) and message."""

    code: str
    message: str


def response_usage(u: Any) -> Usage | None:
    """A response object's `usage` (input tokens include the cached and cache-written ones)."""
    usage = Usage.from_obj(u)
    if usage is None:
        return None
    details = u.get("input_tokens_details")
    written = details.get("cache_write_tokens") if isinstance(details, dict) else None
    if isinstance(written, int) and not isinstance(written, bool) and written > 0:
        usage = replace(usage, cache_write_tokens=written)
    return usage


def read_response(obj: Any) -> ResponsesAnswer | None:
    """The facts of a response object (a parsed JSON answer, or an event's `response`)."""
    if not isinstance(obj, dict):
        return None
    texts: list[str] = []
    items = [item for item in obj.get("output") or () if isinstance(item, dict)]
    for item in (item for item in items if item.get("type") == "message"):
        for part in item.get("content") or ():
            if isinstance(part, dict) and part.get("type") == "output_text":
                texts.append(part["text"] if isinstance(part.get("text"), str) else "")
    blobs = tuple(items[i]["encrypted_content"] for i in encrypted_reasoning_indexes(items))
    ids = _str(obj.get("id")), _str(obj.get("model")), _str(obj.get("status"))
    usage, error = response_usage(obj.get("usage")), _error_of(obj.get("error"))
    return ResponsesAnswer(*ids, usage=usage, text="".join(texts), error=error,
                           encrypted_reasoning=blobs)  # fmt: skip


def answer_facts(body: bytes) -> ResponsesAnswer | None:
    """The facts of a whole (non-streamed) JSON answer; None if it is not a JSON object."""
    try:
        return read_response(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return None


def _error_of(err: Any) -> StreamError | None:
    if not isinstance(err, dict):
        return None
    code = err.get("code") or err.get("type") or "error"
    return StreamError(str(code), _str(err.get("message")) or "")


# --------------------------------------------------------------------------- stream events


def event_type(obj: Any) -> str | None:
    """An event's `type` (`response.created`, `response.output_text.delta`, `error`…)."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def delta_text(obj: Any) -> str:
    """The answer text a `response.output_text.delta` event adds ("" for any other event)."""
    if event_type(obj) != TEXT_DELTA:
        return ""
    delta = obj.get("delta")
    return delta if isinstance(delta, str) else ""


def event_answer(obj: Any) -> ResponsesAnswer | None:
    """The response object an event carries (`response.created`, `.in_progress`,
    `.completed`, `.incomplete`, `.failed`, `.queued`); None for any other event."""
    if not isinstance(obj, dict) or not isinstance(obj.get("response"), dict):
        return None
    return read_response(obj["response"])


def event_error(obj: Any) -> StreamError | None:
    """The error an `error` event (flat `code`, `message`, `param`; some servers nest them
    under `error`) or a `response.failed` event reports; None for any other event."""
    kind = event_type(obj)
    if kind == "error":
        nested = _error_of(obj.get("error"))
        return nested or _error_of(obj) or StreamError("error", "")
    if kind == "response.failed":
        answer = event_answer(obj)
        return (answer.error if answer else None) or StreamError("response.failed", "")
    return None


def is_terminal(obj: Any) -> bool:
    """Whether the event ends the stream: `response.completed`, `response.incomplete`,
    `response.failed`, or an `error` event."""
    return event_type(obj) in TERMINAL_EVENTS


# --------------------------------------------------------------------------- the router's errors


def error_body(message: str, *, type_: str, code: str | None = None,
               param: str | None = None) -> bytes:  # fmt: skip
    """The router's own non-2xx answer to a Responses client: the OpenAI error envelope
    (`{"error": {"message", "type", "param", "code"}}`) the openai SDK raises on."""
    return failures.error_body(message, type_=type_, code=code, extra={"param": param})


def error_event(message: str, *, code: str, sequence_number: int,
                param: str | None = None) -> bytes:  # fmt: skip
    """One SSE `error` event (the API's flat shape), for a stream the router must end."""
    payload = {"type": "error", "code": code, "message": message, "param": param,
               "sequence_number": sequence_number}  # fmt: skip
    return b"event: error\ndata: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def previous_response_missing(status: int, body: bytes) -> bool:
    """Whether a non-2xx answer says `previous_response_id` names a response this provider
    does not hold (400 `previous_response_not_found`): no other provider holds it either."""
    return status in (400, 404) and "previous_response_not_found" in failures.error_code(body)
