"""Proxy overhead, side by side: direct vs bare mitmdump vs `orchestrator run`.

    .venv/bin/python scripts/bench_proxy.py [--requests N] [--repeats N] [--quick] [--json FILE]

One loopback OpenAI-compatible upstream (tests/fakeupstream.py, run in a child process that
also answers "how many calls did you see?") and three ways to reach it, measured interleaved
in one run (A B C A B C ..., each case and repeat in turn):

    A  direct       the client calls the upstream
    B  mitmdump     bare `mitmdump`, regular mode, flow_detail=0, an inline script that
                    streams SSE responses (flow.response.stream = True for text/event-stream)
    C  orchestrator `orchestrator run` routing every call: every offering of the benchmark
                    DB (one provider per DB provider, all pointing at the fake upstream),
                    the project's rules/, profile scoring, ledger on, log level info

For B and C the client uses the proxy as an HTTP proxy to the upstream's http:// URL. The
client is aiohttp (one connector per run, warm keep-alive connections); it runs in this
process, whose CPU per request is printed next to the proxy's and the upstream's so that a
client-bound run shows. CPU is read from /proc/PID/stat (utime + stime, all threads).
Every run checks that the upstream received exactly the requests the client sent, that all
answers were 200, and (for C) that every answer carries `x-orchestrator-model`; at the end
the ledger must hold one row per request sent through C. Without --quick a last phase sends
10,000 requests through a fresh orchestrator and prints its RSS along the way.

Profiling: the first line printed names each proxy's pid; attach a sampler while a long run
goes, e.g. `--targets C --cases c32-0 --requests 8000 --repeats 1 --memory 0` and
`py-spy record --pid PID --duration 20 --format raw -o stacks.txt`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import aiohttp

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for p in (str(REPO), str(SCRIPTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_routing import (  # noqa: E402
    BENCH_MODEL,
    BUNDLED_DB,
    KEY_ENV,
    MIN_CATALOG,
    chat_body,
    percentile,
    print_grid,
    prompt_text,
    write_config,
)

BIN = Path(sys.executable).parent
LISTEN_RE = re.compile(r"listening at \S*?:(\d+)\.?$", re.I | re.M)
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_EVENTS = 20
STREAM_FIRST_MS = 50.0
STREAM_GAP_MS = 5.0
STAMP_RE = re.compile(rb" @(\d+)\"")  # tests.fakeupstream stamp_events: " @<perf_counter_ns>"
CONTENT = " ".join(f"tok{i:02d}" for i in range(STREAM_EVENTS))  # 20 non-empty pieces
PROMPT_BYTES = 1900  # a ~2 KB request body, as in DESIGN.md's measurements
CLIENT_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer sk-bench-client-0123456789",
    "User-Agent": "bench_proxy/1",
}
BARE_STREAM_ADDON = '''"""bench_proxy: stream SSE responses through bare mitmdump (it buffers them otherwise)."""


def responseheaders(flow):
    if "text/event-stream" in flow.response.headers.get("content-type", ""):
        flow.response.stream = True
'''

# targets (from DESIGN.md / issue 6)
RPS_RATIO_TARGET = 0.6  # C/B req/s at c=32, 0 ms (aim 0.8)
ADDED_P50_MS = 1.5  # c=1
ADDED_P99_MS = 4.0
ADDED_TTFE_MS = 3.0
GAP_SLACK_MS = 3.0
RSS_LIMIT_MB = 200.0
RSS_FLAT = 0.10
STREAM_CPU_RATIO = 0.8  # C/B proxy CPU per streamed request at c=8


@dataclass(frozen=True)
class Case:
    key: str
    concurrency: int
    delay_ms: float
    stream: bool
    share: float  # of --requests
    minimum: int
    api: str = "chat"  # chat (/chat/completions) or responses (/responses)

    def requests(self, base: int) -> int:
        return max(self.minimum, round(base * self.share))

    @property
    def label(self) -> str:
        if self.stream:
            kind = "stream" if self.api == "chat" else self.api
            return f"{kind} c={self.concurrency}"
        return f"c={self.concurrency} {self.delay_ms:.0f} ms"


CASES = (
    Case("c1-0", 1, 0.0, False, 1 / 3, 10),
    Case("c1-50", 1, 50.0, False, 1 / 15, 5),
    Case("c32-0", 32, 0.0, False, 1.0, 64),
    Case("c32-50", 32, 50.0, False, 2 / 3, 64),
    Case("stream-c8", 8, 0.0, True, 1 / 8, 8),
    Case("responses-c8", 8, 0.0, True, 1 / 8, 8, api="responses"),
)
PATHS = {"chat": "/chat/completions", "responses": "/responses"}
# a content event of either API: a chat delta, or a Responses output_text delta
CONTENT_MARKERS = (b'"delta":{"content":"', b'"type":"response.output_text.delta"')
TARGETS = {"A": "direct", "B": "mitmdump", "C": "orchestrator"}


def responses_body(prompt: str) -> bytes:
    """A streamed OpenAI Responses request for the same prompt as the chat rows."""
    body = {"model": BENCH_MODEL, "instructions": "You are a helpful assistant.",
            "input": prompt, "stream": True}  # fmt: skip
    return json.dumps(body, ensure_ascii=False).encode()


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CatalogTooSmall(RuntimeError):
    """The orchestrator came up without the full catalog (a stale or missing DB)."""


class Proxy:
    """A proxy process whose output goes to a file; `port` parsed from 'listening at'."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name, self.cmd, self.cwd, self.env = name, cmd, cwd, env
        self.log_path = cwd / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.candidates = 0  # catalog size an orchestrator reported at startup

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: str, timeout: float = 60.0) -> Proxy:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            m = LISTEN_RE.search(text)
            if m and ready in text:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{text}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready within {timeout:.0f} s:\n{text}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _upstream_main(conn: Connection) -> None:
    """Child process: the fake upstream plus a tiny control loop on `conn`."""
    from tests.fakeupstream import FakeUpstream

    fake = FakeUpstream("bench", content=CONTENT, events=STREAM_EVENTS, stamp_events=True).start()
    conn.send(fake.base_url)
    while True:
        cmd, arg = conn.recv()
        if cmd == "set":
            fake.delay, fake.first_event_delay, fake.event_gap = (v / 1000 for v in arg)
            conn.send(None)
        elif cmd == "seen":
            conn.send(sum(len(fake.requests(path)) for path in PATHS.values()))
        elif cmd == "clear":
            fake.clear()
            conn.send(None)
        elif cmd == "stop":
            fake.stop()
            conn.send(None)
            return


