"""The OpenAI wire format, as pure functions over bytes.

- `parse_request` reads a JSON request body once and remembers where each top-level value
  sits, so `rewrite` can splice in a new `model` (and `stream_options`) without
  re-serialising anything else: every other byte reaches the upstream unchanged.
- `answer_facts` / `SSEParser` read token usage from a JSON body or an SSE stream.
- `classify_failure` turns an upstream status and error body into an `Outcome`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from addon.fallback import Outcome, OutcomeKind

_WS = re.compile(rb"[ \t\n\r]*")
_decoder = json.JSONDecoder()


class WireError(ValueError):
    """The request body is not something we can route (not JSON, not an object...)."""


@dataclass(frozen=True)
class ParsedBody:
    raw: bytes
    data: dict[str, Any]
    spans: dict[str, tuple[int, int]]  # top-level key -> (start, end) byte offsets of the value
    close: int  # offset of the closing brace

    @property
    def model(self) -> str | None:
        m = self.data.get("model")
        return m if isinstance(m, str) else None

    @property
    def stream(self) -> bool:
        return self.data.get("stream") is True

    @property
    def wants_usage(self) -> bool:
        so = self.data.get("stream_options")
        return isinstance(so, dict) and so.get("include_usage") is True


def parse_request(raw: bytes) -> ParsedBody:
    """Parse a JSON object body, recording byte spans of top-level values.

    Raises WireError for anything that is not a UTF-8 JSON object.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"body is not UTF-8 (byte {e.start})") from None
    if len(text) != len(raw):
        # Offsets below are character offsets; map them to bytes only when needed.
        return _parse_multibyte(raw, text)
    data, spans, close = _scan(text)
    return ParsedBody(raw, data, spans, close)


def _parse_multibyte(raw: bytes, text: str) -> ParsedBody:
    data, spans, close = _scan(text)
    # character offsets -> byte offsets, encoding each stretch of text once (linear)
    marks = sorted({i for span in spans.values() for i in span} | {close})
    to_byte: dict[int, int] = {}
    pos = nbytes = 0
    for m in marks:
        nbytes += len(text[pos:m].encode("utf-8"))
        pos = m
        to_byte[m] = nbytes
    return ParsedBody(
        raw, data, {k: (to_byte[s], to_byte[e]) for k, (s, e) in spans.items()}, to_byte[close]
    )


