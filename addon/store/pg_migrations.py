"""The PostgreSQL ledger's schema: `ledger_schema`'s named steps rendered for PostgreSQL,
recorded in `schema_migrations` and applied in one transaction under an advisory lock, so
replicas starting together never race."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from addon.store.ledger_schema import Dialect, migrations

MIGRATIONS = migrations(Dialect.POSTGRESQL)
MIGRATION_LOCK = 0x6F7263682D6C6467  # any constant shared by every replica ("orch-ldg")


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
