"""What the rate-limit check adds to one request, in-process: no sockets, no mitmproxy.

    .venv/bin/python scripts/bench_limits.py [--quick] [--json FILE]

Per request, exactly the calls `addon.proxy.dispatch.Dispatcher` makes into
`addon.proxy.ratelimitgate.RateLimitGate` with the in-process store (`state:` unset):

    filter    the routing filter (providers this replica saw at their limit)
    admit     the client's and the policy's check-and-reserve (one sliding-window log each)
    claim     the provider's check-and-reserve before the attempt
    finished  every hold set to the real usage

Rows, measured side by side in one run: `off` (no limits configured: the cost everyone
pays), `client` (a named client's rpm + tpm), `full` (client + per-client policy + provider
limits), and `anonymous` (`default_client_limits` over 1,000 client addresses in turn). The
limits are high enough that every request is admitted, so each window keeps growing to a
realistic size (one entry per request in the last minute). The target is ≤ 20 µs p50 added
to the request path; the script prints what it measures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from addon.config import loader
from addon.proxy.exchange import Incoming, Pending
from addon.proxy.ratelimitgate import RateLimitGate
from addon.proxy.view import View, build_view
from addon.routing import decide
from addon.routing.classify import features
from addon.wire.usage import Usage

TARGET_US = 20.0
BIG = 10**9  # limits nobody reaches: every request is admitted and logged


def _view(tmp: Path, row: str) -> View:
    (tmp / "rules").mkdir(parents=True)
    limits = {"rpm": BIG, "tpm": BIG}
    providers: dict[str, Any] = {"alpha": {"base_url": "https://alpha.example/v1",
                                           "api_key_env": "KA"}}  # fmt: skip
    settings: dict[str, Any] = {"providers": providers, "admin": {"enabled": False},
                                "data": {"ledger": str(tmp / "ledger.db"),
                                         "benchmarks": str(tmp / "none.db")}}  # fmt: skip
    policy: dict[str, Any] = {"name": "all"}
    if row in ("client", "full"):
        settings["clients"] = [{"name": "app", "key_env": "KA", "limits": limits}]
    if row == "full":
        providers["alpha"]["limits"] = limits
        policy["limits"] = {**limits, "scope": "client"}
    if row == "anonymous":
        settings["default_client_limits"] = limits
    (tmp / "orchestrator.yaml").write_text(yaml.safe_dump(settings))
    model = {"id": "m-a", "provider": "alpha", "input_per_mtok": 1, "output_per_mtok": 2,
             "context_tokens": 100000, "quality": 1300}  # fmt: skip
    rules = {"profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1}}}},
             "models.yaml": {"models": [model]}, "policies.yaml": {"policies": [policy]}}  # fmt: skip
    for name, data in rules.items():
        (tmp / "rules" / name).write_text(yaml.safe_dump(data))
    return build_view(loader.load(tmp / "orchestrator.yaml"), {"KA": "sk-a"}, {})


async def _measure(view: View, row: str, n: int) -> list[float]:
    gate = RateLimitGate()
    cand = view.catalog.candidates[0]
    body = {"model": "m-a", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
    feats = features(body, requested_model="m-a")
    decision: Any = SimpleNamespace(policy="all")
    usage = Usage(prompt_tokens=11, completion_tokens=7)
    out: list[float] = []
    for i in range(n):
        addr = f"10.0.{i % 1000 // 250}.{i % 250}" if row == "anonymous" else "10.0.0.1"
        name = None if row in ("off", "anonymous") else "app"
        inc = Incoming("POST", "api.openai.com", "/v1/chat/completions", (), b"", addr,
                       client_name=name)  # fmt: skip
        pending = Pending(f"orq-{i}", 0.0, inc, "routed")
        req = decide.RoutingRequest(features=feats, host=inc.host, path=inc.path, headers={},
                                    client_addr=addr, client_key=False, client_name=name,
                                    api="chat")  # fmt: skip
        reasons: list[str] = []
        t0 = time.perf_counter_ns()
        usable = gate.filter(view, lambda c: None, reasons)
        refused = await gate.admit(view, pending, req, decision)
        usable(cand)
        ok = await gate.claim(view, pending, cand, feats)
        gate.finished(pending, usage)
        out.append((time.perf_counter_ns() - t0) / 1000)
        assert refused is None and ok
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    n = 3_000 if args.quick else 60_000
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        views = {row: _view(Path(tmp) / row, row) for row in ("off", "client", "full", "anonymous")}
        for row, view in views.items():
            asyncio.run(_measure(view, row, n // 10))  # warm up
            us = asyncio.run(_measure(view, row, n))
            qs = statistics.quantiles(us, n=100)
            results[row] = {"p50_us": statistics.median(us), "p99_us": qs[98], "n": n}
    print(f"rate-limit check per request, in-process ({n} requests a row; target ≤ "
          f"{TARGET_US:.0f} µs p50 added)")  # fmt: skip
    print(f"{'row':<10} {'p50 µs':>8} {'p99 µs':>8} {'added p50 µs':>13}")
    base = results["off"]["p50_us"]
    for row, r in results.items():
        added = r["p50_us"] - base if row != "off" else r["p50_us"]
        print(f"{row:<10} {r['p50_us']:8.2f} {r['p99_us']:8.2f} {added:13.2f}")
        r["added_p50_us"] = added
    worst = max(r["p50_us"] for r in results.values())
    print(
        f"worst row's whole check: {worst:.2f} µs p50 "
        f"({'within' if worst <= TARGET_US else 'OVER'} the {TARGET_US:.0f} µs target)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"target_us": TARGET_US, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
