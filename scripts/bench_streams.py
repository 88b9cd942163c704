"""Long streams at scale, side by side: direct vs stock mitmdump vs `orchestrator run`.

    .venv/bin/python scripts/bench_streams.py [--steps 16,64,256,512] [--repeats N]
                                              [--events 200] [--gap-ms 20] [--quick] [--json FILE]

Every stream is an OpenAI chat-completions stream of `--events` content events `--gap-ms`
apart (the first after one gap), each stamped by the upstream with the time it was written
(scripts/_streamload.py: a loopback upstream and a client on bare asyncio protocols, each in
its own processes). Concurrency is stepped; at each step N streams are opened evenly over a
ramp and run to their end, through each of

    A  direct       the client calls the upstream
    B  mitmdump     stock `mitmdump` 12.2.3, regular mode, flow_detail=0, an inline script that
                    streams SSE (flow.response.stream = True for text/event-stream)
    C  orchestrator `orchestrator run` routing every stream over the whole benchmark catalog
                    (scripts/bench_proxy.py's setup), ledger on

interleaved in one run (for each repeat, for each step: A B C). Per step and target:
sustained events/s, the per-event gap the path added over the one the upstream really made
(p50/p99), the per-event delay (arrival minus send stamp, p99), time to first event, proxy
CPU per event (/proc/PID/stat over the step), proxy RSS per open stream (RSS with the step's
streams open minus RSS before the first step, over N), errors (streams that did not arrive
whole). "Stream capacity per core" is the highest step a target keeps the added-gap p99 at or
under 5 ms with no error; the proxy is pinned to CPU 0 and the load generators to the other
CPUs (--no-pin to disable), so a proxy's capacity is that of one core. The load generators'
own CPU use is printed: when it nears 100% of their CPUs, the step measured them, not the
proxy (A shows what the generators add by themselves).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for p in (str(REPO), str(SCRIPTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from _streamload import ClientJob, StreamPlan, StreamResult, client_main, upstream_main  # noqa: E402
from bench_proxy import (  # noqa: E402
    TARGETS,
    CatalogTooSmall,
    Proxy,
    cpu_seconds,
    ledger_rows,
    rss_mb,
    start_mitmdump,
    start_orchestrator,
)
from bench_routing import BUNDLED_DB, chat_body, percentile, print_grid, prompt_text  # noqa: E402

GAP_BUDGET_MS = 5.0  # added per-event gap p99 a step must keep to count for capacity
CPU_TARGET = 0.8  # C/B proxy CPU per event
TTFE_SLACK_MS = 1.0  # C-B added time to first event
PROMPT_BYTES = 1900
RAMP_S_PER_STREAM = 0.008
ROUNDS = 2


@dataclass(frozen=True)
class Step:
    streams: int
    target: str
    repeat: int
    sent: int
    ok: int
    errors: list[str]
    events: int
    wall_s: float
    events_per_s: float
    added_gap_p50_ms: float
    added_gap_p99_ms: float
    delay_p99_ms: float
    ttfe_p50_ms: float
    ttfe_p99_ms: float
    proxy_cpu_us_per_event: float | None
    proxy_cpu_share: float | None  # of one core, over the step
    rss_per_stream_kb: float | None
    load_cpu_share: float  # load generators (client + upstream), of the CPUs they have
    upstream_events: int


class UpstreamProc:
    """_streamload's upstream in a child process."""

    def __init__(self, cpus: set[int] | None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=upstream_main, args=(child, cpus), daemon=True)
        self.port = 0

    def start(self) -> UpstreamProc:
        self._proc.start()
        if not self._conn.poll(30):
            raise TimeoutError("upstream did not start within 30 s")
        self.port = self._conn.recv()
        return self

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    @property
    def base_url(self) -> str:  # what start_orchestrator points every provider at
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, cmd: str, arg: Any = None) -> Any:
        self._conn.send((cmd, arg))
        return self._conn.recv()

    def stop(self) -> None:
        if self._proc.is_alive():
            self.call("stop")
            self._proc.join(timeout=10)


