"""The pass-through SSE tap: bytes unchanged, usage noted on the side."""

from __future__ import annotations

import pytest

from addon.proxy.exchange import Incoming, Pending
from addon.proxy.pipe import StreamReport, usage_tap

CHAT = (b'data: {"model":"m","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
        b'data: {"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n")  # fmt: skip
RESPONSES = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
             b'event: response.completed\ndata: {"type":"response.completed","response":'
             b'{"usage":{"input_tokens":7,"output_tokens":3}}}\n\n')  # fmt: skip


@pytest.mark.parametrize(("stream", "usage"), [(CHAT, (5, 2)), (RESPONSES, (7, 3))])
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_tap_passes_bytes_and_reads_usage(stream: bytes, usage: tuple[int, int], step: int) -> None:
    p = Pending("orq-x", 0.0, Incoming("POST", "h", "/v1/responses", (), b"", "127.0.0.1"),
                "unrouted")  # fmt: skip
    p.report = StreamReport(outcome="ok")
    tap = usage_tap(p.report)
    out = b"".join(tap(stream[i : i + step]) for i in range(0, len(stream), step)) + tap(b"")
    assert out == stream
    assert p.report is not None and p.report.usage is not None
    assert (p.report.usage.prompt_tokens, p.report.usage.completion_tokens) == usage
