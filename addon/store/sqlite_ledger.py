"""The cost ledger: one row per intercepted LLM request, in SQLite (WAL).

Writes happen on the shared writer thread (`batch_writer`), so the event loop never waits
on disk. The thread commits each batch as soon as it has drained the queue: a row for a
response that completed a moment ago survives `kill -9` of the proxy. The schema changes
only through the named migrations of `ledger_schema`, applied in order and recorded in
`schema_migrations`. The PostgreSQL ledger's spool is a file of this kind too.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from addon.store.batch_writer import BatchWriter
from addon.store.ledger_schema import ROW_COLUMNS, Dialect, LedgerRow, insert_sql, migrations

log = logging.getLogger("orchestrator")

MIGRATIONS = migrations(Dialect.SQLITE)
_COLUMNS = ROW_COLUMNS
_INSERT = insert_sql(Dialect.SQLITE, replace=True)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the ledger file (created with its folder if missing): WAL, normal
    sync, and a 30 s wait for a lock held by another process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; return the names applied. Safe to run again."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, statements in MIGRATIONS:
        if name in done:
            continue
        with conn:
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
        applied.append(name)
    return applied


def prune(conn: sqlite3.Connection, before_ts: float) -> int:
    """Delete rows older than `before_ts`; return how many went."""
    with conn:
        cur = conn.execute("DELETE FROM requests WHERE ts < ?", (before_ts,))
    return cur.rowcount


def count_before(path: Path, before_ts: float) -> int:
    """How many rows are older than `before_ts` (what `prune` would delete); read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM requests WHERE ts < ?", (before_ts,)).fetchone()[0]
        )
    finally:
        conn.close()


class Ledger(BatchWriter):
    """The SQLite ledger's writer: creates and migrates the file at once (raising
    sqlite3.Error in the caller when it cannot), then writes on its own thread.

    `record()` never blocks on disk. The same thread prunes rows older than
    `retention_days` once at start and then daily, so retention never touches the request
    path. A batch SQLite refuses is logged and counted as handled (`flush()` returns).
    """

    def __init__(self, path: Path, retention_days: int = 30) -> None:
        self.path = path
        self.where = str(path)
        conn = connect(path)
        migrate(conn)
        conn.close()
        super().__init__(thread_name="ledger-writer", retention_days=retention_days,
                         close_timeout_s=10.0)  # fmt: skip
        self._conn: sqlite3.Connection | None = None
        self._start()

    def _queue_overflow(self, row: LedgerRow, first: bool) -> None:
        log.error("ledger queue full; dropping row %s (is the disk stalled?)", row.id)

    def _begin(self) -> None:
        self._conn = connect(self.path)

    def _end(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _upkeep(self) -> None:
        cutoff = self._prune_cutoff()
        if cutoff is None or self._conn is None:
            return
        try:
            count = prune(self._conn, cutoff)
        except sqlite3.Error as e:
            log.error("ledger prune failed: %s", e)
            return
        self._pruned(count)

    def _store(self, rows: list[LedgerRow]) -> None:
        assert self._conn is not None
        try:
            with self._conn:
                self._conn.executemany(_INSERT, [r.as_row() for r in rows])
        except sqlite3.Error as e:
            log.error("ledger write failed for %d rows: %s", len(rows), e)


def stats(path: Path) -> dict[str, Any]:
    """Row count (None when unreadable) and file size in bytes with the WAL, for /status."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        rows = None
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return {"path": str(path), "rows": rows, "bytes": size}


def read_rows(
    path: Path, where: str = "", params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows matching `where` (a clause from `ledger_schema.row_filter`, "" for all) as
    dicts keyed like the table, oldest first; opens the file read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM requests" + (f" WHERE {where}" if where else "") + " ORDER BY ts"
        return [dict(r) for r in conn.execute(sql, params or {})]
    finally:
        conn.close()