class Clients:
    """`n` client processes, each running its share of a step's streams."""

    def __init__(self, n: int, cpus: set[int] | None) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(n):
            mine, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child, cpus), daemon=True)
            proc.start()
            self.conns.append(mine)
            self.procs.append(proc)

    def run(self, jobs: list[ClientJob]) -> list[StreamResult]:
        for conn, job in zip(self.conns, jobs, strict=False):
            conn.send(job)
        return [conn.recv() for conn, _ in zip(self.conns, jobs, strict=False)]

    def stop(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)


class Bench:
    def __init__(self, args: argparse.Namespace, upstream: UpstreamProc, clients: Clients,
                 proxies: dict[str, Proxy]) -> None:  # fmt: skip
        self.args, self.upstream, self.clients, self.proxies = args, upstream, clients, proxies
        self.body = chat_body(prompt_text(PROMPT_BYTES), stream=True)
        self.idle_rss = {t: rss_mb(px.pid) for t, px in proxies.items()}
        self.sent_via: dict[str, int] = {t: 0 for t in proxies}

    def jobs(self, target: str, n: int, ramp_s: float, start_at: float, rounds: int,
             window: tuple[float, float]) -> list[ClientJob]:  # fmt: skip
        proxy = self.proxies.get(target)
        host, port = ("127.0.0.1", proxy.port) if proxy else ("127.0.0.1", self.upstream.port)
        path = "/v1/chat/completions"
        url = f"http://{self.upstream.authority}{path}" if proxy else path
        k = len(self.clients.conns)
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        args = self.args
        timeout = args.events * args.gap_ms / 1000 * 3 + 30
        out, offset = [], 0
        for share in shares:
            if share:
                out.append(ClientJob(host, port, url, self.upstream.authority, self.body, share,
                                     offset, n, ramp_s, args.events, start_at, timeout,
                                     rounds, window))  # fmt: skip
            offset += share
        return out

    def step(self, n: int, target: str, repeat: int) -> Step:
        args = self.args
        proxy = self.proxies.get(target)
        # streams open at most one per RAMP_S_PER_STREAM (new flows cost a proxy far more
        # than events: a faster ramp measures connection setup, not streaming); each worker
        # then runs ROUNDS streams back to back, and only the span where all N are open counts
        stream_s = (args.events + 1) * args.gap_ms / 1000
        ramp = min(stream_s, n * RAMP_S_PER_STREAM)
        rounds = ROUNDS
        duration = ramp + rounds * stream_s
        self.upstream.call("stats")  # reset
        load_pids = [self.upstream.pid, *(p.pid for p in self.clients.procs)]
        cpu0 = cpu_seconds(proxy.pid) if proxy else None
        load0 = sum(cpu_seconds(pid) for pid in load_pids)
        start_at = time.perf_counter() + 0.1
        window = (start_at + ramp, start_at + rounds * stream_s)
        jobs = self.jobs(target, n, ramp, start_at, rounds, window)
        for conn, job in zip(self.clients.conns, jobs, strict=False):
            conn.send(job)
        # the RSS with every stream open: half way between the end of the ramp and the end
        time.sleep(max(0.0, start_at + ramp + (duration - ramp) / 2 - time.perf_counter()))
        rss_open = rss_mb(proxy.pid) if proxy else None
        results: list[StreamResult] = [
            conn.recv() for conn, _ in zip(self.clients.conns, jobs, strict=False)
        ]
        wall = max(r.last_end for r in results) - start_at
        cpu1 = cpu_seconds(proxy.pid) if proxy else None
        load1 = sum(cpu_seconds(pid) for pid in load_pids)
        streams, up_events, _ = self.upstream.call("stats")
        if proxy is not None:
            self.sent_via[target] += streams
        events = sum(r.events for r in results)
        gaps = [g for r in results for g in r.added_gap_ms]
        delays = [d for r in results for d in r.delay_ms]
        ttfe = [t for r in results for t in r.ttfe_ms]
        errors = [e for r in results for e in r.errors]
        proxy_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        load_cpus = len(self.args.load_cpus) if self.args.load_cpus else os.cpu_count() or 1
        rss_per = None
        if proxy is not None and rss_open is not None:
            rss_per = (rss_open - self.idle_rss[target]) * 1024 / n
        return Step(
            streams=n, target=target, repeat=repeat, sent=n * rounds,
            ok=sum(r.ok for r in results), errors=errors, events=events, wall_s=wall,
            events_per_s=events / wall if wall > 0 else 0.0,
            added_gap_p50_ms=percentile(gaps, 0.5), added_gap_p99_ms=percentile(gaps, 0.99),
            delay_p99_ms=percentile(delays, 0.99),
            ttfe_p50_ms=percentile(ttfe, 0.5), ttfe_p99_ms=percentile(ttfe, 0.99),
            proxy_cpu_us_per_event=None if proxy_cpu is None else proxy_cpu * 1e6 / max(1, events),
            proxy_cpu_share=None if proxy_cpu is None else proxy_cpu / wall,
            rss_per_stream_kb=rss_per,
            load_cpu_share=(load1 - load0) / wall / load_cpus,
            upstream_events=up_events,
        )  # fmt: skip


