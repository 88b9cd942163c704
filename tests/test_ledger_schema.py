"""The one description of the ledger's `requests` table (`addon.store.ledger_schema`): its
row, its columns, its named migrations and their SQLite and PostgreSQL renderings.

Ledger files written before the description existed must open and migrate as they always
did, so the SQL those versions ran is pinned here, literally, and files made with it are
compared with files the renderings make."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import psycopg
import pytest

from addon.store import ledger_schema, pg_migrations, sqlite_ledger
from addon.store.ledger_schema import Dialect, LedgerRow
from addon.store.sqlite_ledger import Ledger
from tests.services import PgServer, pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

# what the SQLite ledger ran before `ledger_schema` (0001_requests, then 0002_prompt_logging)
OLD_SQLITE_0001 = """
CREATE TABLE requests (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, client TEXT, host TEXT, path TEXT, profile TEXT,
    profile_reason TEXT, policy TEXT, requested_model TEXT, routed_model TEXT, provider TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, attempt_log TEXT, status INTEGER,
    outcome TEXT NOT NULL, stream INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER,
    completion_tokens INTEGER, cached_tokens INTEGER, reasoning_tokens INTEGER,
    cost_usd REAL, unpriced INTEGER NOT NULL DEFAULT 0, requested_cost_usd REAL,
    ttft_ms REAL, latency_ms REAL, reasons TEXT, error TEXT
);
CREATE INDEX requests_ts ON requests(ts)
"""
OLD_SQLITE_0002 = """
ALTER TABLE requests ADD COLUMN prompt_sha256 TEXT;
ALTER TABLE requests ADD COLUMN prompt TEXT;
ALTER TABLE requests ADD COLUMN completion TEXT
"""
# what the PostgreSQL ledger ran before it (its only step, 0001_requests)
OLD_PG_0001 = (
    """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, client TEXT, host TEXT,
        path TEXT, profile TEXT, profile_reason TEXT, policy TEXT, requested_model TEXT,
        routed_model TEXT, provider TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        attempt_log TEXT, status INTEGER, outcome TEXT NOT NULL,
        stream INTEGER NOT NULL DEFAULT 0, prompt_tokens BIGINT, completion_tokens BIGINT,
        cached_tokens BIGINT, reasoning_tokens BIGINT, cost_usd DOUBLE PRECISION,
        unpriced INTEGER NOT NULL DEFAULT 0, requested_cost_usd DOUBLE PRECISION,
        ttft_ms DOUBLE PRECISION, latency_ms DOUBLE PRECISION, reasons TEXT, error TEXT,
        prompt_sha256 TEXT, prompt TEXT, completion TEXT
    )
    """,
    "CREATE INDEX requests_ts ON requests (ts)",
    "CREATE INDEX requests_policy_ts ON requests (policy, ts)",
)


def old_sqlite_ledger(path: Path, steps: dict[str, str]) -> None:
    """A ledger file as the earlier code left it after running `steps`."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for name, sql in steps.items():
        with conn:
            for stmt in filter(None, (s.strip() for s in sql.split(";"))):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
    with conn:
        conn.execute(  # recent: the writer's retention prune must leave it
            "INSERT INTO requests (id, ts, outcome) VALUES ('old', ?, 'ok')", (time.time() - 60,)
        )
    conn.close()


def sqlite_shape(path: Path) -> tuple[list[Any], list[Any], list[str]]:
    """Columns (name, type, not null, default, pk), indexes and migrations of a file."""
    conn = sqlite3.connect(path)
    try:
        cols = list(conn.execute("PRAGMA table_info(requests)"))
        indexes = [(r[1], [c[2] for c in conn.execute(f"PRAGMA index_info({r[1]})")])
                   for r in conn.execute("PRAGMA index_list(requests)")]  # fmt: skip
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    finally:
        conn.close()
    return cols, sorted(indexes), names


def test_the_row_and_the_columns_name_the_same_fields() -> None:
    assert tuple(f.name for f in fields(LedgerRow)) == ledger_schema.ROW_COLUMNS
    assert sorted(ledger_schema.ROW_COLUMNS) == sorted(c.name for c in ledger_schema.COLUMNS)
    assert sqlite_ledger._COLUMNS == ledger_schema.ROW_COLUMNS


def test_as_row_stores_lists_as_json_and_flags_as_integers() -> None:
    row = LedgerRow("r", 1.5, "ok", attempt_log=[{"a": 1}], reasons=["x"], stream=True)
    values = dict(zip(ledger_schema.ROW_COLUMNS, row.as_row(), strict=True))
    assert (values["attempt_log"], values["reasons"]) == ('[{"a": 1}]', '["x"]')
    assert (values["stream"], values["unpriced"], values["attempts"]) == (1, 0, 0)


