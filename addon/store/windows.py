"""The status page's numbers over one window of ledger rows (pure functions of rows and
`now`, shaped for JSON): per served model, per provider and per requested alias, spend and
requests over time, recent requests with their facets, and one request's detail.

    WINDOWS          the windows the page offers: 1h, 24h, 7d, each with its bucket width
    overview         totals, groups and the time series of one window
    recent           the newest rows first, filtered by outcome / model / client
    detail           one row as `orchestrator explain` shows it, structured and as text

Budgets and rate limits with their state are `addon.store.allowances`.

A *served* model is the catalog's id of the target that answered (`served_model`): a
requested alias (`auto`, `gpt-4o`, `orchestrator/speed`) is never mixed into those groups;
it has a table of its own. A row nothing answered (unrouted, refused by a budget, every
attempt failed) is grouped under NOT_SERVED. *Failed* is `error` or `truncated`: a stream
cut mid-answer failed even though its status was 200. Percentiles are nearest-rank over
the rows, like `orchestrator costs`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from addon.store.reports import Row, explain, summarize, totals

WINDOWS: dict[str, tuple[int, int]] = {  # name: (length, bucket width), seconds
    "1h": (3600, 300),
    "24h": (86400, 3600),
    "7d": (7 * 86400, 6 * 3600),
}
FAILED = ("error", "truncated")
NOT_SERVED = "(not served)"
RECENT_MAX = 500
RECENT_COLUMNS = ("id", "ts", "api", "client", "requested_model", "routed_model", "provider",
                  "profile", "outcome", "status", "attempts", "stream", "latency_ms", "ttft_ms",
                  "cost_usd", "unpriced")  # fmt: skip


def window_bounds(name: str, now: float) -> tuple[float, int]:
    """(start, bucket width) of the window `name` ending at `now`; ValueError naming the
    choices for any other name."""
    if name not in WINDOWS:
        raise ValueError(f"window: {name!r} is not offered — use one of {', '.join(WINDOWS)}")
    length, step = WINDOWS[name]
    return now - length, step


def served_model(row: Row) -> str:
    """The model that answered the row, as the catalog names it (its last attempt at the
    answering provider; `/metrics` labels it the same), NOT_SERVED when nothing answered."""
    provider = row.get("provider")
    if not provider:
        return NOT_SERVED
    for a in reversed(row.get("attempt_log") or []):
        if isinstance(a, Mapping) and a.get("provider") == provider and a.get("model"):
            return str(a["model"])
    return str(row.get("routed_model") or NOT_SERVED)


def provider_of(row: Row) -> str:
    """The provider that answered the row, NOT_SERVED when nothing did."""
    return str(row.get("provider") or NOT_SERVED)


def failed(row: Row) -> bool:
    """The client did not get a whole answer: `error` or `truncated`."""
    return row.get("outcome") in FAILED


def group_json(key: str, rows: Sequence[Row]) -> dict[str, Any]:
    """The `CostGroup` of `rows` as a dict, plus `failed` and `error_rate` (failed / requests)."""
    n = sum(1 for r in rows if failed(r))
    return {**asdict(summarize(key, rows)), "failed": n,
            "error_rate": n / len(rows) if rows else 0.0}  # fmt: skip


def grouped(rows: Iterable[Row], key: Callable[[Row], str]) -> list[dict[str, Any]]:
    """One `group_json` per distinct key: most requests first, then by key; NOT_SERVED last."""
    parts: dict[str, list[Row]] = {}
    for row in rows:
        parts.setdefault(key(row), []).append(row)
    groups = [group_json(k, v) for k, v in parts.items()]
    return sorted(groups, key=lambda g: (g["key"] == NOT_SERVED, -g["requests"], g["key"]))


def requested_groups(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Per requested model string: requests, spend, what it would have cost, savings, and
    which served models answered it (`served_as`: [model, count], most first)."""
    parts: dict[str, list[Row]] = {}
    for row in rows:
        parts.setdefault(str(row.get("requested_model") or "(none)"), []).append(row)
    out = []
    for key, part in parts.items():
        g = summarize(key, part)
        served = Counter(served_model(r) for r in part).most_common()
        out.append({"key": key, "requests": g.requests, "spend_usd": g.spend_usd,
                    "requested_usd": g.requested_usd, "savings_usd": g.savings_usd,
                    "served_as": [list(s) for s in served]})  # fmt: skip
    return sorted(out, key=lambda g: (-g["requests"], g["key"]))


