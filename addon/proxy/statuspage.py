"""The status page: one self-contained HTML document (inline CSS and JS, nothing external),
and `status_text`, the same `/status` numbers as `orchestrator status` prints them (provider
breakers and target breakers, each with the cooldown left while open).

The page polls the same origin every 5 s: `GET /costs?since=24h&by=model` (the
`addon.store.reports.as_json` shape), `GET /costs/series?since=24h&buckets=24` and `GET /status`.
Every value it shows is inserted with `textContent` or as an SVG attribute, never as markup.
Key numbers carry stable ids (`total-spend`, `total-requests`, `unpriced`, `fallback-rate`,
`config-version`) and `<body data-loaded="1">` marks the first complete render.
"""

from __future__ import annotations

import html
from typing import Any

from addon.store.reports import utc_iso

_TITLE = "@@TITLE@@"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>@@TITLE@@</title>
<style>
:root { color-scheme: light dark; --fg: #1d2330; --muted: #667085; --bg: #f6f7f9;
  --card: #fff; --line: #d9dde3; --bar: #3b6fd8; --ok: #1a7f37; --bad: #c0362c; --warn: #b7791f; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e8ec; --muted: #98a2b3;
  --bg: #14171c; --card: #1c2027; --line: #2f3541; --bar: #6d9bff; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem; font: 14px/1.45 system-ui, sans-serif; color: var(--fg);
  background: var(--bg); }
h1 { font-size: 1.25rem; margin: 0 0 .25rem; }
h2 { font-size: .95rem; margin: 0 0 .5rem; color: var(--muted); font-weight: 600; }
.sub, .muted { color: var(--muted); }
.grid { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(11rem, 1fr));
  margin: 1rem 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: .9rem 1rem; }
.num { font-size: 1.5rem; font-variant-numeric: tabular-nums; font-weight: 600; }
.wide { margin-top: 1rem; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); }
td.r, th.r { text-align: right; }
.share { background: var(--line); border-radius: 3px; height: .55rem; min-width: 6rem; }
.share > span { display: block; height: 100%; background: var(--bar); border-radius: 3px; }
.closed { color: var(--ok); } .open { color: var(--bad); } .half_open { color: var(--warn); }
#chart { width: 100%; height: 160px; display: block; }
#chart rect { fill: var(--bar); } #chart text { fill: var(--muted); font-size: 11px; }
#problem { color: var(--bad); min-height: 1.2em; }
</style>
</head>
<body data-loaded="0">
<h1>@@TITLE@@</h1>
<div class="sub">last 24 h · config <span id="config-version">-</span>
  <span id="config-loaded" class="muted"></span> · updated <span id="updated">never</span></div>
<div class="sub">ledger <span id="ledger-store">-</span> · state <span id="state-store">-</span></div>
<div id="problem" role="status"></div>
<div class="grid">
  <div class="card"><h2>Spend</h2><div class="num" id="total-spend">-</div></div>
  <div class="card"><h2>Requests</h2><div class="num" id="total-requests">-</div>
    <div class="muted"><span id="ok-count">-</span> ok · <span id="error-count">-</span> errors</div></div>
  <div class="card"><h2>Unpriced</h2><div class="num" id="unpriced">-</div>
    <div class="muted">requests with tokens but no known price</div></div>
  <div class="card"><h2>Fallback rate</h2><div class="num" id="fallback-rate">-</div>
    <div class="muted">routed requests needing more than one attempt</div></div>
</div>
<div class="card wide"><h2>Spend over time (UTC)</h2>
  <svg id="chart" viewBox="0 0 720 160" preserveAspectRatio="none" role="img"
    aria-label="spend per hour"></svg></div>
<div class="card wide"><h2>Per model</h2>
  <table><thead><tr><th>model</th><th class="r">requests</th><th class="r">spend</th>
    <th class="r">unpriced</th><th class="r">share</th><th></th></tr></thead>
  <tbody id="models"></tbody></table></div>
