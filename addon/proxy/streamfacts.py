"""What a stream tells the ledger as it passes, per API, and how the router ends one it cuts.

A `StreamReader` is one API's way of reading its SSE events (all pure functions of the
event's JSON, from `addon.wire`):

- chat / completions: usage on the last chunk (`include_usage`), the model on every chunk,
  `data: [DONE]` at the end; a cut stream ends with `event: error` and an OpenAI error
  object, which the openai SDK raises on;
- Responses: the response object on `response.created` (id, model) and on
  `response.completed` / `.incomplete` / `.failed` (usage, encrypted reasoning), which end
  the stream; a cut stream ends with a Responses `error` event (`wire.responses.error_event`);
- Messages: `message_start` (id, model, input usage) and the cumulative `message_delta`
  usage (`wire.messages.stream_usage`), `message_stop` at the end; a cut stream ends with
  a Messages `error` event (`wire.messages.error_event`), which the anthropic SDK raises on.

An `error` event (or `response.failed`, or a chat chunk that is an error object) the
upstream sends itself is noted as the stream's `failure`. `usage_tap` is the same reading
for a stream mitmproxy forwards untouched. A stream rescued on another target
(`addon.proxy.rescue`) has one `Leg` per attempt that fed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from addon.routing.catalog import Candidate
from addon.wire import chat, messages, responses
from addon.wire.sse import SSEParser, event_json
from addon.wire.usage import Usage


@dataclass(frozen=True)
class Leg:
    """One attempt's share of a rescued stream: the target, the usage it is billed for,
    whether that usage was estimated (it broke before reporting it), and its index in the
    request's attempts."""

    candidate: Candidate
    usage: Usage | None
    estimated: bool
    attempt: int


@dataclass
class StreamReport:
    """What the relay saw; read by the addon when the flow ends. For a rescued stream
    (`legs` not empty) `usage` is every leg's summed once the stream ended."""

    usage: Usage | None = None
    model: str | None = None
    events: int = 0
    malformed: int = 0
    saw_done: bool = False  # the API's end of stream ([DONE], response.completed, message_stop)
    delivered: bool = False  # that end was passed on to the client: leaving after it is fine
    outcome: str = "pending"  # ok | truncated | client_abort
    error: str = ""
    first_event_at: float | None = None
    ended_at: float | None = None
    keep_text: bool = False  # log_prompts: full — collect the answer's text
    text: list[str] = field(default_factory=list)
    response_id: str | None = None  # the answer's id (Responses, Messages)
    encrypted_reasoning: tuple[str, ...] = ()  # Responses: the answer's encrypted reasoning
    failure: str = ""  # an error the upstream reported inside the stream
    legs: list[Leg] = field(default_factory=list)  # a rescued stream's attempts, in order
    rescued: bool = False  # a continuation was spliced into the stream


@dataclass(frozen=True)
class StreamReader:
    """How one API's stream is read: `note` what an event's JSON tells the report,
    `delta_text` the answer text it adds, `markers` the bytes (besides a non-null
    `"usage"`) that make an event worth parsing on the relay's hot path, `cut` the event
    that ends a stream the router must break off, `end` what ends a complete stream."""

    api: str
    note: Callable[[StreamReport, dict[str, Any]], None]
    delta_text: Callable[[Any], str]
    markers: tuple[bytes, ...]
    cut: Callable[[str, StreamReport], bytes]
    end: str


def _note_chat(report: StreamReport, obj: dict[str, Any]) -> None:
    """A chat or completions chunk: the first model named, the last usage given (a
    Responses event's nested `response.usage` too, for a stream of unknown kind)."""
    if report.model is None and isinstance(obj.get("model"), str):
        report.model = obj["model"]
    inner = obj.get("response")
    u = Usage.from_obj(
        obj.get("usage") or (inner.get("usage") if isinstance(inner, dict) else None)
    )
    if u is not None:
        report.usage = u
    err = obj.get("error")
    if isinstance(err, dict) and not obj.get("choices"):
        report.failure = f"{err.get('type') or err.get('code') or 'error'}: {err.get('message')}"


