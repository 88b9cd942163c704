"""Where the ledger lives: the embedded SQLite file (default) or PostgreSQL (`data.ledger:
postgresql://…`), behind one small interface so `costs`, `explain`, `prune`, the admin
endpoint, the status page and the budget seed read whichever store is configured.

    LedgerWriter   record / flush / close / health       (the running proxy)
    LedgerReader   read_rows / spend / prune / stats     (CLI, admin, budget seed)

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
from addon.store.sqlite_ledger import LedgerRow

if TYPE_CHECKING:
    from addon.config.loaded import Config

PG_SCHEMES = ("postgresql://", "postgres://")
SPEND_COLUMNS = ("client", "policy", "profile")


def is_postgres(url: str) -> bool:
    return url.startswith(PG_SCHEMES)


class LedgerWriter(Protocol):
    def record(self, row: LedgerRow) -> None:
        """Queue one row; never blocks the event loop and never raises."""

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row queued so far is stored (or, for PostgreSQL while it is
        down, safely spooled to disk); False on timeout."""

    def close(self) -> None: ...

    def health(self) -> dict[str, Any]:
        """Writer-side numbers for /status: at least `kind` and `where`."""


class LedgerReader(Protocol):
    where: str  # the file path or the redacted URL, for messages

    def read_rows(
        self, *, since: float | None = None, request_id: str | None = None
    ) -> list[dict[str, Any]]: ...

    def spend(self, policy: str, column: str, since: float) -> list[tuple[str, float]]:
        """`(COALESCE(column, ''), SUM(cost_usd))` of priced rows of `policy` at or after
        `since`; `column` is one of SPEND_COLUMNS."""

    def prune(self, before_ts: float) -> int: ...

    def stats(self) -> dict[str, Any]:
        """`kind`, `where`, `rows` (None when unreadable), `bytes`."""

    def close(self) -> None: ...


def row_filter(
    since: float | None, request_id: str | None, param: str
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (without the keyword; "" for all rows) and its parameters for
    `read_rows`; `param` renders a named placeholder (":{}" for SQLite, "%({})s" for
    psycopg)."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if since is not None:
        clauses.append(f"ts >= {param.format('since')}")
        params["since"] = since
    if request_id is not None:
        clauses.append(f"id = {param.format('id')}")
        params["id"] = request_id
    return " AND ".join(clauses), params


# --------------------------------------------------------------------------- SQLite


class SqliteReader:
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
        if not self.path.exists():
            raise self._missing()
        where, params = row_filter(since, request_id, ":{}")
        try:
            return sqlite_ledger.read_rows(self.path, where, params)
        except sqlite3.Error as e:
            raise self._broken(e) from e

    def spend(self, policy: str, column: str, since: float) -> list[tuple[str, float]]:
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

    def stats(self) -> dict[str, Any]:
        return {"kind": "sqlite", "where": self.where, **sqlite_ledger.stats(self.path)}

    def close(self) -> None:
        pass


class SqliteWriter(sqlite_ledger.Ledger):
    def health(self) -> dict[str, Any]:
        return {"kind": "sqlite", "where": str(self.path), "queued": self._q.qsize()}


# --------------------------------------------------------------------------- factories


def open_reader(cfg: Config) -> LedgerReader:
    url = cfg.settings.data.ledger
    if is_postgres(url):
        from addon.store.pgledger import PgReader

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
