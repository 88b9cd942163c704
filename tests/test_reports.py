"""Cost reports: grouping, unpriced accounting, savings, fallback rate, percentiles, renderers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from addon.errors import OrchestratorError
from addon.store import reports
from addon.store.ledger_schema import LedgerRow
from addon.store.ledgers import SqliteReader
from addon.store.sqlite_ledger import Ledger

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC).timestamp()


def row(**over: Any) -> dict[str, Any]:
    """A routed, priced, successful first-attempt row; override what the case is about."""
    base: dict[str, Any] = {
        "id": "req-1",
        "ts": T0,
        "client": "127.0.0.1",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "profile": "balanced",
        "profile_reason": "default profile",
        "policy": "default",
        "requested_model": "gpt-4o",
        "routed_model": "gpt-4o-mini",
        "provider": "openai",
        "attempts": 1,
        "attempt_log": [],
        "status": 200,
        "outcome": "ok",
        "stream": 0,
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.001,
        "unpriced": 0,
        "requested_cost_usd": 0.004,
        "ttft_ms": None,
        "latency_ms": 100.0,
        "reasons": [],
        "error": None,
    }
    base.update(over)
    return base


def unpriced(**over: Any) -> dict[str, Any]:
    return row(**{"cost_usd": None, "unpriced": 1, "requested_cost_usd": None, **over})


MIXED = [
    row(id="a", cost_usd=0.003, client="10.0.0.1", policy="team-a"),
    row(id="b", cost_usd=0.001, routed_model="claude-haiku", provider="anthropic"),
    unpriced(id="c", routed_model="llama3.1:8b", provider="ollama", profile="speed"),
    row(
        id="d",
        outcome="unrouted",
        attempts=0,
        routed_model=None,
        requested_model="text-embedding-3-small",
        provider=None,
        profile=None,
        profile_reason=None,
        policy=None,
        cost_usd=0.0005,
        requested_cost_usd=None,
    ),
]


# ---- parse_since -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", T0 - 30 * 60),
        ("24h", T0 - 24 * 3600),
        ("7d", T0 - 7 * 86400),
        ("2w", T0 - 14 * 86400),
        (" 24h ", T0 - 24 * 3600),
        ("0h", T0),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC).timestamp()),
        ("2026-11-01T12:00", T0),
        ("2026-11-01T12:00Z", T0),
        ("2026-11-01T14:00+02:00", T0),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert reports.parse_since(text, now=T0) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "5s", "", "-1h", "1.5h", "2026-13-01"])
def test_parse_since_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError) as e:
        reports.parse_since(text, now=T0)
    assert str(e.value) == (
        f"since: {text!r} is not a duration or a date — use 30m, 24h, 7d or 2w "
        "(minutes, hours, days, weeks ago), or a UTC date like 2026-11-01 or 2026-11-01T12:00"
    )


# ---- grouping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        (
            "model",
            [
                ("gpt-4o-mini", 1, 0.003),
                ("claude-haiku", 1, 0.001),
                ("text-embedding-3-small", 1, 0.0005),
                ("llama3.1:8b", 1, 0.0),
            ],
        ),
        (
            "provider",
            [
                ("openai", 1, 0.003),
                ("anthropic", 1, 0.001),
                ("(none)", 1, 0.0005),
                ("ollama", 1, 0.0),
            ],
        ),
        ("profile", [("balanced", 2, 0.004), ("(none)", 1, 0.0005), ("speed", 1, 0.0)]),
        ("client", [("10.0.0.1", 1, 0.003), ("127.0.0.1", 3, 0.0015)]),
        ("policy", [("team-a", 1, 0.003), ("default", 2, 0.001), ("(none)", 1, 0.0005)]),
    ],
)
def test_cost_report_groups_by_each_dimension(
    by: str, expected: list[tuple[str, int, float]]
) -> None:
    groups = reports.cost_report(MIXED, by)
    assert [(g.key, g.requests, g.spend_usd) for g in groups] == [
        (k, n, pytest.approx(s)) for k, n, s in expected
    ]
    assert sum(g.requests for g in groups) == reports.totals(MIXED).requests == 4


def test_model_falls_back_to_requested_model_and_ties_sort_by_key() -> None:
    rows = [
        row(id="1", routed_model=None, requested_model="zeta", cost_usd=0.0),
        row(id="2", routed_model="", requested_model="alpha", cost_usd=0.0),
        row(id="3", routed_model=None, requested_model=None, cost_usd=0.0),
    ]
    assert [g.key for g in reports.cost_report(rows, "model")] == ["(none)", "alpha", "zeta"]


def test_unknown_grouping_names_the_allowed_values() -> None:
    with pytest.raises(ValueError) as e:
        reports.cost_report(MIXED, "region")
    assert str(e.value) == (
        "by: 'region' is not a report grouping — use one of model, provider, profile, client, policy, api"
    )


def test_unpriced_is_counted_and_never_folded_in_as_zero() -> None:
    rows = [
        row(id="p", cost_usd=0.002),
        unpriced(id="u1"),
        unpriced(id="u2", unpriced=0),  # tokens but no cost: unpriced even without the flag
        row(
            id="e",
            outcome="error",
            status=502,
            cost_usd=None,
            prompt_tokens=None,
            completion_tokens=None,
            requested_cost_usd=None,
        ),  # failed before any usage: not unpriced
    ]
    t = reports.totals(rows)
    assert (t.requests, t.ok, t.errors, t.priced, t.unpriced) == (4, 3, 1, 1, 2)
    assert t.spend_usd == pytest.approx(0.002)
    only_unpriced = reports.totals([unpriced(id="u")])
    assert (only_unpriced.priced, only_unpriced.unpriced, only_unpriced.spend_usd) == (0, 1, 0.0)
    assert "- + unpriced 1" in reports.render_table([], only_unpriced)


def test_tokens_are_summed_and_missing_counts_as_none() -> None:
    rows = [
        row(prompt_tokens=10, completion_tokens=5, cached_tokens=4, reasoning_tokens=2),
        row(prompt_tokens=None, completion_tokens=None, cached_tokens=None, reasoning_tokens=None),
        row(prompt_tokens=1, completion_tokens=2, cached_tokens=None, reasoning_tokens=3),
    ]
    t = reports.totals(rows)
    assert (t.prompt_tokens, t.completion_tokens, t.cached_tokens, t.reasoning_tokens) == (
        11,
        7,
        4,
        5,
    )


@pytest.mark.parametrize(
    ("rows", "requested", "savings"),
    [
        ([row(cost_usd=0.001, requested_cost_usd=0.004)], 0.004, 0.003),
        (
            [
                row(cost_usd=0.001, requested_cost_usd=0.004),
                row(cost_usd=0.002, requested_cost_usd=None),  # requested model unpriced
                unpriced(requested_cost_usd=0.005),  # routed model unpriced
            ],
            0.009,
            0.003,
        ),
        ([row(cost_usd=0.005, requested_cost_usd=0.001)], 0.001, -0.004),  # routed cost more
        ([row(requested_cost_usd=None)], None, None),
    ],
)
def test_savings_only_where_both_costs_are_known(
    rows: list[dict[str, Any]], requested: float | None, savings: float | None
) -> None:
    t = reports.totals(rows)
    assert t.requested_usd == (None if requested is None else pytest.approx(requested))
    assert t.savings_usd == (None if savings is None else pytest.approx(savings))


@pytest.mark.parametrize(
    ("attempts", "routed", "fallbacks", "rate"),
    [
        ([1, 1, 1, 1], 4, 0, 0.0),
        ([1, 2, 3, 1], 4, 2, 0.5),
        ([2, 1, 0], 2, 1, 0.5),  # 0 attempts: rejected before any upstream, not in the base
        ([], 0, 0, 0.0),
    ],
)
def test_fallback_rate_is_the_share_of_routed_rows_with_retries(
    attempts: list[int], routed: int, fallbacks: int, rate: float
) -> None:
    rows = [row(id=str(i), attempts=n) for i, n in enumerate(attempts)]
    rows.append(row(id="x", outcome="unrouted", attempts=1))  # unrouted never counts
    t = reports.totals(rows)
    assert (t.routed, t.fallbacks, t.fallback_rate) == (routed, fallbacks, rate)


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 99, 7.0),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 95, 4.0),
        ([float(v) for v in range(1, 101)], 95, 95.0),
        ([float(v) for v in range(1, 101)], 99, 99.0),
        ([float(v) for v in range(1, 21)], 95, 19.0),
        ([float(v) for v in range(1, 21)], 0, 1.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], p: int, expected: float | None) -> None:
    assert reports.percentile(values, p) == expected


def test_group_percentiles_skip_missing_values() -> None:
    rows = [row(id=str(v), latency_ms=float(v), ttft_ms=float(v) / 10) for v in range(100, 0, -1)]
    rows.append(row(id="none", latency_ms=None, ttft_ms=None))
    t = reports.totals(rows)
    assert (t.latency_p50_ms, t.latency_p95_ms, t.latency_p99_ms) == (50.0, 95.0, 99.0)
    assert (t.ttft_p50_ms, t.ttft_p95_ms, t.ttft_p99_ms) == (5.0, 9.5, 9.9)
    empty = reports.totals([row(latency_ms=None)])
    assert (empty.latency_p50_ms, empty.ttft_p99_ms) == (None, None)


# ---- spend series ------------------------------------------------------------------------


def test_spend_series_buckets_known_spend_and_counts_every_request() -> None:
    rows = [
        row(ts=T0 - 1, cost_usd=9.0),  # before the window
        row(ts=T0, cost_usd=0.001),
        row(ts=T0 + 3599, cost_usd=0.002),
        unpriced(ts=T0 + 3600),
        row(ts=T0 + 3 * 3600, cost_usd=0.004),  # `until` itself lands in the last bucket
        row(ts=T0 + 3 * 3600 + 1, cost_usd=9.0),  # after
    ]
    series = reports.spend_series(rows, T0, T0 + 3 * 3600, 3)
    assert series == [
        (T0, pytest.approx(0.003), 2),
        (T0 + 3600, 0.0, 1),
        (T0 + 7200, 0.004, 1),
    ]


@pytest.mark.parametrize(
    ("since", "until", "buckets", "message"),
    [
        (T0, T0 + 60, 0, "buckets: 0 is too few — use 1 or more"),
        (T0, T0, 4, f"until ({T0}) is not after since ({T0}) — the window is empty"),
    ],
)
def test_spend_series_rejects_empty_windows(
    since: float, until: float, buckets: int, message: str
) -> None:
    with pytest.raises(ValueError) as e:
        reports.spend_series([], since, until, buckets)
    assert str(e.value) == message


# ---- renderers ---------------------------------------------------------------------------

TABLE_ROWS = [
    row(id="a", cost_usd=0.003, latency_ms=100.0, ttft_ms=40.0),
    row(id="b", cost_usd=0.001, attempts=2, latency_ms=300.0),
    unpriced(id="c", routed_model="llama3.1:8b", provider="ollama", latency_ms=50.0),
]


def test_render_table_is_aligned_and_shows_unpriced() -> None:
    groups = reports.cost_report(TABLE_ROWS, "model")
    text = reports.render_table(groups, reports.totals(TABLE_ROWS), by="model")
    assert text == (
        "model        requests  ok  errors  prompt tok  completion tok              spend usd  requested usd  savings usd  fallback  latency ms p50/p95/p99  ttft ms p50/p95/p99\n"
        "-----------  --------  --  ------  ----------  --------------  ---------------------  -------------  -----------  --------  ----------------------  -------------------\n"
        "gpt-4o-mini         2   2       0         200             100               0.004000       0.008000     0.004000     50.0%             100/300/300             40/40/40\n"
        "llama3.1:8b         1   1       0         100              50         - + unpriced 1              -            -      0.0%                50/50/50                -/-/-\n"
        "-----------  --------  --  ------  ----------  --------------  ---------------------  -------------  -----------  --------  ----------------------  -------------------\n"
        "total               3   3       0         300             150  0.004000 + unpriced 1       0.008000     0.004000     33.3%             100/300/300             40/40/40\n"
        "\n"
        "unpriced 1: requests with tokens but no known price, not counted in spend — declare a "
        "price in rules/models.yaml or run `orchestrator refresh`\n"
    )


def test_render_table_without_unpriced_has_no_note_and_defaults_the_header() -> None:
    rows = [row()]
    text = reports.render_table(reports.cost_report(rows, "client"), reports.totals(rows))
    assert text.startswith("group ")
    assert "unpriced" not in text


def test_render_csv_shape() -> None:
    groups = reports.cost_report(TABLE_ROWS, "model")
    lines = reports.render_csv(groups, reports.totals(TABLE_ROWS)).splitlines()
    assert lines[0] == (
        "key,requests,ok,errors,priced,unpriced,prompt_tokens,completion_tokens,cached_tokens,"
        "reasoning_tokens,spend_usd,requested_usd,savings_usd,routed,fallbacks,fallback_rate,"
        "latency_p50_ms,latency_p95_ms,latency_p99_ms,ttft_p50_ms,ttft_p95_ms,ttft_p99_ms"
    )
    assert lines[1:] == [
        "gpt-4o-mini,2,2,0,2,0,200,100,0,0,0.0040000000,0.0080000000,0.0040000000,2,1,0.5000,"
        "100.0,300.0,300.0,40.0,40.0,40.0",
        "llama3.1:8b,1,1,0,0,1,100,50,0,0,0.0000000000,,,1,0,0.0000,50.0,50.0,50.0,,,",
        "total,3,3,0,2,1,300,150,0,0,0.0040000000,0.0080000000,0.0040000000,3,1,0.3333,"
        "100.0,300.0,300.0,40.0,40.0,40.0",
    ]


def test_as_json_shape_round_trips() -> None:
    groups = reports.cost_report(TABLE_ROWS, "model")
    data = reports.as_json(groups, reports.totals(TABLE_ROWS))
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"groups", "total"}
    assert [g["key"] for g in data["groups"]] == ["gpt-4o-mini", "llama3.1:8b"]
    assert list(data["total"]) == list(reports.CSV_COLUMNS)
    assert data["total"]["unpriced"] == 1
    assert data["groups"][1]["requested_usd"] is None


# ---- explain -----------------------------------------------------------------------------


def test_explain_a_fallback_row() -> None:
    r = row(
        id="req-7",
        stream=1,
        attempts=2,
        attempt_log=json.dumps(
            [
                {
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "outcome": "server_error",
                    "status": 503,
                    "ms": 12.4,
                    "message": "upstream 503",
                },
                {
                    "provider": "groq",
                    "model": "llama-3.1-8b-instant",
                    "outcome": "ok",
                    "status": 200,
                    "ms": 340.0,
                    "message": "",
                },
            ]
        ),
        routed_model="llama-3.1-8b-instant",
        provider="groq",
        profile_reason="header x-orchestrator-profile",
        cached_tokens=20,
        ttft_ms=120.0,
        latency_ms=360.2,
        reasons=json.dumps(["quality 0.400 + latency 0.250", "openai/gpt-4o-mini: server_error"]),
    )
    assert reports.explain(r) == (
        "request req-7\n"
        "time      2026-11-01T12:00:00Z\n"
        "client    127.0.0.1 → api.openai.com/v1/chat/completions\n"
        "api       -\n"
        "profile   balanced — header x-orchestrator-profile\n"
        "policy    default\n"
        "model     gpt-4o → llama-3.1-8b-instant @ groq\n"
        "attempts  2\n"
        "  1. openai/gpt-4o-mini  server_error  status 503  12 ms  upstream 503\n"
        "  2. groq/llama-3.1-8b-instant  ok  status 200  340 ms\n"
        "tokens    prompt 100, completion 50, cached 20, cache writes 0, reasoning 0\n"
        "cost      $0.001000\n"
        "requested $0.004000 for gpt-4o, savings $0.003000\n"
        "timing    ttft 120 ms, latency 360 ms\n"
        "outcome   ok, status 200, streamed\n"
        "reasons\n"
        "  - quality 0.400 + latency 0.250\n"
        "  - openai/gpt-4o-mini: server_error\n"
    )


def test_explain_an_unpriced_failed_row() -> None:
    r = unpriced(
        id="req-8",
        routed_model="llama3.1:8b",
        provider="ollama",
        profile=None,
        profile_reason=None,
        policy=None,
        status=None,
        outcome="truncated",
        error="upstream stalled for 30000 ms",
        latency_ms=None,
    )
    assert reports.explain(r) == (
        "request req-8\n"
        "time      2026-11-01T12:00:00Z\n"
        "client    127.0.0.1 → api.openai.com/v1/chat/completions\n"
        "api       -\n"
        "profile   - — no reason recorded\n"
        "policy    -\n"
        "model     gpt-4o → llama3.1:8b @ ollama\n"
        "attempts  1\n"
        "tokens    prompt 100, completion 50, cached 0, cache writes 0, reasoning 0\n"
        "cost      unpriced — no known price for llama3.1:8b @ ollama\n"
        "requested - (cost of gpt-4o unknown)\n"
        "timing    ttft - ms, latency - ms\n"
        "outcome   truncated, status -, not streamed\n"
        "error     upstream stalled for 30000 ms\n"
        "reasons   none\n"
    )


@pytest.mark.parametrize(
    ("over", "cost_line", "requested_line"),
    [
        (
            {"cost_usd": None, "prompt_tokens": None, "completion_tokens": None},
            "cost      - (no usage reported)",
            "requested $0.004000 for gpt-4o",
        ),
        (
            {"cost_usd": 0.005, "requested_cost_usd": 0.001},
            "cost      $0.005000",
            "requested $0.001000 for gpt-4o, savings -$0.004000",
        ),
    ],
)
def test_explain_cost_lines(over: dict[str, Any], cost_line: str, requested_line: str) -> None:
    lines = reports.explain(row(**over)).splitlines()
    assert cost_line in lines
    assert requested_line in lines


# ---- a real ledger -----------------------------------------------------------------------


def test_reports_over_a_real_sqlite_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    try:
        for r in [*MIXED, row(id="old", ts=T0 - 86400, cost_usd=1.0)]:
            ledger.record(
                LedgerRow(**{**r, "stream": bool(r["stream"]), "unpriced": bool(r["unpriced"])})
            )
        assert ledger.flush()
    finally:
        ledger.close()

    rows = reports.load(SqliteReader(path), since_ts=reports.parse_since("1h", now=T0 + 60))
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["attempt_log"] == [] and rows[0]["reasons"] == []
    for by in reports.GROUP_BY:
        assert reports.cost_report(rows, by) == reports.cost_report(MIXED, by)
    assert reports.totals(rows) == reports.totals(MIXED)
    t = reports.totals(rows)
    assert (t.requests, t.priced, t.unpriced) == (4, 3, 1)
    assert len(reports.load(SqliteReader(path))) == 5


def test_load_decodes_attempts_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    attempt = {
        "provider": "openai",
        "model": "m",
        "outcome": "ok",
        "status": 200,
        "ms": 5.0,
        "message": "",
    }
    try:
        ledger.record(
            LedgerRow(
                id="x", ts=T0, outcome="ok", attempts=1, attempt_log=[attempt], reasons=["why"]
            )
        )
        assert ledger.flush()
    finally:
        ledger.close()
    (r,) = reports.load(SqliteReader(path))
    assert (r["attempt_log"], r["reasons"]) == ([attempt], ["why"])
    assert "  1. openai/m  ok  status 200  5 ms" in reports.explain(r).splitlines()


def test_load_names_a_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(OrchestratorError) as e:
        reports.load(SqliteReader(tmp_path / "nope.db"))
    assert str(e.value) == (
        f"no ledger at {tmp_path / 'nope.db'} — it is created when the proxy first starts "
        "(`orchestrator run`); check `data.ledger` in orchestrator.yaml"
    )


def test_load_rejects_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    path.write_bytes(b"")
    with pytest.raises(OrchestratorError) as e:
        reports.load(SqliteReader(path))
    assert str(e.value) == (
        f"cannot read the ledger {path}: no such table: requests — is it an orchestrator "
        "ledger? Start the proxy once to create or migrate it"
    )
