"""Budget spend restored from the ledger at startup, from either store (SQLite or
PostgreSQL), so a restart — or a new replica — does not reset a budget."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from addon.config import loader
from addon.proxy import budgetgate
from addon.routing import budget
from addon.state.memory import LocalBudgets
from addon.store.ledger_schema import LedgerRow
from addon.store.ledgers import LedgerReader, SqliteReader
from addon.store.pg_reader import PgReader
from addon.store.pgledger import PgLedger
from addon.store.sqlite_ledger import Ledger
from tests.services import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

REPO = Path(__file__).resolve().parents[1]
POLICY = "batch-jobs-on-budget"  # rules/policies.yaml: $20 per client per day


def _rows(now: float) -> list[LedgerRow]:
    today = budget.window("day", now)[0]
    return [
        LedgerRow("a", today + 1, "ok", client="10.0.0.5", policy=POLICY, cost_usd=1.5),
        LedgerRow("b", today + 2, "ok", client="10.0.0.5", policy=POLICY, cost_usd=2.0),
        LedgerRow("c", today + 3, "ok", client="10.0.0.6", policy=POLICY, cost_usd=0.25),
        LedgerRow("d", today - 10, "ok", client="10.0.0.5", policy=POLICY, cost_usd=9.0),
        LedgerRow("e", today + 4, "ok", client="10.0.0.5", policy=POLICY, unpriced=True),
        LedgerRow("f", today + 5, "ok", client="10.0.0.5", policy="other", cost_usd=5.0),
    ]


def _check(reader: LedgerReader, now: float) -> None:
    cfg = loader.load(REPO / "orchestrator.yaml")
    seeded = budgetgate.spend_to_seed(cfg, reader, now)
    got = sorted((rule.name, key, start, round(usd, 10)) for rule, key, start, usd in seeded)
    start = budget.window("day", now)[0]
    assert got == [(POLICY, "10.0.0.5", start, 3.5), (POLICY, "10.0.0.6", start, 0.25)]
    budgets = LocalBudgets()
    for rule, key, s, usd in seeded:
        budgets.book.seed(rule, key, s, usd)
    rule = seeded[0][0]
    assert budgets.book.spent(rule, "10.0.0.5", now) == pytest.approx(3.5)


def test_spend_is_restored_from_a_sqlite_ledger(tmp_path: Path) -> None:
    now = time.time()
    ledger = Ledger(tmp_path / "ledger.db")
    for row in _rows(now):
        ledger.record(row)
    assert ledger.flush()
    ledger.close()
    _check(SqliteReader(tmp_path / "ledger.db"), now)


def test_spend_is_restored_from_a_postgresql_ledger(pg_url: str, tmp_path: Path) -> None:
    now = time.time()
    ledger = PgLedger(pg_url, tmp_path / "spool.db")
    for row in _rows(now):
        ledger.record(row)
    assert ledger.drain()
    ledger.close()
    reader = PgReader(pg_url)
    try:
        _check(reader, now)
    finally:
        reader.close()


def test_an_unreadable_ledger_seeds_nothing_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "ledger.db"
    bad.write_text("not a database")
    cfg = loader.load(REPO / "orchestrator.yaml")
    assert budgetgate.spend_to_seed(cfg, SqliteReader(bad)) == []
    assert "cannot restore spend for batch-jobs-on-budget" in caplog.text
