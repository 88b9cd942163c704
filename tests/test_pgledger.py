"""The PostgreSQL ledger against a real server: rows read back like SQLite's, migrations
under concurrency, no loss and no duplicates across a database restart, the on-disk spool,
the reader's queries and its error messages, and that no password ever leaks."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from addon.store import pgledger, sqlite_ledger
from addon.store.ledger_schema import LedgerRow
from addon.store.ledgers import LedgerError, SqliteReader
from addon.store.pg_reader import PgReader
from addon.store.pgledger import PgLedger
from addon.store.sqlite_ledger import Ledger
from tests.services import PgServer, free_port, pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

T0 = 1_790_000_000.0
SECRET = "s3cret"


def wait_until(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.02)


def mkrow(i: int, **over: Any) -> LedgerRow:
    base: dict[str, Any] = {
        "id": f"req-{i:06d}",
        "ts": T0 + i * 0.001,
        "outcome": "ok",
        "client": "10.0.0.1",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "profile": "balanced",
        "profile_reason": "default profile",
        "policy": "default",
        "requested_model": "gpt-4o",
        "routed_model": "gpt-4o-mini",
        "provider": "openai",
        "attempts": 2,
        "attempt_log": [{"target": "openai/gpt-4o-mini", "status": 503, "ms": 12.5}],
        "status": 200,
        "stream": True,
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "cached_tokens": 3,
        "reasoning_tokens": 0,
        "cost_usd": 0.00123,
        "unpriced": False,
        "requested_cost_usd": 0.0049,
        "ttft_ms": 81.25,
        "latency_ms": 402.5,
        "reasons": ["cheapest", "breaker open: openai/gpt-4o"],
        "error": None,
        "prompt_sha256": "ab" * 32,
        "prompt": "héllo ✓",
        "completion": "world",
    }
    return LedgerRow(**{**base, **over})


VARIETY = [
    mkrow(1),
    LedgerRow(id="bare", ts=T0 + 5, outcome="unrouted"),
    mkrow(2, cost_usd=None, unpriced=True, requested_cost_usd=None, stream=False),
    mkrow(3, status=None, outcome="error", error="upstream 502", attempt_log=[], reasons=[]),
    mkrow(4, cost_usd=0, prompt_tokens=2**40, ts=T0 + 0.1),
]


def pg_rows(url: str, sql: str = "SELECT id FROM requests ORDER BY id") -> list[Any]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(sql)]  # type: ignore[arg-type]


def spool_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def writers() -> Iterator[list[PgLedger]]:
    """PgLedgers a test opens; all closed at the end, even when it fails."""
    opened: list[PgLedger] = []
    yield opened
    for w in opened:
        w.close()


@pytest.fixture
def open_writer(writers: list[PgLedger], tmp_path: Path) -> Callable[..., PgLedger]:
    def make(url: str, spool: Path | None = None, **kw: Any) -> PgLedger:
        w = PgLedger(url, spool or tmp_path / "spool.db", **kw)
        writers.append(w)
        return w

    return make


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnect within half a second once the server is back, so outage tests stay short."""
    monkeypatch.setattr(pgledger, "RETRY_MAX_S", 0.5)


@pytest.fixture
def restarts(pg_server: PgServer) -> Iterator[PgServer]:
    """A test that stops the server leaves it running again."""
    yield pg_server
    if pg_server.proc is None or pg_server.proc.poll() is not None:
        pg_server.start()


# --------------------------------------------------------------------------- schema, rows


def test_rows_read_back_exactly_like_sqlite(
    pg_url: str, open_writer: Callable[..., PgLedger], tmp_path: Path
) -> None:
    w = open_writer(pg_url)
    lite = Ledger(tmp_path / "ledger.db")
    for r in VARIETY:
        w.record(r)
        lite.record(r)
    assert w.drain(10) and lite.flush(10)
    lite.close()

    got = PgReader(pg_url).read_rows()
    want = SqliteReader(tmp_path / "ledger.db").read_rows()
    assert [list(d) for d in got] == [list(d) for d in want]
    typed = [[(k, type(v).__name__, v) for k, v in d.items()] for d in got]
    assert typed == [[(k, type(v).__name__, v) for k, v in d.items()] for d in want]
    assert [d["id"] for d in got] == ["req-000001", "req-000002", "req-000003",
                                      "req-000004", "bare"]  # fmt: skip


