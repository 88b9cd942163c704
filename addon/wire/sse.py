"""Server-sent events: an incremental splitter and each event's JSON payload."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SSEEvent:
    """One server-sent event: its bytes as received, and its data lines' values joined by
    newlines."""

    raw: bytes  # the event's bytes including its terminating blank line
    data: bytes  # joined data lines

    @property
    def done(self) -> bool:
        """Whether this is the stream's ``data: [DONE]`` terminator."""
        return self.data.strip() == b"[DONE]"


@dataclass
class SSEParser:
    """Incremental SSE splitter: feed bytes, get whole events back. Never raises."""

    max_event_bytes: int = 4 * 1024 * 1024  # one event this large is a broken upstream
    _buf: bytearray = field(default_factory=bytearray)
    oversized: bool = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events `chunk` completes, in order; a partial event waits for the next chunk.
        A partial event past `max_event_bytes` is dropped and `oversized` set."""
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