@pytest.mark.parametrize(("dialect", "names"), [
    (Dialect.SQLITE, ["0001_requests", "0002_prompt_logging", "0003_api"]),
    (Dialect.POSTGRESQL, ["0001_requests", "0003_api"]),
])  # fmt: skip
def test_each_dialect_has_its_named_steps_in_order(dialect: Dialect, names: list[str]) -> None:
    assert [name for name, _ in ledger_schema.migrations(dialect)] == names


@pytest.mark.parametrize(("dialect", "replace", "verb", "tail"), [
    (Dialect.SQLITE, True, "INSERT OR REPLACE INTO requests (", "?)"),
    (Dialect.SQLITE, False, "INSERT OR IGNORE INTO requests (", "?)"),
    (Dialect.POSTGRESQL, False, "INSERT INTO requests (", "%s) ON CONFLICT (id) DO NOTHING"),
])  # fmt: skip
def test_insert_sql_per_dialect(dialect: Dialect, replace: bool, verb: str, tail: str) -> None:
    sql = ledger_schema.insert_sql(dialect, replace=replace)
    assert sql.startswith(verb + ", ".join(ledger_schema.ROW_COLUMNS) + ") VALUES (")
    assert sql.endswith(tail)


def test_a_new_sqlite_ledger_is_the_old_codes_shape_plus_the_api_step(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    old_sqlite_ledger(
        old, {"0001_requests": OLD_SQLITE_0001, "0002_prompt_logging": OLD_SQLITE_0002}
    )
    conn = sqlite3.connect(old)
    with conn:
        conn.execute("ALTER TABLE requests ADD COLUMN api TEXT")
        conn.execute("ALTER TABLE requests ADD COLUMN cache_write_tokens INTEGER")
        conn.execute("INSERT INTO schema_migrations VALUES ('0003_api', 1.0)")
    conn.close()
    Ledger(tmp_path / "new.db").close()
    assert sqlite_shape(tmp_path / "new.db") == sqlite_shape(old)


@pytest.mark.parametrize("steps", [
    {"0001_requests": OLD_SQLITE_0001},
    {"0001_requests": OLD_SQLITE_0001, "0002_prompt_logging": OLD_SQLITE_0002},
])  # fmt: skip
def test_an_old_sqlite_ledger_migrates_as_before(tmp_path: Path, steps: dict[str, str]) -> None:
    path = tmp_path / "ledger.db"
    old_sqlite_ledger(path, steps)
    conn = sqlite_ledger.connect(path)
    applied = sqlite_ledger.migrate(conn)
    conn.close()
    assert applied == ["0001_requests", "0002_prompt_logging", "0003_api"][len(steps) :]
    Ledger(tmp_path / "fresh.db").close()
    assert sqlite_shape(path) == sqlite_shape(tmp_path / "fresh.db")
    ledger = Ledger(path)
    ledger.record(LedgerRow("new", time.time(), "ok", prompt="hi", api="messages",
                            cache_write_tokens=7))  # fmt: skip
    assert ledger.flush(10)
    ledger.close()
    rows = sqlite_ledger.read_rows(path)
    assert [(r["id"], r["api"], r["cache_write_tokens"]) for r in rows] == [
        ("old", None, None), ("new", "messages", 7)]  # fmt: skip


def pg_shape(url: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Columns (name, type, nullable, default), index definitions and migrations."""
    with psycopg.connect(url) as conn:
        cols = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name = 'requests' "
            "ORDER BY ordinal_position"
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'requests' "
            "ORDER BY indexname"
        ).fetchall()
        names = conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
    return cols, indexes, names


def test_an_old_postgresql_ledger_needs_only_the_api_step_and_matches_a_new_one(
    pg_url: str, pg_server: PgServer
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        for stmt in OLD_PG_0001:
            conn.execute(stmt)  # type: ignore[call-overload]
        conn.execute("INSERT INTO schema_migrations VALUES ('0001_requests', 1.0)")
        assert pg_migrations.migrate(conn) == ["0003_api"]
    fresh = pg_server.new_database()
    with psycopg.connect(fresh, autocommit=True) as conn:
        assert pg_migrations.migrate(conn) == ["0001_requests", "0003_api"]
    assert pg_shape(fresh) == pg_shape(pg_url)
    lite = sqlite3.connect(":memory:")  # the same columns in the same order as SQLite's
    try:
        sqlite_ledger.migrate(lite)
        sqlite_cols = [r[1] for r in lite.execute("PRAGMA table_info(requests)")]
    finally:
        lite.close()
    assert [c[0] for c in pg_shape(fresh)[0]] == sqlite_cols
