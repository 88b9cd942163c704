"""The ledger in PostgreSQL (`data.ledger: postgresql://…`), shared by every replica.

`PgLedger` writes like `sqlite_ledger.Ledger`: a queue feeds one daemon thread that commits a batch
per 50 ms burst, so the event loop never waits on the network. PostgreSQL may be down when
the proxy starts or may restart under it; the proxy keeps serving. A batch that cannot be
written goes to an on-disk SQLite spool (`data.spool`, the same `requests` table), and the
thread drains the spool, oldest first, once the server answers again. Every insert is
`ON CONFLICT (id) DO NOTHING`, so a batch retried after a commit whose acknowledgement was
lost never doubles a row. Rows read back exactly like SQLite's: the columns in the order of
SQLite's table (so `SELECT *` gives the same keys in the same order), JSON text, 0/1 flags.

The schema changes only through `MIGRATIONS`, recorded in `schema_migrations` and applied
under an advisory lock so replicas starting together never race.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from addon.config.redact import redact
from addon.store import sqlite_ledger
from addon.store.ledgers import SPEND_COLUMNS, LedgerError, row_filter
from addon.store.sqlite_ledger import _COLUMNS, LedgerRow

log = logging.getLogger("orchestrator")

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_requests",
        (
            """
            CREATE TABLE requests (
                id TEXT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
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
                prompt_tokens BIGINT,
                completion_tokens BIGINT,
                cached_tokens BIGINT,
                reasoning_tokens BIGINT,
                cost_usd DOUBLE PRECISION,
                unpriced INTEGER NOT NULL DEFAULT 0,
                requested_cost_usd DOUBLE PRECISION,
                ttft_ms DOUBLE PRECISION,
                latency_ms DOUBLE PRECISION,
                reasons TEXT,
                error TEXT,
                prompt_sha256 TEXT,
                prompt TEXT,
                completion TEXT
            )
            """,
            "CREATE INDEX requests_ts ON requests (ts)",
            "CREATE INDEX requests_policy_ts ON requests (policy, ts)",
        ),
    ),
)

MIGRATION_LOCK = 0x6F7263682D6C6467  # any constant shared by every replica ("orch-ldg")
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
SPOOL_CHUNK = 2000
QUEUE_MAX = 100_000
# short timeouts and TCP keepalives: a dead or unreachable server must never wedge the writer
CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}
# A statement that waits longer than this for a lock (a `LOCK TABLE`, a `VACUUM FULL`, a
# long migration on another replica) fails instead of waiting: the writer spools and
# retries, the budget seed and the reports say why. The server may be alive and answering,
# so the TCP timeouts above would never fire. A URL or PGOPTIONS that sets its own
# lock_timeout wins.
LOCK_TIMEOUT_MS = 10_000

_PG_INSERT = (
    f"INSERT INTO requests ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('%s' for _ in _COLUMNS)}) ON CONFLICT (id) DO NOTHING"
)
_SPOOL_INSERT = (
    f"INSERT OR IGNORE INTO requests ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_SPOOL_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM requests ORDER BY ts LIMIT ?"


_redact = redact


def _secrets(url: str) -> set[str]:
    found = {m.group(1) for m in re.finditer(r"://[^:@/]*:([^@/]+)@", url)}
    found |= {m.group(1) for m in re.finditer(r"\bpassword=([^&]+)", url, re.I)}
    return {s for raw in found for s in (raw, unquote(raw)) if s}


def _scrub(error: BaseException | str, url: str) -> str:
    """One line fit for logs: libpq echoes the URI in some errors, password included."""
    text = " ".join(str(error).split())
    text = redact(text)
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def _connect_args(url: str) -> dict[str, Any]:
    """`CONNECT_DEFAULTS` minus whatever the URL sets itself, plus the lock timeout in the
    server options; LedgerError when malformed."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise LedgerError(
            f"`data.ledger` is not a valid PostgreSQL URL ({_redact(url)}): {_scrub(e, url)} "
            "— use postgresql://user:password@host:5432/dbname"
        ) from None
    ports = str(given.get("port", "5432")).split(",")
    if not all(p.strip().isdigit() for p in ports):
        raise LedgerError(
            f"`data.ledger` {_redact(url)} has a bad port {given['port']!r} "
            "— use postgresql://user:password@host:5432/dbname"
        )
    args = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
    options = str(given.get("options") or os.environ.get("PGOPTIONS", ""))
    if "lock_timeout" not in options:  # `options=` replaces the URL's and PGOPTIONS: keep them
        args["options"] = f"{options} -c lock_timeout={LOCK_TIMEOUT_MS}".strip()
    return args


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply pending migrations in one transaction; return the names applied. Safe to run
    again, and from several replicas at once (they queue on the advisory lock)."""
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
        for name, statements in MIGRATIONS:
            if name in done:
                continue
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (name, time.time()))
            applied.append(name)
    return applied


def _rejects_row(e: psycopg.Error, conn: psycopg.Connection[Any]) -> bool:
    """The values were refused (out of range, not adaptable), not the connection or the
    server: sending the same row again would fail forever, so it must not stay spooled."""
    if conn.broken:
        return False
    if e.sqlstate is None:  # raised by the driver before anything was sent
        return not isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)
    return e.sqlstate[:2] in ("22", "23") or e.sqlstate in ("42804", "54000")


def _pg_values(row: Sequence[Any]) -> tuple[Any, ...]:
    """PostgreSQL text cannot hold NUL; a prompt may. Keep the row, lose the one character."""
    return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)


class PgLedger:
    """Queue-fed PostgreSQL writer with an on-disk spool for outages; see the module doc.

    Nothing here blocks on or raises from the network in the caller's thread: connecting,
    migrating, spooling, draining and the daily prune all run on the writer thread.
    """

    def __init__(
        self,
        url: str,
        spool_path: Path,
        retention_days: int = 30,
        spool_max_rows: int = 1_000_000,
    ) -> None:
        self._connect_args = _connect_args(url)
        self._url = url
        self.where = _redact(url)
        self.spool_path = spool_path
        self.retention_days = retention_days
        self.spool_max_rows = spool_max_rows
        self.last_error: str | None = None
        self.last_pruned = 0
        self._q: queue.Queue[LedgerRow | None] = queue.Queue(maxsize=QUEUE_MAX)
        self._cond = threading.Condition()
        self._enqueue_lock = threading.Lock()
        self._enqueued = 0  # rows accepted by record()
        self._handled = 0  # rows committed to PostgreSQL, committed to the spool, or dropped
        self._spooled = 0
        self._dropped = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._spool: sqlite3.Connection | None = None
        self._up: bool | None = None  # None until the first attempt; logs only on change
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_S
        self._next_prune = 0.0
        self._closed = False
        self._queue_full_logged = False
        self._spool_full = False
        self._thread = threading.Thread(target=self._run, name="pgledger-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side

    def record(self, row: LedgerRow) -> None:
        with self._enqueue_lock:
            try:
                self._q.put_nowait(row)
            except queue.Full:
                self._drop_counted(1)
                if not self._queue_full_logged:
                    self._queue_full_logged = True
                    log.error("ledger queue full (%d rows); dropping rows, %s first, until "
                              "the writer catches up — is %s hanging?", QUEUE_MAX, row.id,
                              self.where)  # fmt: skip
                return
            self._enqueued += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row queued so far is in PostgreSQL or in the spool."""
        target = self._enqueued
        with self._cond:
            return self._cond.wait_for(lambda: self._handled >= target, timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued so far, and the whole spool, is in PostgreSQL."""
        target = self._enqueued
        with self._cond:
            return self._cond.wait_for(
                lambda: self._handled >= target and self._spooled == 0, timeout
            )

    def close(self) -> None:
        """Store what is queued (in PostgreSQL, or the spool while it is down) and stop."""
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.error("ledger writer for %s did not stop within 30s; %d rows still queued",
                      self.where, self._q.qsize())  # fmt: skip

    def health(self) -> dict[str, Any]:
        return {
            "kind": "postgresql",
            "where": self.where,
            "connected": self._conn is not None,
            "queued": self._q.qsize(),
            "spooled": self._spooled,
            "dropped": self._dropped,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            if self.spool_path.exists():  # left over from a previous run: drain it
                try:
                    self._open_spool()
                except (sqlite3.Error, OSError) as e:
                    log.warning("ledger: cannot open the spool %s left by an earlier run: %s "
                              "— move it aside; its rows are not sent", self.spool_path, e)  # fmt: skip
            while True:
                try:
                    self._upkeep()
                except Exception as e:  # the writer must outlive any surprise
                    self._unexpected(e)
                    self._lost(e)
                rows, stop = self._take(self._wait_s())
                if rows:
                    self._store(rows)
                if stop:
                    return
        finally:
            self._disconnect()
            if self._spool is not None:
                self._spool.close()

    def _upkeep(self) -> None:
        if self._conn is None and time.monotonic() >= self._retry_at:
            self._connect()
        if self._conn is not None:
            self._maybe_prune()
        if self._conn is not None and self._spooled:
            self._drain_spool_chunk()

    def _unexpected(self, e: Exception) -> None:
        log.error("ledger writer: unexpected %s: %s", type(e).__name__, _scrub(e, self._url))
        log.debug("ledger writer traceback", exc_info=True)

    def _wait_s(self) -> float:
        if self._conn is None:
            return max(0.0, self._retry_at - time.monotonic())
        return 0.0 if self._spooled else 60.0

    def _take(self, timeout: float) -> tuple[list[LedgerRow], bool]:
        """One batch: the first row within `timeout`, then whatever follows within 50 ms."""
        try:
            item = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return [], False
        self._queue_full_logged = False
        batch = [item]
        until = time.monotonic() + sqlite_ledger.BATCH_WINDOW_S
        while len(batch) < sqlite_ledger.BATCH_MAX and item is not None:
            left = until - time.monotonic()
            try:
                item = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
        return [r for r in batch if r is not None], None in batch

    def _store(self, rows: list[LedgerRow]) -> None:
        values = []
        for r in rows:
            try:
                values.append(r.as_row())
            except (TypeError, ValueError) as e:
                self._drop(1, f"row {r.id} cannot be serialised: {e}")
        try:
            if self._conn is not None and values:
                try:
                    self._insert(values)
                    values = []
                except psycopg.Error as e:
                    self._lost(e)
            if values:
                self._to_spool(values)
        except Exception as e:  # the writer must outlive any surprise; say what was lost
            self._unexpected(e)
            self._drop(len(values), f"unexpected {type(e).__name__}")
        finally:
            with self._cond:
                self._handled += len(rows)
                self._cond.notify_all()

    def _insert(self, values: Sequence[Sequence[Any]]) -> None:
        """Commit `values` to PostgreSQL; a row the server rejects on its own merits is
        dropped and counted. Raises psycopg.Error when the server or connection fails."""
        assert self._conn is not None
        conn = self._conn
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_PG_INSERT, [_pg_values(v) for v in values])
        except psycopg.Error as e:
            if not _rejects_row(e, conn):
                raise
            for v in values:  # find the bad ones; keep the rest
                try:
                    with conn.transaction():
                        conn.execute(_PG_INSERT, _pg_values(v))
                except psycopg.Error as e:
                    if not _rejects_row(e, conn):
                        raise
                    self._drop(1, f"PostgreSQL rejected row {v[0]}: {_scrub(e, self._url)}")

    def _connect(self) -> None:
        try:
            conn = psycopg.connect(self._url, autocommit=True, **self._connect_args)
        except psycopg.Error as e:
            self._failed(e)
            return
        try:
            applied = migrate(conn)
        except BaseException as e:
            conn.close()
            if not isinstance(e, psycopg.Error):
                raise
            self._failed(e)
            return
        self._conn = conn
        self._backoff = RETRY_FIRST_S
        if applied:
            log.info("ledger: applied %s to %s", ", ".join(applied), self.where)
        if self._up is False:
            log.warning("ledger: PostgreSQL %s answers again; sending %d spooled rows",
                        self.where, self._spooled)  # fmt: skip
        elif self._up is None:
            log.info("ledger: writing to PostgreSQL %s", self.where)
        self._up = True

    def _failed(self, e: BaseException) -> None:
        """A connection attempt or a write failed: remember why, log the transition once,
        and schedule the next attempt."""
        self.last_error = _scrub(e, self._url)
        if self._up is not False:
            verb = "lost" if self._up else "cannot reach"
            log.warning("ledger: %s PostgreSQL %s (%s); spooling rows to %s and retrying",
                        verb, self.where, self.last_error, self.spool_path)  # fmt: skip
        self._up = False
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)

    def _lost(self, e: BaseException) -> None:
        self._disconnect()
        self._failed(e)

    def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):  # already broken: nothing to release
                conn.close()

    def _maybe_prune(self) -> None:
        now = time.time()
        if now < self._next_prune or self._conn is None:
            return
        self._next_prune = now + sqlite_ledger.PRUNE_EVERY_S
        try:
            cur = self._conn.execute(
                "DELETE FROM requests WHERE ts < %s", (now - self.retention_days * 86400,)
            )
        except psycopg.Error as e:
            if self._conn.broken:
                self._lost(e)
            else:
                log.error("ledger prune failed on %s: %s", self.where, _scrub(e, self._url))
            return
        self.last_pruned = cur.rowcount
        if self.last_pruned:
            log.info("ledger: pruned %d rows older than %d days", self.last_pruned,
                     self.retention_days)  # fmt: skip

    # ------------------------------------------------------------------ spool

    def _open_spool(self) -> sqlite3.Connection:
        if self._spool is None:
            conn = sqlite_ledger.connect(self.spool_path)
            try:
                sqlite_ledger.migrate(conn)
                count = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            except sqlite3.Error:
                conn.close()
                raise
            self._spool = conn
            with self._cond:
                self._spooled = count
            if count:
                log.warning("ledger: %d rows in the spool %s from an earlier outage; "
                            "sending them to %s", count, self.spool_path, self.where)  # fmt: skip
        return self._spool

    def _to_spool(self, values: list[tuple[Any, ...]]) -> None:
        room = max(0, self.spool_max_rows - self._spooled)
        keep, over = values[:room], values[room:]
        if over:
            self._drop_counted(len(over))
            if not self._spool_full:  # once per episode: a long outage must not flood the log
                self._spool_full = True
                log.error("ledger: the spool %s is full (%d rows) while %s is unreachable; "
                          "dropping new rows (%d so far) until it drains — bring the server "
                          "back or raise the spool limit", self.spool_path,
                          self.spool_max_rows, self.where, self._dropped)  # fmt: skip
        if not keep:
            return
        try:
            spool = self._open_spool()
            with spool:
                added = spool.executemany(_SPOOL_INSERT, keep).rowcount
        except sqlite3.Error as e:
            self._drop(len(keep), f"cannot write the spool {self.spool_path}: {e}")
            return
        with self._cond:
            self._spooled += added

    def _drain_spool_chunk(self) -> None:
        """Move the oldest spooled rows to PostgreSQL: commit there first, then delete here,
        so a crash in between only means a harmless resend."""
        try:
            spool = self._open_spool()
            values = spool.execute(_SPOOL_SELECT, (SPOOL_CHUNK,)).fetchall()
        except sqlite3.Error as e:
            log.error("ledger: cannot read the spool %s: %s", self.spool_path, e)
            self._spooled = 0  # stop retrying a broken file every loop; rows stay on disk
            return
        if values:
            try:
                self._insert(values)
            except psycopg.Error as e:
                self._lost(e)
                return
            try:
                with spool:
                    spool.executemany("DELETE FROM requests WHERE id = ?",
                                      [(v[0],) for v in values])  # fmt: skip
                left = spool.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            except sqlite3.Error as e:
                log.error("ledger: cannot update the spool %s: %s", self.spool_path, e)
                left = 0
        else:
            left = 0
        with self._cond:
            self._spooled = left
            self._cond.notify_all()
        if self._spool_full and left < self.spool_max_rows:
            self._spool_full = False
            log.warning("ledger: the spool %s has room again; %d rows dropped in all",
                        self.spool_path, self._dropped)  # fmt: skip
        if not left:
            log.info("ledger: spool %s drained into %s", self.spool_path, self.where)

    def _drop(self, n: int, why: str) -> None:
        if n:
            self._drop_counted(n)
            log.error("ledger: dropped %d rows (%d so far): %s", n, self._dropped, why)

    def _drop_counted(self, n: int) -> None:
        with self._cond:
            self._dropped += n


class PgReader:
    """Reads the PostgreSQL ledger for `costs`, `explain`, `prune`, the admin endpoint and
    the budget seed: one short connection per call, so it is safe from any thread and
    never holds a dead connection after a server restart."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.where = _redact(url)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(
                self._url, autocommit=True, row_factory=dict_row, **_connect_args(self._url)
            )
        except psycopg.Error as e:
            raise LedgerError(
                f"cannot reach the PostgreSQL ledger {self.where}: {_scrub(e, self._url)} "
                "— is the server up and `data.ledger` in orchestrator.yaml right?"
            ) from None

    def _missing(self) -> LedgerError:
        return LedgerError(
            f"the PostgreSQL ledger {self.where} has no requests yet — its table is created "
            "when the proxy first starts (`orchestrator run`) with this `data.ledger`"
        )

    def _broken(self, e: psycopg.Error) -> LedgerError:
        if isinstance(e, pgerrors.LockNotAvailable):
            return LedgerError(
                f"cannot read the PostgreSQL ledger {self.where}: another session holds a lock "
                f"on its `requests` table ({_scrub(e, self._url)}) — retry once it is released; "
                "pg_locks and pg_stat_activity on the server show who holds it"
            )
        return LedgerError(
            f"cannot read the PostgreSQL ledger {self.where}: {_scrub(e, self._url)} "
            "— is it an orchestrator ledger? Start the proxy once to create or migrate it"
        )

    def read_rows(
        self, *, since: float | None = None, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        clauses, params = row_filter(since, request_id, "%({})s")
        where = f" WHERE {clauses}" if clauses else ""
        with self._connect() as conn:
            try:
                return conn.execute(
                    f"SELECT * FROM requests{where} ORDER BY ts",
                    params,
                ).fetchall()
            except pgerrors.UndefinedTable:
                raise self._missing() from None
            except psycopg.Error as e:
                raise self._broken(e) from None

    def spend(self, policy: str, column: str, since: float) -> list[tuple[str, float]]:
        if column not in SPEND_COLUMNS:
            raise ValueError(f"spend column {column!r} is not one of {SPEND_COLUMNS}")
        q = (f"SELECT COALESCE({column}, '') AS k, SUM(cost_usd) AS v FROM requests "
             "WHERE policy = %s AND ts >= %s AND cost_usd IS NOT NULL GROUP BY 1")  # fmt: skip
        with self._connect() as conn:
            try:
                rows = conn.execute(q, (policy, since)).fetchall()
            except pgerrors.UndefinedTable:
                return []
            except psycopg.Error as e:
                raise self._broken(e) from None
        return [(r["k"], float(r["v"])) for r in rows if r["v"]]

    def prune(self, before_ts: float) -> int:
        with self._connect() as conn:
            try:
                return conn.execute("DELETE FROM requests WHERE ts < %s", (before_ts,)).rowcount
            except pgerrors.UndefinedTable:
                return 0
            except psycopg.Error as e:
                raise self._broken(e) from None

    def stats(self) -> dict[str, Any]:
        rows = size = None
        try:
            with self._connect() as conn:
                found = conn.execute(
                    "SELECT pg_total_relation_size(to_regclass('requests')) AS b"
                ).fetchone()
                size = found["b"] if found else None
                if size is not None:
                    count = conn.execute("SELECT COUNT(*) AS n FROM requests").fetchone()
                    rows = count["n"] if count else None
        except (LedgerError, psycopg.Error):
            pass  # the status page shows rows: None; the writer's health says why
        return {"kind": "postgresql", "where": self.where, "rows": rows, "bytes": size}

    def close(self) -> None:
        pass
