"""Rate-limit check cost per request: what the limits add to one request's path.

    .venv/bin/python scripts/bench_limits.py [--quick] [--no-redis] [--json FILE]

Per request, exactly the calls `addon.proxy.dispatch.Dispatcher` makes into
`addon.proxy.ratelimitgate.RateLimitGate`:

    filter    the routing filter (providers this replica saw at their limit)
    admit     the client's and the policy's check-and-reserve (one sliding-window log each)
    claim     the provider's check-and-reserve before the attempt
    finished  every hold set to the real usage

Rows, measured side by side in one run: `off` (no limits configured: the cost everyone
pays), `client` (a named client's rpm + tpm), `full` (client + per-client policy + provider
limits), and `anonymous` (`default_client_limits` over 1,000 client addresses in turn);
first in process (`state:` unset), then through a real Redis on loopback (`state:
redis://…`: one Lua script per check-and-reserve, the settle sent without waiting), the
`redis-server` on PATH started for the run (`--no-redis` skips it). The limits are high
enough that every request is admitted, so each window keeps growing to a realistic size
(one entry per request in the last minute). The target is ≤ 20 µs p50 added by in-process
limits (the worst row's p50 minus `off`'s, paired per round: the rows are measured in 20
interleaved rounds, and the added cost is the median round's difference, so a busy moment of
the machine moves both sides); the script prints what it measures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from addon.config import loader
from addon.proxy.exchange import Incoming, Pending
from addon.proxy.ratelimitgate import RateLimitGate
from addon.proxy.view import View, build_view
from addon.routing import decide
from addon.routing.classify import features
from addon.state.ratelimits import RateLimits
from addon.wire.usage import Usage

TARGET_US = 20.0
ROUNDS = 20  # rows measured in turn, this many times
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


class Row:
    """One row's gate over its own accounts, measured in rounds (`measure`)."""

    def __init__(self, view: View, row: str, store: RateLimits | None) -> None:
        self.view, self.row = view, row
        self.gate = RateLimitGate(store)
        self.cand = view.catalog.candidates[0]
        body = {"model": "m-a", "max_tokens": 200,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        self.feats = features(body, requested_model="m-a")
        self.decision: Any = SimpleNamespace(policy="all")
        self.usage = Usage(prompt_tokens=11, completion_tokens=7)
        self.sent = 0
        self.us: list[float] = []
        self.rounds: list[float] = []  # each round's p50

    async def measure(self, n: int, keep: bool = True) -> None:
        """`n` more requests: microseconds per request of the four calls."""
        gate, view, row, cand, feats = self.gate, self.view, self.row, self.cand, self.feats
        for _ in range(n):
            i = self.sent = self.sent + 1
            addr = f"10.0.{i % 1000 // 250}.{i % 250}" if row == "anonymous" else "10.0.0.1"
            name = None if row in ("off", "anonymous") else "app"
            inc = Incoming("POST", "api.openai.com", "/v1/chat/completions", (), b"", addr,
                           client_name=name)  # fmt: skip
            pending = Pending(f"orq-{i}", 0.0, inc, "routed")
            req = decide.RoutingRequest(features=feats, host=inc.host, path=inc.path,
                                        headers={}, client_addr=addr, client_key=False,
                                        client_name=name, api="chat")  # fmt: skip
            t0 = time.perf_counter_ns()
            usable = gate.filter(view, lambda c: None, pending)
            refused = await gate.admit(view, pending, req, self.decision)
            usable(cand)
            skipped = await gate.claim(view, pending, cand, feats)
            gate.finished(pending, self.usage)
            took = (time.perf_counter_ns() - t0) / 1000
            if keep:
                self.us.append(took)
            if refused is not None or skipped is not None:
                raise SystemExit(f"row {row}: request {i} was refused; the bench is broken")


def _rows(views: dict[str, View], n: int, store: Callable[[], RateLimits | None]
          ) -> dict[str, dict[str, float]]:  # fmt: skip
    """Every row, in 20 interleaved rounds (a busy moment of the machine hits them all)."""

    async def run() -> dict[str, Row]:
        rows = {row: Row(view, row, store()) for row, view in views.items()}
        for r in rows.values():
            await r.gate.start()
            await r.measure(max(50, n // 10), keep=False)  # warm up
        for _ in range(ROUNDS):
            for r in rows.values():
                before = len(r.us)
                await r.measure(max(1, n // ROUNDS))
                r.rounds.append(statistics.median(r.us[before:]))
        for r in rows.values():
            await r.gate.close()
        return rows

    results: dict[str, dict[str, float]] = {}
    rows = asyncio.run(run())
    off = rows["off"].rounds
    for name, r in rows.items():
        qs = statistics.quantiles(r.us, n=100)
        # what the limits add: against `off` measured in the same round, the median round
        added = statistics.median(a - b for a, b in zip(r.rounds, off, strict=True))
        results[name] = {"p50_us": statistics.median(r.us), "p99_us": qs[98], "n": len(r.us),
                         "added_p50_us": added if name != "off" else 0.0}  # fmt: skip
    return results


def _table(title: str, results: dict[str, dict[str, float]]) -> None:
    print(title)
    print(f"{'row':<10} {'p50 µs':>9} {'p99 µs':>9} {'added p50 µs':>13}")
    for row, r in results.items():
        print(f"{row:<10} {r['p50_us']:9.2f} {r['p99_us']:9.2f} {r['added_p50_us']:13.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--no-redis", action="store_true", help="in-process rows only")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    n = 3_000 if args.quick else 60_000
    n_redis = 300 if args.quick else 5_000
    out: dict[str, Any] = {"target_us": TARGET_US}
    print("rate-limit check cost per request (filter + admit + claim + finished, as the "
          "dispatcher calls them)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        views = {row: _view(Path(tmp) / row, row) for row in ("off", "client", "full", "anonymous")}
        local = out["in_process"] = _rows(views, n, lambda: None)
        _table(f"\nin process (state: unset), {n} requests a row", local)
        redis_rows = None
        if not args.no_redis and shutil.which("redis-server"):
            from addon.state.redis_ratelimits import RedisRateLimits
            from tests.services import RedisServer

            srv = RedisServer()
            srv.start()
            try:
                redis_rows = out["redis"] = _rows(
                    views, n_redis, lambda: RedisRateLimits(srv.new_database())
                )
            finally:
                srv.close()
            _table(f"\nthrough Redis (state: redis://…, loopback), {n_redis} requests a row",
                   redis_rows)  # fmt: skip
        else:
            print("\nthrough Redis: skipped (--no-redis, or no redis-server on PATH)")
    worst = max(r["added_p50_us"] for r in local.values())
    verdict = "within" if worst <= TARGET_US else "OVER"
    print(f"\nin-process limits add {worst:.2f} µs p50 at most (row "
          f"{max(local, key=lambda k: local[k]['added_p50_us'])}): {verdict} the "
          f"{TARGET_US:.0f} µs target")  # fmt: skip
    if redis_rows is not None:
        print(f"through Redis they add {redis_rows['full']['added_p50_us']:.0f} µs p50 (row "
              "full: two round trips, admit and claim)")  # fmt: skip
    out["worst_added_p50_us"] = worst
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
