"""End to end: load balancing across three deployments of one model (issue 20, part 2).

Three loopback fakes are three deployments (`dep-a`, `dep-b`, `dep-c`) of one model
(`m-pool`, declared at each in rules/models.yaml), grouped under `balance:`. Clients send
small non-streaming chat calls over plain HTTP through a real `orchestrator run` (to an
intercepted loopback host, so no TLS handshake per call), many at once:

- `weighted` 5:3:2 over 3,000 calls: each deployment's share is within 5 points of its
  weight's;
- `least_busy` with `dep-c` slow (0.3 s per answer): `dep-c` never holds more than its share
  of the calls in flight, and so answers fewer calls than either fast one;
- `dep-c` dead (nothing listens): every call succeeds, the dead one is tried once (its
  provider breaker opens) and skipped after, and `explain` and `rank --chain` say why;
- `least_busy` over two replicas sharing one Redis (`state:`): calls sent to either replica
  in turn, each held open at its deployment, always land where the fleet has the fewest in
  flight (a replica counting only its own would put a second call where the other replica's
  first one is).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis

from tests.e2e import all_ledger_rows, ledger_row
from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ORCHESTRATOR, ProxyProcess
from tests.services import free_port, redis_server

__all__ = ["redis_server"]

pytestmark = pytest.mark.e2e

DEPLOYMENTS = ("dep-a", "dep-b", "dep-c")
WEIGHTS = {"dep-a": 5, "dep-b": 3, "dep-c": 2}
SLOW_S = 0.3
RULES = {
    "profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1.0}}}},
    "models.yaml": {"models": [
        {"id": "m-pool", "provider": d, "input_per_mtok": 1, "output_per_mtok": 2,
         "context_tokens": 32000, "quality": 1300}
        for d in DEPLOYMENTS
    ]},
}  # fmt: skip


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    """A fake per deployment, and `orig`: the host the clients address (never reached)."""
    f = {n: FakeUpstream(n, content=f"Hello from {n}").start() for n in (*DEPLOYMENTS, "orig")}
    yield f
    for u in f.values():
        u.stop()


@pytest.fixture(autouse=True)
def _clean(fakes: dict[str, FakeUpstream]) -> None:
    for f in fakes.values():
        f.clear()
        f.delay = 0.0


def _start(tmp: Path, fakes: dict[str, FakeUpstream], group: dict[str, Any],
           dead: str | None = None, state: str | None = None) -> ProxyProcess:  # fmt: skip
    orig = f"127.0.0.1:{fakes['orig'].port}"
    providers = {d: {"base_url": fakes[d].base_url, "local": True} for d in DEPLOYMENTS}
    if dead is not None:
        providers[dead] = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "local": True}
    cfg = {
        "listen": "127.0.0.1:0",
        "intercept": [orig],
        "default_profile": "balanced",
        "rules": "rules/",
        "providers": providers,
        "balance": {"groups": {"pool": group}},
        "resilience": {
            "max_attempts": 3,
            "connect_timeout_ms": 1000,
            "breaker": {"failures": 1, "cooldown_s": 600},
        },
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
    }
    if state is not None:
        cfg["state"] = state
    return ProxyProcess(tmp, cfg, RULES).start()


async def _load(p: ProxyProcess, orig: FakeUpstream, total: int,
                concurrency: int) -> list[tuple[int, str, str]]:  # fmt: skip
    """`total` chat calls, `concurrency` at a time: (status, provider header, request id)."""
    url = f"http://127.0.0.1:{orig.port}/v1/chat/completions"
    body = {"model": "m-pool", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    out: list[tuple[int, str, str]] = []
    left = iter(range(total))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            for _ in left:
                async with session.post(url, json=body, proxy=p.url) as r:
                    await r.read()
                    out.append((r.status, r.headers.get("x-orchestrator-provider", ""),
                                r.headers.get("x-orchestrator-request-id", "")))  # fmt: skip

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def _cli(p: ProxyProcess, *args: str) -> str:
    out = subprocess.run([str(ORCHESTRATOR), *args, "-c", str(p.config_path)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=p.workdir,
                         env=dict(os.environ))  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_weighted_balancing_converges_to_the_weights(
    tmp_path: Path, fakes: dict[str, FakeUpstream]
) -> None:
    p = _start(tmp_path, fakes, {"strategy": "weighted", "deployments": WEIGHTS})
    try:
        results = asyncio.run(_load(p, fakes["orig"], 3000, 16))
        rank = _cli(p, "rank", "--chain")
    finally:
        p.stop()
    assert Counter(status for status, _, _ in results) == {200: 3000}, p.log()[-3000:]
    by_header = Counter(prov for _, prov, _ in results)
    seen = {d: len(fakes[d].requests("/chat/completions")) for d in DEPLOYMENTS}
    assert dict(by_header) == seen  # each call answered where it was sent, once
    assert sum(seen.values()) == 3000 and not fakes["orig"].requests()
    total = sum(WEIGHTS.values())
    for d, w in WEIGHTS.items():
        assert abs(seen[d] / 3000 - w / total) <= 0.05, seen
    # the most likely order, with why
    assert "1. dep-a:m-pool (" in rank and "balanced 1 of 3 (pool, weighted): most likely " \
        "first pick, weight 5 of 10 (50%)" in rank, rank  # fmt: skip
    assert "balance pool (weighted): m-pool over 3 deployments, dep-a first" in rank


def test_least_busy_evens_out_calls_in_flight_under_a_slow_deployment(
    tmp_path: Path, fakes: dict[str, FakeUpstream]
) -> None:
    concurrency = 12
    fakes["dep-c"].delay = SLOW_S
    p = _start(tmp_path, fakes, {"strategy": "least_busy", "deployments": list(DEPLOYMENTS)})
    try:
        results = asyncio.run(_load(p, fakes["orig"], 240, concurrency))
        sample = ledger_row(p, results[-1][2])
    finally:
        p.stop()
    assert Counter(status for status, _, _ in results) == {200: 240}, p.log()[-3000:]
    seen = {d: len(fakes[d].requests("/chat/completions")) for d in DEPLOYMENTS}
    # every call at dep-c takes SLOW_S: the calls it holds at an arrival are those that
    # arrived within SLOW_S before it (itself included)
    arrivals = sorted(s.at for s in fakes["dep-c"].requests("/chat/completions"))
    peak = max(sum(1 for t in arrivals if a - SLOW_S < t <= a) for a in arrivals)
    # an even split holds concurrency / 3 = 4 at each; `weighted` with equal weights would
    # let dep-c pile up nearly all 12 (a third of the arrivals, each staying 0.3 s)
    assert peak <= concurrency // 2, (peak, seen)
    assert seen["dep-c"] < min(seen["dep-a"], seen["dep-b"]), seen
    reasons = json.loads(sample["reasons"])
    line = next(r for r in reasons if r.startswith("balance pool (least_busy): m-pool"))
    assert " in flight" in line, reasons


def test_a_dead_deployment_is_tried_once_then_skipped(
    tmp_path: Path, fakes: dict[str, FakeUpstream]
) -> None:
    # dep-c is the heaviest: the first calls go there, find nothing listening, and fall back
    group = {"strategy": "weighted", "deployments": {"dep-a": 1, "dep-b": 1, "dep-c": 100}}
    p = _start(tmp_path, fakes, group, dead="dep-c")
    try:
        first = asyncio.run(_load(p, fakes["orig"], 1, 1))
        rest = asyncio.run(_load(p, fakes["orig"], 60, 4))
        last = ledger_row(p, rest[-1][2])
        explained = _cli(p, "explain", rest[-1][2])
        rows = all_ledger_rows(p)
    finally:
        p.stop()
    assert [s for s, _, _ in first + rest] == [200] * 61, p.log()[-3000:]
    assert {prov for _, prov, _ in first + rest} <= {"dep-a", "dep-b"}
    tried_dead = [r for r in rows if "dep-c" in (r["attempt_log"] or "")]
    assert [r["id"] for r in tried_dead] == [first[0][2]], tried_dead  # once, then skipped
    assert json.loads(ledger_row(p, first[0][2])["attempt_log"])[0]["provider"] == "dep-c"
    assert last["attempts"] == 1
    assert "balance pool (weighted): m-pool over 2 deployments" in explained, explained
    assert "skipped dep-c (provider_open)" in explained, explained


HOLD_S = 6.0  # every deployment holds each call this long: all of them stay in flight


def _landed(fakes: dict[str, FakeUpstream], seen: int) -> str:
    """The deployment that received call number `seen` + 1 (polled)."""
    deadline = time.monotonic() + 10
    while True:
        got = [(q.at, d) for d in DEPLOYMENTS for q in fakes[d].requests("/chat/completions")]
        if len(got) > seen:
            return sorted(got)[-1][1]
        assert time.monotonic() < deadline, "a call never reached a deployment"
        time.sleep(0.01)


def _fleet_sees(r: redis.Redis, in_flight: int) -> None:
    """Poll until every replica has published its calls in flight (the hashes add up to
    `in_flight`) and then synced once more (read the others'): each one's `least_busy` now
    counts the whole fleet's calls."""
    deadline = time.monotonic() + 10
    while sum(int(n) for k in r.scan_iter("orch:inflight:*")
              for n in r.hgetall(k).values()) != in_flight:  # fmt: skip
        assert time.monotonic() < deadline, "the replicas never published their counts"
        time.sleep(0.01)
    sec, usec = r.time()
    published = sec * 1000 + usec // 1000
    while min(score for _, score in r.zrange("orch:inflight-replicas", 0, -1, withscores=True)
              ) <= published:  # fmt: skip
        assert time.monotonic() < deadline, "a replica stopped syncing"
        time.sleep(0.01)


def test_least_busy_counts_the_calls_in_flight_of_the_whole_fleet(
    tmp_path: Path, fakes: dict[str, FakeUpstream], redis_server: Any
) -> None:
    url = redis_server.fleet_database()
    group = {"strategy": "least_busy", "deployments": list(DEPLOYMENTS)}
    for d in DEPLOYMENTS:
        fakes[d].delay = HOLD_S
    replicas = [_start(tmp_path / f"r{i}", fakes, group, state=url) for i in (0, 1)]
    orig = f"http://127.0.0.1:{fakes['orig'].port}/v1/chat/completions"
    body = {"model": "m-pool", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    landed: list[str] = []
    try:
        with redis.Redis.from_url(url) as r, concurrent.futures.ThreadPoolExecutor(6) as pool:
            _fleet_sees(r, 0)
            calls = []
            for n in range(6):  # replica 0, 1, 0, 1, ...: each call held while the next comes
                p = replicas[n % 2]
                calls.append(pool.submit(httpx.post, orig, json=body, proxy=p.url, timeout=30))
                landed.append(_landed(fakes, n))
                counts = Counter(landed)
                # the fleet's least busy deployment got it: never two ahead of another
                assert max(counts.values()) - min(counts[d] for d in DEPLOYMENTS) <= 1, landed
                _fleet_sees(r, n + 1)
            answers = [c.result() for c in calls]
        rid = answers[1].headers["x-orchestrator-request-id"]
        reasons = json.loads(ledger_row(replicas[1], rid)["reasons"])
    finally:
        for p in replicas:
            p.stop()
    assert [a.status_code for a in answers] == [200] * 6
    assert Counter(landed) == {d: 2 for d in DEPLOYMENTS}, landed
    assert [a.headers["x-orchestrator-provider"] for a in answers] == landed
    # replica 1's first call saw replica 0's one call in flight: that deployment last
    line = next(x for x in reasons if x.startswith("balance pool (least_busy): m-pool"))
    assert "(least busy: 0 in flight, tied with 1 other(s)" in line, line
    assert line.endswith(f", {landed[0]}"), line
