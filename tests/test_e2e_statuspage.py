"""End to end: the status page in Chromium (issue 21) against a live `orchestrator run` with
mixed traffic from the openai SDK — successes, a fallback, a truncated stream, a budget
that blocks. The page's numbers are checked against the SQLite ledger read directly, a
request's detail view against `orchestrator explain`, the p95 against `/metrics`'
histogram; screenshots at 1280x800 and 390x844 go to the test's tmp_path."""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright import sync_api as playwright  # a dev dependency: a missing one fails

from tests.e2e import (
    CLIENT_KEY,
    ENV,
    RULES,
    _config,
    _free_port,
    all_ledger_rows,
    ledger_row,
    ups,
)
from tests.fakeupstream import CutStream, FakeUpstream, Status
from tests.proxyproc import ORCHESTRATOR, ProxyProcess

__all__ = ["ups"]
CHROMIUM = "/usr/bin/chromium"  # Debian's (scripts/system_deps.sh); never `playwright install`
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
        reason="chromium is not installed (scripts/system_deps.sh; CI installs it)",
    ),
]
BUDGET_USD = 0.0005  # the first capped call fits, the next ones are refused
QUALITY = {"X-Orchestrator-Profile": "quality"}  # alpha's m-premium first
CHEAP = {"X-Orchestrator-Profile": "budget"}  # beta's m-cheap first
CAPPED = {"x-team": "capped"}
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TIMEOUT_MS = 20_000
EXPLAIN_LABELS = ("time", "client", "api", "profile", "policy", "model", "tokens", "cost",
                  "requested", "timing", "outcome", "error")  # fmt: skip


def page_rules() -> dict[str, Any]:
    policies = [{"name": "capped", "match": {"headers": {"x-team": "capped"}},
                 "profile": "quality",
                 "budget": {"usd": BUDGET_USD, "per": "day", "on_exceed": "block"}}]  # fmt: skip
    return {**RULES, "policies.yaml": {"policies": policies}}


@pytest.fixture(scope="module")
def live(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    cfg = _config(ups)
    cfg["admin"] = {"listen": f"127.0.0.1:{_free_port()}"}
    cfg["providers"]["beta"] |= {"limits": {"rpm": 1000}, "apis": ["chat", "responses"]}
    p = ProxyProcess(tmp_path_factory.mktemp("statuspage"), cfg, page_rules(), ENV).start()
    yield p
    p.stop()


def sdk(live: ProxyProcess) -> openai.OpenAI:
    """The openai SDK aimed at api.openai.com through the proxy, trusting its CA."""
    ca = ssl.create_default_context(cafile=str(live.ca_cert))
    http = httpx.Client(proxy=live.url, verify=ca, timeout=30)
    return openai.OpenAI(api_key=CLIENT_KEY, base_url="https://api.openai.com/v1",
                         max_retries=0, http_client=http)  # fmt: skip


@pytest.fixture(scope="module")
def traffic(live: ProxyProcess, ups: dict[str, FakeUpstream]) -> dict[str, str]:
    """Mixed traffic through the proxy; the request id of each kind, once in the ledger."""
    oai = sdk(live)
    msgs: Any = [{"role": "user", "content": "hello there, router"}]
    ids: dict[str, str] = {}

    def chat(headers: dict[str, str], **kw: Any) -> str:
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=msgs, max_tokens=7, extra_headers=headers, **kw
        )
        raw.parse()
        return raw.headers["x-orchestrator-request-id"]

    for i in range(3):
        ids[f"quality-{i}"] = chat(QUALITY)
        ids[f"cheap-{i}"] = chat(CHEAP)
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=msgs, stream=True, extra_headers=CHEAP
    ) as resp:
        ids["stream"] = resp.headers["x-orchestrator-request-id"]
        assert "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    raw = oai.responses.with_raw_response.create(model="gpt-4o", input="Hi", extra_headers=CHEAP)
    raw.parse()
    ids["responses"] = raw.headers["x-orchestrator-request-id"]
    ups["alpha"].fail(Status(500), Status(500))  # alpha fails its retry too: beta answers
    ids["fallback"] = chat(QUALITY)
    ups["alpha"].fail(CutStream(after_events=2))  # cut mid-answer: truncated, never a success
    with (
        pytest.raises((openai.APIError, httpx.HTTPError)),
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=msgs, stream=True, extra_headers=QUALITY
        ) as resp,
    ):
        ids["truncated"] = resp.headers["x-orchestrator-request-id"]
        for _ in resp.parse():
            pass
    statuses = []
    for i in range(3):  # the first fits the budget, the rest are refused
        try:
            ids[f"capped-{i}"] = chat(CAPPED)
            statuses.append(200)
        except openai.APIStatusError as e:
            ids[f"capped-{i}"] = e.response.headers["x-orchestrator-request-id"]
            statuses.append(e.status_code)
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    oai.close()
    rows = {k: ledger_row(live, rid) for k, rid in ids.items()}
    assert rows["fallback"]["attempts"] == 3 and rows["fallback"]["outcome"] == "ok"
    assert rows["fallback"]["provider"] == "beta"
    assert rows["truncated"]["outcome"] == "truncated"
    assert rows["responses"]["api"] == "responses"
    return ids


