"""The status page: one self-contained HTML document (`statuspage.html`: inline CSS and JS,
nothing external), and `status_text`, the same `/status` numbers as `orchestrator status`
prints them (provider breakers and target breakers, each with the cooldown left while open).

The page polls the same origin every POLL_MS (2 s; a countdown ticks every second between):
`GET /overview?window=1h|24h|7d` (totals, per served model, per provider, per requested
model, spend and requests over time), `GET /requests?window&outcome&model&client` (recent
requests, newest first), `GET /budgets`, `GET /limits` and `GET /status` (config and its
last reload error, providers' keys, breakers). `#request=ID` opens one request's detail from
`GET /requests/ID`: the fields, attempts and reasons `orchestrator explain ID` prints.
Every value is inserted with `textContent` or as an SVG attribute, never as markup. Key
numbers carry stable ids (`total-requests`, `error-rate`, `total-spend`, `latency-p95`, …),
table rows `data-key` and cells `data-col`; `<body data-loaded="1">` marks the first
complete render, `data-refreshes` counts them.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

from addon.store.reports import utc_iso

_TITLE = "@@TITLE@@"
PAGE_FILE = "statuspage.html"  # beside this module; shipped as package data


def render_page(title: str = "Local AI Orchestrator") -> bytes:
    """The status page (PAGE_FILE) as UTF-8 HTML; `title` is escaped."""
    page = resources.files(__package__ or "addon.proxy").joinpath(PAGE_FILE).read_text("utf-8")
    return page.replace(_TITLE, html.escape(title)).encode()


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
