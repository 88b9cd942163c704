"""The on-disk spool of the PostgreSQL ledger: rows that could not reach the server wait
here until it answers again.

The spool is a SQLite ledger file (`data.spool`; the same `requests` table and migrations),
so a spool left by a crashed or stopped proxy is drained by the next one. Rows are kept by
`id` (a row spooled twice is stored once) and leave oldest first. Every method raises
sqlite3.Error (or OSError when the folder cannot be made); the writer decides what that
costs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from addon.store import sqlite_ledger
from addon.store.ledger_schema import ROW_COLUMNS, Dialect, insert_sql

_INSERT = insert_sql(Dialect.SQLITE)
_OLDEST = f"SELECT {', '.join(ROW_COLUMNS)} FROM requests ORDER BY ts LIMIT ?"


class Spool:
    """One spool file, opened on the writer thread when first needed (`open()` before any
    other call) and held open until `close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> int | None:
        """Open the file, creating and migrating it, unless it is open already. Returns
        how many rows it holds when this call opened it, None when it was open."""
        if self._conn is not None:
            return None
        conn = sqlite_ledger.connect(self.path)
        try:
            sqlite_ledger.migrate(conn)
            count = int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
        except sqlite3.Error:
            conn.close()
            raise
        self._conn = conn
        return count

    def add(self, values: Sequence[Sequence[Any]]) -> int:
        """Commit rows (`LedgerRow.as_row()` values) to the spool; returns how many were
        new (a row whose id is already spooled is skipped)."""
        conn = self._opened()
        with conn:
            return conn.executemany(_INSERT, values).rowcount

    def oldest(self, limit: int) -> list[tuple[Any, ...]]:
        """Up to `limit` spooled rows, oldest first, as `as_row()` values."""
        return self._opened().execute(_OLDEST, (limit,)).fetchall()

    def remove(self, ids: Sequence[str]) -> int:
        """Delete these rows (once PostgreSQL has committed them); returns how many are
        left in the spool."""
        conn = self._opened()
        with conn:
            conn.executemany("DELETE FROM requests WHERE id = ?", [(i,) for i in ids])
        return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])

    def close(self) -> None:
        """Close the file if it is open."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _opened(self) -> sqlite3.Connection:
        assert self._conn is not None, "Spool.open() first"
        return self._conn
