"""Cost reports over ledger rows: grouping, percentiles, spend over time, and renderers.

Everything here is a pure function of rows (mappings shaped like `LedgerReader.read_rows`
returns them) except `load`. An unknown price is never money: a row with tokens but no
cost is counted as *unpriced* and left out of spend, never added as zero.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from addon.store.ledgers import LedgerReader

Row = Mapping[str, Any]

GROUP_BY = ("model", "provider", "profile", "client", "policy", "api")
NO_KEY = "(none)"
TOTAL_KEY = "total"
_DURATION = re.compile(r"(\d+)([mhdw])")


def parse_since(text: str, now: float) -> float:
    """`30m`, `24h`, `7d`, `2w` before `now`, or an ISO date/datetime (UTC unless it says)."""
    s = text.strip()
    if m := _DURATION.fullmatch(s):
        unit = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m[2]]
        return now - int(m[1]) * unit
    try:
        when = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"since: {text!r} is not a duration or a date — use 30m, 24h, 7d or 2w "
            "(minutes, hours, days, weeks ago), or a UTC date like 2026-11-01 or 2026-11-01T12:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def load(reader: LedgerReader, since_ts: float | None = None) -> list[dict[str, Any]]:
    """Ledger rows at or after `since_ts` (all rows when None), oldest first, from whichever
    store is configured. `attempt_log` and `reasons` come back decoded as lists."""
    rows = reader.read_rows(since=since_ts)
    for row in rows:
        row["attempt_log"] = json_list(row.get("attempt_log"))
        row["reasons"] = json_list(row.get("reasons"))
    return rows


@dataclass(frozen=True)
class CostGroup:
    """Totals for one group of rows. Money is USD; latencies are milliseconds.

    `spend_usd` sums known costs only (`priced` rows); `unpriced` rows had tokens but no
    price. `requested_usd` / `savings_usd` are None when no row knows them. `fallback_rate`
    is `fallbacks / routed` (routed rows that reached an upstream; 0.0 when there are none).
    Percentiles are nearest-rank and None without data.
    """

    key: str
    requests: int
    ok: int
    errors: int
    priced: int
    unpriced: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    spend_usd: float
    requested_usd: float | None
    savings_usd: float | None
    routed: int
    fallbacks: int
    fallback_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None


def percentile(values: Sequence[float], p: int) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p% of values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-p * len(ordered) // 100))
    return ordered[rank - 1]


def is_unpriced(row: Row) -> bool:
    """Tokens were used but the price is unknown."""
    if row.get("cost_usd") is not None:
        return False
    has_tokens = row.get("prompt_tokens") is not None or row.get("completion_tokens") is not None
    return bool(row.get("unpriced")) or has_tokens


def is_routed(row: Row) -> bool:
    """The router picked a target and at least one attempt was made (not `unrouted`)."""
    return row.get("outcome") != "unrouted" and (row.get("attempts") or 0) >= 1


def group_key(row: Row, by: str) -> str:
    """The row's value for the grouping `by` (`model` is the routed model, else the one
    requested); NO_KEY when it has none."""
    model = row.get("routed_model") or row.get("requested_model")
    value = model if by == "model" else row.get(by)
    return str(value) if value not in (None, "") else NO_KEY


def summarize(key: str, rows: Sequence[Row]) -> CostGroup:
    """One CostGroup keyed `key` over `rows`."""
    costs = [r["cost_usd"] for r in rows if r.get("cost_usd") is not None]
    requested = [r["requested_cost_usd"] for r in rows if r.get("requested_cost_usd") is not None]
    savings = [
        r["requested_cost_usd"] - r["cost_usd"]
        for r in rows
        if r.get("cost_usd") is not None and r.get("requested_cost_usd") is not None
    ]
    routed = [r for r in rows if is_routed(r)]
    fallbacks = sum(1 for r in routed if r["attempts"] > 1)
    latency = [r["latency_ms"] for r in rows if r.get("latency_ms") is not None]
    ttft = [r["ttft_ms"] for r in rows if r.get("ttft_ms") is not None]

    def tokens(column: str) -> int:
        return sum(r.get(column) or 0 for r in rows)

    return CostGroup(
        key=key,
        requests=len(rows),
        ok=sum(1 for r in rows if r.get("outcome") == "ok"),
        errors=sum(1 for r in rows if r.get("outcome") == "error"),
        priced=len(costs),
        unpriced=sum(1 for r in rows if is_unpriced(r)),
        prompt_tokens=tokens("prompt_tokens"),
        completion_tokens=tokens("completion_tokens"),
        cached_tokens=tokens("cached_tokens"),
        reasoning_tokens=tokens("reasoning_tokens"),
        spend_usd=math.fsum(costs),
        requested_usd=math.fsum(requested) if requested else None,
        savings_usd=math.fsum(savings) if savings else None,
        routed=len(routed),
        fallbacks=fallbacks,
        fallback_rate=fallbacks / len(routed) if routed else 0.0,
        latency_p50_ms=percentile(latency, 50),
        latency_p95_ms=percentile(latency, 95),
        latency_p99_ms=percentile(latency, 99),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p95_ms=percentile(ttft, 95),
        ttft_p99_ms=percentile(ttft, 99),
    )


def totals(rows: Iterable[Row]) -> CostGroup:
    """One CostGroup over every row, keyed TOTAL_KEY."""
    return summarize(TOTAL_KEY, list(rows))


def cost_report(rows: Iterable[Row], by: str) -> list[CostGroup]:
    """One group per distinct `by` value, highest spend first, then by key."""
    if by not in GROUP_BY:
        raise ValueError(f"by: {by!r} is not a report grouping — use one of {', '.join(GROUP_BY)}")
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(group_key(row, by), []).append(row)
    groups = [summarize(k, v) for k, v in grouped.items()]
    return sorted(groups, key=lambda g: (-g.spend_usd, g.key))


def spend_series(
    rows: Iterable[Row], since: float, until: float, buckets: int
) -> list[tuple[float, float, int]]:
    """(bucket start, known spend, requests) for `buckets` equal slices of [since, until]."""
    if buckets < 1:
        raise ValueError(f"buckets: {buckets} is too few — use 1 or more")
    if until <= since:
        raise ValueError(f"until ({until}) is not after since ({since}) — the window is empty")
    width = (until - since) / buckets
    spend = [0.0] * buckets
    count = [0] * buckets
    for row in rows:
        ts = row["ts"]
        if not since <= ts <= until:
            continue
        i = min(int((ts - since) // width), buckets - 1)
        count[i] += 1
        if row.get("cost_usd") is not None:
            spend[i] += row["cost_usd"]
    return [(since + i * width, spend[i], count[i]) for i in range(buckets)]


# ---- renderers ---------------------------------------------------------------------------


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _table_row(g: CostGroup) -> list[str]:
    spend = _usd(g.spend_usd) if g.priced else "-"
    if g.unpriced:
        spend += f" + unpriced {g.unpriced}"
    return [
        g.key,
        str(g.requests),
        str(g.ok),
        str(g.errors),
        str(g.prompt_tokens),
        str(g.completion_tokens),
        spend,
        _usd(g.requested_usd),
        _usd(g.savings_usd),
        f"{g.fallback_rate * 100:.1f}%",
        "/".join(_ms(v) for v in (g.latency_p50_ms, g.latency_p95_ms, g.latency_p99_ms)),
        "/".join(_ms(v) for v in (g.ttft_p50_ms, g.ttft_p95_ms, g.ttft_p99_ms)),
    ]


def render_table(groups: Sequence[CostGroup], total: CostGroup, *, by: str | None = None) -> str:
    """An aligned text table: one line per group, then the total."""
    header = [
        by or "group",
        "requests",
        "ok",
        "errors",
        "prompt tok",
        "completion tok",
        "spend usd",
        "requested usd",
        "savings usd",
        "fallback",
        "latency ms p50/p95/p99",
        "ttft ms p50/p95/p99",
    ]
    body = [_table_row(g) for g in groups]
    foot = _table_row(total)
    widths = [max(len(r[i]) for r in [header, *body, foot]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *(line(r) for r in body), rule, line(foot)]
    if total.unpriced:
        out.append(
            f"\nunpriced {total.unpriced}: requests with tokens but no known price, "
            "not counted in spend — declare a price in rules/models.yaml "
            "or run `orchestrator refresh`"
        )
    return "\n".join(out) + "\n"


def _csv_value(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if name.endswith("_usd"):
            return f"{value:.10f}"
        return f"{value:.4f}" if name == "fallback_rate" else f"{value:.1f}"
    return str(value)


CSV_COLUMNS = tuple(f.name for f in fields(CostGroup))


def render_csv(groups: Sequence[CostGroup], total: CostGroup) -> str:
    """A header of CostGroup field names, one line per group, then the total line."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(CSV_COLUMNS)
    for g in [*groups, total]:
        d = asdict(g)
        out.writerow([_csv_value(c, d[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def as_json(groups: Sequence[CostGroup], total: CostGroup) -> dict[str, Any]:
    """`{"groups": [CostGroup fields...], "total": {CostGroup fields}}`; money as raw floats."""
    return {"groups": [asdict(g) for g in groups], "total": asdict(total)}


# ---- explain -----------------------------------------------------------------------------


def json_list(value: Any) -> list[Any]:
    """A JSON list column (`attempt_log`, `reasons`) decoded; [] for NULL."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    return list(value) if isinstance(value, list | tuple) else [value]


def _dollars(value: float) -> str:
    return f"-${-value:.6f}" if value < 0 else f"${value:.6f}"


def utc_iso(ts: float) -> str:
    """Epoch seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _attempt_line(n: int, a: Mapping[str, Any]) -> str:
    status, ms = a.get("status"), a.get("ms")
    parts = [
        f"{n}. {a.get('provider') or '-'}/{a.get('model') or '-'}",
        str(a.get("outcome") or "-"),
        f"status {status if status is not None else '-'}",
        f"{ms:.0f} ms" if isinstance(ms, int | float) else "- ms",
    ]
    if a.get("message"):
        parts.append(str(a["message"]))
    return "  " + "  ".join(parts)


def explain(row: Row) -> str:
    """One recorded decision as text: what was asked, where it went, what it cost, and why."""

    def field(label: str, text: str) -> str:
        return f"{label:<10}{text}"

    def v(column: str) -> str:
        value = row.get(column)
        return "-" if value in (None, "") else str(value)

    attempts = json_list(row.get("attempt_log"))
    reasons = json_list(row.get("reasons"))
    out = [
        f"request {v('id')}",
        field("time", utc_iso(row["ts"])),
        field("client", f"{v('client')} → {v('host')}{row.get('path') or ''}"),
        field("api", v("api")),
        field("profile", f"{v('profile')} — {row.get('profile_reason') or 'no reason recorded'}"),
        field("policy", v("policy")),
        field("model", f"{v('requested_model')} → {v('routed_model')} @ {v('provider')}"),
        field("attempts", str(row.get("attempts") or 0)),
        *(_attempt_line(n, a) for n, a in enumerate(attempts, 1) if isinstance(a, Mapping)),
    ]
    token_cols = {"prompt": "prompt", "completion": "completion", "cached": "cached",
                  "cache_write": "cache writes", "reasoning": "reasoning"}  # fmt: skip
    if any(row.get(f"{c}_tokens") is not None for c in token_cols):
        counts = (f"{label} {row.get(f'{c}_tokens') or 0}" for c, label in token_cols.items())
        out.append(field("tokens", ", ".join(counts)))
    else:
        out.append(field("tokens", "none reported"))
    cost, requested = row.get("cost_usd"), row.get("requested_cost_usd")
    if cost is not None:
        out.append(field("cost", _dollars(cost)))
    elif is_unpriced(row):
        out.append(
            field("cost", f"unpriced — no known price for {v('routed_model')} @ {v('provider')}")
        )
    else:
        out.append(field("cost", "- (no usage reported)"))
    if requested is None:
        out.append(field("requested", f"- (cost of {v('requested_model')} unknown)"))
    elif cost is None:
        out.append(field("requested", f"{_dollars(requested)} for {v('requested_model')}"))
    else:
        out.append(
            field(
                "requested",
                f"{_dollars(requested)} for {v('requested_model')}, "
                f"savings {_dollars(requested - cost)}",
            )
        )
    ttft, latency = row.get("ttft_ms"), row.get("latency_ms")
    out.append(field("timing", f"ttft {_ms(ttft)} ms, latency {_ms(latency)} ms"))
    stream = "streamed" if row.get("stream") else "not streamed"
    out.append(field("outcome", f"{v('outcome')}, status {v('status')}, {stream}"))
    if row.get("error"):
        out.append(field("error", str(row["error"])))
    if reasons:
        out.append("reasons")
        out.extend(f"  - {r}" for r in reasons)
    else:
        out.append(field("reasons", "none"))
    return "\n".join(out) + "\n"
