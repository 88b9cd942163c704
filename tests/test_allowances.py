"""addon.store.allowances: each budget and each rate limit of the config with its state, as
the status page shows them — live windows, idle rows for the rest, refusals from the ledger."""

from __future__ import annotations

from typing import Any

import pytest

from addon.routing.budget import BudgetRule
from addon.store import allowances

NOW = 1_799_971_200.0 + 3600  # 2027-01-15T01:00:00Z
DAY = (1_799_971_200.0, 1_799_971_200.0 + 86400)
CAPPED = BudgetRule("capped", 0.5, "day", "policy", "block", 0.5)
THRIFTY = BudgetRule("thrifty", 1.0, "day", "client", "downgrade:budget")


def live(share: float, rule: str = "capped", scope: str = "capped", **kw: Any) -> dict[str, Any]:
    return {"rule": rule, "scope": scope, "scope_kind": "policy", "per": "day",
            "window_start": DAY[0], "window_end": DAY[1], "spent": share * 0.5,
            "reserved": 0.0, "limit": 0.5, "share": share, "alert_at": 0.5,
            "alerted": False} | kw  # fmt: skip


def refusal(ago: float, rule: str = "capped") -> dict[str, Any]:
    return {"ts": NOW - ago, "error": f"budget {rule!r} exceeded: $0.50 per day", "client": "a"}


@pytest.mark.parametrize(
    ("budget", "rows", "state", "refused"),
    [
        (live(0.1), [], "ok", 0),
        (live(0.6), [], "alerting", 0),  # past alert_at
        (live(0.2, alerted=True), [], "alerting", 0),  # alerted earlier in the window
        (live(1.0), [], "blocking", 0),  # spent reaches the cap
        (live(0.2), [refusal(60)], "blocking", 1),  # a call that did not fit, just now
        (live(0.2), [refusal(allowances.BLOCK_RECENT_S + 1)], "ok", 1),  # long ago
        (live(0.2), [refusal(60, "other")], "ok", 0),  # another budget's refusal
        (live(0.2), [refusal(7200)], "ok", 0),  # before this window
    ],
)
def test_budget_state(budget: dict[str, Any], rows: list[dict[str, Any]], state: str,
                      refused: int) -> None:  # fmt: skip
    [got] = allowances.budget_states([budget], [CAPPED], rows, NOW)
    assert (got["state"], got["refused"], got["idle"]) == (state, refused, False)
    assert got["on_exceed"] == "block"


def test_idle_budgets_are_shown_and_a_downgrade_is_downgrading() -> None:
    got = allowances.budget_states([], [CAPPED, THRIFTY], [refusal(10, "thrifty")], NOW)
    assert [(b["rule"], b["scope"], b["idle"], b["state"]) for b in got] == [
        ("capped", "capped", True, "ok"),
        ("thrifty", "(each client)", True, "downgrading"),
    ]
    assert (got[0]["window_start"], got[0]["window_end"], got[0]["limit"]) == (*DAY, 0.5)


def test_a_budget_with_a_live_window_has_no_idle_row() -> None:
    got = allowances.budget_states([live(0.1, "thrifty", "a", scope_kind="client")],
                                   [CAPPED, THRIFTY], [], NOW)  # fmt: skip
    assert [(b["rule"], b["idle"]) for b in got] == [("thrifty", False), ("capped", True)]


def account(scope: str, name: str, requests: int, tokens: int = 0, rpm: int | None = 10,
            tpm: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {"scope": scope, "name": name, "rpm": rpm, "tpm": tpm, "requests": requests,
            "tokens": tokens,
            "remaining_requests": None if rpm is None else max(0, rpm - requests),
            "remaining_tokens": None if tpm is None else max(0, tpm - tokens),
            "reset_s": 12.5}  # fmt: skip


@pytest.mark.parametrize(
    ("row", "state"),
    [
        (account("client", "a", 1), "ok"),
        (account("client", "a", 8), "near"),
        (account("client", "a", 10), "limited"),
        (account("provider", "p", 1, tokens=950, rpm=None, tpm=1000), "near"),
        (account("provider", "p", 1, tokens=1000, rpm=None, tpm=1000), "limited"),
    ],
)
def test_limit_state(row: dict[str, Any], state: str) -> None:
    assert allowances.limit_state(row) == state


def test_limits_configured_but_unused_are_idle() -> None:
    configured = [
        {"scope": "client", "name": "a", "rpm": 10, "tpm": None},
        {"scope": "client", "name": "(each client address)", "rpm": 5, "tpm": None, "each": ""},
        {"scope": "provider", "name": "p", "rpm": None, "tpm": 1000},
        {"scope": "policy", "name": "team:(each client)", "rpm": 3, "tpm": None,
         "each": "team:"},
    ]  # fmt: skip
    got = allowances.limit_states([account("client", "a", 10)], configured)
    assert [(r["name"], r["idle"], r["state"]) for r in got] == [
        ("a", False, "limited"),
        ("(each client address)", True, "ok"),  # a named client's account is not an address
        ("p", True, "ok"),
        ("team:(each client)", True, "ok"),
    ]
    assert got[2]["remaining_tokens"] == 1000 and got[2]["requests"] == 0
    live = [account("client", "127.0.0.1", 1), account("policy", "team:a", 1)]
    got = allowances.limit_states(live, configured)
    assert [(r["name"], r["idle"]) for r in got] == [
        ("127.0.0.1", False),
        ("team:a", False),
        ("a", True),
        ("p", True),
    ]
