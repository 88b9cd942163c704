"""Sizing for scale-out: what a routed call costs with the shared stores, side by side.

    .venv/bin/python scripts/bench_scaleout.py [--requests N] [--repeats N] [--quick] [--json FILE]

Three deployments of `orchestrator run` in front of one fast loopback upstream
(tests/fakeupstream.py in a child process), measured interleaved in one run:

    S   1 replica, embedded stores: SQLite ledger, in-process breakers/budgets
    P   1 replica, shared stores:   PostgreSQL ledger + Redis state
    F   2 replicas sharing one PostgreSQL and one Redis, the load split evenly

PostgreSQL and Redis are private servers started from the Debian binaries (as the tests
do). Each run routes every call over the full bundled catalog under a policy with a
budget (so every call reserves and settles against the budget store) and prints req/s,
latency, and CPU milliseconds per request of each process kind: the proxy replicas,
PostgreSQL (postmaster + backends) and Redis. CPU per request is the sizing number:
cores needed ≈ requests/s × CPU ms / 1000. Every run checks that the upstream saw exactly
the calls sent, and at the end every ledger holds one row per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for p in (str(REPO), str(SCRIPTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

import psycopg  # noqa: E402
import yaml  # noqa: E402
from bench_proxy import (  # noqa: E402
    BIN,
    CLK_TCK,
    PROMPT_BYTES,
    CatalogTooSmall,
    Load,
    Proxy,
    Upstream,
    cpu_seconds,
    drive,
    ledger_rows,
    med_range,
    new_session,
    proxy_env,
)
from bench_routing import (  # noqa: E402
    BUNDLED_DB,
    MIN_CATALOG,
    chat_body,
    percentile,
    print_grid,
    prompt_text,
    write_config,
)

from tests.services import PgServer, RedisServer  # noqa: E402

DEPLOYMENTS = {"S": "1 replica, SQLite + in-process", "P": "1 replica, PostgreSQL + Redis",
               "F": "2 replicas, PostgreSQL + Redis"}  # fmt: skip
BUDGET = {"name": "bench-budget", "match": {"client": "127.0.0.0/8"},
          "profile": "balanced",
          "budget": {"usd": 1_000_000, "per": "day", "scope": "policy", "on_exceed": "block"}}  # fmt: skip


@dataclass(frozen=True)
class Case:
    key: str
    concurrency: int
    share: float

    def requests(self, base: int) -> int:
        return max(2 * self.concurrency, round(base * self.share))


CASES = (Case("c32", 32, 1.0), Case("c4", 4, 0.25))


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process, its reaped children and its live children (PostgreSQL backends)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2 :].split()
    total = sum(int(x) for x in f[11:15]) / CLK_TCK  # utime stime cutime cstime
    for child in Path("/proc").glob("[0-9]*"):
        try:
            s = (child / "stat").read_text()
        except OSError:
            continue
        c = s[s.rindex(")") + 2 :].split()
        if int(c[1]) == pid:
            total += (int(c[11]) + int(c[12])) / CLK_TCK
    return total


@dataclass
class Run:
    case: str
    deployment: str
    repeat: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_ms: float  # all replicas, per request
    pg_cpu_ms: float
    redis_cpu_ms: float
    upstream_seen: int
    ok: int

    @property
    def consistent(self) -> bool:
        return self.upstream_seen == self.requests == self.ok


class Bench:
    def __init__(self, upstream: Upstream, fleets: dict[str, list[Proxy]], pg: PgServer,
                 redis: RedisServer) -> None:  # fmt: skip
        self.upstream, self.fleets, self.pg, self.redis = upstream, fleets, pg, redis
        self.body = chat_body(prompt_text(PROMPT_BYTES))
        self.sent: dict[str, int] = dict.fromkeys(fleets, 0)

    def cpu(self) -> tuple[dict[str, float], float, float]:
        assert self.pg.proc is not None and self.redis.proc is not None
        proxies = {k: sum(cpu_seconds(p.pid) for p in f) for k, f in self.fleets.items()}
        return proxies, tree_cpu_seconds(self.pg.proc.pid), cpu_seconds(self.redis.proc.pid)

    async def _drive(self, key: str, n: int, concurrency: int) -> Load:
        fleet = self.fleets[key]
        url = self.upstream.base_url + "/chat/completions"
        share = concurrency // len(fleet)
        sessions = [new_session(share) for _ in fleet]
        try:
            loads = await asyncio.gather(*(
                drive(s, url, n // len(fleet), share, p.url, lambda _: (self.body, False))
                for s, p in zip(sessions, fleet, strict=True)
            ))  # fmt: skip
        finally:
            for s in sessions:
                await s.close()
        out = Load()
        for ld in loads:
            out.latency_ms += ld.latency_ms
            out.status.update(ld.status)
            out.sent += ld.sent
            out.errors += ld.errors
        return out

    def run(self, case: Case, key: str, n: int, repeat: int) -> Run:
        asyncio.run(self._drive(key, 4 * case.concurrency, case.concurrency))  # warm-up
        self.upstream.clear()
        cpu0 = self.cpu()
        t0 = time.perf_counter()
        load = asyncio.run(self._drive(key, n, case.concurrency))
        wall = time.perf_counter() - t0
        cpu1 = self.cpu()
        seen = self.upstream.seen()
        self.upstream.clear()
        self.sent[key] += 4 * case.concurrency + load.sent

        def per(a: float, b: float) -> float:
            return (b - a) * 1000 / max(1, load.sent)

        return Run(case.key, key, repeat, load.sent, load.sent / wall,
                   percentile(load.latency_ms, 0.5), percentile(load.latency_ms, 0.99),
                   per(cpu0[0][key], cpu1[0][key]), per(cpu0[1], cpu1[1]), per(cpu0[2], cpu1[2]),
                   seen, load.status[200])  # fmt: skip


def start_replica(work: Path, name: str, upstream: Upstream, ledger: str | None,
                  state: str | None) -> Proxy:  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = write_config(work, base_url=lambda _: upstream.base_url,
                            intercept=[upstream.authority], db=BUNDLED_DB, local=True)  # fmt: skip
    cfg = yaml.safe_load(cfg_path.read_text())
    if ledger is not None:
        cfg["data"]["ledger"] = ledger
    if state is not None:
        cfg["state"] = state
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    pol = work / "rules" / "policies.yaml"
    rules = yaml.safe_load(pol.read_text()) or {}
    rules["policies"] = [BUDGET, *(rules.get("policies") or [])]
    pol.write_text(yaml.safe_dump(rules, sort_keys=False))
    cmd = [str(BIN / "orchestrator"), "run", "-c", str(cfg_path), "--port", "0",
           "--confdir", str(work / "certs")]  # fmt: skip
    proxy = Proxy(name, cmd, work, proxy_env()).start("Local AI Orchestrator")
    m = re.search(r"(\d+) candidates", proxy.log())
    if m is None or int(m.group(1)) < MIN_CATALOG:
        proxy.stop()
        raise CatalogTooSmall(f"{name} loaded too few candidates (< {MIN_CATALOG:,}):\n"
                              f"{proxy.log()[-2000:]}")  # fmt: skip
    return proxy


def pg_count(url: str) -> int:
    with psycopg.connect(url) as c:
        row = c.execute("SELECT COUNT(*) FROM requests").fetchone()
        return int(row[0]) if row else 0


def wait_count(count: Callable[[], int], want: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = count()
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = (__doc__ or "").strip().splitlines()[0]
    p = argparse.ArgumentParser(prog="bench_scaleout.py", description=doc)
    p.add_argument("--requests", type=int, default=2000, help="requests per c=32 run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a tiny run (what the test suite does)")
    p.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.repeats = 128, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    runs: list[Run] = []
    pg, redis = PgServer(), RedisServer()
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = Path(tmp)
        upstream = Upstream().start()
        fleets: dict[str, list[Proxy]] = {}
        try:
            pg.init()
            pg.start()
            redis.start()
            pg_p, pg_f = pg.new_database(), pg.new_database()
            rd_p, rd_f = redis.new_database(), redis.new_database()
            fleets["S"] = [start_replica(work / "S", "S", upstream, None, None)]
            fleets["P"] = [start_replica(work / "P", "P", upstream, pg_p, rd_p)]
            fleets["F"] = [start_replica(work / f"F{i}", f"F{i}", upstream, pg_f, rd_f)
                           for i in range(2)]  # fmt: skip
            bench = Bench(upstream, fleets, pg, redis)
            print(f"bench_scaleout: {os.cpu_count()} CPUs (load average "
                  f"{os.getloadavg()[0]:.2f}), python {sys.version.split()[0]}; "
                  + "; ".join(f"{k} = {v}" for k, v in DEPLOYMENTS.items()))  # fmt: skip
            print("cases: " + ", ".join(f"c={c.concurrency} 0 ms ({c.requests(args.requests)} "
                                         "req)" for c in CASES)
                  + f"; {args.repeats} repeats, interleaved S P F; every call under a budget")  # fmt: skip
            for rep in range(args.repeats):
                for case in CASES:
                    for key in fleets:
                        r = bench.run(case, key, case.requests(args.requests), rep)
                        runs.append(r)
                        print(f"  repeat {rep + 1} c={case.concurrency:<3} {key} {r.rps:7.1f} req/s"
                              f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms"
                              + ("" if r.consistent else
                                 f"  MISMATCH upstream saw {r.upstream_seen}, 200s {r.ok}"),
                              flush=True)  # fmt: skip
            ledgers = {
                "S": wait_count(lambda: ledger_rows(work / "S" / "data" / "ledger.db"),
                                bench.sent["S"]),
                "P": wait_count(lambda: pg_count(pg_p), bench.sent["P"]),
                "F": wait_count(lambda: pg_count(pg_f), bench.sent["F"]),
            }  # fmt: skip
        except CatalogTooSmall as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            for fleet in fleets.values():
                for px in fleet:
                    px.stop()
            upstream.stop()
            redis.close()
            pg.close()
    ok = report(runs, ledgers, bench.sent)
    print(f"elapsed {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [asdict(r) for r in runs],
                                               "ledgers": ledgers}, indent=2))  # fmt: skip
    return 0 if ok else 1


def report(runs: list[Run], ledgers: dict[str, int], sent: dict[str, int]) -> bool:
    header = ["case", "deployment", "req/s", "p50 ms", "p99 ms", "proxy CPU ms/req",
              "PostgreSQL CPU ms/req", "Redis CPU ms/req"]  # fmt: skip
    rows = []
    for case in CASES:
        for key, label in DEPLOYMENTS.items():
            rs = [r for r in runs if r.case == case.key and r.deployment == key]
            if not rs:
                continue
            rows.append([f"c={case.concurrency} 0 ms", f"{key} {label}",
                         med_range((r.rps for r in rs), "{:.0f}"),
                         med_range(r.p50_ms for r in rs), med_range(r.p99_ms for r in rs),
                         med_range(r.proxy_cpu_ms for r in rs),
                         med_range(r.pg_cpu_ms for r in rs) if key != "S" else "-",
                         med_range(r.redis_cpu_ms for r in rs) if key != "S" else "-"])  # fmt: skip
    print()
    print("medians [min–max] over the repeats; CPU per request summed over every process of "
          "that kind (F: both replicas)")  # fmt: skip
    print_grid(header, rows)
    print()
    ok = True
    for key, rows_written in ledgers.items():
        good = rows_written == sent[key]
        ok = ok and good
        print(f"ledger rows ({key}): {rows_written:,} of {sent[key]:,} requests sent, warm-ups "
              f"included{'' if good else '  MISMATCH'}")  # fmt: skip
    bad = [r for r in runs if not r.consistent]
    print(f"upstream check: {len(runs) - len(bad)}/{len(runs)} runs where the upstream saw "
          "exactly the requests sent and all were answered 200")  # fmt: skip
    return ok and not bad


if __name__ == "__main__":
    raise SystemExit(main())