<div class="card wide"><h2>Provider breakers</h2>
  <table><thead><tr><th>provider</th><th>state</th><th class="r">failures</th>
    <th class="r">cooldown left</th></tr></thead>
  <tbody id="provider-breakers"></tbody></table></div>
<div class="card wide"><h2>Circuit breakers</h2>
  <table><thead><tr><th>target</th><th>state</th><th class="r">failures</th>
    <th class="r">cooldown left</th></tr></thead>
  <tbody id="breakers"></tbody></table></div>
<div class="card wide" id="config-error-card" hidden><h2>Config reload error</h2>
  <pre id="config-error"></pre></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const chart = $("chart");
const SVG = chart.namespaceURI;
const money = (x) => (x === null || x === undefined ? "-" : "$" + Number(x).toFixed(6));
const pct = (x) => (x === null || x === undefined ? "-" : (Number(x) * 100).toFixed(1) + "%");
const hhmm = (ts) => new Date(ts * 1000).toISOString().slice(11, 16);
function text(id, value) { $(id).textContent = String(value); }
function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = String(value);
  if (cls) td.className = cls;
  return td;
}
function svg(tag, attrs, label) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (label !== undefined) node.textContent = String(label);
  return node;
}
async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store", headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(path + " answered HTTP " + r.status);
  return r.json();
}
function renderCosts(data) {
  const t = data.total;
  text("total-spend", money(t.spend_usd));
  text("total-requests", t.requests);
  text("ok-count", t.ok);
  text("error-count", t.errors);
  text("unpriced", t.unpriced);
  text("fallback-rate", pct(t.fallback_rate));
  const body = $("models");
  body.replaceChildren();
  for (const g of data.groups) {
    const row = body.insertRow();
    const share = t.spend_usd > 0 ? g.spend_usd / t.spend_usd : 0;
    cell(row, g.key);
    cell(row, g.requests, "r");
    cell(row, g.priced ? money(g.spend_usd) : "-", "r");
    cell(row, g.unpriced, "r");
    cell(row, pct(share), "r");
    const bar = document.createElement("div");
    bar.className = "share";
    const fill = document.createElement("span");
    fill.style.width = (share * 100).toFixed(1) + "%";
    bar.append(fill);
    row.insertCell().append(bar);
  }
  if (!data.groups.length) cell(body.insertRow(), "no requests in the last 24 h", "muted").colSpan = 6;
}
function renderSeries(data) {
  const series = data.series || [];
  const W = 720, H = 160, top = 14, bottom = 18;
  chart.replaceChildren();
  const max = Math.max(0, ...series.map((b) => b[1]));
  if (!series.length || max <= 0) {
    chart.append(svg("text", { x: 8, y: H / 2 }, "no priced spend in the last 24 h"));
    return;
  }
  const step = W / series.length;
  series.forEach(([start, spend, requests], i) => {
    const h = (spend / max) * (H - top - bottom);
    const bar = svg("rect", { x: i * step + 1, y: H - bottom - h, width: Math.max(step - 2, 1), height: h });
    bar.append(svg("title", {}, hhmm(start) + "  " + money(spend) + "  " + requests + " requests"));
    chart.append(bar);
  });
  chart.append(svg("text", { x: 4, y: 11 }, "max " + money(max)));
  chart.append(svg("text", { x: 4, y: H - 4 }, hhmm(series[0][0])));
  chart.append(svg("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, hhmm(series[series.length - 1][0])));
}
function renderStatus(data) {
  const cfg = data.config || {};
  text("config-version", cfg.version ?? "-");
  text("config-loaded", cfg.loaded_at ? "(loaded " + new Date(cfg.loaded_at * 1000).toISOString().slice(0, 19) + "Z)" : "");
  $("config-error-card").hidden = !cfg.last_error;
  text("config-error", cfg.last_error || "");
  const lg = data.ledger || {}, st = data.state || {};
  text("ledger-store", (lg.kind || "-") + " " + (lg.where || "") +
       (lg.connected === false ? " (unreachable, " + (lg.spooled || 0) + " rows spooled)" : ""));
  text("state-store", st.kind === "redis"
       ? "redis " + st.where + (st.connected ? "" : " (unreachable)") : (st.kind || "-"));
  renderBreakers("provider-breakers", data.provider_breakers, "provider", "no provider tripped");
  renderBreakers("breakers", data.breakers, "target", "no targets tracked yet");
}
function renderBreakers(id, rows, key, none) {
  const body = $(id);
  body.replaceChildren();
  for (const b of rows || []) {
    const row = body.insertRow();
    cell(row, b[key]);
    cell(row, String(b.state).replace("_", "-"), b.state);
    cell(row, b.failures, "r");
    cell(row, b.cooldown_left_s ? Number(b.cooldown_left_s).toFixed(1) + " s" : "-", "r");
  }
  if (!(rows || []).length) cell(body.insertRow(), none, "muted").colSpan = 4;
}
async function refresh() {
  const jobs = [
    ["/costs?since=24h&by=model", renderCosts],
    ["/costs/series?since=24h&buckets=24", renderSeries],
    ["/status", renderStatus],
  ];
  const results = await Promise.allSettled(jobs.map(([path, render]) => getJSON(path).then(render)));
  const failed = results.filter((r) => r.status === "rejected").map((r) => String(r.reason && r.reason.message || r.reason));
  text("problem", failed.length ? "refresh failed: " + failed.join("; ") : "");
  if (!failed.length) {
    text("updated", new Date().toISOString().slice(11, 19) + "Z");
    document.body.dataset.loaded = "1";
  }
  setTimeout(refresh, 5000);
}
refresh();
</script>
</body>
</html>
"""


def render_page(title: str = "Local AI Orchestrator") -> bytes:
    """The status page as UTF-8 HTML; `title` is escaped."""
    return _PAGE.replace(_TITLE, html.escape(title)).encode()


def status_text(st: dict[str, Any]) -> str:
    """`/status` as the lines `orchestrator status` prints: config and its last rejected
    edit, catalog, providers, breakers, budgets, ledger and shared state."""
    out: list[str] = []
    c = st["config"]
    out.append(f"config {c['path']} version {c['version']}, loaded "
               f"{utc_iso(c['loaded_at'])}")  # fmt: skip
    if c.get("last_error"):
        out.append(f"last reload REJECTED ({utc_iso(c['last_error_at'])}):\n"
                   f"{c['last_error']}")  # fmt: skip
    cat = st["catalog"]
    out.append(f"catalog: {cat['candidates']} candidates from {cat['source']}")
    for p in st["providers"]:
        out.append(f"provider {p['name']:<12} key {p['key']}")
    for b in st.get("provider_breakers", []):
        out.append(f"provider breaker {b['provider']:<32} {b['state']:<9} failures "
                   f"{b['failures']}{_left(b)}")  # fmt: skip
    breakers = st["breakers"] or [{"target": "(none tripped)", "state": "closed", "failures": 0}]
    for b in breakers:
        out.append(f"breaker  {b['target']:<40} {b['state']:<9} failures {b['failures']}"
                   f"{_left(b)}")  # fmt: skip
    for b in st["budgets"]:
        out.append(f"budget   {b['rule']} [{b['scope']}] ${b['spent']:.6f} spent + "
                   f"${b['reserved']:.6f} in flight of ${b['limit']:.2f} per {b['per']}")  # fmt: skip
    lg = st["ledger"]
    out.append(f"ledger {lg['where']}: {lg['rows']} rows, {lg['bytes']} bytes"
               + (f", {lg['spooled']} spooled while the database is unreachable"
                  if lg.get("spooled") else ""))  # fmt: skip
    shared = st.get("state", {})
    if shared.get("kind") == "redis":
        out.append(f"state  {shared['where']}: "
                   + ("connected" if shared.get("connected") else
                      f"UNREACHABLE ({shared.get('last_error')})"))  # fmt: skip
    return "\n".join(out)


def _left(row: dict[str, Any]) -> str:
    """`, cooldown 12.3 s left` for an open breaker's row, else nothing."""
    left = row.get("cooldown_left_s") or 0
    return f", cooldown {left:.1f} s left" if left > 0 else ""
