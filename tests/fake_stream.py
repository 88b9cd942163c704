"""What the fake upstream's API formats share: token counts, SSE framing, a stream's plan.

Each format module (`fake_responses`, `fake_messages`, and the chat code in `fakeupstream`)
turns a request into a `StreamPlan`; `FakeUpstream` plays it, applying the streaming faults
to the plan's `body` (its content deltas), so every format fails the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Tokens:
    """The usage a fake answer reports. `prompt` counts every input token, the cached
    (read) and cache-written ones included; each format spells that its own way."""

    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0
    cache_write: int = 0


@dataclass(frozen=True)
class StreamPlan:
    """One streamed answer, event by event (each item is one whole SSE event's bytes).

    `head` goes out before the content deltas in `body`, `tail` after them, then `end`
    (the stream's final marker: `data: [DONE]`, `message_stop`, `response.completed`),
    which `NoDone` leaves out. `malformed` is the broken event `MalformedEvent` inserts;
    `render(i, piece)` is content event `i` again with `piece` as its text (`stamp_events`).
    """

    head: list[bytes]
    body: list[bytes]
    tail: list[bytes]
    end: bytes | None
    malformed: bytes
    render: Callable[[int, str], bytes]


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event: an optional `event:` line, then the JSON payload as `data:`."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"
