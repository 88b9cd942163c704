"""Budgets on the request path: turn a policy's `budget:` into a rule, estimate a call's
maximum cost before it is sent, and seed the book from the ledger at startup."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from addon import budget, routing, wire
from addon import cost as costmod
from addon.catalog import Candidate
from addon.classify import RequestFeatures
from addon.config import Policy
from addon.configload import Config
from addon.exchange import Pending, Reply, json_reply
from addon.metrics import Metrics
from addon.scoring import Scored

log = logging.getLogger("orchestrator")
SCOPE_COLUMN = {"client": "client", "policy": "policy", "profile": "profile"}


def rule_of(policy: Policy) -> budget.BudgetRule | None:
    b = policy.budget
    if b is None:
        return None
    return budget.BudgetRule(policy.name, b.usd, b.per, b.scope, b.on_exceed, b.alert_at)


def estimate(chain: Sequence[Scored] | Sequence[Candidate], features: RequestFeatures) -> float:
    """The most this call can cost on any of these targets. Without `max_tokens` the
    offering's own output limit is assumed."""
    worst = 0.0
    for s in chain:
        c = s.candidate if isinstance(s, Scored) else s
        out = features.max_output_tokens or c.max_output_tokens or routing.DEFAULT_MAX_OUTPUT
        est = costmod.estimate_max(features.prompt_tokens, out, c.price)
        worst = max(worst, est or 0.0)
    return worst


def seed(book: budget.BudgetBook, cfg: Config, ledger_path: Path, now: float | None = None) -> None:
    """Charge what the ledger already holds for each budget's current window."""
    now = time.time() if now is None else now
    rules = [r for p in cfg.policies if (r := rule_of(p)) is not None]
    if not rules or not ledger_path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        log.error("budgets: cannot read %s to restore spend: %s", ledger_path, e)
        return
    try:
        for rule in rules:
            start, _ = budget.window(rule.per, now)
            col = SCOPE_COLUMN[rule.scope]
            q = (f"SELECT COALESCE({col}, ''), SUM(cost_usd) FROM requests "
                 f"WHERE policy = ? AND ts >= ? AND cost_usd IS NOT NULL GROUP BY 1")  # fmt: skip
            for key, spent in conn.execute(q, (rule.name, start)):
                if spent:
                    book.seed(rule, key, start, spent)
    except sqlite3.Error as e:
        log.error("budgets: cannot read %s to restore spend: %s", ledger_path, e)
    finally:
        conn.close()


def charge(book: budget.BudgetBook, rule: budget.BudgetRule, key: str, usd: float,
           now: float) -> None:  # fmt: skip
    """Count a call that went ahead without a reservation (downgraded after the budget ran
    out) so the window's spend stays true."""
    if usd > 0:
        book.seed(rule, key, budget.window(rule.per, now)[0], usd)


# --------------------------------------------------------------------------- request path


def gate(
    book: budget.BudgetBook,
    metrics: Metrics | None,
    policies: Sequence[Policy],
    router: routing.Router,
    pending: Pending,
    req: routing.RoutingRequest,
    decision: routing.RoutingDecision,
    usable: Callable[[Candidate], str | None],
    max_chain: int,
) -> routing.RoutingDecision | Reply:
    """Reserve the call's maximum cost against its policy's budget, or refuse / downgrade."""
    policy = next((p for p in policies if p.name == decision.policy), None)
    rule = rule_of(policy) if policy else None
    if rule is None:
        return decision
    now = time.time()
    key = budget.scope_key(rule, req.client_name or req.client_addr, rule.name, decision.profile)
    # reserve for the first target; a fallback to a dearer one tops the hold up first
    # (see `topup`), so the settled spend can never pass the budget
    held = book.reserve(rule, key, estimate(decision.chain[:1], req.features), now)
    if isinstance(held, budget.Reservation):
        pending.reservation = held
        pending.budget_scope = (rule, key)
        return decision
    down = rule.downgrade_to
    if metrics is not None:
        metrics.budget_blocks.labels(rule.name, "downgrade" if down else "block").inc()
    if down is None:
        return json_reply(429, held.message, type_="budget_exceeded", code=held.code,
                          pending=pending, headers=(("retry-after", str(held.retry_after_s)),))  # fmt: skip
    forced = replace(req, headers={**req.headers, routing.PROFILE_HEADER: down})
    again = routing.decide(router, forced, usable, max_chain)
    if isinstance(again, routing.NoRoute):
        return json_reply(again.status, again.message, type_="invalid_request_error",
                          code=again.code, pending=pending)  # fmt: skip
    pending.charge = (rule, key)
    pending.reasons.append(f"{held.message}: downgraded to profile {down}")
    return replace(again, policy=decision.policy,
                   profile_reason=f"budget {rule.name} exceeded: downgraded from {decision.profile}")  # fmt: skip


def topup(
    book: budget.BudgetBook, pending: Pending, c: Candidate, features: RequestFeatures
) -> bool:
    """Before trying `c` under a budget: make the hold cover `c`'s maximum cost."""
    if pending.reservation is None or pending.budget_scope is None:
        return True
    need = estimate([c], features)
    have = pending.reservation.amount + sum(r.amount for r in pending.extra)
    if need <= have:
        return True
    rule, key = pending.budget_scope
    more = book.reserve(rule, key, need - have, time.time())
    if isinstance(more, budget.Exceeded):
        pending.reasons.append(f"skipped {c.key}: {more.message}")
        return False
    pending.extra.append(more)
    return True


def settle(book: budget.BudgetBook, metrics: Metrics | None, pending: Pending,
           usage: wire.Usage | None, usd: float | None) -> None:  # fmt: skip
    """After the call: charge the real cost once, give back every other hold."""
    now = time.time()
    if pending.charge is not None and usd is not None:
        charge(book, *pending.charge, usd, now)
    for extra in pending.extra:
        book.release(extra)
    r = pending.reservation
    if r is None:
        return
    if usage is None:  # nothing was billed: give the reservation back
        book.release(r)
        return
    for alert in book.settle(r, usd, now):
        log.warning("%s", alert.message)
        if metrics is not None:
            metrics.budget_alerts.labels(alert.rule).inc()