def ledger(live: ProxyProcess) -> list[dict[str, Any]]:
    """Every committed ledger row, oldest first."""
    return sorted(all_ledger_rows(live), key=lambda r: r["ts"])


def served(row: dict[str, Any]) -> str:
    """The model that answered: the last attempt at the provider that did."""
    attempts = json.loads(row["attempt_log"] or "[]")
    at = [a["model"] for a in attempts if a.get("provider") == row["provider"]]
    return at[-1] if row["provider"] and at else "(not served)"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def shown_ms(text: str) -> float:
    """`812 ms` or `1.23 s`, as the page prints a duration, in ms."""
    m = re.fullmatch(r"([\d.]+) (ms|s)", text)
    assert m, text
    return float(m.group(1)) * (1000 if m.group(2) == "s" else 1)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def histogram(metrics: str, name: str) -> tuple[list[tuple[float, float]], float]:
    """Cumulative (le, count) summed over every label set, and the total count."""
    buckets: dict[float, float] = {}
    total = 0.0
    for line in metrics.splitlines():
        if m := re.match(rf'{name}_bucket\{{.*\ble="([^"]+)".*\}} (\S+)', line):
            le = float(m.group(1))
            buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
        elif m := re.match(rf"{name}_count\{{.*\}} (\S+)", line):
            total += float(m.group(1))
    return sorted(buckets.items()), total