def test_schema_has_the_sqlite_columns_in_order_and_indexes(
    pg_url: str, open_writer: Callable[..., PgLedger], tmp_path: Path
) -> None:
    w = open_writer(pg_url)
    wait_until(lambda: w.health()["connected"], "connection and migration")
    cols = pg_rows(pg_url, "SELECT column_name FROM information_schema.columns "
                           "WHERE table_name = 'requests' ORDER BY ordinal_position")  # fmt: skip
    lite = sqlite_ledger.connect(tmp_path / "ledger.db")
    sqlite_ledger.migrate(lite)
    sqlite_cols = [r[1] for r in lite.execute("PRAGMA table_info(requests)")]
    lite.close()
    assert cols == sqlite_cols  # SELECT * rows carry the same keys in the same order
    assert sorted(cols) == sorted(sqlite_ledger._COLUMNS)
    indexes = pg_rows(pg_url, "SELECT indexdef FROM pg_indexes WHERE tablename = 'requests' "
                              "ORDER BY indexname")  # fmt: skip
    assert any("(policy, ts)" in i for i in indexes)
    assert any(i.endswith("(ts)") for i in indexes)


def test_migrations_are_idempotent_and_safe_under_concurrency(pg_url: str) -> None:
    n = 8
    barrier = threading.Barrier(n)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                barrier.wait()
                results.append(pgledger.migrate(conn))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [[]] * (n - 1) + [[name for name, _ in pgledger.MIGRATIONS]]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert pgledger.migrate(conn) == []


def test_two_writers_starting_together_both_write(
    pg_url: str, open_writer: Callable[..., PgLedger], tmp_path: Path
) -> None:
    a = open_writer(pg_url, tmp_path / "a.db")
    b = open_writer(pg_url, tmp_path / "b.db")
    for i in range(100):
        (a if i % 2 else b).record(mkrow(i))
    assert a.drain(10) and b.drain(10)
    assert len(pg_rows(pg_url)) == 100
    assert a.health()["dropped"] == b.health()["dropped"] == 0


def test_a_duplicate_id_is_stored_once(pg_url: str, open_writer: Callable[..., PgLedger]) -> None:
    w = open_writer(pg_url)
    w.record(mkrow(1, outcome="ok"))
    w.record(mkrow(1, outcome="error"))  # same batch
    assert w.drain(10)
    w.record(mkrow(1, outcome="truncated"))  # a later batch
    assert w.drain(10)
    assert pg_rows(pg_url, "SELECT outcome FROM requests") == ["ok"]


def test_close_stores_what_is_still_queued(pg_url: str, tmp_path: Path) -> None:
    w = PgLedger(pg_url, tmp_path / "spool.db")
    for i in range(1000):
        w.record(mkrow(i))
    w.close()
    w.close()
    assert len(pg_rows(pg_url)) == 1000
    assert w.health()["connected"] is False
    assert not (tmp_path / "spool.db").exists()


def test_a_row_postgresql_rejects_is_dropped_alone_and_nul_is_kept_out(
    pg_url: str, open_writer: Callable[..., PgLedger], caplog: pytest.LogCaptureFixture
) -> None:
    w = open_writer(pg_url)
    w.record(mkrow(1))
    w.record(mkrow(2, prompt_tokens=2**70))  # beyond BIGINT
    w.record(mkrow(3, prompt="a\x00b"))
    assert w.drain(10)
    assert pg_rows(pg_url) == ["req-000001", "req-000003"]
    assert pg_rows(pg_url, "SELECT prompt FROM requests WHERE id = 'req-000003'") == ["a\ufffdb"]
    assert w.health()["dropped"] == 1
    assert "PostgreSQL rejected row req-000002" in caplog.text


def test_thousands_of_rows_per_second(pg_url: str, open_writer: Callable[..., PgLedger]) -> None:
    w = open_writer(pg_url)
    assert w.drain(10)
    wait_until(lambda: w.health()["connected"], "connection")
    start = time.monotonic()
    for i in range(10_000):
        w.record(mkrow(i))
    assert w.flush(20)
    elapsed = time.monotonic() - start
    assert len(pg_rows(pg_url)) == 10_000
    assert elapsed < 5, f"10000 rows took {elapsed:.2f}s"