def series(rows: Iterable[Row], since: float, until: float, step: int) -> list[dict[str, Any]]:
    """Requests, failures and known spend per bucket of `step` seconds over [since, until].
    Bucket edges sit on multiples of `step` since the epoch (UTC: 5-minute marks, whole hours,
    00/06/12/18 h), so the first and last buckets are cut to the window: each bucket says
    its own `start` and `end`."""
    first = math.floor(since / step) * step
    count = max(1, math.ceil((until - first) / step))
    out = [{"start": max(first + i * step, since), "end": min(first + (i + 1) * step, until),
            "requests": 0, "failed": 0, "spend_usd": 0.0} for i in range(count)]  # fmt: skip
    for row in rows:
        ts = row["ts"]
        if not since <= ts <= until:
            continue
        b = out[min(int((ts - first) // step), count - 1)]
        b["requests"] += 1
        b["failed"] += failed(row)
        if row.get("cost_usd") is not None:
            b["spend_usd"] += row["cost_usd"]
    return out


def overview(rows: Sequence[Row], window: str, now: float) -> dict[str, Any]:
    """Everything the page shows for one window: totals, per served model, per provider,
    per requested model, and the time series."""
    since, step = window_bounds(window, now)
    inside = [r for r in rows if since <= r["ts"] <= now]
    return {
        "window": window, "since": since, "until": now, "bucket_s": step,
        "total": group_json("total", inside) | {"unpriced": totals(inside).unpriced},
        "models": grouped(inside, served_model),
        "providers": grouped(inside, provider_of),
        "requested": requested_groups(inside),
        "series": series(inside, since, now, step),
    }  # fmt: skip


def brief(row: Row) -> dict[str, Any]:
    """The columns the recent-requests table shows, and `served` (`served_model`)."""
    return {**{c: row.get(c) for c in RECENT_COLUMNS}, "served": served_model(row)}


def recent(
    rows: Sequence[Row],
    *,
    outcome: str = "",
    model: str = "",
    client: str = "",
    limit: int = 50,
) -> dict[str, Any]:
    """The newest `limit` rows first matching every filter given (`model` matches the
    served or the requested model), and the values each filter can take in `rows`."""
    if not 1 <= limit <= RECENT_MAX:
        raise ValueError(f"limit: {limit} is out of range — use 1 to {RECENT_MAX}")

    def keep(r: Row) -> bool:
        return ((not outcome or r.get("outcome") == outcome)
                and (not model or model in (served_model(r), r.get("requested_model")))
                and (not client or r.get("client") == client))  # fmt: skip

    picked = [brief(r) for r in sorted(rows, key=lambda r: r["ts"], reverse=True) if keep(r)]

    def values(*columns: str) -> list[str]:
        return sorted({str(r[c]) for r in rows for c in columns if r.get(c)})

    return {"requests": picked[:limit], "matched": len(picked),
            "facets": {"outcome": values("outcome"), "client": values("client"),
                       "served": sorted({m for r in rows if (m := served_model(r)) != NOT_SERVED}),
                       "requested": values("requested_model")}}  # fmt: skip


EXPLAIN_LABELS = ("time", "client", "api", "profile", "policy", "model", "attempts", "tokens",
                  "cost", "requested", "timing", "outcome", "error", "reasons")  # fmt: skip
LABEL_WIDTH = 10  # `reports.explain` pads each label to this width


def explain_parts(text: str) -> dict[str, Any]:
    """The text `reports.explain` printed, taken apart so the page shows exactly what
    `orchestrator explain` does: `fields` ([label, value] in order; a value that runs over
    lines keeps them), `attempts` (each `{n, target, outcome, status, time, message}` as
    printed) and `reasons`."""
    fields: list[list[str]] = []
    attempts: list[dict[str, str]] = []
    reasons: list[str] = []
    in_reasons = False
    for line in text.splitlines()[1:]:  # the first line is `request ID`
        head = line[:LABEL_WIDTH].rstrip()
        attempt = re.match(r"  (\d+)\. (.*)$", line)
        if line == "reasons":
            in_reasons = True
        elif in_reasons and line.startswith("  - "):
            reasons.append(line[4:])
        elif attempt and not in_reasons:
            parts = attempt.group(2).split("  ", 4)
            parts += [""] * (5 - len(parts))
            attempts.append({"n": attempt.group(1), "target": parts[0], "outcome": parts[1],
                             "status": parts[2].removeprefix("status "), "time": parts[3],
                             "message": parts[4]})  # fmt: skip
        elif head in EXPLAIN_LABELS and line.startswith(f"{head:<{LABEL_WIDTH}}"):
            fields.append([head, line[LABEL_WIDTH:]])
        elif fields:  # a value with line breaks of its own (an upstream's error text)
            fields[-1][1] += "\n" + line
    return {"fields": fields, "attempts": attempts, "reasons": reasons}


def detail(row: Row) -> dict[str, Any]:
    """One request (a row as `reports.load` returns it) as the detail view shows it: every
    column but the prompt text, `explain`, the text `orchestrator explain ID` prints, and
    that text's parts (`explain_parts`)."""
    hidden = ("prompt", "completion")
    text = explain(row)
    return {**{k: v for k, v in row.items() if k not in hidden}, "explain": text,
            **explain_parts(text)}  # fmt: skip