def _scan(text: str) -> tuple[dict[str, Any], dict[str, tuple[int, int]], int]:
    n = len(text)
    i = _skip_ws(text, 0)
    if i >= n or text[i] != "{":
        raise WireError("body is not a JSON object")
    i = _skip_ws(text, i + 1)
    data: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    if i < n and text[i] == "}":
        return data, spans, i
    try:
        while True:
            if i >= n or text[i] != '"':
                raise WireError(f"expected a key at character {i}")
            key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            i = _skip_ws(text, i)
            if i >= n or text[i] != ":":
                raise WireError(f"expected ':' at character {i}")
            i = _skip_ws(text, i + 1)
            value, end = _decoder.raw_decode(text, i)
            data[key] = value
            spans[key] = (i, end)
            i = _skip_ws(text, end)
            if i < n and text[i] == ",":
                i = _skip_ws(text, i + 1)
                continue
            if i < n and text[i] == "}":
                close = i
                break
            raise WireError(f"expected ',' or '}}' at character {i}")
    except json.JSONDecodeError as e:
        raise WireError(f"invalid JSON: {e.msg} at character {e.pos}") from None
    if _skip_ws(text, close + 1) != n:
        raise WireError("trailing data after the JSON object")
    return data, spans, close


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def rewrite(body: ParsedBody, *, model: str, include_usage: bool = False) -> bytes:
    """The body with `model` replaced (and `stream_options.include_usage` forced on if asked).

    Every other byte is kept as the client sent it.
    """
    edits: list[tuple[int, int, bytes]] = []
    inserts: list[bytes] = []
    model_json = json.dumps(model, ensure_ascii=False).encode("utf-8")
    if "model" in body.spans:
        edits.append((*body.spans["model"], model_json))
    else:
        inserts.append(b'"model":' + model_json)
    if include_usage and not body.wants_usage:
        so = body.data.get("stream_options")
        if "stream_options" in body.spans:
            merged = (
                {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
            )
            edits.append(
                (*body.spans["stream_options"], json.dumps(merged, ensure_ascii=False).encode())
            )
        else:
            inserts.append(b'"stream_options":{"include_usage":true}')
    if inserts:
        lead = b"," if body.spans else b""
        edits.append((body.close, body.close, lead + b",".join(inserts)))
    out = body.raw
    for s, e, rep in sorted(edits, key=lambda t: t[0], reverse=True):
        out = out[:s] + rep + out[e:]
    return out


# --------------------------------------------------------------------------- usage


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_obj(cls, u: Any) -> Usage | None:
        if not isinstance(u, dict):
            return None

        def num(v: Any) -> int:
            return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

        ptd = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
        ctd = u.get("completion_tokens_details") or u.get("output_tokens_details") or {}
        return cls(
            prompt_tokens=num(u.get("prompt_tokens", u.get("input_tokens"))),
            completion_tokens=num(u.get("completion_tokens", u.get("output_tokens"))),
            cached_tokens=num(ptd.get("cached_tokens")) if isinstance(ptd, dict) else 0,
            reasoning_tokens=num(ctd.get("reasoning_tokens")) if isinstance(ctd, dict) else 0,
        )


def answer_facts(body: bytes) -> tuple[Usage | None, str | None]:
    """Usage and model of a whole JSON answer, parsed once."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    model = obj.get("model")
    return Usage.from_obj(obj.get("usage")), model if isinstance(model, str) else None


def response_model(body: bytes) -> str | None:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    m = obj.get("model") if isinstance(obj, dict) else None
    return m if isinstance(m, str) else None


# --------------------------------------------------------------------------- SSE


@dataclass
class SSEEvent:
    raw: bytes  # the event's bytes including its terminating blank line
    data: bytes  # joined data lines

    @property
    def done(self) -> bool:
        return self.data.strip() == b"[DONE]"


@dataclass
class SSEParser:
    """Incremental SSE splitter: feed bytes, get whole events back. Never raises."""

    max_event_bytes: int = 4 * 1024 * 1024  # one event this large is a broken upstream
    _buf: bytearray = field(default_factory=bytearray)
    oversized: bool = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        events: list[SSEEvent] = []
        while True:
            idx, sep = _event_end(self._buf)
            if idx < 0:
                if len(self._buf) > self.max_event_bytes:
                    self.oversized = True
                    self._buf.clear()
                return events
            raw = bytes(self._buf[: idx + sep])
            del self._buf[: idx + sep]
            events.append(SSEEvent(raw, _data_of(raw)))

    def flush(self) -> list[SSEEvent]:
        """Whatever is left at end of stream, as a final event (if it has data)."""
        if not self._buf.strip():
            self._buf.clear()
            return []
        raw = bytes(self._buf)
        self._buf.clear()
        return [SSEEvent(raw, _data_of(raw))]


def _event_end(buf: bytearray) -> tuple[int, int]:
    best, sep = -1, 0
    for s in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buf.find(s)
        if i >= 0 and (best < 0 or i < best):
            best, sep = i, len(s)
    return best, sep


def _data_of(raw: bytes) -> bytes:
    parts = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            v = line[5:]
            parts.append(v[1:] if v.startswith(b" ") else v)
    return b"\n".join(parts)


def event_json(ev: SSEEvent) -> Any:
    """The event's JSON payload, or None if it has none or it is malformed."""
    if not ev.data or ev.done:
        return None
    try:
        return json.loads(ev.data)
    except (ValueError, UnicodeDecodeError):
        return None


def delta_text(obj: dict[str, Any]) -> str:
    """The text a streamed chunk adds (chat delta or legacy completion)."""
    out = []
    for ch in obj.get("choices") or ():
        if isinstance(ch, dict):
            delta = ch.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else ch.get("text")
            if isinstance(piece, str):
                out.append(piece)
    return "".join(out)


def answer_text(body: bytes) -> str | None:
    """The text of a whole (non-streamed) answer."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    out = []
    for ch in (obj.get("choices") or ()) if isinstance(obj, dict) else ():
        if isinstance(ch, dict):
            msg = ch.get("message")
            piece = msg.get("content") if isinstance(msg, dict) else ch.get("text")
            if isinstance(piece, str):
                out.append(piece)
    return "".join(out)


def prompt_text(data: dict[str, Any]) -> str:
    """The request's prompt as canonical JSON (messages, or the legacy prompt)."""
    return json.dumps(data.get("messages", data.get("prompt")), sort_keys=True, ensure_ascii=False)


def is_usage_only_chunk(obj: Any) -> bool:
    """The extra chunk `include_usage` adds: empty `choices` and a `usage` object."""
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


# --------------------------------------------------------------------------- errors


def error_body(
    message: str, *, type_: str, code: str | None = None, extra: dict[str, Any] | None = None
) -> bytes:
    err: dict[str, Any] = {"message": message, "type": type_, "param": None, "code": code}
    if extra:
        err.update(extra)
    return json.dumps({"error": err}).encode()


def error_message(body: bytes) -> str:
    """The upstream's own error message, or a short excerpt of its body."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(obj.get("message"), str):
            return str(obj["message"])
    return body[:200].decode("utf-8", "replace").strip()


def _error_code(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return f"{err.get('code') or ''} {err.get('type') or ''}".lower()
    return ""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; HTTP dates → None)."""
    if not value:
        return None
    try:
        s = float(value.strip())
    except ValueError:
        return None
    return s if s >= 0 else None


def classify_failure(status: int, body: bytes, retry_after: str | None = None) -> Outcome:
    """An upstream's non-2xx answer as an Outcome (pure: status, body bytes, header value)."""
    msg = error_message(body)
    code = _error_code(body)
    low = f"{code} {msg}".lower()
    ra = parse_retry_after(retry_after)
    if status == 429:
        return Outcome(OutcomeKind.RATE_LIMITED, status, msg, retry_after=ra)
    if status >= 500:
        return Outcome(OutcomeKind.SERVER_ERROR, status, msg, retry_after=ra)
    if status in (401, 403):
        return Outcome(OutcomeKind.AUTH_ERROR, status, msg)
    if status == 404:
        return Outcome(OutcomeKind.NOT_FOUND, status, msg)
    if "context_length" in low or "maximum context length" in low or "too many tokens" in low:
        return Outcome(OutcomeKind.CONTEXT_TOO_LONG, status, msg)
    if "content_policy" in low or "content_filter" in low or "safety" in low:
        return Outcome(OutcomeKind.CONTENT_POLICY, status, msg)
    return Outcome(OutcomeKind.CLIENT_ERROR, status, msg)
