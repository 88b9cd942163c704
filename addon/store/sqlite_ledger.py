"""The cost ledger: one row per intercepted LLM request, in SQLite (WAL).

Writes happen on a dedicated thread fed by a queue, so the event loop never waits on disk.
The writer commits each batch as soon as it has drained the queue: a row for a response
that completed a moment ago survives `kill -9` of the proxy. The schema changes only through
the named migrations below, applied in order and recorded in `schema_migrations`.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("orchestrator")

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_requests",
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            ts REAL NOT NULL,
            client TEXT,
            host TEXT,
            path TEXT,
            profile TEXT,
            profile_reason TEXT,
            policy TEXT,
            requested_model TEXT,
            routed_model TEXT,
            provider TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            attempt_log TEXT,
            status INTEGER,
            outcome TEXT NOT NULL,
            stream INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cached_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost_usd REAL,
            unpriced INTEGER NOT NULL DEFAULT 0,
            requested_cost_usd REAL,
            ttft_ms REAL,
            latency_ms REAL,
            reasons TEXT,
            error TEXT
        );
        CREATE INDEX requests_ts ON requests(ts);
        """,
    ),
    (
        "0002_prompt_logging",
        """
        ALTER TABLE requests ADD COLUMN prompt_sha256 TEXT;
        ALTER TABLE requests ADD COLUMN prompt TEXT;
        ALTER TABLE requests ADD COLUMN completion TEXT
        """,
    ),
)

OUTCOMES = ("ok", "error", "truncated", "client_abort", "unrouted")


@dataclass(frozen=True)
class LedgerRow:
    id: str
    ts: float
    outcome: str
    client: str | None = None
    host: str | None = None
    path: str | None = None
    profile: str | None = None
    profile_reason: str | None = None
    policy: str | None = None
    requested_model: str | None = None
    routed_model: str | None = None
    provider: str | None = None
    attempts: int = 0
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    unpriced: bool = False
    requested_cost_usd: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    reasons: list[str] = field(default_factory=list)
    error: str | None = None
    prompt_sha256: str | None = None  # log_prompts: hash (or full)
    prompt: str | None = None  # log_prompts: full only
    completion: str | None = None  # log_prompts: full only

    def as_row(self) -> tuple[Any, ...]:
        """Values in `_COLUMNS` order (cheaper than `asdict` on the writer's hot loop)."""
        return tuple(
            json.dumps(v) if name in ("attempt_log", "reasons")
            else int(v) if name in ("stream", "unpriced")
            else v
            for name in _COLUMNS
            for v in (getattr(self, name),)
        )  # fmt: skip


_COLUMNS = tuple(LedgerRow.__dataclass_fields__)
_INSERT = (
    f"INSERT OR REPLACE INTO requests ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def connect(path: Path) -> sqlite3.Connection:
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
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with conn:
            for stmt in filter(None, (s.strip() for s in sql.split(";"))):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
        applied.append(name)
    return applied


PRUNE_EVERY_S = 24 * 3600
BATCH_WINDOW_S = 0.05  # a completed request is on disk within ~50 ms
BATCH_MAX = 500


def prune(conn: sqlite3.Connection, before_ts: float) -> int:
    """Delete rows older than `before_ts`; return how many went."""
    with conn:
        cur = conn.execute("DELETE FROM requests WHERE ts < ?", (before_ts,))
    return cur.rowcount


class Ledger:
    """Queue-fed writer thread. `record()` never blocks on disk.

    The same thread prunes rows older than `retention_days` once at start and then daily,
    so retention never touches the request path.
    """

    def __init__(self, path: Path, retention_days: int = 30) -> None:
        self.path = path
        self.retention_days = retention_days
        conn = connect(path)
        migrate(conn)
        conn.close()
        self._q: queue.Queue[LedgerRow | None] = queue.Queue(maxsize=100_000)
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._written = 0
        self._cond = threading.Condition()
        self._next_prune = 0.0
        self.last_pruned = 0
        self._thread.start()

    def record(self, row: LedgerRow) -> None:
        try:
            self._q.put_nowait(row)
        except queue.Full:
            log.error("ledger queue full; dropping row %s (is the disk stalled?)", row.id)

    def _maybe_prune(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        try:
            self.last_pruned = prune(conn, now - self.retention_days * 86400)
        except sqlite3.Error as e:
            log.error("ledger prune failed: %s", e)
            return
        if self.last_pruned:
            log.info("ledger: pruned %d rows older than %d days", self.last_pruned,
                     self.retention_days)  # fmt: skip

    def _run(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                self._maybe_prune(conn)
                try:
                    item = self._q.get(timeout=60)
                except queue.Empty:
                    continue
                # gather for up to BATCH_WINDOW_S: one transaction per burst, not per row
                batch = [item]
                until = time.monotonic() + BATCH_WINDOW_S
                while len(batch) < BATCH_MAX and item is not None:
                    left = until - time.monotonic()
                    try:
                        item = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(item)
                rows = [r for r in batch if r is not None]
                if rows:
                    try:
                        with conn:
                            conn.executemany(_INSERT, [r.as_row() for r in rows])
                    except sqlite3.Error as e:
                        log.error("ledger write failed for %d rows: %s", len(rows), e)
                    with self._cond:
                        self._written += len(rows)
                        self._cond.notify_all()
                if None in batch:
                    return
        finally:
            conn.close()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed."""
        target = self._written + self._q.qsize()
        with self._cond:
            return self._cond.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)


def stats(path: Path) -> dict[str, Any]:
    """Row count and file size, for /status."""
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
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM requests" + (f" WHERE {where}" if where else "") + " ORDER BY ts"
        return [dict(r) for r in conn.execute(sql, params or {})]
    finally:
        conn.close()
