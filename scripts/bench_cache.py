"""Response cache: the latency of a hit against a miss, measured side by side in one run.

A real `orchestrator run` (SQLite cache store) in front of a loopback fake upstream that
takes `--upstream-ms` to answer (a provider's time; 0 shows the router's own cost). Each
round sends, through the proxy with one keep-alive HTTP client, a new prompt (a miss: the
upstream answers and the entry is stored) and then the same prompt again (a hit), whole
and streamed, interleaved so both see the same machine. Prints p50/p95 per kind and the
hit/miss ratio; no target is asserted (README → Performance).

    .venv/bin/python scripts/bench_cache.py [--rounds 200] [--upstream-ms 50] [--quick]
"""

from __future__ import annotations

import argparse
import json
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
from tests.proxyproc import ProxyProcess  # noqa: E402

KEY = "sk-bench-provider-key"


def _config(up: FakeUpstream) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "mode": f"reverse:{up.base_url.removesuffix('/v1')}",
        "intercept": [f"127.0.0.1:{up.port}"],
        "default_profile": "cached",
        "rules": "rules/",
        "data": {"ledger": "data/ledger.db"},
        "providers": {
            "fake": {"base_url": up.base_url, "api_key_env": "ORQ_BENCH_KEY", "local": True}
        },
        "admin": {"enabled": False},
        "log_level": "info",
    }


MODEL = {"id": "m-fake", "provider": "fake", "input_per_mtok": 1, "output_per_mtok": 2,
         "quality": 1200}  # fmt: skip
RULES = {
    "profiles.yaml": {
        "profiles": {"cached": {"weights": {"quality": 1}, "cache": {"ttl_s": 3600}}}
    },
    "models.yaml": {"models": [MODEL]},
}


def _timed(client: httpx.Client, body: dict[str, Any]) -> tuple[float, str]:
    """Milliseconds until the whole answer (every event of a stream) was read."""
    t0 = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for _ in r.iter_bytes():
            pass
        state = r.headers.get("x-orchestrator-cache", "-")
    return (time.perf_counter() - t0) * 1000, state


def _pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(rounds: int, upstream_ms: float) -> dict[str, Any]:
    up = FakeUpstream(
        "fake", delay=upstream_ms / 1000, first_event_delay=upstream_ms / 1000, events=20
    ).start()
    out: dict[str, Any] = {"rounds": rounds, "upstream_ms": upstream_ms, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        proxy = ProxyProcess(Path(tmp), _config(up), RULES, {"ORQ_BENCH_KEY": KEY}).start()
        try:
            with httpx.Client(base_url=proxy.url, headers={"authorization": f"Bearer {KEY}"},
                              timeout=30) as client:  # fmt: skip
                for stream in (False, True):
                    times: dict[str, list[float]] = {"miss": [], "hit": []}
                    for i in range(rounds + 5):  # the first 5 rounds warm up
                        body = {"model": "m-fake", "stream": stream,
                                "messages": [{"role": "user", "content": f"q{stream}-{i}"}]}  # fmt: skip
                        miss, s1 = _timed(client, body)
                        hit, s2 = _timed(client, body)
                        if (s1, s2) != ("miss", "hit"):
                            raise SystemExit(f"round {i}: expected miss then hit, got {s1}, {s2}")
                        if i >= 5:
                            times["miss"].append(miss)
                            times["hit"].append(hit)
                    out["kinds"]["streamed" if stream else "whole"] = {
                        k: {"p50_ms": statistics.median(v), "p95_ms": _pct(v, 0.95)}
                        for k, v in times.items()
                    }
        finally:
            proxy.stop()
            up.stop()
    out["upstream_calls"] = len(up.requests("/chat/completions"))
    return out


def report(res: dict[str, Any]) -> None:
    print(f"response cache: hit vs miss, {res['rounds']} rounds each, "
          f"upstream answers in {res['upstream_ms']:.0f} ms")  # fmt: skip
    print(f"{'kind':<10} {'miss p50':>9} {'miss p95':>9} {'hit p50':>9} {'hit p95':>9} "
          f"{'hit/miss p50':>13}")  # fmt: skip
    for kind, r in res["kinds"].items():
        m, h = r["miss"], r["hit"]
        print(f"{kind:<10} {m['p50_ms']:>7.2f}ms {m['p95_ms']:>7.2f}ms {h['p50_ms']:>7.2f}ms "
              f"{h['p95_ms']:>7.2f}ms {h['p50_ms'] / m['p50_ms']:>12.2f}x")  # fmt: skip
    expected = 2 * (res["rounds"] + 5)
    print(f"upstream check: {res['upstream_calls']}/{expected} calls (one per miss, none per hit)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_cache.py", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=200, help="miss+hit pairs per kind")
    p.add_argument("--upstream-ms", type=float, default=50.0, help="the fake upstream's delay")
    p.add_argument("--quick", action="store_true", help="10 rounds (for the test suite)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    res = run(10 if args.quick else args.rounds, args.upstream_ms)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0 if res["upstream_calls"] == 2 * ((10 if args.quick else args.rounds) + 5) else 1


if __name__ == "__main__":
    raise SystemExit(main())
