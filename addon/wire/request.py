"""A JSON request body, as pure functions over bytes (every API format shares this).

`parse_request` reads the body once and finds where its top-level `model` value sits, so
`rewrite` can splice in a new `model` (and `stream_options`) without re-serialising anything
else: every other byte reaches the upstream unchanged.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

from addon.errors import WireError

_decoder = json.JSONDecoder()
_SPACE = b" \t\n\r"
_QUOTE, _BACKSLASH, _COLON = b'"\\:'
# orjson reads an integer outside [-2**63, 2**64) as a float; json keeps it exact
_WIDE = 2.0**63
_DIGITS_AS_ONES = bytes(0x31 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """A request body read once: its JSON object, and where its top-level values sit."""

    raw: bytes
    data: dict[str, Any]
    # top-level key -> (start, end) byte offsets of its value, filled in as keys are looked up
    _spans: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def close(self) -> int:
        """The offset of the closing brace."""
        return len(self.raw.rstrip(_SPACE)) - 1

    @property
    def model(self) -> str | None:
        """The body's `model`, when it is a string."""
        m = self.data.get("model")
        return m if isinstance(m, str) else None

    @property
    def stream(self) -> bool:
        """Whether the body asks for a stream (`"stream": true`)."""
        return self.data.get("stream") is True

    @property
    def wants_usage(self) -> bool:
        """Whether the body already asks for usage in its stream (`stream_options`)."""
        so = self.data.get("stream_options")
        return isinstance(so, dict) and so.get("include_usage") is True

    def span(self, key: str) -> tuple[int, int] | None:
        """Byte offsets (start, end) of the top-level `key`'s value; None if there is none."""
        if key not in self.data:
            return None
        if key not in self._spans:
            found = _search_member(self.raw, key)
            if found is None:
                self._spans.update(_member_spans(self.raw))
            else:
                self._spans[key] = found
        return self._spans[key]

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        """Every top-level key's span (walks the whole body the first time)."""
        if len(self._spans) < len(self.data):
            self._spans.update(_member_spans(self.raw))
        return dict(self._spans)


def parse_request(raw: bytes) -> ParsedBody:
    """Parse a JSON object body and locate its top-level `model` value.

    Raises WireError for anything that is not a UTF-8 JSON object, or that holds an integer
    longer than Python reads (`overlong_integer` says which bodies those are).
    """
    data = _read_fast(raw)
    if data is None:
        data = _read_strict(raw)
    body = ParsedBody(raw, data)
    body.span("model")  # every routed body is rewritten: find the model once, here
    return body


def _read_fast(raw: bytes) -> dict[str, Any] | None:
    """The body as orjson reads it, or None where json (`_read_strict`) may read it otherwise.

    orjson refuses some bodies json accepts (NaN, 1e999, lone surrogates, deep nesting) and
    reads integers beyond 64 bits as floats; any other body both read the same way.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        raise WireError("body is not a JSON object")
    return None if _may_hold_wide_int(raw, data) else data


def _may_hold_wide_int(raw: bytes, data: dict[str, Any]) -> bool:
    """Whether orjson may have read an integer beyond 64 bits, which it turns into a float
    (json keeps it exact): whether `data` holds a float of magnitude 2**63 or more. A body
    with many values is cheaper to check for the 19 digits in a row such an integer needs.
    """
    budget = len(raw) // 128  # walking a value costs about what checking 128 bytes does
    todo: list[Any] = [data]
    for node in todo:
        values = node.values() if type(node) is dict else node
        budget -= len(values)
        if budget < 0:
            return b"1" * 19 in raw.translate(_DIGITS_AS_ONES)
        for v in values:
            t = type(v)
            if t is float:
                if not -_WIDE < v < _WIDE:
                    return True
            elif t is dict or t is list:
                todo.append(v)
    return False


def _read_strict(raw: bytes) -> dict[str, Any]:
    """The body as json reads it, member by member, so a refusal can say where it stopped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"body is not UTF-8 (byte {e.start})") from None
    try:
        return _scan(text)
    except RecursionError:
        raise WireError("body nests arrays or objects too deeply to read") from None


