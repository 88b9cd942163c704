"""OpenTelemetry export: the per-request cost of `telemetry:` on against off, side by side.

Three real `orchestrator run` processes on the same config: one without `telemetry:`
("off"), one exporting to a loopback OTLP/HTTP receiver (up, answering at once: "on") and
one exporting to a loopback port nobody listens on (the receiver is down: "down", every
send fails and is dropped), all in front of one loopback fake upstream. Each round sends a block of requests through each proxy in turn
(the order alternates between rounds, so both see the same machine), whole and streamed,
with one keep-alive HTTP client per proxy; it measures each request's latency and the
proxy process's CPU time (utime + stime of all its threads, from /proc/PID/stat: the
exporter thread's work is counted). Prints p50/p95 latency and CPU per request for each,
and the on/off and down/off ratios; no target is asserted (README → Performance). At the end, the
receiver must hold one request span and one attempt span per request sent to the
exporting proxy ("export check").

    .venv/bin/python scripts/bench_telemetry.py [--rounds 10] [--requests 100] [--quick]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.fakeupstream import FakeUpstream  # noqa: E402
from tests.otlpreceiver import OtlpReceiver  # noqa: E402
from tests.proxyproc import ProxyProcess  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bench_proxy import cpu_seconds  # noqa: E402  (utime + stime of all threads, /proc)

KEY = "sk-bench-provider-key"
MODEL = {"id": "m-fake", "provider": "fake", "input_per_mtok": 1, "output_per_mtok": 2,
         "quality": 1200}  # fmt: skip
RULES = {"profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1}}}},
         "models.yaml": {"models": [MODEL]}}  # fmt: skip
KINDS = ("whole", "streamed")
STATES = ("off", "on", "down")


def _closed_port_url() -> str:
    """An OTLP endpoint on a loopback port that was just free: the receiver is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _config(up: FakeUpstream, endpoint: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "mode": f"reverse:{up.base_url.removesuffix('/v1')}",
        "intercept": [f"127.0.0.1:{up.port}"],
        "rules": "rules/",
        "data": {"ledger": "data/ledger.db"},
        "providers": {
            "fake": {"base_url": up.base_url, "api_key_env": "ORQ_BENCH_KEY", "local": True}
        },
        "admin": {"enabled": False},
        "log_level": "info",
    }
    if endpoint is not None:
        cfg["telemetry"] = {"endpoint": endpoint, "export_interval_s": 1}
    return cfg


def _block(client: httpx.Client, pid: int, n: int, stream: bool) -> tuple[list[float], float]:
    """`n` requests: each one's milliseconds, and the proxy's CPU seconds for the block."""
    times = []
    cpu0 = cpu_seconds(pid)
    for i in range(n):
        body = {"model": "m-fake", "stream": stream,
                "messages": [{"role": "user", "content": f"bench {i}"}]}  # fmt: skip
        t0 = time.perf_counter()
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for _ in r.iter_bytes():
                pass
        times.append((time.perf_counter() - t0) * 1000)
    return times, cpu_seconds(pid) - cpu0


def _pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(rounds: int, n: int) -> dict[str, Any]:
    up = FakeUpstream("fake", events=20).start()
    receiver = OtlpReceiver().start()
    env = {"ORQ_BENCH_KEY": KEY}
    data: dict[str, dict[str, dict[str, Any]]] = {
        k: {s: {"ms": [], "cpu_s": 0.0, "n": 0} for s in STATES} for k in KINDS
    }
    with tempfile.TemporaryDirectory() as tmp:
        proxies = {
            "off": ProxyProcess(Path(tmp) / "off", _config(up, None), RULES, env),
            "on": ProxyProcess(Path(tmp) / "on", _config(up, receiver.url), RULES, env),
            "down": ProxyProcess(Path(tmp) / "down", _config(up, _closed_port_url()), RULES, env),
        }
        try:
            for p in proxies.values():
                p.start()
            clients = {s: httpx.Client(base_url=p.url, headers={"authorization": f"Bearer {KEY}"},
                                       timeout=30) for s, p in proxies.items()}  # fmt: skip
            for s, c in clients.items():  # warm-up: pools, caches, the first span batch
                for stream in (False, True):
                    _block(c, _pid(proxies[s]), 10, stream)
            for r in range(rounds):
                order = STATES[r % 3 :] + STATES[: r % 3]  # each state leads in turn
                for kind in KINDS:
                    for s in order:
                        ms, cpu = _block(clients[s], _pid(proxies[s]), n, kind == "streamed")
                        d = data[kind][s]
                        d["ms"].extend(ms)
                        d["cpu_s"] += cpu
                        d["n"] += n
            for c in clients.values():
                c.close()
        finally:
            for p in proxies.values():
                p.stop()  # the exporting proxy sends what it holds before it exits
            receiver.stop()
            up.stop()
    sent_on = 2 * 10 + rounds * n * len(KINDS)
    spans = sum(1 for _ in receiver.spans())
    out: dict[str, Any] = {"rounds": rounds, "requests": n, "kinds": {},
                           "export_check": {"requests": sent_on, "spans": spans}}  # fmt: skip
    for kind, by in data.items():
        out["kinds"][kind] = {
            s: {"p50_ms": statistics.median(d["ms"]), "p95_ms": _pct(d["ms"], 0.95),
                "cpu_ms_per_req": 1000 * d["cpu_s"] / d["n"]}
            for s, d in by.items()
        }  # fmt: skip
    return out


def _pid(p: ProxyProcess) -> int:
    assert p.proc is not None
    return p.proc.pid


def report(res: dict[str, Any]) -> None:
    print(f"telemetry export cost per request: off vs on (receiver up) vs down (receiver "
          f"down), {res['rounds']} rounds "
          f"x {res['requests']} requests per kind, sequential, side by side")  # fmt: skip
    print(f"{'kind':<9} {'telemetry':<9} {'p50':>8} {'p95':>8} {'CPU/req':>9}")
    for kind, by in res["kinds"].items():
        for s, r in by.items():
            print(f"{kind:<9} {s:<9} {r['p50_ms']:>6.2f}ms {r['p95_ms']:>6.2f}ms "
                  f"{r['cpu_ms_per_req']:>7.2f}ms")  # fmt: skip
    for kind, by in res["kinds"].items():
        off = by["off"]
        for s in ("on", "down"):
            on = by[s]
            cpu = (
                on["cpu_ms_per_req"] / off["cpu_ms_per_req"]
                if off["cpu_ms_per_req"]
                else float("nan")
            )
            print(f"{kind}: {s}/off p50 {on['p50_ms'] / off['p50_ms']:.2f}x, "
                  f"p95 {on['p95_ms'] / off['p95_ms']:.2f}x, proxy CPU/req {cpu:.2f}x")  # fmt: skip
    ec = res["export_check"]
    ok = ec["spans"] == 2 * ec["requests"]
    print(f"export check: {ec['spans']} spans for {ec['requests']} requests "
          f"({'one request + one attempt span each' if ok else 'MISMATCH'})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_telemetry.py", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="blocks per proxy and kind")
    p.add_argument("--requests", type=int, default=100, help="requests per block")
    p.add_argument("--quick", action="store_true", help="2 rounds of 10 (for the test suite)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    res = run(2, 10) if args.quick else run(args.rounds, args.requests)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    ec = res["export_check"]
    return 0 if ec["spans"] == 2 * ec["requests"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