def test_daily_prune_on_the_writer_thread(
    pg_url: str, open_writer: Callable[..., PgLedger]
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        pgledger.migrate(conn)
        conn.execute("INSERT INTO requests (id, ts, outcome) VALUES ('old', 1.0, 'ok')")
    w = open_writer(pg_url, retention_days=1)
    w.record(mkrow(1, ts=time.time()))
    assert w.drain(10)
    assert pg_rows(pg_url) == ["req-000001"]
    assert w.last_pruned == 1


# --------------------------------------------------------------------------- outages


@pytest.mark.usefixtures("fast_retry")
def test_database_restart_mid_stream_loses_and_doubles_nothing(
    pg_url: str, restarts: PgServer, open_writer: Callable[..., PgLedger],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="orchestrator")
    w = open_writer(pg_url)
    sent: list[str] = []
    done = threading.Event()

    def produce() -> None:
        i = 0
        while not done.is_set():
            r = mkrow(i)
            w.record(r)
            sent.append(r.id)
            i += 1
            done.wait(0.0005)  # pace: a steady stream, not one burst

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: w.health()["connected"], "connection")
        wait_until(lambda: len(pg_rows(pg_url)) > 200, "rows before the restart")
        restarts.stop()
        wait_until(lambda: w.health()["spooled"] > 0, "spooling while down")
        at_restart = len(sent)
        restarts.start()
        wait_until(lambda: w.health()["connected"] and len(sent) > at_restart + 200,
                   "rows after the restart")  # fmt: skip
    finally:
        done.set()
        producer.join()
    assert w.drain(20)
    ids = pg_rows(pg_url)
    assert len(ids) == len(sent) and set(ids) == set(sent)
    h = w.health()
    assert (h["spooled"], h["dropped"], h["connected"], h["queued"]) == (0, 0, True, 0)
    lost = [r for r in caplog.records if "lost PostgreSQL" in r.getMessage()]
    back = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1


