"""Load generators for scripts/bench_streams.py: a loopback SSE upstream and a stream client,
both on bare asyncio protocols so that neither is the bottleneck of the thing measured.

- `upstream_main` (a child process): an HTTP/1.1 server that answers every POST whose body
  asks for `"stream": true` with an OpenAI chat-completions stream of `events` content
  chunks, `gap_ms` apart (the first after `first_ms`), each content piece stamped with
  ` @<time.perf_counter_ns()>` as it is written, then the usage chunk when the request asked
  for it (`stream_options.include_usage`, as the orchestrator injects) and `data: [DONE]`.
  Every stream keeps its own schedule (`loop.call_at` on absolute times: no drift), so the
  gaps it really made are in the stamps. A non-streaming POST gets a small completion.
- `client_main` (one or more child processes): opens streams over fresh TCP connections,
  either straight to the upstream or through an HTTP proxy (absolute-form request line),
  starting them evenly over a ramp; for every content event it notes when it arrived against
  the stamp it carries. CLOCK_MONOTONIC (perf_counter) is shared by all processes here, so
  `arrival - stamp` is an absolute per-event delay and the added gap is
  `(arrival_i - arrival_{i-1}) - (stamp_i - stamp_{i-1})`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

STAMP_RE = re.compile(rb" @(\d+)\"")
HEAD_END = b"\r\n\r\n"

# --------------------------------------------------------------------------- upstream


@dataclass
class StreamPlan:
    events: int = 200
    gap_ms: float = 20.0
    first_ms: float = 20.0


@dataclass
class UpstreamStats:
    streams: int = 0
    events: int = 0
    plain: int = 0


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


class _UpstreamConn(asyncio.Protocol):
    def __init__(self, plan: StreamPlan, stats: UpstreamStats) -> None:
        self.plan, self.stats = plan, stats
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy:
            end = self.buf.find(HEAD_END)
            if end < 0:
                return
            head = self.buf[:end].lower()
            m = re.search(rb"content-length:\s*(\d+)", head)
            n = int(m[1]) if m else 0
            if len(self.buf) < end + 4 + n:
                return
            body = self.buf[end + 4 : end + 4 + n]
            self.buf = self.buf[end + 4 + n :]
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        assert self.transport is not None
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        model = str(req.get("model", "bench-model"))
        if not req.get("stream"):
            self.stats.plain += 1
            payload = json.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
            }).encode()  # fmt: skip
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(payload), payload)
            )
            return
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self.busy = True
        self.stats.streams += 1
        self.transport.write(_SSE_HEAD)
        loop = asyncio.get_running_loop()
        start = loop.time() + self.plan.first_ms / 1000
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
                "model": model}  # fmt: skip
        self.timer = loop.call_at(start, self._send, 0, start, base, usage)

    def _send(self, i: int, start: float, base: dict[str, Any], usage: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        plan = self.plan
        prefix = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,'
        piece = b'"model":%s,"choices":[{"index":0,"delta":{"content":"tok%03d @%d"},"finish_reason":null}]}\n\n' % (
            json.dumps(base["model"]).encode(), i, time.perf_counter_ns()
        )  # fmt: skip
        out = _chunk(prefix + piece)
        self.stats.events += 1
        if i + 1 < plan.events:
            t.write(out)
            at = start + (i + 1) * plan.gap_ms / 1000
            self.timer = asyncio.get_running_loop().call_at(
                at, self._send, i + 1, start, base, usage
            )
            return
        tail = [_event(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})]
        if usage:
            tail.append(_event(base | {"choices": [], "usage": {
                "prompt_tokens": 11, "completion_tokens": plan.events,
                "total_tokens": 11 + plan.events}}))  # fmt: skip
        tail.append(b"data: [DONE]\n\n")
        t.write(out + b"".join(_chunk(x) for x in tail) + b"0\r\n\r\n")
        self.busy, self.timer = False, None
        if self.buf:
            self.data_received(b"")


def upstream_main(conn: Connection, cpus: set[int] | None) -> None:
    """Child process: serve on 127.0.0.1 (a free port, sent back on `conn`), then obey
    ("plan", StreamPlan) / ("stats", None) / ("stop", None) messages."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    asyncio.run(_upstream(conn))


async def _upstream(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    plan, stats = StreamPlan(), UpstreamStats()
    server = await loop.create_server(
        lambda: _UpstreamConn(plan, stats), "127.0.0.1", 0, backlog=4096
    )
    conn.send(server.sockets[0].getsockname()[1])
    while True:
        while not conn.poll():
            await asyncio.sleep(0.02)
        cmd, arg = conn.recv()
        if cmd == "plan":
            plan.events, plan.gap_ms, plan.first_ms = arg.events, arg.gap_ms, arg.first_ms
            conn.send(None)
        elif cmd == "stats":
            conn.send((stats.streams, stats.events, stats.plain))
            stats.streams = stats.events = stats.plain = 0
        elif cmd == "stop":
            server.close()
            conn.send(None)
            return


# --------------------------------------------------------------------------- client


@dataclass
class StreamResult:
    """What one client process saw over its share of a step's streams."""

    ok: int = 0
    errors: list[str] = field(default_factory=list)
    events: int = 0
    ttfe_ms: list[float] = field(default_factory=list)
    added_gap_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)  # arrival - stamp, per event
    first_start: float = 0.0
    last_end: float = 0.0
    cpu_s: float = 0.0


