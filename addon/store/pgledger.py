"""The ledger in PostgreSQL (`data.ledger: postgresql://…`), shared by every replica: how
to connect to it, and its writer.

`PgLedger` writes on the shared writer thread (`batch_writer`): a batch per 50 ms burst, so
the event loop never waits on the network. PostgreSQL may be down when the proxy starts or
may restart under it; the proxy keeps serving. A batch that cannot be written goes to the
on-disk spool (`ledger_spool`, `data.spool`), and the thread drains the spool, oldest
first, once the server answers again. Every insert is `ON CONFLICT (id) DO NOTHING`, so a
batch retried after a commit whose acknowledgement was lost never doubles a row. Rows read
back (`pg_reader`) exactly like SQLite's: the columns of `ledger_schema` in table order,
JSON text, 0/1 flags.

Every connection, the writer's and `pg_reader`'s, takes its settings from `_connect_args`
here: short TCP timeouts and a lock timeout. No message ever carries the password
(`_scrub`). The schema changes only through `pg_migrations`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from addon.config.redact import redact
from addon.errors import LedgerError
from addon.store.batch_writer import QUEUE_MAX, BatchWriter
from addon.store.ledger_schema import Dialect, LedgerRow, insert_sql
from addon.store.ledger_spool import Spool
from addon.store.pg_migrations import MIGRATIONS as MIGRATIONS  # re-exported for callers
from addon.store.pg_migrations import migrate

log = logging.getLogger("orchestrator")

RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
SPOOL_CHUNK = 2000
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

_PG_INSERT = insert_sql(Dialect.POSTGRESQL)

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


class PgLedger(BatchWriter):
    """The PostgreSQL writer, with an on-disk spool for outages; see the module doc.

    Nothing here blocks on or raises from the network in the caller's thread: connecting,
    migrating, spooling, draining and the daily prune all run on the writer thread. Only a
    malformed URL raises (LedgerError), at once. The spool holds at most `spool_max_rows`;
    rows beyond it are dropped and counted.
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
        self.spool_max_rows = spool_max_rows
        self.last_error: str | None = None
        super().__init__(thread_name="pgledger-writer", retention_days=retention_days,
                         close_timeout_s=30.0)  # fmt: skip
        self._spooled = 0  # rows in the spool file, as last counted
        self._dropped = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._spool = Spool(spool_path)
        self._up: bool | None = None  # None until the first attempt; logs only on change
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_S
        self._spool_full = False
        self._start()

    # ------------------------------------------------------------------ caller side

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued so far, and the whole spool, is in PostgreSQL;
        False after `timeout` seconds."""
        return self._wait_handled(timeout, lambda: self._spooled == 0)

    def health(self) -> dict[str, Any]:
        """Writer-side numbers for /status: `kind`, `where` (redacted), `connected`,
        `queued`, `spooled`, `dropped` (rows lost in all) and `last_error` (scrubbed)."""
        return {
            "kind": "postgresql",
            "where": self.where,
            "connected": self._conn is not None,
            "queued": self.queued(),
            "spooled": self._spooled,
            "dropped": self._dropped,
            "last_error": self.last_error,
        }

    def _queue_overflow(self, row: LedgerRow, first: bool) -> None:
        self._drop_counted(1)
        if first:
            log.error("ledger queue full (%d rows); dropping rows, %s first, until "
                      "the writer catches up — is %s hanging?", QUEUE_MAX, row.id,
                      self.where)  # fmt: skip

    # ------------------------------------------------------------------ writer thread

    def _begin(self) -> None:
        if self.spool_path.exists():  # left over from a previous run: drain it
            try:
                self._open_spool()
            except (sqlite3.Error, OSError) as e:
                log.warning("ledger: cannot open the spool %s left by an earlier run: %s "
                            "— move it aside; its rows are not sent", self.spool_path, e)  # fmt: skip

    def _end(self) -> None:
        self._disconnect()
        self._spool.close()

    def _upkeep(self) -> None:
        try:
            if self._conn is None and time.monotonic() >= self._retry_at:
                self._connect()
            if self._conn is not None:
                self._maybe_prune()
            if self._conn is not None and self._spooled:
                self._drain_spool_chunk()
        except Exception as e:  # the writer must outlive any surprise
            self._unexpected(e)
            self._lost(e)

    def _unexpected(self, e: Exception) -> None:
        log.error("ledger writer: unexpected %s: %s", type(e).__name__, _scrub(e, self._url))
        log.debug("ledger writer traceback", exc_info=True)

    def _wait_s(self) -> float:
        if self._conn is None:
            return max(0.0, self._retry_at - time.monotonic())
        return 0.0 if self._spooled else 60.0

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
        if self._conn is None:
            return
        cutoff = self._prune_cutoff()
        if cutoff is None:
            return
        try:
            cur = self._conn.execute("DELETE FROM requests WHERE ts < %s", (cutoff,))
        except psycopg.Error as e:
            if self._conn.broken:
                self._lost(e)
            else:
                log.error("ledger prune failed on %s: %s", self.where, _scrub(e, self._url))
            return
        self._pruned(cur.rowcount)

    # ------------------------------------------------------------------ spool

    def _open_spool(self) -> Spool:
        count = self._spool.open()
        if count is not None:
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
            added = self._open_spool().add(keep)
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
            values = spool.oldest(SPOOL_CHUNK)
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
                left = spool.remove([v[0] for v in values])
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
