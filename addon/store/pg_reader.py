"""Reads the PostgreSQL ledger for `costs`, `explain`, `prune`, the admin endpoint and the
budget seed. Rows come back exactly like SQLite's (`ledger_schema`'s columns in table
order, JSON text, 0/1 flags); errors are LedgerErrors that name the server (never its
password) and what to do. The connection settings, lock timeout included, are
`pgledger`'s."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from addon.config.redact import redact
from addon.errors import LedgerError
from addon.store.ledger_schema import SPEND_COLUMNS, row_filter
from addon.store.pgledger import _connect_args, _scrub


class PgReader:
    """One PostgreSQL ledger, read with one short connection per call: safe from any
    thread, and never holding a dead connection after a server restart."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.where = redact(url)

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
        """Rows at or after `since` and/or of one request id, oldest first, keyed like the
        table; LedgerError when unreachable, locked, or not yet created."""
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
        """`(COALESCE(column, ''), SUM(cost_usd))` of priced rows of `policy` at or after
        `since` (USD); `column` is one of SPEND_COLUMNS; [] before the table exists."""
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
        """Delete rows older than `before_ts`; return how many went (0 before the table
        exists)."""
        with self._connect() as conn:
            try:
                return conn.execute("DELETE FROM requests WHERE ts < %s", (before_ts,)).rowcount
            except pgerrors.UndefinedTable:
                return 0
            except psycopg.Error as e:
                raise self._broken(e) from None

    def count_before(self, before_ts: float) -> int:
        """How many rows are older than `before_ts` (0 before the table exists); deletes
        nothing."""
        with self._connect() as conn:
            try:
                row = conn.execute("SELECT COUNT(*) AS n FROM requests WHERE ts < %s",
                                   (before_ts,)).fetchone()  # fmt: skip
            except pgerrors.UndefinedTable:
                return 0
            except psycopg.Error as e:
                raise self._broken(e) from None
        return int(row["n"]) if row else 0

    def stats(self) -> dict[str, Any]:
        """`kind`, `where`, `rows` and `bytes` (the table with its indexes) for /status;
        rows and bytes are None when the server or the table cannot be read."""
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
        """Nothing to release: every call opens and closes its own connection."""