@dataclass(frozen=True)
class ClientJob:
    host: str
    port: int
    url: str  # absolute URL when through a proxy, else the path
    authority: str
    body: bytes
    streams: int
    offset: int  # this process's first stream index in the step
    total: int  # streams in the step (all processes)
    ramp_s: float
    events: int
    start_at: float  # perf_counter the step starts at (shared clock)
    timeout_s: float
    rounds: int = 1  # streams each worker runs back to back
    window: tuple[float, float] = (0.0, float("inf"))  # perf_counter span measured


class _ClientConn(asyncio.Protocol):
    def __init__(self, job: ClientJob, out: StreamResult, done: asyncio.Future[None]) -> None:
        self.job, self.out, self.done = job, out, done
        self.buf = b""
        self.head = True
        self.sent_at = 0.0
        self.first: float | None = None
        self.last: tuple[int, int] | None = None  # (arrival ns, stamp ns) of the last event
        self.events = 0
        self.saw_done = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        j = self.job
        req = (
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer sk-bench-client-0123456789\r\naccept: text/event-stream\r\n"
            b"content-length: %d\r\n\r\n%s"
        ) % (j.url.encode(), j.authority.encode(), len(j.body), j.body)
        self.sent_at = time.perf_counter()
        transport.write(req)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        buf = self.buf + data
        if self.head:
            end = buf.find(HEAD_END)
            if end < 0:
                self.buf = buf
                return
            status = buf[9:12]
            if status != b"200":
                self._finish(f"HTTP {status.decode(errors='replace')}")
                return
            self.head = False
            buf = buf[end + 4 :]
        start = 0
        while (i := buf.find(b"\n\n", start)) >= 0:
            ev = buf[start:i]
            start = i + 2
            m = STAMP_RE.search(ev)
            if m is not None:
                stamp = int(m[1])
                lo, hi = self.job.window
                inside = lo <= now / 1e9 <= hi
                if self.first is None:
                    self.first = now / 1e9
                elif self.last is not None and inside:
                    la, ls = self.last
                    self.out.added_gap_ms.append(((now - la) - (stamp - ls)) / 1e6)
                if inside:
                    self.out.delay_ms.append((now - stamp) / 1e6)
                self.last = (now, stamp)
                self.events += 1
            elif b"[DONE]" in ev:
                self.saw_done = True
        self.buf = buf[start:]
        if self.saw_done and b"0\r\n\r\n" in self.buf:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._finish(
                f"connection closed after {self.events} events" + (f": {exc}" if exc else "")
            )

    def _finish(self, error: str | None) -> None:
        if self.done.done():
            return
        out = self.out
        out.events += self.events
        lo, hi = self.job.window
        if self.first is not None and lo <= self.sent_at <= hi:
            out.ttfe_ms.append((self.first - self.sent_at) * 1000)
        if error is None and self.events != self.job.events:
            error = f"{self.events} content events, expected {self.job.events}"
        if error is None:
            out.ok += 1
        elif len(out.errors) < 5:
            out.errors.append(error)
        else:
            out.errors.append("")
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()


async def _worker(job: ClientJob, k: int, out: StreamResult) -> None:
    at = job.start_at + job.ramp_s * (job.offset + k) / max(1, job.total)
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    for _ in range(job.rounds):
        await _one(job, out)


async def _one(job: ClientJob, out: StreamResult) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        async with asyncio.timeout(job.timeout_s):
            transport, _ = await loop.create_connection(
                lambda: _ClientConn(job, out, done), job.host, job.port
            )
            try:
                await done
            finally:
                transport.close()
    except (OSError, TimeoutError) as e:
        if not done.done():
            out.errors.append(f"{type(e).__name__}: {e}"[:200])


async def _client(job: ClientJob) -> StreamResult:
    out = StreamResult(first_start=job.start_at)
    t0 = os.times()
    await asyncio.gather(*(_worker(job, k, out) for k in range(job.streams)))
    t1 = os.times()
    out.last_end = time.perf_counter()
    out.cpu_s = (t1.user + t1.system) - (t0.user + t0.system)
    return out


def client_main(conn: Connection, cpus: set[int] | None) -> None:
    """Child process: run each ClientJob received on `conn`, send back its StreamResult;
    None stops it."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        while (job := conn.recv()) is not None:
            conn.send(asyncio.run(_client(job)))
