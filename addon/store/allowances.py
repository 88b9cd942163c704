"""What the status page shows of the allowances in force: each budget window and each rate
limit with its state (pure functions of the live snapshots, the config's rules, ledger rows
and `now`, shaped for JSON).

    budget_states    every budget of the config: its live windows (`Budgets.snapshot`), or
                     one idle row while nothing was spent, each `ok`, `alerting`, `blocking`
                     (`downgrading` for `on_exceed: downgrade:…`)
    limit_states     every rate limit of the config: the accounts seen in the last minute
                     (`RateLimits.snapshot`), or one idle row, each `ok`, `near`, `limited`

A budget is `blocking` once spent plus in flight reach its cap, or a request was refused in
the last BLOCK_RECENT_S seconds (a call whose estimate does not fit is refused long before
the spend reaches the cap). A rate limit is `limited` with no request or token left in its
sliding minute, `near` from NEAR_SHARE of either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from addon.routing.budget import BudgetRule, window
from addon.store.reports import Row

BLOCK_RECENT_S = 300  # a refusal this recent makes a budget `blocking` below its cap
NEAR_SHARE = 0.8  # a rate limit this full is `near`
EACH = {"client": "(each client)", "profile": "(each profile)"}  # an idle per-key budget


def refused_by(row: Row, rule: str) -> bool:
    """The row was refused or downgraded by the budget of policy `rule`."""
    head = f"budget {rule!r} exceeded"
    return str(row.get("error") or "").startswith(head) or str(
        row.get("profile_reason") or ""
    ).startswith(f"budget {rule} exceeded")


def _scope_matches(row: Row, budget: Mapping[str, Any]) -> bool:
    column = {"client": "client", "profile": "profile"}.get(budget.get("scope_kind") or "")
    if budget.get("idle"):
        return True
    return column is None or row.get(column) == budget.get("scope")


def idle_budget(rule: BudgetRule, now: float) -> dict[str, Any]:
    """A budget with nothing spent in its current window, shaped like a live window."""
    start, end = window(rule.per, now)
    return {"rule": rule.name, "scope": EACH.get(rule.scope, rule.name),
            "scope_kind": rule.scope, "per": rule.per, "window_start": start,
            "window_end": end, "spent": 0.0, "reserved": 0.0, "limit": rule.usd, "share": 0.0,
            "alert_at": rule.alert_at, "alerted": False, "idle": True}  # fmt: skip


def budget_states(
    live: Iterable[Mapping[str, Any]],
    rules: Sequence[BudgetRule],
    rows: Iterable[Row],
    now: float,
) -> list[dict[str, Any]]:
    """Each live budget window, then an idle row for each rule of `rules` without one, each
    with `on_exceed` (from its rule; `block` for a rule no longer configured), `refused`
    (requests it refused or downgraded in the window, from `rows`), `last_refused_at`,
    `idle` and `state` (see the module's docstring)."""
    rows = list(rows)
    live = [dict(b) for b in live]
    seen = {b["rule"] for b in live}
    actions = {r.name: r.on_exceed for r in rules}
    out = []
    for b in live + [idle_budget(r, now) for r in rules if r.name not in seen]:
        rule = str(b["rule"])
        hits = [r["ts"] for r in rows if r["ts"] >= b["window_start"] and refused_by(r, rule)
                and _scope_matches(r, b)]  # fmt: skip
        last = max(hits) if hits else None
        action = actions.get(rule, "block")
        if b["share"] >= 1 or (last is not None and now - last <= BLOCK_RECENT_S):
            state = "blocking" if action == "block" else "downgrading"
        elif b.get("alerted") or (b.get("alert_at") and b["share"] >= b["alert_at"]):
            state = "alerting"
        else:
            state = "ok"
        out.append({"idle": False, **b, "on_exceed": action, "refused": len(hits),
                    "last_refused_at": last, "state": state})  # fmt: skip
    return out


def limit_state(row: Mapping[str, Any]) -> str:
    """`limited`, `near` or `ok` for one rate-limit account (a `status_row`)."""
    left = [row.get("remaining_requests"), row.get("remaining_tokens")]
    if any(v is not None and v <= 0 for v in left):
        return "limited"
    shares = [row["requests"] / row["rpm"] if row.get("rpm") else 0.0,
              row["tokens"] / row["tpm"] if row.get("tpm") else 0.0]  # fmt: skip
    return "near" if max(shares) >= NEAR_SHARE else "ok"


def limit_states(
    live: Iterable[Mapping[str, Any]], configured: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The live accounts (`RateLimits.snapshot` rows, busiest first), then an idle row for
    each configured limit (`scope`, `name`, `rpm`, `tpm`) no live account is of, each with
    `state` (`limit_state`) and `idle`. A configured limit with `each` (the prefix of its
    accounts' names: one account per client address, or per client of a policy) is of every
    live account of its scope whose name has that prefix and is no other limit's name."""
    configured = list(configured)
    out = [{**r, "idle": False, "state": limit_state(r)} for r in live]
    seen = {(r["scope"], r["name"]) for r in out}
    named = {(c["scope"], c["name"]) for c in configured if "each" not in c}

    def covered(c: Mapping[str, Any]) -> bool:
        if "each" not in c:
            return (c["scope"], c["name"]) in seen
        return any(s == c["scope"] and n.startswith(c["each"]) and (s, n) not in named
                   for s, n in seen)  # fmt: skip

    for c in configured:
        if covered(c):
            continue
        out.append({"scope": c["scope"], "name": c["name"], "rpm": c.get("rpm"),
                    "tpm": c.get("tpm"), "requests": 0, "tokens": 0,
                    "remaining_requests": c.get("rpm"), "remaining_tokens": c.get("tpm"),
                    "reset_s": 0.0, "idle": True, "state": "ok"})  # fmt: skip
    return out
