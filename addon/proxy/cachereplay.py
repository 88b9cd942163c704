"""Streams and the response cache: record a streamed answer event by event as the pipe
relays it, and replay a cached one through the same pipe as a real event stream.

An addon cannot stream a response it makes itself, so a streamed hit goes the way every
stream goes (`addon.proxy.pipe`): a `LiveStream` registered under a token, whose
"response" here is a `Replay` handing the pipe one stored event per read (waiting `pace`
times the recorded gap first). The client gets the original's events with their
boundaries, the usage chunk stripped or kept as its own request asks, and the pipe's
ledger report as for any stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import cast

import aiohttp

from addon.proxy.upstream import LiveStream
from addon.wire.sse import SSEEvent, SSEParser


class Recorder(SSEParser):
    """An `SSEParser` that also keeps every event it returns, with its arrival time, until
    `limit` bytes are kept (past that `over` is set and nothing more is kept)."""

    def __init__(self, inner: SSEParser, first: Sequence[SSEEvent], limit: int) -> None:
        super().__init__(max_event_bytes=inner.max_event_bytes)
        self._buf = inner._buf  # what the engine read past the first event
        self.oversized = inner.oversized
        self.limit = limit
        self.kept: list[bytes] = []
        self.at: list[float] = []
        self.size = 0
        self.over = False
        self._keep(first)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """`SSEParser.feed`, keeping the events."""
        return self._keep(super().feed(chunk))

    def flush(self) -> list[SSEEvent]:
        """`SSEParser.flush`, keeping the event."""
        return self._keep(super().flush())

    def _keep(self, events: Sequence[SSEEvent]) -> list[SSEEvent]:
        now = time.monotonic()
        for ev in events:
            if self.over:
                break
            self.size += len(ev.raw)
            if self.size > self.limit:
                self.over, self.kept, self.at = True, [], []
                break
            self.kept.append(ev.raw)
            self.at.append(now)
        return list(events)

    def gaps_ms(self) -> tuple[float, ...]:
        """Milliseconds between consecutive kept events."""
        return tuple(round((b - a) * 1000, 1) for a, b in zip(self.at, self.at[1:], strict=False))


def record(live: LiveStream, limit: int) -> Recorder:
    """Make `live`'s parser a `Recorder` (its first events kept already); the recorder."""
    rec = Recorder(live.parser, live.first, limit)
    live.parser = rec
    return rec


class _Content:
    """The `response.content` the pipe reads: one stored event per `readany`."""

    def __init__(self, events: Sequence[bytes], gaps_ms: Sequence[float], pace: float) -> None:
        self.events, self.gaps_ms, self.pace = events, gaps_ms, pace
        self.next = 1  # the first event is handed over as `LiveStream.first`

    async def readany(self) -> bytes:
        if self.next >= len(self.events):
            return b""
        i = self.next
        self.next += 1
        if self.pace > 0 and i - 1 < len(self.gaps_ms) and self.gaps_ms[i - 1] > 0:
            await asyncio.sleep(self.gaps_ms[i - 1] * self.pace / 1000)
        return self.events[i]


class Replay:
    """Stands in for the upstream `aiohttp.ClientResponse` of a replayed stream."""

    def __init__(self, events: Sequence[bytes], gaps_ms: Sequence[float], pace: float) -> None:
        self.content = _Content(events, gaps_ms, pace)

    def close(self) -> None:
        """Nothing to give back."""


def replay(events: Sequence[bytes], gaps_ms: Sequence[float], pace: float) -> LiveStream:
    """A `LiveStream` that plays `events` back, for `Pipe.register`."""
    parser = SSEParser()
    first = parser.feed(events[0]) + parser.flush()
    now = time.monotonic()
    response = cast(aiohttp.ClientResponse, Replay(events, gaps_ms, pace))
    return LiveStream(response, SSEParser(), first, started=now, first_event_at=now)