def _scan(text: str) -> dict[str, Any]:
    n = len(text)
    i = _skip_ws(text, 0)
    if i >= n or text[i] != "{":
        raise WireError("body is not a JSON object")
    i = _skip_ws(text, i + 1)
    data: dict[str, Any] = {}
    if i < n and text[i] == "}":
        return data
    try:
        while True:
            if i >= n or text[i] != '"':
                raise WireError(f"expected a key at character {i}")
            key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            i = _skip_ws(text, i)
            if i >= n or text[i] != ":":
                raise WireError(f"expected ':' at character {i}")
            i = _skip_ws(text, i + 1)
            data[key], end = _decoder.raw_decode(text, i)
            i = _skip_ws(text, end)
            if i < n and text[i] == ",":
                i = _skip_ws(text, i + 1)
                continue
            if i < n and text[i] == "}":
                close = i
                break
            raise WireError(f"expected ',' or '}}' at character {i}")
    except WireError:
        raise
    except json.JSONDecodeError as e:
        raise WireError(f"invalid JSON: {e.msg} at character {e.pos}") from None
    except ValueError:  # the one other refusal of json's: an integer int() will not take
        raise WireError(f"`{key}` holds an integer of more than {_int_digits()} digits, "
                        "which the router cannot read") from None  # fmt: skip
    if _skip_ws(text, close + 1) != n:
        raise WireError("trailing data after the JSON object")
    return data


def _int_digits() -> int:
    """The most digits an integer may have for Python to read it (`int()`'s limit, 4300
    unless the interpreter was told otherwise; 0: no limit)."""
    return sys.get_int_max_str_digits()


def overlong_integer(raw: bytes) -> str | None:
    """Why the router refuses `raw`, when it is a JSON object that only an integer longer
    than Python reads (`_int_digits`) keeps it from reading: such a body is well-formed, so
    it would reach the upstream, which cannot read it either. None for any other body (not
    JSON, not an object, or one `parse_request` reads). Slow: for bodies `parse_request`
    already refused."""
    longest = 0

    def digits(literal: str) -> int:
        nonlocal longest
        longest = max(longest, len(literal) - literal.startswith("-"))
        return 0

    try:
        data = json.loads(raw.decode("utf-8"), parse_int=digits)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    limit = _int_digits()
    if not isinstance(data, dict) or not limit or longest <= limit:
        return None
    return (f"request body holds an integer of {longest} digits; integers of more than "
            f"{limit} digits cannot be read: send such a number as a string")  # fmt: skip


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


# --------------------------------------------------------------------------- spans
# The functions below read a body already known to be a valid JSON object.


def _search_member(raw: bytes, key: str) -> tuple[int, int] | None:
    """The span of the top-level `key`'s value when it is a plain string that a search can
    find without tracking nesting; None otherwise (then `_member_spans` walks the body).

    In valid JSON a string followed by `:` is a key at some depth, so in a body with `key`
    at top level and no other key spelling `key`, that one is the top-level member. Large
    bodies are first stepped through string by string while that stays cheap (a few long
    prompts); the rest is searched for the bytes `"key"`, which cannot see a key spelled
    with `\\u` escapes, so that search gives up if the rest escapes a letter of `key`.
    `key` is ASCII.
    """
    colon = -1  # of the one key spelling `key` seen so far
    steps = len(raw) // 2048 - 8  # a step costs about what searching 2 KB does
    i = raw.find(b'"')
    while i >= 0 and steps > 0:
        steps -= 1
        end = raw.find(b'"', i + 1) + 1
        if raw[end - 2] == _BACKSLASH:  # maybe an escaped quote: leave the rest to the search
            break
        j = _ws_end(raw, end)
        if raw[j] == _COLON and _spells(raw, i, end, key):
            if colon >= 0:
                return None  # also a nested key, or a repeated one
            colon = j
        i = raw.find(b'"', j)
    if i >= 0:  # search the rest (backwards: bytes.rfind is the faster of the two here)
        rest = i
        if raw.find(b"\\", rest) >= 0 and any(
            raw.rfind(b"\\u00%x" % hi, rest) >= 0 for hi in {ord(c) >> 4 for c in key}
        ):
            return None
        needle = b'"' + key.encode() + b'"'
        stop = len(raw)
        for _ in range(4):  # more occurrences than that: walking is cheaper
            i = raw.rfind(needle, rest, stop)
            if i < 0:
                break
            stop = i + len(needle) - 1
            # a quote after a backslash that is followed by a letter cannot end a string,
            # so it is an escaped one: this is text inside a string
            j = _ws_end(raw, i + len(needle))
            if raw[j] == _COLON and raw[i - 1] != _BACKSLASH:
                if colon >= 0:
                    return None
                colon = j
        else:
            return None
    if colon < 0:
        return None
    start = _ws_end(raw, colon + 1)
    if raw[start] != _QUOTE:
        return None  # not a string
    end = raw.find(b'"', start + 1) + 1
    return None if raw[end - 2] == _BACKSLASH else (start, end)


