"""The per-request routing work alone, in-process: no sockets, no mitmproxy.

    .venv/bin/python scripts/bench_routing.py [--quick] [--sizes 1KB,200KB] [--json FILE]

What one routed request costs the proxy before any upstream I/O, stage by stage, exactly as
`addon.proxy.dispatch.Dispatcher.handle` chains them:

    parse     addon.wire.parse_request(body)              (JSON, top-level spans)
    features  addon.routing.classify.features(parsed.data, …)  (token estimate, needs, task,
                                                           the learned complexity scorer)
    decide    headers dict + addon.routing.decide(...)    (profile, policy, filter walk)
    rewrite   addon.wire.rewrite(parsed, model=...)       (the first target's body; the
                                                           dispatcher builds the next one only
                                                           if it falls back)

The catalog is the real bundled benchmark DB (addon/bundled/benchmarks.db) joined to one
configured provider per DB provider, i.e. every offering in the DB (3,600+), with the
project's own rules/ (profiles, policies, routes). Timings are time.perf_counter_ns around
each stage; the garbage collector stays on, as in production.

After the tables, the learned difficulty scorer (`addon.routing.difficulty.probability`, part
of `features` under `complexity: learned`) is timed alone per prompt size, beside the keyword
features of the same request; its target is p99 ≤ 200 µs for prompts up to 8 KB.

Beside each call the script times a constant pure-Python loop sized to last as long as the
row's median call, and before the tables it counts how often the machine pauses a thread
that never blocks. Together they separate the tail the routing work causes from the tail
any work of that length gets on this machine: on a VM whose host takes the CPU away a few
hundred times a second for 10-100 µs, a call of T µs meets a pause with a chance of about
rate x T, and once that passes 1% the pauses, not the code, set the p99.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from addon.config import loader  # noqa: E402
from addon.proxy.outbound import has_client_key  # noqa: E402
from addon.proxy.view import View, build_view  # noqa: E402
from addon.routing import breaker, classify, decide, difficulty, ranking, scoring  # noqa: E402
from addon.routing.catalog import Candidate  # noqa: E402
from addon.store.benchmarks import BUNDLED_DB  # noqa: E402
from addon.wire.request import parse_request, rewrite  # noqa: E402

KEY_ENV = "BENCH_PROVIDER_KEY"
BENCH_MODEL = "bench-model"  # declared in the generated rules/models.yaml
SMALL_TARGET_US = 100.0  # p99 for prompts up to 8 KB
LARGE_TARGET_US = 2000.0  # p99 at 200 KB
SCORER_TARGET_US = 200.0  # p99 of the learned difficulty scorer alone, prompts up to 8 KB
MIN_CATALOG = 2000  # offerings
STAGES = ("parse", "features", "decide", "rewrite")

# prompt sizes (bytes of user text) -> iterations in the full configuration
SIZES: dict[str, tuple[int, int]] = {
    "100B": (100, 20_000),
    "1KB": (1_024, 20_000),
    "8KB": (8 * 1024, 10_000),
    "64KB": (64 * 1024, 2_000),
    "200KB": (200 * 1024, 1_000),
}
# Words for the synthetic prompts (deterministic, English-like; no code, no math).
CORPUS = (
    "please summarize the answer for the user and explain the data in this table the model "
    "request latency provider cost quality context token stream question system value result "
    "function service proxy route budget profile score catalog upstream fallback retry window"
)


# --------------------------------------------------------------------------- configuration


def db_providers(db: Path = BUNDLED_DB) -> list[str]:
    """Every provider name that has offerings in the benchmark DB, largest first."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT provider FROM offerings GROUP BY provider ORDER BY COUNT(*) DESC, provider"
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def write_config(
    workdir: Path,
    *,
    base_url: Callable[[str], str],
    intercept: list[str],
    db: Path = BUNDLED_DB,
    local: bool = False,
    log_level: str = "info",
    max_attempts: int = 4,
) -> Path:
    """orchestrator.yaml + rules/ in `workdir`: one provider per DB provider (the whole
    bundled catalog), the project's own profiles/policies/routes, and `bench-model` declared
    in rules/models.yaml; `local` marks every provider `local: true` (required for loopback
    base URLs; with `catalog:` set they still serve the DB's offerings at the DB's prices).
    Returns the config path."""
    rules = workdir / "rules"
    rules.mkdir(parents=True, exist_ok=True)
    for name in ("profiles.yaml", "policies.yaml", "routes.yaml"):
        shutil.copy(REPO / "rules" / name, rules / name)
    models = {
        "models": [
            {
                "id": BENCH_MODEL,
                "provider": "openai",
                "input_per_mtok": 0.15,
                "output_per_mtok": 0.6,
                "context_tokens": 128000,
                "quality": 1250,
                "capabilities": {"tools": True, "json_schema": True},
            }
        ]
    }
    (rules / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    providers = {
        name: {"base_url": base_url(name), "api_key_env": KEY_ENV, "catalog": name}
        | ({"local": True, "apis": ["chat", "completions", "responses"]} if local else {})
        for name in db_providers(db)
    }
    config = {
        "listen": "127.0.0.1:0",
        "mode": "regular",
        "intercept": intercept,
        "default_profile": "balanced",
        "rules": "rules/",
        "data": {"benchmarks": str(db), "ledger": str(workdir / "data" / "ledger.db")},
        "providers": providers,
        "resilience": {"max_attempts": max_attempts},
        "admin": {"listen": "127.0.0.1:0"},  # any free port: runs may overlap
        "log_level": log_level,
    }
    path = workdir / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------- requests


def prompt_text(size: int, *, multibyte: bool = False, seed: int = 7) -> str:
    """Deterministic English-like text of `size` UTF-8 bytes (a few ’ and é when multibyte)."""
    rnd = random.Random(seed)
    words = CORPUS.split()
    parts: list[str] = []
    n = 0
    while n < size:
        w = rnd.choice(words)
        if multibyte and rnd.random() < 0.05:
            w = rnd.choice(("it’s", "café", "naïve", "résumé"))
        parts.append(w)
        n += len(w.encode()) + 1
    text = " ".join(parts).encode()[:size]
    return text.decode("utf-8", "ignore")


def chat_body(prompt: str, *, model: str = BENCH_MODEL, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0.2,
        **extra,
    }
    return json.dumps(body, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Scenario:
    label: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    iterations: int


CLIENT_HEADERS = (
    ("Host", "api.openai.com"),
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer sk-client-0123456789"),
    ("User-Agent", "OpenAI/Python 1.54.0"),
    ("Accept", "application/json"),
)


def size_scenarios(names: list[str], scale: float) -> list[Scenario]:
    out = []
    for name in names:
        size, iters = SIZES[name]
        n = max(20, int(iters * scale))
        out.append(Scenario(name, chat_body(prompt_text(size)), CLIENT_HEADERS, n))
        if name in ("8KB", "200KB"):
            body = chat_body(prompt_text(size, multibyte=True))
            out.append(Scenario(f"{name} utf8", body, CLIENT_HEADERS, n))
    return out


def kind_scenarios(scale: float) -> list[Scenario]:
    """1 KB requests that take different paths through `decide`."""
    text = prompt_text(1024)
    n = max(20, int(10_000 * scale))
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    return [
        Scenario("scored (balanced)", chat_body(text), CLIENT_HEADERS, n),
        Scenario("route gpt-4o", chat_body(text, model="gpt-4o"), CLIENT_HEADERS, n),
        Scenario(
            "header long_context",
            chat_body(text),
            (*CLIENT_HEADERS, ("X-Orchestrator-Profile", "long_context")),
            n,
        ),
        Scenario(
            "tools + json_schema",
            chat_body(text, tools=[tool], response_format=schema),
            CLIENT_HEADERS,
            n,
        ),
        Scenario(
            "policy budget max_cost",
            chat_body(text, max_tokens=4000),
            (*CLIENT_HEADERS, ("x-workload", "batch")),
            n,
        ),
        Scenario("stream (usage injected)", chat_body(text, stream=True), CLIENT_HEADERS, n),
    ]


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Row:
    label: str
    body_bytes: int
    iterations: int
    chain: int
    mode: str
    # per stage, "total" (wall), "cpu" (thread CPU of the call) and "constant" (`constant_work`)
    p50_us: dict[str, float]
    p99_us: dict[str, float]
    gen2_collections: int


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def route_once(
    view: View,
    sc: Scenario,
    breakers: Mapping[str, breaker.BreakerState],
    clock: Callable[[], int],
) -> tuple[list[int], decide.RoutingDecision]:
    """One request's routing work, mirroring Dispatcher.handle; per-stage nanoseconds.

    Like the dispatcher, `decide` gets max_attempts + 4 chain slots and the set of providers
    with a usable key, and the body is rewritten for the first target (the attempt plan builds
    a target's body only when that target is tried; each fallback costs one more rewrite).
    """
    t0 = clock()
    parsed = parse_request(sc.body)
    t1 = clock()
    feats = classify.features(parsed.data, requested_model=parsed.model, difficulty=view.difficulty)
    t2 = clock()
    headers = {k.lower(): v for k, v in sc.headers}
    host = headers.get("host", "")
    client_key = has_client_key(sc.headers)
    req = decide.RoutingRequest(
        features=feats,
        host=host,
        path="/v1/chat/completions",
        headers=headers,
        client_addr="10.0.0.7",
        client_key=client_key,
    )
    res = view.config.settings.resilience
    now = time.monotonic()
    keyed = view.keyed(host if client_key else None)
    cooldown_s = res.breaker.cooldown_s

    def usable(c: Candidate) -> str | None:
        if c.provider not in keyed:
            return "no_key"
        state = breakers.get(c.key)
        if state is not None and not breaker.available(state, now, cooldown_s):
            return "breaker_open"
        return None

    decision = decide.decide(view.router, req, usable, res.max_attempts + 4, keyed)
    t3 = clock()
    if not isinstance(decision, decide.RoutingDecision):
        raise SystemExit(f"{sc.label}: no route: {decision.message}")
    inject = parsed.stream and not parsed.wants_usage
    rewrite(parsed, model=decision.chain[0].candidate.provider_model_id, include_usage=inject)
    t4 = clock()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3], decision


def constant_work(loops: int) -> int:
    """A constant pure-Python workload, timed between routing calls: how much this machine
    alone stretches the tail of a cost that never changes. Every loop costs the same (no
    allocation: the values stay in CPython's small-int cache); `calibrate` sizes it."""
    x = 0
    for _ in repeat(None, loops):
        x = (x * 31 + 7) & 255
    return x


def calibrate(target_us: float) -> int:
    """How many `constant_work` loops take about `target_us` here (the median of 30 timings of
    1,000 loops, as `target_us` is a median too)."""
    clock = time.perf_counter_ns
    per_loop = []
    for _ in range(30):
        t0 = clock()
        constant_work(1000)
        per_loop.append((clock() - t0) / 1000 / 1000)
    return max(1, round(target_us / percentile(per_loop, 0.5)))


@dataclass
class Pauses:
    """How often this machine took the CPU away from a thread that never blocks."""

    seconds: float
    per_second: float  # pauses of PAUSE_US or more
    p50_us: float
    p90_us: float
    share: float  # of the wall time


PAUSE_US = 10.0


def machine_pauses(seconds: float) -> Pauses:
    """Spin on the clock for `seconds` and collect every gap of PAUSE_US or more between two
    consecutive reads: time the thread was runnable but did not run (host steal, interrupts,
    other processes). A routing call of T µs has about a `per_second * T / 1e6` chance of
    containing one; once that chance passes 1%, the pauses set the p99."""
    clock = time.perf_counter_ns
    limit = int(PAUSE_US * 1000)
    gaps: list[float] = []
    start = last = clock()
    end = start + int(seconds * 1e9)
    while last < end:
        now = clock()
        if now - last >= limit:
            gaps.append((now - last) / 1000)
        last = now
    wall = (last - start) / 1e9
    return Pauses(
        seconds=wall,
        per_second=len(gaps) / wall,
        p50_us=percentile(gaps, 0.5) if gaps else 0.0,  # a quiet machine: no NaN in the JSON
        p90_us=percentile(gaps, 0.9) if gaps else 0.0,
        share=sum(gaps) / 1e6 / wall,
    )


def measure(view: View, sc: Scenario, budget_s: float) -> Row:
    """Up to `sc.iterations` calls, stopping after `budget_s` once 200 samples are in."""
    clock = time.perf_counter_ns
    breakers: dict[str, breaker.BreakerState] = {}
    _, decision = route_once(view, sc, breakers, clock)  # warm caches (regexes, lookups)
    warm = [sum(route_once(view, sc, breakers, clock)[0]) / 1000 for _ in range(200)]
    loops = calibrate(percentile(warm[100:], 0.5))  # the constant work lasts as long as a call
    samples: dict[str, list[float]] = {k: [] for k in (*STAGES, "total", "cpu", "constant")}
    gen2 = gc.get_stats()[2]["collections"]
    deadline = time.monotonic() + budget_s
    n = 0
    while n < sc.iterations and (n < 200 or time.monotonic() < deadline):
        cpu0 = time.thread_time_ns()
        parts, _ = route_once(view, sc, breakers, clock)
        samples["cpu"].append((time.thread_time_ns() - cpu0) / 1000)
        for name, ns in zip(STAGES, parts, strict=True):
            samples[name].append(ns / 1000)
        samples["total"].append(sum(parts) / 1000)
        t0 = clock()
        constant_work(loops)
        samples["constant"].append((clock() - t0) / 1000)
        n += 1
    return Row(
        label=sc.label,
        body_bytes=len(sc.body),
        iterations=n,
        chain=len(decision.chain),
        mode=decision.mode,
        p50_us={k: percentile(v, 0.5) for k, v in samples.items()},
        p99_us={k: percentile(v, 0.99) for k, v in samples.items()},
        gen2_collections=gc.get_stats()[2]["collections"] - gen2,
    )


def rerank_cost(view: View) -> tuple[float, float, float]:
    """What a rerank with 50 observed candidates costs, as the proxy runs it (one
    `ranking.reranked` step per ranking, see addon.runtime): (total ms, longest step ms, ms
    for the first request's filter walk on the new router)."""
    cat = view.catalog
    sc = size_scenarios(["1KB"], 0.01)[0]
    parsed = parse_request(sc.body)
    f = classify.features(parsed.data, requested_model=parsed.model)
    keyed = view.keyed("api.openai.com")
    args = ("balanced", scoring.level(f.complexity), keyed, f, 0, None, False)
    view.router.walk(*args)  # the base walk exists: the proxy has served before
    observed = {c.key: 100.0 + i for i, c in enumerate(cat.candidates[:50])}
    done = {}
    steps = []
    for key in view.router.base:
        t0 = time.perf_counter()
        done[key] = ranking.reranked(view.router, key, observed)
        steps.append((time.perf_counter() - t0) * 1000)
    router = ranking.with_rankings(view.router, done)
    t0 = time.perf_counter()
    router.walk(*args)
    return sum(steps), max(steps), (time.perf_counter() - t0) * 1000


@dataclass(frozen=True)
class ScorerRow:
    """The learned difficulty scorer alone on one prompt, beside the keyword features of
    the same request (µs)."""

    label: str
    prompt_bytes: int
    iterations: int
    scorer_p50_us: float
    scorer_p99_us: float
    keyword_p50_us: float
    keyword_p99_us: float


def scorer_rows(view: View, names: list[str], scale: float) -> list[ScorerRow]:
    """`difficulty.probability` per prompt size, timed call by call, and
    `classify.features` without the scorer on the same body, interleaved with it."""
    model = view.difficulty
    if model is None:
        return []
    rows = []
    clock = time.perf_counter_ns
    for sc in size_scenarios(names, scale):
        parsed = parse_request(sc.body)
        text = parsed.data["messages"][-1]["content"]
        for _ in range(50):
            difficulty.probability(model, text)
        learned, keyword = [], []
        for _ in range(max(200, sc.iterations)):
            t0 = clock()
            difficulty.probability(model, text)
            t1 = clock()
            classify.features(parsed.data, requested_model=parsed.model)
            t2 = clock()
            learned.append((t1 - t0) / 1000)
            keyword.append((t2 - t1) / 1000)
        rows.append(ScorerRow(sc.label, len(text.encode()), len(learned),
                              percentile(learned, 0.5), percentile(learned, 0.99),
                              percentile(keyword, 0.5), percentile(keyword, 0.99)))  # fmt: skip
    return rows


def print_scorer(rows: list[ScorerRow]) -> None:
    print()
    print(f"learned difficulty scorer alone (addon.routing.difficulty.probability, included in "
          f"`features` above; target p99 ≤ {SCORER_TARGET_US:.0f} µs up to 8 KB), beside the "
          "keyword features of the same request")  # fmt: skip
    headers = ["prompt", "bytes", "calls", "scorer p50/p99 µs", "keyword features p50/p99 µs",
               "target"]  # fmt: skip
    grid = []
    for r in rows:
        small = r.label.split()[0] in ("100B", "1KB", "8KB")
        ok = "" if not small else ("ok" if r.scorer_p99_us <= SCORER_TARGET_US else "MISSED")
        grid.append([r.label, _kb(r.prompt_bytes), str(r.iterations),
                     f"{fmt_us(r.scorer_p50_us)} / {fmt_us(r.scorer_p99_us)}",
                     f"{fmt_us(r.keyword_p50_us)} / {fmt_us(r.keyword_p99_us)}", ok])  # fmt: skip
    print_grid(headers, grid)


def target_us(label: str) -> float | None:
    name = label.split()[0]
    if name in ("100B", "1KB", "8KB"):
        return SMALL_TARGET_US
    if name == "200KB":
        return LARGE_TARGET_US
    return None


# --------------------------------------------------------------------------- output


def fmt_us(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def print_grid(headers: list[str], rows: list[list[str]], left: int = 1) -> None:
    """A plain-text table: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = (
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(out).rstrip()

    print(line(headers))
    print("-" * len(line(headers)))
    for r in rows:
        print(line(r))


def print_table(title: str, rows: list[Row], *, targets: bool) -> None:
    print(f"\n{title}")
    headers = ["request", "body", "calls", "chain", "gen2 GC"]
    headers += [f"{st} p50/p99" for st in STAGES]
    headers += ["total p50/p99", "CPU p50/p99", "constant p50/p99", "p99/p50 total, constant"]
    if targets:
        headers += ["target (total p99)", "result", "constant"]
    table = []
    for r in rows:
        cells = [r.label, _kb(r.body_bytes), f"{r.iterations:,}", str(r.chain)]
        cells.append(str(r.gen2_collections))
        for st in (*STAGES, "total", "cpu", "constant"):
            cells.append(f"{fmt_us(r.p50_us[st])} / {fmt_us(r.p99_us[st])}")
        ratio = {k: r.p99_us[k] / r.p50_us[k] for k in ("total", "constant")}
        cells.append(f"{ratio['total']:.1f}x, {ratio['constant']:.1f}x")
        if targets:
            t = target_us(r.label)
            if t is None:
                cells += ["-", "-", "-"]
            else:
                verdict = {k: "PASS" if r.p99_us[k] <= t else "FAIL" for k in ("total", "constant")}
                cells += [f"≤ {t:,.0f} µs", verdict["total"], verdict["constant"]]
        table.append(cells)
    print_grid(headers, table)
    print(
        "(µs per call; total = the four stages back to back (wall clock); CPU = this thread's "
        "CPU time for the call, which excludes time the OS gave to other processes; constant = "
        "a pure-Python loop sized to last as long as the row's median call and timed right "
        "after each call: its p99 is what this machine makes of a cost that never changes and "
        "is as long as the routing work, so the gap between the two p99s is the routing work's "
        "own tail"
        + (
            "; the last column checks the constant work against the same target)"
            if targets
            else ")"
        )
    )


def _kb(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KB"


@contextmanager
def bench_view(db: Path = BUNDLED_DB) -> Iterator[tuple[View, float]]:
    """The routing view for the whole bundled catalog, and how long building it took (ms)."""
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        path = write_config(
            Path(tmp),
            base_url=lambda name: f"https://api.{name.replace('_', '-')}.example/v1",
            intercept=["api.openai.com"],
            db=db,
        )
        t0 = time.perf_counter()
        cfg = loader.load(path)
        view = build_view(cfg, {KEY_ENV: "sk-bench"}, {})
        yield view, (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").strip().splitlines()[0]
    p = argparse.ArgumentParser(prog="bench_routing.py", description=doc)
    p.add_argument("--quick", action="store_true", help="tiny iteration counts (for tests)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every iteration count")
    p.add_argument(
        "--sizes", default=",".join(SIZES), help=f"comma-separated subset of {','.join(SIZES)}"
    )
    p.add_argument("--db", default=str(BUNDLED_DB), help="benchmark DB (default: the bundled one)")
    p.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="time budget per row (at least 200 calls are always made; default 5)",
    )
    p.add_argument("--no-kinds", action="store_true", help="skip the request-kind table")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    scale = 0.01 if args.quick else args.scale
    budget = 1.0 if args.quick else args.seconds
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := [n for n in names if n not in SIZES]:
        p.error(f"unknown size(s) {', '.join(unknown)}; use some of {', '.join(SIZES)}")

    with bench_view(Path(args.db)) as (view, build_ms):
        cat = view.catalog
        if len(cat.candidates) < MIN_CATALOG:
            for w in cat.warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(
                f"error: the catalog has {len(cat.candidates)} offerings (< {MIN_CATALOG:,}) from "
                f"{args.db}; rebuild it (`make bundle`) or pass --db PATH",
                file=sys.stderr,
            )
            return 2
        gc.collect()
        gc.freeze()  # as `orchestrator run` does once the config is loaded
        rerank_ms, step_ms, walk_ms = rerank_cost(view)
        print(
            f"routing work per request — catalog {len(cat.candidates):,} offerings from "
            f"{len(cat.providers)} providers ({Path(cat.source.removeprefix('bundled:')).name}), "
            f"{len(view.config.profiles)} profiles x {scoring.LEVELS} weight levels "
            f"({len(set(map(id, view.router.base.values())))} distinct rankings) "
            f"pre-ranked; python {sys.version.split()[0]}, GC on; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f} at start"
        )
        print(
            f"config load + catalog + rankings: {build_ms:,.0f} ms; rerank with 50 observed "
            f"latencies (every 5 s while latency stats change, one ranking per event-loop turn): "
            f"{rerank_ms:,.1f} ms in all, {step_ms:,.2f} ms the longest turn; the first request "
            f"after it rebuilds its filter walk in {walk_ms:,.2f} ms"
        )
        pauses = machine_pauses(0.3 if args.quick else 3.0)
        print(
            f"this machine, a thread spinning on the clock for {pauses.seconds:.1f} s: "
            f"{pauses.per_second:,.0f} pauses a second of {PAUSE_US:.0f} µs or more (p50 "
            f"{fmt_us(pauses.p50_us)} µs, p90 {fmt_us(pauses.p90_us)} µs), {pauses.share:.1%} "
            "of the time; a call of T µs meets one with a chance of about "
            f"{pauses.per_second:,.0f} x T / 1e6"
        )
        size_rows = [measure(view, sc, budget) for sc in size_scenarios(names, scale)]
        print_table(
            "by prompt size (model bench-model, default profile balanced, scored)",
            size_rows,
            targets=True,
        )
        kind_rows = (
            [] if args.no_kinds else [measure(view, sc, budget) for sc in kind_scenarios(scale)]
        )
        if kind_rows:
            print_table("by request kind (1 KB prompt)", kind_rows, targets=False)
        scorer = scorer_rows(view, names, scale)
        if scorer:
            print_scorer(scorer)
    print(
        f"targets: p99 ≤ {SMALL_TARGET_US:.0f} µs for prompts up to 8 KB, "
        f"≤ {LARGE_TARGET_US / 1000:.0f} ms at 200 KB"
    )
    if args.json:
        out = {
            "catalog_offerings": len(cat.candidates),
            "build_ms": build_ms,
            "rerank_ms": rerank_ms,
            "rerank_longest_step_ms": step_ms,
            "walk_after_rerank_ms": walk_ms,
            "pauses": asdict(pauses),
            "sizes": [asdict(r) for r in size_rows],
            "kinds": [asdict(r) for r in kind_rows],
            "scorer": [asdict(r) for r in scorer],
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