def _note_responses(report: StreamReport, obj: dict[str, Any]) -> None:
    """A Responses event: the response object it carries, its end, an in-band error."""
    ans = responses.event_answer(obj)
    if ans is not None:
        report.model = report.model or ans.model
        report.response_id = report.response_id or ans.response_id
        if ans.usage is not None:
            report.usage = ans.usage
        if ans.encrypted_reasoning:
            report.encrypted_reasoning = ans.encrypted_reasoning
    if responses.is_terminal(obj):
        report.saw_done = True
    err = responses.event_error(obj)
    if err is not None:
        report.failure = f"{err.code}: {err.message}"


def _note_messages(report: StreamReport, obj: dict[str, Any]) -> None:
    """A Messages event: the message `message_start` opens, the usage so far, the end."""
    report.usage = messages.stream_usage(report.usage, obj)
    msg = messages.event_message(obj)
    if msg is not None:
        report.model = report.model or msg.model
        report.response_id = report.response_id or msg.message_id
    if messages.is_terminal(obj):
        report.saw_done = True
    failed = messages.event_error(obj)
    if failed is not None:
        report.failure = f"{failed.error_type}: {failed.message}"


def _cut_chat(why: str, report: StreamReport) -> bytes:
    payload = {"error": {"message": f"stream interrupted: {why}", "type": "upstream_error",
                         "param": None, "code": "stream_truncated"}}  # fmt: skip
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


def _cut_responses(why: str, report: StreamReport) -> bytes:
    # sequence numbers count every event from 0: the next one is the count relayed so far
    return responses.error_event(f"stream interrupted: {why}", code="stream_truncated",
                                 sequence_number=report.events)  # fmt: skip


def _cut_messages(why: str, report: StreamReport) -> bytes:
    return messages.error_event("api_error", f"stream interrupted: {why}")


CHAT = StreamReader("chat", _note_chat, chat.delta_text, (b'"error"',), _cut_chat, "[DONE]")
READERS: Mapping[str, StreamReader] = MappingProxyType({
    "chat": CHAT,
    "completions": StreamReader("completions", _note_chat, chat.delta_text, (b'"error"',),
                                _cut_chat, "[DONE]"),
    "responses": StreamReader("responses", _note_responses, responses.delta_text, (b'"error"',),
                              _cut_responses, "response.completed"),
    "messages": StreamReader("messages", _note_messages, messages.delta_text,
                             (b"message_stop", b'"error"'), _cut_messages, "message_stop"),
    "embeddings": CHAT,
})  # fmt: skip


def reader_for(api: str | None) -> StreamReader:
    """The stream reader of `api` (chat's for an unknown one)."""
    return READERS.get(api or "chat", CHAT)


def worth_parsing(data: bytes, markers: tuple[bytes, ...] = ()) -> bool:
    """Only events that may carry usage, that carry one of the API's `markers`, or that do
    not look like one JSON object are parsed on the relay's hot path."""
    if b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data:
        return True
    if markers and any(m in data for m in markers):
        return True
    return not (data[:1] == b"{" and data.rstrip()[-1:] == b"}")


def usage_tap(report: StreamReport, reader: StreamReader = CHAT) -> Callable[[bytes], bytes]:
    """A `flow.response.stream` for an SSE answer passing through untouched (not routed):
    every chunk is returned unchanged, and what `reader` reads (usage, model, its end) is
    noted in `report` as it goes by. The empty chunk that ends the stream flushes the last
    event."""
    parser = SSEParser()

    def tap(chunk: bytes) -> bytes:
        for ev in parser.feed(chunk) if chunk else parser.flush():
            obj = event_json(ev)
            if isinstance(obj, dict):
                reader.note(report, obj)
            elif ev.done:
                report.saw_done = True
        report.delivered = report.saw_done
        return chunk

    return tap