class Reachable(Protocol):
    """What `start_orchestrator` needs of an upstream (also scripts/bench_streams.py's)."""

    @property
    def base_url(self) -> str: ...

    @property
    def authority(self) -> str: ...


class Upstream:
    """tests.fakeupstream.FakeUpstream in a child process (its own CPU and GIL)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_upstream_main, args=(child,), daemon=True)
        self.base_url = ""

    def start(self) -> Upstream:
        self._proc.start()
        if not self._conn.poll(30):
            raise TimeoutError("fake upstream did not start within 30 s")
        self.base_url = self._conn.recv()
        return self

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    @property
    def authority(self) -> str:
        return self.base_url.split("//", 1)[1].split("/", 1)[0]

    def _call(self, cmd: str, arg: Any = None) -> Any:
        self._conn.send((cmd, arg))
        return self._conn.recv()

    def configure(self, delay_ms: float, first_event_ms: float, gap_ms: float) -> None:
        self._call("set", (delay_ms, first_event_ms, gap_ms))

    def seen(self) -> int:
        return int(self._call("seen"))

    def clear(self) -> None:
        self._call("clear")

    def stop(self) -> None:
        if self._proc.is_alive():
            self._call("stop")
            self._proc.join(timeout=10)


# --------------------------------------------------------------------------- client


@dataclass
class Load:
    """What the client saw during one batch of requests."""

    latency_ms: list[float] = field(default_factory=list)
    ttfe_ms: list[float] = field(default_factory=list)
    gap_ms: list[float] = field(default_factory=list)
    # from the upstream's send stamps: the gaps it made, and what the path added to each
    up_gap_ms: list[float] = field(default_factory=list)
    added_gap_ms: list[float] = field(default_factory=list)
    status: Counter[int] = field(default_factory=Counter)
    routed: int = 0
    errors: list[str] = field(default_factory=list)
    sent: int = 0


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    stream: bool,
    proxy: str | None,
    out: Load,
) -> None:
    clock = time.perf_counter
    out.sent += 1
    t0 = clock()
    try:
        async with session.post(url, data=body, headers=CLIENT_HEADERS, proxy=proxy) as resp:
            if stream:
                buf = b""
                first: float | None = None
                last_content: float | None = None
                last_sent: float | None = None
                async for chunk in resp.content.iter_any():
                    now = clock()
                    buf += chunk
                    while (i := buf.find(b"\n\n")) >= 0:
                        ev, buf = buf[:i], buf[i + 2 :]
                        if b"data:" not in ev:
                            continue
                        if first is None:
                            first = now
                        if any(m in ev for m in CONTENT_MARKERS):
                            stamp = STAMP_RE.search(ev)
                            sent = int(stamp[1]) / 1e9 if stamp else None
                            if last_content is not None:
                                out.gap_ms.append((now - last_content) * 1000)
                                if sent is not None and last_sent is not None:
                                    up = (sent - last_sent) * 1000
                                    out.up_gap_ms.append(up)
                                    out.added_gap_ms.append((now - last_content) * 1000 - up)
                            last_content, last_sent = now, sent
                if first is not None:
                    out.ttfe_ms.append((first - t0) * 1000)
            else:
                await resp.read()
            out.status[resp.status] += 1
            if "x-orchestrator-model" in resp.headers:
                out.routed += 1
            if resp.status != 200 and len(out.errors) < 3:
                out.errors.append(f"HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as e:
        out.status[0] += 1
        if len(out.errors) < 3:
            out.errors.append(f"{type(e).__name__}: {e}")
        return
    out.latency_ms.append((clock() - t0) * 1000)


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    n: int,
    concurrency: int,
    proxy: str | None,
    body_for: Callable[[int], tuple[bytes, bool]],
) -> Load:
    """`n` requests from `concurrency` closed-loop workers."""
    out = Load()
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            body, stream = body_for(i)
            await _one(session, url, body, stream, proxy, out)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return out


def new_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120), trust_env=False
    )


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    case: str
    target: str
    repeat: int
    requests: int
    wall_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    ttfe_p50_ms: float | None
    ttfe_p99_ms: float | None
    gap_p50_ms: float | None
    gap_p99_ms: float | None
    up_gap_p99_ms: float | None  # the upstream's own gaps (its send stamps)
    added_gap_p99_ms: float | None  # per event: the client's gap minus the upstream's
    proxy_cpu_ms: float | None  # per request
    upstream_cpu_ms: float
    client_cpu_ms: float
    upstream_seen: int
    ok: int
    routed: int
    errors: list[str]

    @property
    def consistent(self) -> bool:
        routed_ok = self.target != "C" or self.routed == self.requests
        return self.upstream_seen == self.requests == self.ok and routed_ok and not self.errors


class Bench:
    def __init__(self, upstream: Upstream, proxies: dict[str, Proxy]) -> None:
        self.upstream = upstream
        self.proxies = proxies
        self.sent_via: Counter[str] = Counter()  # every request per proxy, warm-up included
        self.problems: list[str] = []  # checks that failed outside the interleaved runs
        self.body = chat_body(prompt_text(PROMPT_BYTES))
        self.stream_body = chat_body(prompt_text(PROMPT_BYTES), stream=True)
        self.responses_body = responses_body(prompt_text(PROMPT_BYTES))

    def configure_for(self, case: Case) -> None:
        if case.stream:
            self.upstream.configure(0.0, STREAM_FIRST_MS, STREAM_GAP_MS)
        else:
            self.upstream.configure(case.delay_ms, 0.0, 0.0)

    def run(self, case: Case, target: str, n: int, repeat: int) -> Run:
        return asyncio.run(self._run(case, target, n, repeat))

    async def _run(self, case: Case, target: str, n: int, repeat: int) -> Run:
        proxy = self.proxies.get(target)
        proxy_url = proxy.url if proxy else None
        url = self.upstream.base_url + PATHS[case.api]
        body = (
            self.responses_body
            if case.api == "responses"
            else (self.stream_body if case.stream else self.body)
        )

        def body_for(_: int) -> tuple[bytes, bool]:
            return body, case.stream

        warm = min(n, max(2 * case.concurrency, 10))
        async with new_session(case.concurrency) as session:
            await drive(session, url, warm, case.concurrency, proxy_url, body_for)
            self.upstream.clear()
            cpu0 = (
                cpu_seconds(proxy.pid) if proxy else None,
                cpu_seconds(self.upstream.pid),
                self_cpu_seconds(),
            )
            t0 = time.perf_counter()
            load = await drive(session, url, n, case.concurrency, proxy_url, body_for)
            wall = time.perf_counter() - t0
            cpu1 = (
                cpu_seconds(proxy.pid) if proxy else None,
                cpu_seconds(self.upstream.pid),
                self_cpu_seconds(),
            )
        seen = self.upstream.seen()
        self.upstream.clear()
        if proxy is not None:
            self.sent_via[target] += warm + load.sent

        def per_req(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else (b - a) * 1000 / max(1, load.sent)

        return Run(
            case=case.key,
            target=target,
            repeat=repeat,
            requests=load.sent,
            wall_s=wall,
            rps=load.sent / wall,
            p50_ms=percentile(load.latency_ms, 0.5),
            p99_ms=percentile(load.latency_ms, 0.99),
            ttfe_p50_ms=percentile(load.ttfe_ms, 0.5) if case.stream else None,
            ttfe_p99_ms=percentile(load.ttfe_ms, 0.99) if case.stream else None,
            gap_p50_ms=percentile(load.gap_ms, 0.5) if case.stream else None,
            gap_p99_ms=percentile(load.gap_ms, 0.99) if case.stream else None,
            up_gap_p99_ms=percentile(load.up_gap_ms, 0.99) if load.up_gap_ms else None,
            added_gap_p99_ms=percentile(load.added_gap_ms, 0.99) if load.added_gap_ms else None,
            proxy_cpu_ms=per_req(cpu0[0], cpu1[0]),
            upstream_cpu_ms=per_req(cpu0[1], cpu1[1]) or 0.0,
            client_cpu_ms=per_req(cpu0[2], cpu1[2]) or 0.0,
            upstream_seen=seen,
            ok=load.status[200],
            routed=load.routed,
            errors=load.errors,
        )

    def memory(
        self, proxy: Proxy, total: int, step: int, concurrency: int
    ) -> list[tuple[int, float]]:
        """RSS of `proxy` after every `step` requests (9 JSON : 1 SSE, 0 ms upstream)."""
        self.upstream.configure(0.0, 0.0, 0.0)
        samples = [(0, rss_mb(proxy.pid))]
        done = 0
        bad: list[str] = []
        while done < total:
            n = min(step, total - done)

            def body_for(i: int, base: int = done) -> tuple[bytes, bool]:
                return (self.stream_body, True) if (base + i) % 10 == 0 else (self.body, False)

            load = asyncio.run(self._drive_fresh(proxy.url, n, concurrency, body_for))
            seen = self.upstream.seen()
            self.upstream.clear()
            if seen != load.sent or load.status[200] != load.sent or load.routed != load.sent:
                bad.append(
                    f"requests {done}..{done + n}: sent {load.sent}, upstream saw {seen}, "
                    f"200s {load.status[200]}, routed {load.routed} {load.errors}"
                )
            done += n
            self.sent_via["memory"] += load.sent
            samples.append((done, rss_mb(proxy.pid)))
        self.problems.extend(f"memory phase: {b}" for b in bad)
        return samples

    async def _drive_fresh(
        self,
        proxy_url: str,
        n: int,
        concurrency: int,
        body_for: Callable[[int], tuple[bytes, bool]],
    ) -> Load:
        async with new_session(concurrency) as session:
            return await drive(
                session,
                self.upstream.base_url + "/chat/completions",
                n,
                concurrency,
                proxy_url,
                body_for,
            )


# --------------------------------------------------------------------------- report


def med_range(values: Iterable[float | None], fmt: str = "{:.2f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(vals))}..{fmt.format(max(vals))}]"


def median(values: Iterable[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def print_tables(runs: list[Run], cases: Sequence[Case], targets: str) -> None:
    by: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        by.setdefault((r.case, r.target), []).append(r)
    groups = [(c, t, by[(c.key, t)]) for c in cases for t in targets if (c.key, t) in by]
    plain = [g for g in groups if not g[0].stream]
    streamed = [g for g in groups if g[0].stream]
    if plain:
        print("\nnon-streaming, 2 KB POST — median [min..max] over repeats")
        headers = ["case", "target", "n/run", "req/s", "p50 ms", "p99 ms"]
        headers += ["proxy CPU ms/req", "upstream/client CPU", "upstream saw/sent"]
        print_grid(headers, [_plain_row(c, t, rs) for c, t, rs in plain], left=2)
    if streamed:
        print(
            f"\nstreaming, {STREAM_EVENTS} events {STREAM_GAP_MS:.0f} ms apart, the first after "
            f"{STREAM_FIRST_MS:.0f} ms — median [min..max] over repeats"
        )
        headers = ["case", "target", "n/run", "streams/s", "TTFE p50 ms", "TTFE p99 ms"]
        headers += ["gap p50 ms", "gap p99 ms", "upstream gap p99", "added gap p99"]
        headers += ["proxy CPU ms/stream", "upstream saw/sent"]
        print_grid(headers, [_stream_row(c, t, rs) for c, t, rs in streamed], left=2)
    print(
        "(TTFE: request start to the first SSE event; gap: between consecutive content events, "
        "the upstream is asked for 5 ms and stamps each event with its send time, so 'upstream "
        "gap' is the gap it really made; CPU from /proc/PID/stat over the measured requests)"
    )


def _saw(rs: list[Run]) -> str:
    check = "ok" if all(r.consistent for r in rs) else "MISMATCH"
    return f"{sum(r.upstream_seen for r in rs):,}/{sum(r.requests for r in rs):,} {check}"


def _plain_row(c: Case, target: str, rs: list[Run]) -> list[str]:
    side = (
        f"{median(r.upstream_cpu_ms for r in rs):.2f} / {median(r.client_cpu_ms for r in rs):.2f}"
    )
    return [
        c.label,
        f"{target} {TARGETS[target]}",
        str(rs[0].requests),
        med_range((r.rps for r in rs), "{:,.0f}"),
        med_range(r.p50_ms for r in rs),
        med_range(r.p99_ms for r in rs),
        med_range(r.proxy_cpu_ms for r in rs),
        side,
        _saw(rs),
    ]


def _stream_row(c: Case, target: str, rs: list[Run]) -> list[str]:
    return [
        c.label,
        f"{target} {TARGETS[target]}",
        str(rs[0].requests),
        med_range((r.rps for r in rs), "{:.1f}"),
        med_range(r.ttfe_p50_ms for r in rs),
        med_range(r.ttfe_p99_ms for r in rs),
        med_range(r.gap_p50_ms for r in rs),
        med_range(r.gap_p99_ms for r in rs),
        med_range(r.up_gap_p99_ms for r in rs),
        med_range((r.added_gap_p99_ms for r in rs), "{:+.2f}"),
        med_range(r.proxy_cpu_ms for r in rs),
        _saw(rs),
    ]


@dataclass(frozen=True)
class Verdict:
    what: str
    measured: str
    target: str
    ok: bool | None  # None: informational


def paired(runs: list[Run], case: str, f: Callable[[Run, Run], float | None]) -> list[float]:
    """f(C, B) for each repeat where both ran."""
    b = {r.repeat: r for r in runs if r.case == case and r.target == "B"}
    c = {r.repeat: r for r in runs if r.case == case and r.target == "C"}
    out = [f(c[k], b[k]) for k in sorted(b.keys() & c.keys())]
    return [v for v in out if v is not None]


def verdicts(runs: list[Run], memory: list[tuple[int, float]] | None) -> list[Verdict]:
    out: list[Verdict] = []

    def add(
        what: str, vals: list[float], fmt: str, target: str, ok: Callable[[float], bool] | None
    ) -> None:
        if not vals:
            return
        out.append(Verdict(what, med_range(vals, fmt), target, ok(median(vals)) if ok else None))

    add(
        "c=32 0 ms   req/s C/B",
        paired(runs, "c32-0", lambda c, b: c.rps / b.rps),
        "{:.2f}",
        f"≥ {RPS_RATIO_TARGET} (aim 0.8)",
        lambda v: v >= RPS_RATIO_TARGET,
    )
    add(
        "c=32 50 ms  req/s C/B",
        paired(runs, "c32-50", lambda c, b: c.rps / b.rps),
        "{:.2f}",
        "-",
        None,
    )
    for case in ("c32-0", "c1-0"):
        add(
            f"{'c=32 0 ms' if case == 'c32-0' else 'c=1 0 ms':<12}proxy CPU/req C/B",
            paired(
                runs,
                case,
                lambda c, b: (
                    c.proxy_cpu_ms / b.proxy_cpu_ms if c.proxy_cpu_ms and b.proxy_cpu_ms else None
                ),
            ),
            "{:.2f}",
            "-",
            None,
        )
    for case, label in (("c1-0", "c=1 0 ms "), ("c1-50", "c=1 50 ms")):
        add(
            f"{label}   added p50 C-B (ms)",
            paired(runs, case, lambda c, b: c.p50_ms - b.p50_ms),
            "{:+.2f}",
            f"≤ {ADDED_P50_MS}",
            lambda v: v <= ADDED_P50_MS,
        )
        add(
            f"{label}   added p99 C-B (ms)",
            paired(runs, case, lambda c, b: c.p99_ms - b.p99_ms),
            "{:+.2f}",
            f"≤ {ADDED_P99_MS}",
            lambda v: v <= ADDED_P99_MS,
        )
    add(
        "stream c=8  added TTFE p50 C-B (ms)",
        paired(runs, "stream-c8", lambda c, b: (c.ttfe_p50_ms or 0) - (b.ttfe_p50_ms or 0)),
        "{:+.2f}",
        f"≤ {ADDED_TTFE_MS}",
        lambda v: v <= ADDED_TTFE_MS,
    )
    add(
        "stream c=8  proxy CPU/stream C/B",
        paired(
            runs,
            "stream-c8",
            lambda c, b: (
                c.proxy_cpu_ms / b.proxy_cpu_ms if c.proxy_cpu_ms and b.proxy_cpu_ms else None
            ),
        ),
        "{:.2f}",
        f"≤ {STREAM_CPU_RATIO} (issue 22)",
        lambda v: v <= STREAM_CPU_RATIO,
    )
    # the same stream as OpenAI Responses events (routed natively): no target of its own yet
    add(
        "responses c=8  added TTFE p50 C-B (ms)",
        paired(runs, "responses-c8", lambda c, b: (c.ttfe_p50_ms or 0) - (b.ttfe_p50_ms or 0)),
        "{:+.2f}",
        "-",
        None,
    )
    add(
        "responses c=8  proxy CPU/stream C/B",
        paired(
            runs,
            "responses-c8",
            lambda c, b: (
                c.proxy_cpu_ms / b.proxy_cpu_ms if c.proxy_cpu_ms and b.proxy_cpu_ms else None
            ),
        ),
        "{:.2f}",
        "-",
        None,
    )

    def stream(target: str, f: Callable[[Run], float | None]) -> list[float]:
        vals = (f(r) for r in runs if r.case == "stream-c8" and r.target == target)
        return [v for v in vals if v is not None]

    add(
        "stream c=8  upstream gap p99, as sent (ms)",
        stream("C", lambda r: r.up_gap_p99_ms),
        "{:.2f}",
        f"(asked for {STREAM_GAP_MS:.0f})",
        None,
    )

    def over_upstream(r: Run) -> float | None:
        return (r.gap_p99_ms - r.up_gap_p99_ms) if r.gap_p99_ms and r.up_gap_p99_ms else None

    # the target is C's; A's and B's show where no proxy and bare mitmproxy land on this box
    for target in "ABC":
        add(
            f"stream c=8  {target} gap p99 - upstream's (ms)",
            stream(target, over_upstream),
            "{:+.2f}",
            f"≤ {GAP_SLACK_MS:.1f}" if target == "C" else "-",
            (lambda v: v <= GAP_SLACK_MS) if target == "C" else None,
        )
    for target in "ABC":
        add(
            f"stream c=8  {target} per-event added gap p99 (ms)",
            stream(target, lambda r: r.added_gap_p99_ms),
            "{:+.2f}",
            "-",
            None,
        )
    for target, what in (("A", "A gap p99, no proxy"), ("B", "B gap p99"), ("C", "C gap p99")):
        add(f"stream c=8  {what} (ms)", stream(target, lambda r: r.gap_p99_ms), "{:.2f}", "-", None)
    if memory:
        by_n = dict(memory)
        last_n, last = memory[-1]
        half = min(by_n, key=lambda k: abs(k - last_n / 2))
        growth = (last - by_n[half]) / by_n[half]
        out.append(
            Verdict(
                f"memory      RSS after {last_n:,} requests",
                f"{last:.0f} MB",
                f"≤ {RSS_LIMIT_MB:.0f} MB",
                last <= RSS_LIMIT_MB,
            )
        )
        out.append(
            Verdict(
                f"memory      RSS {half:,} -> {last_n:,}",
                f"{by_n[half]:.0f} -> {last:.0f} MB ({growth:+.1%})",
                f"±{RSS_FLAT:.0%}",
                abs(growth) <= RSS_FLAT,
            )
        )
    return out


def print_verdicts(vs: list[Verdict]) -> None:
    print("\nC (orchestrator) against B (bare mitmdump), paired per repeat — median [min..max]")
    rows = [
        [v.what, v.measured, v.target, "-" if v.ok is None else ("PASS" if v.ok else "FAIL")]
        for v in vs
    ]
    print_grid(["measure", "measured", "target", "result"], rows, left=1)


def ledger_rows(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


# --------------------------------------------------------------------------- main


def proxy_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env[KEY_ENV] = "sk-bench-provider-key"
    return env


def start_orchestrator(workdir: Path, upstream: Reachable, name: str, db: Path) -> Proxy:
    """`orchestrator run` over the whole catalog of `db`, every provider at the fake upstream."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = write_config(
        workdir,
        base_url=lambda _: upstream.base_url,
        intercept=[upstream.authority],
        db=db,
        local=True,
    )
    cmd = [
        *(str(BIN / "orchestrator"), "run", "-c", str(cfg)),
        *("--port", "0", "--confdir", str(workdir / "certs")),
    ]
    proxy = Proxy(name, cmd, workdir, proxy_env()).start("Local AI Orchestrator")
    m = re.search(r"(\d+) candidates", proxy.log())
    candidates = int(m.group(1)) if m else 0
    if candidates < MIN_CATALOG:
        proxy.stop()
        raise CatalogTooSmall(
            f"the orchestrator loaded {candidates} candidates (< {MIN_CATALOG:,}) from {db}; "
            f"rebuild the DB (`make bundle`) or pass --db PATH. Its log:\n{proxy.log()}"
        )
    proxy.candidates = candidates
    return proxy