def _spells(raw: bytes, start: int, end: int, key: str) -> bool:
    """Whether the string raw[start:end] (quotes included) reads as `key`, an ASCII key."""
    if raw.find(b"\\", start, end) < 0:
        return end - start == len(key) + 2 and raw.startswith(key.encode(), start + 1)
    read: str = json.decoder.scanstring(raw[start:end].decode(), 1)[0]  # type: ignore[attr-defined]
    return read == key


def _member_spans(raw: bytes) -> dict[str, tuple[int, int]]:
    """Every top-level key's value span (a repeated key: the last one).

    json's own scanner reads the body as latin-1, one character per byte, so its offsets
    are byte offsets; the values it builds from that reading are garbled and dropped.
    """
    text = raw.decode("latin-1")
    spans: dict[str, tuple[int, int]] = {}
    i = _skip_ws(text, _skip_ws(text, 0) + 1)  # past '{'
    while text[i] == '"':
        key, key_end = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        if not key.isascii():  # read as UTF-8 this time
            key = json.decoder.scanstring(raw[i:key_end].decode(), 1)[0]  # type: ignore[attr-defined]
        start = _skip_ws(text, _skip_ws(text, key_end) + 1)  # past ':'
        end = _decoder.raw_decode(text, start)[1]
        spans[key] = (start, end)
        i = _skip_ws(text, end)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return spans


def _ws_end(raw: bytes, i: int) -> int:
    while i < len(raw) and raw[i] in _SPACE:
        i += 1
    return i


def rewrite(body: ParsedBody, *, model: str, include_usage: bool = False) -> bytes:
    """The body with `model` replaced (and `stream_options.include_usage` forced on if asked).

    Every other byte is kept as the client sent it.
    """
    edits: list[tuple[int, int, bytes]] = []  # (start, end, replacement)
    inserts: list[bytes] = []
    # json.dumps(model, ensure_ascii=False), without building an encoder per call
    model_json = json.encoder.encode_basestring(model).encode("utf-8")
    span = body.span("model")
    if span is not None:
        edits.append((*span, model_json))
    else:
        inserts.append(b'"model":' + model_json)
    if include_usage and not body.wants_usage:
        so = body.data.get("stream_options")
        span = body.span("stream_options")
        if span is not None:
            merged = (
                {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
            )
            edits.append((*span, json.dumps(merged, ensure_ascii=False).encode()))
        else:
            inserts.append(b'"stream_options":{"include_usage":true}')
    if inserts:
        lead = b"," if body.data else b""
        edits.append((body.close, body.close, lead + b",".join(inserts)))
    edits.sort()
    view = memoryview(body.raw)
    parts: list[bytes | memoryview] = []
    pos = 0
    for start, end, rep in edits:
        parts += (view[pos:start], rep)
        pos = end
    parts.append(view[pos:])
    return b"".join(parts)
