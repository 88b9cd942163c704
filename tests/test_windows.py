"""addon.store.windows: the status page's numbers over ledger rows — windows and their
buckets, served models kept apart from requested ones, recent requests and their filters,
and a request's detail taken apart exactly as `orchestrator explain` prints it."""

from __future__ import annotations

from typing import Any

import pytest

from addon.store import reports, windows

NOW = 1_799_971_200.0  # 2027-01-15T00:00:00Z: a multiple of every bucket width


def row(n: int, **kw: Any) -> dict[str, Any]:
    base = {"id": f"orq-{n:04d}", "ts": NOW - 60 * n, "api": "chat", "client": "app",
            "requested_model": "gpt-4o", "routed_model": "m-a", "provider": "pa",
            "profile": "quality", "outcome": "ok", "status": 200, "attempts": 1,
            "attempt_log": [{"provider": "pa", "model": "m-a", "outcome": "ok", "status": 200,
                             "ms": 10.0}],
            "latency_ms": 100.0 + n, "ttft_ms": None, "cost_usd": 0.001,
            "requested_cost_usd": 0.003, "stream": 0, "unpriced": 0, "reasons": []}  # fmt: skip
    return base | kw


FALLBACK = row(
    1,
    provider="pb",
    routed_model="m-a",  # the first target routed to; `m-b` at pb answered
    attempts=2,
    attempt_log=[
        {"provider": "pa", "model": "m-a", "outcome": "server_error", "status": 500, "ms": 3.0,
         "message": "boom  twice spaced"},
        {"provider": "pb", "model": "m-b", "outcome": "ok", "status": 200, "ms": 12.5},
    ],
)  # fmt: skip
REFUSED = row(2, provider=None, routed_model=None, attempts=0, attempt_log=[], outcome="error",
              status=429, cost_usd=None, requested_cost_usd=None,
              error="budget 'capped' exceeded: $0.0005 per day")  # fmt: skip
CUT = row(3, outcome="truncated", client="batch", stream=1, ttft_ms=40.0)
ROWS = [row(0), FALLBACK, REFUSED, CUT, row(70, requested_model="auto")]  # the last: 70 min ago


@pytest.mark.parametrize(
    ("name", "length", "step", "buckets"),
    [("1h", 3600, 300, 12), ("24h", 86400, 3600, 24), ("7d", 7 * 86400, 6 * 3600, 28)],
)
def test_windows_and_their_buckets(name: str, length: int, step: int, buckets: int) -> None:
    assert windows.window_bounds(name, NOW) == (NOW - length, step)
    s = windows.series([], NOW - length, NOW, step)
    assert len(s) == buckets and all(b["start"] % step == 0 for b in s)
    assert (s[0]["start"], s[-1]["end"]) == (NOW - length, NOW)
    s = windows.series([], NOW - length + 1, NOW + 1, step)  # off the marks: cut buckets at ends
    assert len(s) == buckets + 1
    assert (s[0]["start"], s[0]["end"], s[-1]["end"]) == (NOW - length + 1, NOW - length + step,
                                                           NOW + 1)  # fmt: skip


def test_unknown_window_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"window: '2h' is not offered — use one of 1h, 24h, 7d"):
        windows.window_bounds("2h", NOW)


def test_overview_keeps_served_and_requested_apart() -> None:
    o = windows.overview(ROWS, "1h", NOW)
    assert o["total"]["requests"] == 4  # the row 70 minutes ago is outside the hour
    assert (o["total"]["failed"], o["total"]["error_rate"]) == (2, 0.5)
    assert [(g["key"], g["requests"]) for g in o["models"]] == [
        ("m-a", 2),
        ("m-b", 1),
        (windows.NOT_SERVED, 1),
    ]
    assert [g["key"] for g in o["providers"]] == ["pa", "pb", windows.NOT_SERVED]
    [asked] = o["requested"]
    assert asked["key"] == "gpt-4o" and asked["served_as"] == [
        ["m-a", 2],
        ["m-b", 1],
        [windows.NOT_SERVED, 1],
    ]
    assert asked["savings_usd"] == pytest.approx(3 * 0.002)
    assert sum(b["requests"] for b in o["series"]) == 4
    assert sum(b["failed"] for b in o["series"]) == 2
    assert sum(b["spend_usd"] for b in o["series"]) == pytest.approx(0.003)
    pb = next(g for g in o["providers"] if g["key"] == "pb")
    assert (pb["fallback_rate"], pb["latency_p95_ms"]) == (1.0, 101.0)


@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        ({}, ["orq-0000", "orq-0001", "orq-0002", "orq-0003", "orq-0070"]),
        ({"outcome": "truncated"}, ["orq-0003"]),
        ({"model": "m-b"}, ["orq-0001"]),  # the served model
        ({"model": "auto"}, ["orq-0070"]),  # the requested one
        ({"client": "batch"}, ["orq-0003"]),
        ({"outcome": "ok", "model": "m-a", "limit": 1}, ["orq-0000"]),
    ],
)
def test_recent_is_newest_first_and_filtered(filters: dict[str, Any], ids: list[str]) -> None:
    doc = windows.recent(ROWS, **filters)
    assert [r["id"] for r in doc["requests"]] == ids
    assert all(r["api"] == "chat" for r in doc["requests"])
    assert doc["facets"]["served"] == ["m-a", "m-b"]
    assert doc["facets"]["requested"] == ["auto", "gpt-4o"]


def test_recent_limit_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"limit: 0 is out of range — use 1 to 500"):
        windows.recent(ROWS, limit=0)


@pytest.mark.parametrize(
    "r", [row(0), FALLBACK, REFUSED, CUT], ids=["ok", "fallback", "refused", "cut"]
)
def test_detail_is_explain_taken_apart(r: dict[str, Any]) -> None:
    d = windows.detail(r)
    text = reports.explain(r)
    assert d["explain"] == text
    lines = text.splitlines()
    labelled = [f"{k:<10}{v}" for k, v in d["fields"]]
    assert [ln for ln in lines if ln in labelled] == labelled  # every field, in order
    assert len(d["attempts"]) == len(r["attempt_log"])
    for a, line in zip(d["attempts"], [ln for ln in lines if ln.startswith("  ") and ". " in ln[:6]],
                       strict=True):  # fmt: skip
        printed = f"  {a['n']}. " + "  ".join(
            [a["target"], a["outcome"], f"status {a['status']}", a["time"]]
            + ([a["message"]] if a["message"] else [])
        )
        assert printed == line
    assert [f"  - {x}" for x in d["reasons"]] == [ln for ln in lines if ln.startswith("  - ")]


def test_detail_of_a_fallback() -> None:
    d = windows.detail(FALLBACK | {"reasons": ["profile quality (header)", "chain 1. pa:m-a"]})
    fields = dict(d["fields"])
    assert fields["model"] == "gpt-4o → m-a @ pb" and fields["attempts"] == "2"
    assert d["attempts"][0] == {"n": "1", "target": "pa/m-a", "outcome": "server_error",
                                "status": "500", "time": "3 ms",
                                "message": "boom  twice spaced"}  # fmt: skip
    assert d["attempts"][1]["time"] == "12 ms"  # as printed: f"{12.5:.0f}"
    assert d["reasons"] == ["profile quality (header)", "chain 1. pa:m-a"]
    assert "prompt" not in d


def test_a_multi_line_error_stays_one_field() -> None:
    d = windows.detail(REFUSED | {"error": "first line\nsecond line"})
    assert dict(d["fields"])["error"] == "first line\nsecond line"