def start_mitmdump(workdir: Path) -> Proxy:
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "bare_stream.py"
    script.write_text(BARE_STREAM_ADDON)
    cmd = [
        str(BIN / "mitmdump"),
        "--mode",
        "regular",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--set",
        "flow_detail=0",
        "--set",
        f"confdir={workdir / 'certs'}",
        "-s",
        str(script),
    ]
    return Proxy("mitmdump", cmd, workdir, proxy_env()).start("listening at")


def measure(
    bench: Bench, cases: Sequence[Case], targets: str, repeats: int, base: int
) -> list[Run]:
    """Interleaved: for each repeat, for each case, A B C back to back."""
    runs: list[Run] = []
    for rep in range(repeats):
        for case in cases:
            bench.configure_for(case)
            for t in targets:
                r = bench.run(case, t, case.requests(base), rep)
                runs.append(r)
                flag = "" if r.consistent else (
                    f"  MISMATCH upstream saw {r.upstream_seen}, 200s {r.ok}, "
                    f"routed {r.routed} {r.errors}"
                )  # fmt: skip
                print(
                    f"  repeat {rep + 1} {case.label:<13} {t} {r.rps:8.1f} req/s  "
                    f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms{flag}",
                    flush=True,
                )
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = (__doc__ or "").strip().splitlines()[0]
    p = argparse.ArgumentParser(prog="bench_proxy.py", description=doc)
    p.add_argument(
        "--requests", type=int, default=1000,
        help="requests per run at c=32 0 ms; the other cases scale from it (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument(
        "--quick", action="store_true",
        help="tiny configuration for tests: --requests 64 --repeats 1, no memory phase",
    )  # fmt: skip
    p.add_argument(
        "--cases", default=",".join(c.key for c in CASES),
        help="comma-separated subset of %(default)s",
    )  # fmt: skip
    p.add_argument(
        "--targets", default="ABC", help="subset of ABC (A direct, B mitmdump, C orchestrator)"
    )
    p.add_argument(
        "--memory", type=int, default=10_000,
        help="requests in the memory phase on a fresh orchestrator (0 = skip; default %(default)s)",
    )  # fmt: skip
    p.add_argument("--db", default=str(BUNDLED_DB), help="benchmark DB (default: the bundled one)")
    p.add_argument("--json", metavar="FILE", help="also write every run and the verdicts as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.repeats, args.memory = 64, 1, 0
    known = {c.key for c in CASES}
    args.case_list = [c for c in CASES if c.key in args.cases.split(",")]
    if unknown := set(args.cases.split(",")) - known:
        p.error(f"unknown case(s) {', '.join(sorted(unknown))}; use some of {', '.join(known)}")
    if not args.targets or set(args.targets) - set(TARGETS):
        p.error("--targets must be a subset of ABC")
    args.targets = "".join(t for t in "ABC" if t in args.targets)
    if "C" not in args.targets:
        args.memory = 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases: list[Case] = args.case_list
    targets: str = args.targets
    db = Path(args.db)
    started = time.monotonic()
    memory: list[tuple[int, float]] | None = None
    rss_after: float | None = None
    ledgers: dict[str, Path] = {}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        work = Path(tmp)
        upstream = Upstream().start()
        proxies: dict[str, Proxy] = {}
        try:
            if "B" in targets:
                proxies["B"] = start_mitmdump(work / "mitmdump")
            if "C" in targets:
                proxies["C"] = start_orchestrator(work / "C", upstream, "orchestrator", db)
                ledgers["C"] = work / "C" / "data" / "ledger.db"
            bench = Bench(upstream, proxies)
            print(
                f"bench_proxy: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f} at start), "
                f"python {sys.version.split()[0]}; upstream "
                f"{upstream.base_url} (pid {upstream.pid}); "
                + ", ".join(f"{t} {TARGETS[t]} pid {px.pid}" for t, px in proxies.items())
                + (f"; C catalog {proxies['C'].candidates:,} offerings" if "C" in proxies else "")
            )
            print(
                "cases: "
                + ", ".join(f"{c.label} ({c.requests(args.requests)} req)" for c in cases)
                + f"; {args.repeats} repeats, interleaved {' '.join(targets)} per case"
            )
            runs = measure(bench, cases, targets, args.repeats, args.requests)
            if "C" in proxies:
                rss_after = rss_mb(proxies["C"].pid)
            if args.memory:
                proxies.pop("C").stop()
                fresh = proxies["memory"] = start_orchestrator(
                    work / "memory", upstream, "orchestrator-memory", db
                )
                ledgers["memory"] = work / "memory" / "data" / "ledger.db"
                print(
                    f"memory phase: a fresh orchestrator (pid {fresh.pid}), {args.memory:,} "
                    "requests at c=32, 1 in 10 streamed",
                    flush=True,
                )
                memory = bench.memory(fresh, args.memory, max(1, args.memory // 4), 32)
        except CatalogTooSmall as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            for px in proxies.values():
                px.stop()
            upstream.stop()
        ok = report(runs, cases, targets, memory, rss_after, bench, ledgers)
        print(f"elapsed {time.monotonic() - started:.0f} s")
    if args.json:
        out = {
            "runs": [asdict(r) for r in runs],
            "verdicts": [asdict(v) for v in verdicts(runs, memory)],
            "memory": memory,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if ok else 1


def report(
    runs: list[Run],
    cases: Sequence[Case],
    targets: str,
    memory: list[tuple[int, float]] | None,
    rss_after: float | None,
    bench: Bench,
    ledgers: dict[str, Path],
) -> bool:
    """Print the tables and checks; False when a run or the ledger did not add up."""
    print_tables(runs, cases, targets)
    if vs := verdicts(runs, memory):
        print_verdicts(vs)
    print()
    if rss_after is not None:
        print(f"orchestrator RSS after the interleaved runs: {rss_after:.0f} MB")
    if memory:
        print(
            "orchestrator RSS by requests served (memory phase): "
            + ", ".join(f"{n:,}: {mb:.0f} MB" for n, mb in memory)
        )
    ok = not bench.problems
    for problem in bench.problems:
        print(f"MISMATCH {problem}")
    for name, path in ledgers.items():
        rows, sent = ledger_rows(path), bench.sent_via[name]
        ok = ok and rows == sent
        print(
            f"ledger rows written ({'C runs' if name == 'C' else name + ' phase'}): {rows:,} of "
            f"{sent:,} requests sent through it, warm-ups included{'' if rows == sent else '  MISMATCH'}"
        )
    bad = [r for r in runs if not r.consistent]
    print(
        f"upstream check: {len(runs) - len(bad)}/{len(runs)} runs where the upstream saw exactly "
        f"the requests sent and all were answered 200{' (and routed, for C)' if 'C' in targets else ''}"
    )
    return ok and not bad


if __name__ == "__main__":
    raise SystemExit(main())
