"""Where the ledger lives: the embedded SQLite file (default) or PostgreSQL (`data.ledger:
postgresql://…`), behind one small interface so `costs`, `explain`, `prune`, the admin
endpoint, the status page and the budget seed read whichever store is configured.

    LedgerWriter   record / flush / close / health       (the running proxy)
    LedgerReader   read_rows / spend / prune / count_before / stats   (CLI, admin, budget seed)

Rows come back as plain dicts shaped like the `requests` table: `attempt_log` and
`reasons` as JSON text, `stream` and `unpriced` as 0/1, oldest first. Readers raise
`LedgerError` with a message that names the store (never its password) and what to do.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from addon.errors import LedgerError
from addon.store import sqlite_ledger
from addon.store.ledger_schema import SPEND_COLUMNS, LedgerRow, row_filter

if TYPE_CHECKING:
    from addon.config.loaded import Config

PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    """Whether `data.ledger` names a PostgreSQL server rather than a SQLite file."""
    return url.startswith(PG_SCHEMES)


class LedgerWriter(Protocol):
    """What the running proxy writes through: `SqliteWriter` or `pgledger.PgLedger`."""

    def record(self, row: LedgerRow) -> None:
        """Queue one row; never blocks the event loop and never raises."""

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row queued so far is stored (or, for PostgreSQL while it is
        down, safely spooled to disk); False on timeout."""

    def close(self) -> None:
        """Store what is queued and stop the writer thread; a second call does nothing."""

    def health(self) -> dict[str, Any]:
        """Writer-side numbers for /status: at least `kind` and `where`."""


class LedgerReader(Protocol):
    """What the CLI, the admin endpoint and the budget seed read through: `SqliteReader`
    or `pg_reader.PgReader`. Every method but `stats` raises LedgerError when the store
    cannot be read."""

    where: str  # the file path or the redacted URL, for messages

    def read_rows(
        self, *, since: float | None = None, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows at or after `since` (epoch seconds) and/or of one request id, oldest first,
        as dicts keyed like the `requests` table."""

    def spend(self, policy: str, column: str, since: float) -> list[tuple[str, float]]:
        """`(COALESCE(column, ''), SUM(cost_usd))` of priced rows of `policy` at or after
        `since`; `column` is one of SPEND_COLUMNS."""

    def prune(self, before_ts: float) -> int:
        """Delete rows older than `before_ts` (epoch seconds); return how many went."""

    def count_before(self, before_ts: float) -> int:
        """How many rows `prune(before_ts)` would delete; deletes nothing."""

    def stats(self) -> dict[str, Any]:
        """`kind`, `where`, `rows` (None when unreadable), `bytes`."""

    def close(self) -> None:
        """Release what the reader holds."""


# --------------------------------------------------------------------------- SQLite


class SqliteReader:
    """Reads the SQLite ledger file, read-only except for `prune`; a missing file reads
    as no spend and nothing to prune, but `read_rows` says how it gets created."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def _missing(self) -> LedgerError:
        return LedgerError(
            f"no ledger at {self.path} — it is created when the proxy first starts "
            "(`orchestrator run`); check `data.ledger` in orchestrator.yaml"
        )

    def _broken(self, e: Exception) -> LedgerError:
        return LedgerError(
            f"cannot read the ledger {self.path}: {e} — is it an orchestrator ledger? "
            "Start the proxy once to create or migrate it"
        )

    def read_rows(
        self, *, since: float | None = None, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows at or after `since` and/or of one request id, oldest first."""
        if not self.path.exists():
            raise self._missing()
        where, params = row_filter(since, request_id, ":{}")
        try:
            return sqlite_ledger.read_rows(self.path, where, params)
        except sqlite3.Error as e:
            raise self._broken(e) from e

    def spend(self, policy: str, column: str, since: float) -> list[tuple[str, float]]:
        """`(COALESCE(column, ''), SUM(cost_usd))` of priced rows of `policy` at or after
        `since` (USD); [] while the file does not exist."""
        if column not in SPEND_COLUMNS:
            raise ValueError(f"spend column {column!r} is not one of {SPEND_COLUMNS}")
        if not self.path.exists():
            return []
        q = (f"SELECT COALESCE({column}, ''), SUM(cost_usd) FROM requests "
             "WHERE policy = ? AND ts >= ? AND cost_usd IS NOT NULL GROUP BY 1")  # fmt: skip
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                return [(k, float(v)) for k, v in conn.execute(q, (policy, since)) if v]
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise self._broken(e) from e

    def prune(self, before_ts: float) -> int:
        """Delete rows older than `before_ts`; return how many went (0 without a file)."""
        if not self.path.exists():
            return 0
        try:
            conn = sqlite_ledger.connect(self.path)
            try:
                return sqlite_ledger.prune(conn, before_ts)
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise self._broken(e) from e

    def count_before(self, before_ts: float) -> int:
        """How many rows are older than `before_ts` (0 without a file); deletes nothing."""
        if not self.path.exists():
            return 0
        try:
            return sqlite_ledger.count_before(self.path, before_ts)
        except sqlite3.Error as e:
            raise self._broken(e) from e

    def stats(self) -> dict[str, Any]:
        """`kind`, `where`, `path`, `rows` (None when unreadable) and `bytes` for /status."""
        return {"kind": "sqlite", "where": self.where, **sqlite_ledger.stats(self.path)}

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""


class SqliteWriter(sqlite_ledger.Ledger):
    """The SQLite ledger's writer as a LedgerWriter (with its /status numbers)."""

    def health(self) -> dict[str, Any]:
        """`kind`, `where` and `queued` (rows waiting for the writer thread)."""
        return {"kind": "sqlite", "where": str(self.path), "queued": self.queued()}


# --------------------------------------------------------------------------- factories


def open_reader(cfg: Config) -> LedgerReader:
    """A reader for the configured store; PostgreSQL's driver loads only when it is used."""
    url = cfg.settings.data.ledger
    if is_postgres(url):
        from addon.store.pg_reader import PgReader

        return PgReader(url)
    return SqliteReader(cfg.ledger_path)


def open_writer(cfg: Config) -> LedgerWriter:
    """The running proxy's writer. Never fails because the store is unreachable: the
    PostgreSQL writer spools to `data.spool` until the server answers."""
    s = cfg.settings
    if is_postgres(s.data.ledger):
        from addon.store.pgledger import PgLedger

        return PgLedger(s.data.ledger, cfg.resolve(s.data.spool), s.retention_days)
    return SqliteWriter(cfg.ledger_path, s.retention_days)
