"""The benchmark DB's schema: its named migrations, its tables, and opening a file safely.

The schema changes only through `MIGRATIONS`, applied in order; each is recorded in
``schema_migrations`` and is safe to run again. A read-only open never creates or changes
the file and refuses one of an unknown schema; every problem with the file (missing, not
SQLite, corrupt, unknown schema) is a ``BenchmarkDBError`` whose message names the file,
what is wrong and the remedy.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from addon.errors import REBUILD, BenchmarkDBError

_SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class Migration:
    """One named schema step: SQL statements separated by `;`, each safe to run again."""

    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_initial",
        """
        CREATE TABLE IF NOT EXISTS models(
            id TEXT PRIMARY KEY, name TEXT NOT NULL, org TEXT, family TEXT,
            context_tokens INTEGER,
            quality REAL, quality_lo REAL, quality_hi REAL, quality_source TEXT,
            open_weights INTEGER, params_b REAL, license TEXT, hf_id TEXT);
        CREATE TABLE IF NOT EXISTS model_categories(
            model_id TEXT, category TEXT, rating REAL, rating_lo REAL, rating_hi REAL,
            PRIMARY KEY(model_id, category));
        CREATE TABLE IF NOT EXISTS offerings(
            model_id TEXT NOT NULL REFERENCES models(id),
            provider TEXT NOT NULL, provider_model_id TEXT NOT NULL,
            input_per_mtok REAL, output_per_mtok REAL, cached_input_per_mtok REAL,
            context_tokens INTEGER, max_output_tokens INTEGER,
            supports_tools INTEGER, supports_vision INTEGER,
            supports_json_schema INTEGER, supports_reasoning INTEGER,
            source TEXT NOT NULL,
            PRIMARY KEY(provider, provider_model_id));
        CREATE INDEX IF NOT EXISTS offerings_model ON offerings(model_id);
        CREATE TABLE IF NOT EXISTS aliases(
            source TEXT, source_name TEXT, model_id TEXT, method TEXT, score REAL,
            PRIMARY KEY(source, source_name));
        CREATE INDEX IF NOT EXISTS aliases_model ON aliases(model_id);
        CREATE TABLE IF NOT EXISTS unmatched(
            source TEXT, source_name TEXT, best_candidate TEXT, score REAL, reason TEXT,
            PRIMARY KEY(source, source_name));
        CREATE TABLE IF NOT EXISTS refreshes(
            source TEXT, fetched_at TEXT, status TEXT, rows INTEGER, error TEXT, snapshot TEXT);
        CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
        """,
    ),
    Migration(
        "0002_source_snapshots",
        """
        CREATE TABLE IF NOT EXISTS source_snapshots(
            source TEXT NOT NULL, name TEXT NOT NULL, fetched_at TEXT, origin TEXT,
            sha256 TEXT NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL,
            PRIMARY KEY(source, name));
        """,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = (
    "models",
    "model_categories",
    "offerings",
    "aliases",
    "unmatched",
    "refreshes",
    "meta",
    "source_snapshots",
)


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied. Safe to re-run."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations(name TEXT PRIMARY KEY, applied_at TEXT)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    applied: list[str] = []
    for migration in MIGRATIONS:
        if migration.name in done:
            continue
        with conn:
            for statement in migration.sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(name, applied_at) VALUES (?, datetime('now'))",
                (migration.name,),
            )
        applied.append(migration.name)
    return applied


def check_schema(conn: sqlite3.Connection, path: Path | str) -> None:
    """Raise BenchmarkDBError unless the DB has exactly the migrations this code knows."""
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    except sqlite3.OperationalError as exc:
        raise BenchmarkDBError(path, "has no schema_migrations table (not a benchmark DB)") from exc
    known = [m.name for m in MIGRATIONS]
    unknown = sorted(names - set(known))
    if unknown:
        raise BenchmarkDBError(
            path,
            f"has schema migrations this version does not know ({', '.join(unknown)})",
            "upgrade the orchestrator, or " + REBUILD,
        )
    missing = [name for name in known if name not in names]
    if missing:
        raise BenchmarkDBError(path, f"lacks schema migrations {', '.join(missing)}")


def open_db(path: Path | str, readonly: bool = True) -> sqlite3.Connection:
    """Open the benchmark DB. Read-only opens never create or change the file.

    A writable open creates the file if needed and applies pending migrations.
    """
    path = Path(path)
    if readonly:
        _check_file(path)
    try:
        if readonly:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise BenchmarkDBError(path, f"cannot be opened ({exc})") from exc
    try:
        if not readonly:
            migrate(conn)
        check_schema(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise BenchmarkDBError(path, f"is corrupt ({exc})") from exc
    except BenchmarkDBError:
        conn.close()
        raise
    return conn


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BenchmarkDBError(path, "does not exist", "build it with `orchestrator refresh`")
    if not path.is_file():
        raise BenchmarkDBError(path, "is not a file", "point data.benchmarks at the DB file")
    with path.open("rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        what = "is empty" if not header else f"is not a SQLite database (starts {header[:8]!r})"
        raise BenchmarkDBError(path, what)