@pytest.mark.usefixtures("fast_retry")
def test_down_at_start_spools_then_drains(
    pg_url: str, restarts: PgServer, open_writer: Callable[..., PgLedger], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    restarts.stop()
    w = open_writer(pg_url)
    for i in range(3):  # three batches, one warning
        w.record(mkrow(i))
        assert w.flush(10)
    h = w.health()
    assert (h["connected"], h["spooled"], h["dropped"]) == (False, 3, 0)
    assert h["last_error"] and "Connection refused" in h["last_error"]
    assert spool_count(tmp_path / "spool.db") == 3
    assert len([r for r in caplog.records if "cannot reach" in r.getMessage()]) == 1
    assert not w.drain(0.2)

    restarts.start()
    w.record(mkrow(99))
    assert w.drain(20)
    assert pg_rows(pg_url) == ["req-000000", "req-000001", "req-000002", "req-000099"]
    assert spool_count(tmp_path / "spool.db") == 0


@pytest.mark.usefixtures("fast_retry")
def test_a_locked_table_makes_the_writer_spool_instead_of_waiting(
    pg_url: str, open_writer: Callable[..., PgLedger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers but the table is locked (`LOCK TABLE`, `VACUUM FULL`): without a
    lock timeout the writer's INSERT would wait for as long as the lock is held."""
    monkeypatch.setattr(pgledger, "LOCK_TIMEOUT_MS", 300)
    w = open_writer(pg_url)
    w.record(mkrow(0))
    assert w.drain(20) and pg_rows(pg_url) == ["req-000000"]
    with psycopg.connect(pg_url) as locker:  # a transaction until the block ends
        locker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        w.record(mkrow(1))
        assert w.flush(10), "the writer waited on the lock"
        h = w.health()
        assert (h["connected"], h["spooled"], h["dropped"]) == (False, 1, 0)
        assert "lock timeout" in h["last_error"]
        locker.rollback()
    w.record(mkrow(2))
    assert w.drain(20)
    assert pg_rows(pg_url) == ["req-000000", "req-000001", "req-000002"]


def test_a_locked_table_fails_a_read_with_the_reason(
    pg_url: str, open_writer: Callable[..., PgLedger], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgledger, "LOCK_TIMEOUT_MS", 300)
    seed(pg_url, open_writer)
    with psycopg.connect(pg_url) as locker:
        locker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(LedgerError, match="another session holds a lock") as err:
            PgReader(pg_url).read_rows()
        assert "retry once it is released" in str(err.value)
        locker.rollback()
    assert len(PgReader(pg_url).read_rows()) > 0


def test_the_lock_timeout_joins_the_urls_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    args = pgledger._connect_args("postgresql://u@h/db")
    assert args["options"] == f"-c lock_timeout={pgledger.LOCK_TIMEOUT_MS}"
    args = pgledger._connect_args("postgresql://u@h/db?options=-c%20search_path%3Dlog")
    assert args["options"] == f"-c search_path=log -c lock_timeout={pgledger.LOCK_TIMEOUT_MS}"
    assert "options" not in pgledger._connect_args(
        "postgresql://u@h/db?options=-c%20lock_timeout%3D5s"
    )
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=8MB")
    args = pgledger._connect_args("postgresql://u@h/db")
    assert args["options"] == f"-c work_mem=8MB -c lock_timeout={pgledger.LOCK_TIMEOUT_MS}"


@pytest.mark.usefixtures("fast_retry")
def test_a_spool_left_by_an_earlier_run_drains_at_start(
    pg_url: str, restarts: PgServer, tmp_path: Path
) -> None:
    spool = tmp_path / "left" / "spool.db"
    restarts.stop()
    first = PgLedger(pg_url, spool)
    for i in range(50):
        first.record(mkrow(i))
    started = time.monotonic()
    first.close()
    assert time.monotonic() - started < 5
    assert spool_count(spool) == 50

    restarts.start()
    second = PgLedger(pg_url, spool)
    try:
        assert second.drain(20)
    finally:
        second.close()
    assert len(pg_rows(pg_url)) == 50
    assert spool_count(spool) == 0


@pytest.mark.usefixtures("fast_retry")
def test_the_spool_is_bounded_and_says_what_it_dropped(
    pg_url: str, restarts: PgServer, open_writer: Callable[..., PgLedger],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    restarts.stop()
    w = open_writer(pg_url, spool_max_rows=10)
    for i in range(25):
        w.record(mkrow(i))
        if i % 5 == 4:
            assert w.flush(10)  # five batches, one error
    assert (w.health()["spooled"], w.health()["dropped"]) == (10, 15)
    full = [r for r in caplog.records if "is full (10 rows)" in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.ERROR
    assert "dropping new rows (5 so far)" in full[0].getMessage()
    restarts.start()
    assert w.drain(20)
    assert len(pg_rows(pg_url)) == 10
    assert "has room again; 15 rows dropped in all" in caplog.text


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("url", [
    f"postgresql://u:{SECRET}@127.0.0.1:{{port}}/x",
    f"postgresql://u@127.0.0.1:{{port}}/x?password={SECRET}",
])  # fmt: skip
def test_no_password_in_health_logs_or_errors(
    url: str, open_writer: Callable[..., PgLedger], caplog: pytest.LogCaptureFixture
) -> None:
    url = url.format(port=free_port())
    w = open_writer(url)
    w.record(mkrow(1))
    assert w.flush(10)
    wait_until(lambda: w.health()["last_error"], "a connection error")
    health = w.health()
    assert "***" in health["where"] and "127.0.0.1" in health["where"]
    assert SECRET not in repr(health) and SECRET not in caplog.text

    reader = PgReader(url)
    with pytest.raises(LedgerError) as e:
        reader.read_rows()
    assert SECRET not in str(e.value) and e.value.__cause__ is None
    assert "cannot reach the PostgreSQL ledger postgresql://u" in str(e.value)
    assert "is the server up and `data.ledger` in orchestrator.yaml right?" in str(e.value)
    stats = reader.stats()
    assert stats["rows"] is None and SECRET not in repr(stats)


@pytest.mark.parametrize("url", [
    f"postgres://u:{SECRET}@[::1/db",
    f"postgresql://u:{SECRET}@127.0.0.1:nope/db",
    f"postgresql://u:{SECRET}@127.0.0.1/db?nonsense=1",
])  # fmt: skip
def test_a_malformed_url_raises_without_the_password(url: str, tmp_path: Path) -> None:
    with pytest.raises(LedgerError) as e:
        PgLedger(url, tmp_path / "spool.db")
    assert SECRET not in str(e.value)
    assert "use postgresql://user:password@host:5432/dbname" in str(e.value)


@pytest.mark.parametrize(("url", "where"), [
    ("postgresql://u:pw@db.example:5432/x", "postgresql://u:***@db.example:5432/x"),
    ("postgresql://u@h/x?password=pw&sslmode=require",
     "postgresql://u@h/x?password=***&sslmode=require"),
    ("postgresql://u:pw@[::1/x", "postgresql://u:***@[::1/x"),
    ("postgresql://u:pw@h:nope/x", "postgresql://u:***@h:nope/x"),
    ("postgresql://h/x?user=a@b", "postgresql://h/x?user=a@b"),
])  # fmt: skip
def test_where_masks_the_password(url: str, where: str) -> None:
    assert pgledger._redact(url) == where


def test_scrub_removes_passwords_libpq_echoes() -> None:
    url = "postgresql://u:p%40ss@h/db"
    msg = 'bad URI: "postgresql://u:p%40ss@h/db" (password p@ss)\n\tmore'
    assert pgledger._scrub(msg, url) == 'bad URI: "postgresql://u:***@h/db" (password ***) more'


# --------------------------------------------------------------------------- reader


def seed(url: str, open_writer: Callable[..., PgLedger]) -> None:
    w = open_writer(url)
    rows = [
        mkrow(1, client="a", policy="team", profile="fast", cost_usd=1.0),
        mkrow(2, client="a", policy="team", profile="fast", cost_usd=2.0),
        mkrow(3, client=None, policy="team", profile=None, cost_usd=4.0),
        mkrow(4, client="b", policy="team", cost_usd=None, unpriced=True),
        mkrow(5, client="b", policy="other", cost_usd=8.0),
        mkrow(6, client="c", policy="team", cost_usd=16.0, ts=T0 - 100),
    ]
    for r in rows:
        w.record(r)
    assert w.drain(10)


def test_reader_filters_and_orders_rows(pg_url: str, open_writer: Callable[..., PgLedger]) -> None:
    seed(pg_url, open_writer)
    reader = PgReader(pg_url)
    assert [r["id"] for r in reader.read_rows()][:2] == ["req-000006", "req-000001"]
    assert [r["id"] for r in reader.read_rows(since=T0 + 0.003)] == [
        "req-000003", "req-000004", "req-000005"]  # fmt: skip
    assert [r["id"] for r in reader.read_rows(request_id="req-000002")] == ["req-000002"]
    assert reader.read_rows(since=T0 + 1, request_id="req-000002") == []


@pytest.mark.parametrize(("column", "since", "want"), [
    ("client", T0, [("", 4.0), ("a", 3.0)]),
    ("client", 0.0, [("", 4.0), ("a", 3.0), ("c", 16.0)]),
    ("profile", T0, [("", 4.0), ("fast", 3.0)]),
    ("policy", T0, [("team", 7.0)]),
])  # fmt: skip
def test_reader_spend_groups_priced_rows_of_a_policy(
    pg_url: str, open_writer: Callable[..., PgLedger], column: str, since: float,
    want: list[tuple[str, float]],
) -> None:  # fmt: skip
    seed(pg_url, open_writer)
    assert sorted(PgReader(pg_url).spend("team", column, since)) == want


def test_reader_spend_refuses_other_columns(pg_url: str) -> None:
    with pytest.raises(ValueError, match="not one of"):
        PgReader(pg_url).spend("team", "id; DROP TABLE requests", 0)


def test_reader_prune_and_stats(pg_url: str, open_writer: Callable[..., PgLedger]) -> None:
    seed(pg_url, open_writer)
    reader = PgReader(pg_url)
    stats = reader.stats()
    assert (stats["kind"], stats["where"], stats["rows"]) == ("postgresql", pg_url, 6)
    assert stats["bytes"] > 0
    assert reader.prune(T0) == 1
    assert reader.prune(T0) == 0
    assert reader.stats()["rows"] == 5
    reader.close()


def test_reader_on_a_database_the_proxy_never_wrote(pg_url: str) -> None:
    reader = PgReader(pg_url)
    with pytest.raises(LedgerError, match="has no requests yet — its table is created when "
                                          "the proxy first starts"):  # fmt: skip
        reader.read_rows()
    assert reader.spend("team", "client", 0) == []
    assert reader.prune(T0) == 0
    assert reader.stats() == {"kind": "postgresql", "where": pg_url, "rows": None,
                              "bytes": None}  # fmt: skip
