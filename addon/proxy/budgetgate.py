"""Budgets on the request path: turn a policy's `budget:` into a rule, estimate a call's
maximum cost before it is sent, and seed the book from the ledger at startup."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from addon.config.loaded import Config
from addon.config.rules import Policy
from addon.errors import StateUnavailable
from addon.proxy.exchange import Pending, Reply, json_reply
from addon.proxy.metrics import Metrics
from addon.routing import budget, decide
from addon.routing import cost as costmod
from addon.routing.catalog import Candidate
from addon.routing.classify import RequestFeatures
from addon.routing.scoring import Scored
from addon.state.memory import Budgets
from addon.store.ledgers import LedgerError, LedgerReader
from addon.wire.usage import Usage

log = logging.getLogger("orchestrator")
SCOPE_COLUMN = {"client": "client", "policy": "policy", "profile": "profile"}


def rule_of(policy: Policy) -> budget.BudgetRule | None:
    """The budget rule of a policy's `budget:`, None when it has none."""
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
        out = features.max_output_tokens or c.max_output_tokens or decide.DEFAULT_MAX_OUTPUT
        est = costmod.estimate_max(features.prompt_tokens, out, c.price)
        worst = max(worst, est or 0.0)
    return worst


def spend_to_seed(
    cfg: Config, reader: LedgerReader, now: float | None = None
) -> list[tuple[budget.BudgetRule, str, float, float]]:
    """What the ledger already holds for each budget's current window, as
    (rule, scope key, window start, USD), so a restart does not reset a budget."""
    now = time.time() if now is None else now
    out: list[tuple[budget.BudgetRule, str, float, float]] = []
    for rule in (r for p in cfg.policies if (r := rule_of(p)) is not None):
        start, _ = budget.window(rule.per, now)
        try:
            spent = reader.spend(rule.name, SCOPE_COLUMN[rule.scope], start)
        except LedgerError as e:
            # a warning: an error logged while mitmproxy starts makes it exit
            log.warning("budgets: cannot restore spend for %s from the ledger: %s", rule.name, e)
            continue
        out.extend((rule, key, start, usd) for key, usd in spent)
    return out


# --------------------------------------------------------------------------- request path


async def gate(
    book: Budgets,
    metrics: Metrics | None,
    policies: Sequence[Policy],
    pending: Pending,
    req: decide.RoutingRequest,
    decision: decide.RoutingDecision,
    again: Callable[[decide.RoutingRequest], decide.RoutingDecision | decide.NoRoute],
) -> decide.RoutingDecision | Reply:
    """Reserve the call's maximum cost against its policy's budget, or refuse / downgrade
    (`again` decides the request anew, under the profile it is downgraded to)."""
    policy = next((p for p in policies if p.name == decision.policy), None)
    rule = rule_of(policy) if policy else None
    if rule is None:
        return decision
    now = time.time()
    key = budget.scope_key(rule, req.client_name or req.client_addr, rule.name, decision.profile)
    # reserve for the first target; a fallback to a dearer one tops the hold up first
    # (see `topup`), so the settled spend can never pass the budget
    try:
        held = await book.reserve(rule, key, estimate(decision.chain[:1], req.features), now)
    except StateUnavailable as e:
        msg = (f"budget {rule.name!r} cannot be checked: the shared state store is "
               f"unavailable ({e}); retry shortly — the router refuses budgeted calls rather "
               "than risk overspending")  # fmt: skip
        return json_reply(503, msg, type_="service_unavailable", code="budget_unavailable",
                          pending=pending, headers=(("retry-after", "1"),))  # fmt: skip
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
    forced = replace(req, headers={**req.headers, decide.PROFILE_HEADER: down})
    downgraded = again(forced)
    if isinstance(downgraded, decide.NoRoute):
        return json_reply(downgraded.status, downgraded.message, type_="invalid_request_error",
                          code=downgraded.code, pending=pending)  # fmt: skip
    pending.charge = (rule, key)
    pending.reasons.append(f"{held.message}: downgraded to profile {down}")
    return replace(downgraded, policy=decision.policy,
                   profile_reason=f"budget {rule.name} exceeded: downgraded from {decision.profile}")  # fmt: skip


async def topup(book: Budgets, pending: Pending, c: Candidate, features: RequestFeatures) -> bool:
    """Before trying `c` under a budget: make the hold cover `c`'s maximum cost."""
    if pending.reservation is None or pending.budget_scope is None:
        return True
    need = estimate([c], features)
    have = pending.reservation.amount + sum(r.amount for r in pending.extra)
    if need <= have:
        return True
    rule, key = pending.budget_scope
    try:
        more = await book.reserve(rule, key, need - have, time.time())
    except StateUnavailable as e:
        pending.reasons.append(f"skipped {c.key}: budget store unavailable ({e})")
        return False
    if isinstance(more, budget.Exceeded):
        pending.reasons.append(f"skipped {c.key}: {more.message}")
        return False
    pending.extra.append(more)
    return True


def settle(book: Budgets, pending: Pending, usage: Usage | None,
           usd: float | None) -> None:  # fmt: skip
    """After the call: charge the real cost once, give back every other hold."""
    now = time.time()
    if pending.charge is not None and usd is not None:
        rule, key = pending.charge
        book.charge(rule, key, usd, now)
    for extra in pending.extra:
        book.release(extra)
    r = pending.reservation
    if r is None:
        return
    if usage is None:  # nothing was billed: give the reservation back
        book.release(r)
        return
    book.settle(r, usd, now)


def alert_sink(metrics: Metrics | None) -> Callable[[budget.Alert], None]:
    """Where budget alerts go: the log and the alerts counter."""

    def on_alert(alert: budget.Alert) -> None:
        log.warning("%s", alert.message)
        if metrics is not None:
            metrics.budget_alerts.labels(alert.rule).inc()

    return on_alert
