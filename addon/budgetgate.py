"""Budgets on the request path: turn a policy's `budget:` into a rule, estimate a call's
maximum cost before it is sent, and seed the book from the ledger at startup."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from addon import budget
from addon import cost as costmod
from addon.catalog import Candidate
from addon.classify import RequestFeatures
from addon.config import Policy
from addon.configload import Config
from addon.routing import DEFAULT_MAX_OUTPUT
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
        out = features.max_output_tokens or c.max_output_tokens or DEFAULT_MAX_OUTPUT
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