# --------------------------------------------------------------------------- report


def _med(vals: Sequence[float | None], fmt: str = "{:.2f}") -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "-"
    m = fmt.format(statistics.median(v))
    return m if len(v) == 1 else f"{m} [{fmt.format(min(v))}..{fmt.format(max(v))}]"


def median(vals: Sequence[float | None]) -> float:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else float("nan")


def capacity(steps: list[Step], target: str, sizes: list[int]) -> int:
    """The highest step whose added-gap p99 (median over repeats) is within budget with no
    error, counting up from the smallest (0: not even the smallest)."""
    best = 0
    for n in sizes:
        rs = [s for s in steps if s.target == target and s.streams == n]
        if not rs or any(s.errors for s in rs):
            break
        if median([s.added_gap_p99_ms for s in rs]) > GAP_BUDGET_MS:
            break
        best = n
    return best


def report(steps: list[Step], sizes: list[int], targets: str, args: argparse.Namespace) -> bool:
    print(f"\nstreams of {args.events} events {args.gap_ms:g} ms apart — median [min..max] "
          f"over {args.repeats} repeat(s)")  # fmt: skip
    headers = ["streams", "target", "ok/sent", "events/s", "added gap p50", "added gap p99",
               "delay p99", "TTFE p50", "TTFE p99", "proxy CPU µs/event", "proxy core %",
               "RSS KB/stream", "load CPU %"]  # fmt: skip
    rows = []
    for n in sizes:
        for t in targets:
            rs = [s for s in steps if s.streams == n and s.target == t]
            if not rs:
                continue
            rows.append([
                str(n), f"{t} {TARGETS[t]}", f"{sum(s.ok for s in rs)}/{sum(s.sent for s in rs)}",
                _med([s.events_per_s for s in rs], "{:,.0f}"),
                _med([s.added_gap_p50_ms for s in rs], "{:+.2f}"),
                _med([s.added_gap_p99_ms for s in rs], "{:+.2f}"),
                _med([s.delay_p99_ms for s in rs]),
                _med([s.ttfe_p50_ms for s in rs]), _med([s.ttfe_p99_ms for s in rs]),
                _med([s.proxy_cpu_us_per_event for s in rs], "{:.0f}"),
                _med([None if s.proxy_cpu_share is None else s.proxy_cpu_share * 100 for s in rs], "{:.0f}"),
                _med([s.rss_per_stream_kb for s in rs], "{:.0f}"),
                _med([s.load_cpu_share * 100 for s in rs], "{:.0f}"),
            ])  # fmt: skip
    print_grid(headers, rows, left=2)
    print("(measured while all N streams are open, after a ramp of one new stream per 8 ms and with each of N workers running 2 streams back to back; added gap: per event, the client's gap minus the gap in the upstream's send stamps; "
          "delay: arrival minus send stamp; TTFE: request written to first event, the upstream "
          f"sends it after {args.gap_ms:g} ms; proxy core %: proxy CPU over the step's wall time; "
          "load CPU %: client + upstream processes over the CPUs they were given)")  # fmt: skip
    print(f"\nstream capacity per core (highest step with added gap p99 ≤ {GAP_BUDGET_MS:g} ms, "
          "no error):")  # fmt: skip
    caps = {t: capacity(steps, t, sizes) for t in targets}
    for t in targets:
        print(f"  {t} {TARGETS[t]:<13}{caps[t]}")
    ok = True
    if "B" in targets and "C" in targets:
        print("\nC (orchestrator) against B (stock mitmdump), per step — median over repeats")
        vrows = []
        for n in sizes:
            pairs = [(c, b) for c in steps for b in steps
                     if c.target == "C" and b.target == "B" and c.streams == b.streams == n
                     and c.repeat == b.repeat]  # fmt: skip
            cpu = [c.proxy_cpu_us_per_event / b.proxy_cpu_us_per_event for c, b in pairs
                   if c.proxy_cpu_us_per_event and b.proxy_cpu_us_per_event]  # fmt: skip
            ttfe = [c.ttfe_p50_ms - b.ttfe_p50_ms for c, b in pairs]
            if cpu:
                vrows.append([f"{n} streams  proxy CPU/event C/B", _med(cpu), f"≤ {CPU_TARGET}",
                              "PASS" if median(cpu) <= CPU_TARGET else "FAIL"])  # fmt: skip
            if ttfe:
                vrows.append([f"{n} streams  TTFE p50 C-B (ms)", _med(ttfe, "{:+.2f}"),
                              f"≤ +{TTFE_SLACK_MS:g}",
                              "PASS" if median(ttfe) <= TTFE_SLACK_MS else "FAIL"])  # fmt: skip
        vrows.append(["stream capacity per core C vs B", f"{caps['C']} vs {caps['B']}", "C ≥ B",
                      "PASS" if caps["C"] >= caps["B"] else "FAIL"])  # fmt: skip
        print_grid(["measure", "measured", "target", "result"], vrows, left=1)
    bad = [s for s in steps if s.errors]
    for s in bad:
        errs = [e for e in s.errors if e][:3]
        print(f"ERRORS {s.target} {s.streams} streams repeat {s.repeat + 1}: "
              f"{len(s.errors)} stream(s) not whole, e.g. {errs}")  # fmt: skip
    short = [s for s in steps if s.upstream_events < s.events]
    for s in short:
        ok = False
        print(f"MISMATCH {s.target} {s.streams}: the client counted {s.events} events, the "
              f"upstream sent {s.upstream_events}")  # fmt: skip
    if args.quick:
        ok = ok and not bad  # a tiny run must be clean; a big one may show where errors start
    return ok


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = (__doc__ or "").strip().splitlines()[0]
    p = argparse.ArgumentParser(prog="bench_streams.py", description=doc)
    p.add_argument("--steps", default="16,64,256,512", help="concurrent streams per step")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default 2)")
    p.add_argument("--events", type=int, default=200, help="content events per stream")
    p.add_argument("--gap-ms", type=float, default=20.0, help="upstream gap between events")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--targets", default="ABC", help="subset of ABC")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxy to CPU 0")
    p.add_argument("--quick", action="store_true",
                   help="tiny configuration for tests: --steps 2,4 --events 20 --gap-ms 5 --repeats 1")  # fmt: skip
    p.add_argument("--db", default=str(BUNDLED_DB), help="benchmark DB (default: the bundled one)")
    p.add_argument("--json", metavar="FILE", help="also write every step as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.events, args.gap_ms, args.repeats, args.clients = "2,4", 20, 5.0, 1, 1
    try:
        args.sizes = sorted({int(x) for x in args.steps.split(",") if x.strip()})
    except ValueError:
        p.error(f"--steps must be comma-separated integers, got {args.steps!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--steps needs at least one step of 1 stream or more")
    if not args.targets or set(args.targets) - set(TARGETS):
        p.error("--targets must be a subset of ABC")
    args.targets = "".join(t for t in "ABC" if t in args.targets)
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    args.proxy_cpus = {cpus[0]} if pin else None
    args.load_cpus = set(cpus[1:]) if pin else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 8 * max(args.sizes) + 256  # the orchestrator holds 4 sockets per open stream
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    started = time.monotonic()
    steps: list[Step] = []
    ledger: Path | None = None
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        work = Path(tmp)
        upstream = UpstreamProc(args.load_cpus).start()
        upstream.call("plan", StreamPlan(args.events, args.gap_ms, args.gap_ms))
        clients = Clients(args.clients, args.load_cpus)
        proxies: dict[str, Proxy] = {}
        try:
            if "B" in args.targets:
                proxies["B"] = start_mitmdump(work / "mitmdump")
            if "C" in args.targets:
                proxies["C"] = start_orchestrator(
                    work / "C", upstream, "orchestrator", Path(args.db)
                )
                ledger = work / "C" / "data" / "ledger.db"
            for px in proxies.values():
                if args.proxy_cpus:
                    os.sched_setaffinity(px.pid, args.proxy_cpus)
            bench = Bench(args, upstream, clients, proxies)
            for t in proxies:  # warm up: a few streams each, then note the idle RSS
                bench.step(2, t, -1)  # (a short stream each, as in --quick)
            bench.idle_rss = {t: rss_mb(px.pid) for t, px in proxies.items()}
            pin = (f"proxies pinned to CPU {sorted(args.proxy_cpus)}, load generators to "
                   f"{sorted(args.load_cpus or ())}") if args.proxy_cpus else "no pinning"  # fmt: skip
            print(f"bench_streams: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f} "
                  f"at start), {pin}; upstream pid {upstream.pid}, {args.clients} client "
                  "process(es); " + ", ".join(f"{t} {TARGETS[t]} pid {px.pid}"
                                               for t, px in proxies.items()))  # fmt: skip
            print(f"steps {args.sizes} streams of {args.events} events {args.gap_ms:g} ms apart; "
                  f"{args.repeats} repeat(s), interleaved {' '.join(args.targets)} per step", flush=True)  # fmt: skip
            for rep in range(args.repeats):
                for n in args.sizes:
                    for t in args.targets:
                        s = bench.step(n, t, rep)
                        steps.append(s)
                        print(f"  repeat {rep + 1} {n:>4} streams {t}  {s.events_per_s:8,.0f} ev/s  "
                              f"added gap p99 {s.added_gap_p99_ms:+7.2f} ms  TTFE p50 "
                              f"{s.ttfe_p50_ms:6.2f} ms  errors {len(s.errors)}", flush=True)  # fmt: skip
            sent_c = bench.sent_via.get("C", 0)
        except CatalogTooSmall as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            for px in proxies.values():
                px.stop()
            clients.stop()
            upstream.stop()
        ok = report(steps, args.sizes, args.targets, args)
        if ledger is not None:
            rows = ledger_rows(ledger)
            print(f"ledger rows written (C): {rows:,} of {sent_c:,} streams sent through it, "
                  f"warm-up included{'' if rows == sent_c else '  MISMATCH'}")  # fmt: skip
            ok = ok and rows == sent_c
        print(f"elapsed {time.monotonic() - started:.0f} s")
    if args.json:
        caps = {t: capacity(steps, t, args.sizes) for t in args.targets}
        Path(args.json).write_text(json.dumps({"steps": [asdict(s) for s in steps],
                                               "capacity": caps}, indent=2))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