def explain_cli(live: ProxyProcess, rid: str) -> dict[str, Any]:
    """`orchestrator explain RID` against the live config, taken apart by label."""
    out = subprocess.run([str(ORCHESTRATOR), "explain", "-c", str(live.config_path), rid],
                         capture_output=True, text=True, timeout=30, cwd=live.workdir,
                         check=True)  # fmt: skip
    fields, attempts, reasons = {}, [], []
    for line in out.stdout.splitlines():
        label = line[:10].strip()
        if m := re.match(r"  \d+\. (.*)$", line):
            attempts.append([p for p in m.group(1).split("  ", 4)])
        elif line.startswith("  - "):
            reasons.append(line[4:])
        elif label in EXPLAIN_LABELS:
            fields[label] = line[10:]
    return {"fields": fields, "attempts": attempts, "reasons": reasons}


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_status_page_in_a_browser(
    live: ProxyProcess, traffic: dict[str, str], browser: Any, tmp_path: Path
) -> None:
    admin = live.admin_url()
    rows = ledger(live)
    assert {r["id"] for r in rows} >= set(traffic.values())
    ctx = browser.new_context(
        viewport=dict(zip(("width", "height"), SIZES["desktop"], strict=True))
    )
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: r.url.startswith(admin) or problems.append(r.url))
    page.goto(f"{admin}/")
    page.click('[data-window="1h"]')
    want = len(rows)
    page.wait_for_function(
        "n => document.body.dataset.loaded === '1' && "
        "document.getElementById('total-requests').textContent === String(n)", arg=want,
        timeout=TIMEOUT_MS,
    )  # fmt: skip

    def text(selector: str) -> str:
        return str(page.text_content(selector)).strip()

    failed = [r for r in rows if r["outcome"] in ("error", "truncated")]
    spend = math.fsum(r["cost_usd"] for r in rows if r["cost_usd"] is not None)
    routed = [r for r in rows if r["outcome"] != "unrouted" and (r["attempts"] or 0) >= 1]
    fallbacks = sum(1 for r in routed if r["attempts"] > 1)
    assert text("#error-rate") == f"{len(failed) / want * 100:.1f}%" and failed
    assert text("#failed-count") == str(len(failed))
    assert text("#total-spend") == f"${spend:.6f}"
    assert text("#fallback-rate") == f"{fallbacks / len(routed) * 100:.1f}%" and fallbacks
    latencies = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    ledger_p95 = p95(latencies)
    assert abs(shown_ms(text("#latency-p95")) - ledger_p95) <= (0.5 if ledger_p95 < 1000 else 5)
    metrics = httpx.get(f"{admin}/metrics", timeout=10).text
    buckets, count = histogram(metrics, "orchestrator_request_latency_seconds")
    assert count == len(latencies)
    rank = math.ceil(0.95 * count)
    at = next(i for i, (_, n) in enumerate(buckets) if n >= rank)
    below = buckets[at - 1][0] if at else 0.0
    assert below < ledger_p95 / 1000 <= buckets[at][0]  # the p95 sits in the histogram's bucket
    ttfts = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
    assert histogram(metrics, "orchestrator_ttft_seconds")[1] == len(ttfts) and ttfts

    # per served model and per provider, as the ledger has them
    for table, key in (
        ("models", served),
        ("providers", lambda r: r["provider"] or "(not served)"),
    ):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(key(r), []).append(r)
        shown = page.eval_on_selector_all(
            f"#{table} tr[data-key]",
            "trs => trs.map(tr => [tr.dataset.key, ...['requests', 'error_rate', 'spend']"
            ".map(c => tr.querySelector(`[data-col=${c}]`).textContent)])",
        )
        assert {k for k, *_ in shown} == set(groups), table
        for k, n, rate, cost in shown:
            g = groups[k]
            bad = sum(1 for r in g if r["outcome"] in ("error", "truncated"))
            priced = [r["cost_usd"] for r in g if r["cost_usd"] is not None]
            assert (int(n), rate) == (len(g), f"{bad / len(g) * 100:.1f}%"), (table, k)
            assert cost == (f"${math.fsum(priced):.6f}" if priced else "-"), (table, k)

    # spend and requests over time: 5-minute buckets in the 1 h window, every row counted
    bars = page.eval_on_selector_all("#requests-chart rect.bar:not(.fail)", "rs => rs.length")
    assert bars == 13 or bars == 12, bars  # 12 whole buckets, the first and last cut
    assert re.fullmatch(r"per 5 min, .+", text("#spend-caption"))
    assert page.eval_on_selector_all("#spend-chart text", "ts => ts.length") >= 4  # axis labels

    # the budget that refused requests shows as blocking
    budget = page.locator('#budgets tr[data-key="capped/capped"]')
    assert budget.get_attribute("data-state") == "blocking"
    assert budget.locator('[data-col="state"]').text_content() == "blocking"
    assert budget.locator('[data-col="cap"]').text_content() == "$0.0005 / day"
    refused = sum(1 for r in rows if str(r["error"] or "").startswith("budget 'capped' exceeded"))
    assert budget.locator('[data-col="refused"]').text_content() == str(refused) and refused
    assert page.locator('#rate-limits tr[data-key="provider/beta"] [data-col="requests"]') \
        .text_content().endswith(" / 1000")  # fmt: skip
    assert page.locator('#provider-breakers tr[data-key="alpha"] [data-col="api_key"]') \
        .text_content() == "set"  # fmt: skip

    # recent requests: newest first, each with its API, filterable
    recent = page.eval_on_selector_all("#recent tr[data-id]", "trs => trs.map(tr => tr.dataset.id)")
    newest = [r["id"] for r in sorted(rows, key=lambda r: r["ts"], reverse=True)]
    assert recent == newest[: len(recent)] and len(recent) == min(50, want)
    api = page.text_content(f'#recent tr[data-id="{traffic["responses"]}"] [data-col="api"]')
    assert api == "responses"
    page.select_option("#f-outcome", "truncated")
    page.wait_for_function(
        "ids => { const got = [...document.querySelectorAll('#recent tr[data-id]')]"
        ".map(tr => tr.dataset.id); return JSON.stringify(got) === JSON.stringify(ids); }",
        arg=[r["id"] for r in rows[::-1] if r["outcome"] == "truncated"], timeout=TIMEOUT_MS,
    )  # fmt: skip
    page.select_option("#f-outcome", "")
    page.select_option("#f-model", "m-cheap")
    page.wait_for_function(
        "n => document.querySelectorAll('#recent tr[data-id]').length === n",
        arg=sum(1 for r in rows if "m-cheap" in (served(r), r["requested_model"])),
        timeout=TIMEOUT_MS,
    )
    page.select_option("#f-model", "")

    page.screenshot(path=str(tmp_path / "status-1280x800.png"))
    page.screenshot(path=str(tmp_path / "status-1280-full.png"), full_page=True)

    # a request's detail view shows what `orchestrator explain` prints
    rid = traffic["fallback"]
    page.wait_for_selector(f'#recent tr[data-id="{rid}"] a', timeout=TIMEOUT_MS)
    page.click(f'#recent tr[data-id="{rid}"] a')
    page.wait_for_selector('#detail[data-loaded="1"]', timeout=TIMEOUT_MS)
    cli = explain_cli(live, rid)
    fields = dict(page.eval_on_selector_all(
        "#d-fields dd", "dds => dds.map(dd => [dd.dataset.field, dd.textContent])"
    ))  # fmt: skip
    assert fields == cli["fields"]
    assert fields["profile"].startswith("quality — ") and fields["model"].endswith("@ beta")
    attempts = page.eval_on_selector_all(
        "#d-attempts tr", "trs => trs.map(tr => [...tr.cells].slice(1).map(c => c.textContent))"
    )
    assert [[c for c in a if c] for a in attempts] == [
        [a[0], a[1], a[2].removeprefix("status "), a[3], *a[4:]] for a in cli["attempts"]
    ]
    assert [a[1] for a in attempts] == ["server_error", "server_error", "ok"]
    reasons = page.eval_on_selector_all("#d-reasons li", "ls => ls.map(l => l.textContent)")
    assert reasons == cli["reasons"] and any(r.startswith("chain 2. beta:") for r in reasons)
    page.screenshot(path=str(tmp_path / "detail-1280x800.png"))
    page.click("#d-close")

    # a long reload error stays wrapped; the phone layout does not overflow
    config = live.config_path.read_text()
    long_key = "nonsense_" + "x" * 400
    live.config_path.write_text(config + f"{long_key}: 1\n")
    page.set_viewport_size(dict(zip(("width", "height"), SIZES["phone"], strict=True)))
    page.wait_for_selector("#config-error-card:not([hidden])", timeout=TIMEOUT_MS)
    assert long_key in text("#config-error")
    card = page.eval_on_selector(
        "#config-error-card", "c => [c.scrollWidth, c.clientWidth, c.getBoundingClientRect().right]"
    )
    assert card[0] <= card[1] and card[2] <= SIZES["phone"][0], card
    page.wait_for_function("() => document.body.dataset.refreshes > 0", timeout=TIMEOUT_MS)
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "status-390x844.png"))
    page.screenshot(path=str(tmp_path / "status-390-full.png"), full_page=True)
    page.click(f'#recent tr[data-id="{rid}"] a')
    page.wait_for_selector('#detail[data-loaded="1"]', timeout=TIMEOUT_MS)
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width
    page.screenshot(path=str(tmp_path / "detail-390x844.png"))
    live.config_path.write_text(config)

    # a new request shows up without a reload of the page
    page.evaluate("() => { window.sameDocument = true; }")
    with sdk(live) as oai:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                    extra_headers=CHEAP)  # fmt: skip
    page.wait_for_function(
        "n => document.getElementById('total-requests').textContent === String(n)",
        arg=want + 1, timeout=TIMEOUT_MS,
    )  # fmt: skip
    assert page.evaluate("() => window.sameDocument === true")

    for name, size in (("status-1280x800", SIZES["desktop"]), ("status-390x844", SIZES["phone"]),
                       ("detail-1280x800", SIZES["desktop"]), ("detail-390x844", SIZES["phone"])):  # fmt: skip
        shot = tmp_path / f"{name}.png"
        assert png_size(shot) == size and shot.stat().st_size > 10_000, name
    assert problems == []  # no script error, nothing fetched from anywhere but the admin port
    ctx.close()
