"""W3C Trace Context for one request: which trace it belongs to, its span ids, whether it
is sampled. Pure: values in, values out.

Every id is derived from the request id (`orq-…`, random), so the same ids come out
wherever they are computed — when the request's spans are encoded after it finished, and
when an attempt names its span upstream in a `traceparent` header (`attempt_traceparent`):
no per-request state is kept for tracing. A client's valid `traceparent` is continued: its
trace id is the request's, its span the request span's parent, its sampled flag decides
(parent-based sampling). Without one, a new trace is sampled when its trace id's low 64
bits fall under `ratio` x 2^64 (the TraceIdRatioBased rule), so every replica and every
signal agrees on the same trace.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

_HEX = re.compile(r"^[0-9a-f]+$")
ZERO_TRACE = "0" * 32
ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    """A parsed `traceparent` header: trace id (32 hex), parent span id (16 hex), sampled."""

    trace_id: str
    span_id: str
    sampled: bool


@dataclass(frozen=True)
class TraceContext:
    """One request's place in a trace: the trace id, the request span's id, its parent (the
    client's span, None for a new trace) and whether its spans are exported."""

    request_id: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    sampled: bool

    def attempt_span_id(self, n: int) -> str:
        """The span id of the request's attempt `n` (0 is the first)."""
        return _derive(self.request_id, f"attempt:{n}", 8)

    def attempt_traceparent(self, n: int) -> str:
        """The `traceparent` to send upstream with attempt `n`: this trace, that attempt's
        span as the parent, the request's sampled flag."""
        return f"00-{self.trace_id}-{self.attempt_span_id(n)}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str) -> TraceParent | None:
    """The header's trace id, parent id and sampled flag; None when it is not a valid
    `traceparent` (W3C Trace Context level 1: version 00 is exactly 55 characters; a later
    version may append `-…` fields; version ff, all-zero ids and upper-case hex are invalid)."""
    v = value.strip()
    if len(v) < 55 or v[2] != "-" or v[35] != "-" or v[52] != "-":
        return None
    version, trace_id, span_id, flags = v[:2], v[3:35], v[36:52], v[53:55]
    if not all(_HEX.match(p) for p in (version, trace_id, span_id, flags)) or version == "ff":
        return None
    if (version == "00" and len(v) != 55) or (len(v) > 55 and v[55] != "-"):
        return None
    if trace_id == ZERO_TRACE or span_id == ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags, 16) & 1))


def incoming_parent(headers: Iterable[tuple[str, str]]) -> TraceParent | None:
    """The client's `traceparent` (the first one sent), parsed; None if absent or invalid."""
    for k, v in headers:
        if k.lower() == "traceparent":
            return parse_traceparent(v)
    return None


def context(request_id: str, parent: TraceParent | None, ratio: float) -> TraceContext:
    """The trace context of request `request_id`: continuing `parent` (the client's span)
    when given, else a new trace sampled at `ratio` (0..1)."""
    if parent is not None:
        trace_id, sampled = parent.trace_id, parent.sampled
    else:
        trace_id = _derive(request_id, "trace", 16)
        sampled = root_sampled(trace_id, ratio)
    return TraceContext(request_id, trace_id, _derive(request_id, "request", 8),
                        parent.span_id if parent is not None else None, sampled)  # fmt: skip


def root_sampled(trace_id: str, ratio: float) -> bool:
    """Whether a new trace is kept at `ratio`: its id's low 64 bits under ratio x 2^64."""
    return int(trace_id[16:], 16) < round(ratio * 2**64)


def _derive(request_id: str, label: str, size: int) -> str:
    """`size` bytes (as hex) derived from the request id; never all zeros."""
    out = hashlib.blake2b(f"{label}:{request_id}".encode(), digest_size=size).hexdigest()
    return out if out.strip("0") else "0" * (2 * size - 1) + "1"
