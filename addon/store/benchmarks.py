"""The benchmark DB: schema, migrations, reader, and the writer helpers refresh uses.

The DB is written only by the sidecar (``python -m addon.refresh`` / ``orchestrator
refresh``), always into a new file that then replaces the old one atomically. The router
reads it with ``load_offerings``. The schema changes only through the named migrations
below; each is recorded in ``schema_migrations`` and is safe to run again.

Errors: every problem with the file (missing, not SQLite, corrupt, unknown schema) is a
``BenchmarkDBError`` whose message names the file, what is wrong and the remedy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from addon.errors import BenchmarkDBError
from addon.routing.catalog import OfferingRow

if TYPE_CHECKING:
    from addon.config.loaded import Config

from addon.errors import REBUILD

_SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class Migration:
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


# --- rows written by refresh -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRecord:
    TABLE: ClassVar[str] = "models"
    id: str
    name: str
    org: str | None = None
    family: str | None = None
    context_tokens: int | None = None
    quality: float | None = None
    quality_lo: float | None = None
    quality_hi: float | None = None
    quality_source: str | None = None
    open_weights: bool | None = None
    params_b: float | None = None
    license: str | None = None
    hf_id: str | None = None


@dataclass(frozen=True, slots=True)
class CategoryRecord:
    TABLE: ClassVar[str] = "model_categories"
    model_id: str
    category: str
    rating: float
    rating_lo: float | None
    rating_hi: float | None


@dataclass(frozen=True, slots=True)
class OfferingRecord:
    TABLE: ClassVar[str] = "offerings"
    model_id: str
    provider: str
    provider_model_id: str
    input_per_mtok: float | None
    output_per_mtok: float | None
    cached_input_per_mtok: float | None
    context_tokens: int | None
    max_output_tokens: int | None
    supports_tools: bool | None
    supports_vision: bool | None
    supports_json_schema: bool | None
    supports_reasoning: bool | None
    source: str


@dataclass(frozen=True, slots=True)
class AliasRecord:
    TABLE: ClassVar[str] = "aliases"
    source: str
    source_name: str
    model_id: str
    method: str
    score: float


@dataclass(frozen=True, slots=True)
class UnmatchedRecord:
    TABLE: ClassVar[str] = "unmatched"
    source: str
    source_name: str
    best_candidate: str | None
    score: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    TABLE: ClassVar[str] = "refreshes"
    source: str
    fetched_at: str | None
    status: str
    rows: int
    error: str | None
    snapshot: str | None


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """The raw body (zlib) of one source snapshot a build used: a failing or not-due
    source is rebuilt from it by the next refresh, so its rows are never dropped."""

    TABLE: ClassVar[str] = "source_snapshots"
    source: str
    name: str
    fetched_at: str | None
    origin: str | None
    sha256: str
    size: int
    body: bytes


type Record = (
    ModelRecord
    | CategoryRecord
    | OfferingRecord
    | AliasRecord
    | UnmatchedRecord
    | RefreshRecord
    | SnapshotRecord
)


# --- what the router reads -----------------------------------------------------------------


_OFFERINGS_SQL = """
SELECT o.model_id, m.name, m.org, o.provider, o.provider_model_id,
       o.input_per_mtok, o.output_per_mtok, o.cached_input_per_mtok,
       COALESCE(o.context_tokens, m.context_tokens), o.max_output_tokens,
       o.supports_tools, o.supports_vision, o.supports_json_schema, o.supports_reasoning,
       m.quality, m.quality_lo, m.quality_hi, m.open_weights, o.source
FROM offerings o JOIN models m ON m.id = o.model_id
ORDER BY o.model_id, o.provider, o.provider_model_id
"""
_BOOL_COLUMNS = (10, 11, 12, 13, 17)


def _flag(value: object) -> bool | None:
    return None if value is None else bool(value)


# --- opening, migrating, checking ----------------------------------------------------------


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


# --- reading -------------------------------------------------------------------------------


def load_offerings(path: Path | str) -> list[OfferingRow]:
    """All offerings with their model's data, ordered by model, provider, provider model id."""
    conn = open_db(path, readonly=True)
    try:
        rows = conn.execute(_OFFERINGS_SQL).fetchall()
    except sqlite3.DatabaseError as exc:
        raise BenchmarkDBError(path, f"cannot be read ({exc})") from exc
    finally:
        conn.close()
    result = []
    for row in rows:
        values = list(row)
        for index in _BOOL_COLUMNS:
            values[index] = _flag(values[index])
        result.append(OfferingRow(*values))
    return result


def db_info(path: Path | str) -> dict[str, Any]:
    """Counts per table, newest refresh time per source, built_at and schema version."""
    conn = open_db(path, readonly=True)
    try:
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        refreshes = conn.execute(
            "SELECT source, MAX(fetched_at), status FROM refreshes GROUP BY source ORDER BY source"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise BenchmarkDBError(path, f"cannot be read ({exc})") from exc
    finally:
        conn.close()
    return {
        "path": str(path),
        "schema_version": meta.get("schema_version"),
        "built_at": meta.get("built_at"),
        "counts": counts,
        "sources": {source: {"fetched_at": at, "status": st} for source, at, st in refreshes},
    }


# --- writing (used by refresh) -------------------------------------------------------------


def insert(conn: sqlite3.Connection, records: Sequence[Record]) -> int:
    """Insert records of one type into their table; returns the row count."""
    if not records:
        return 0
    first = records[0]
    columns = [f.name for f in fields(first)]
    sql = (
        f"INSERT INTO {first.TABLE}({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    conn.executemany(sql, ([getattr(r, c) for c in columns] for r in records))
    return len(records)


def write_meta(conn: sqlite3.Connection, values: Iterable[tuple[str, str]]) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values)


def read_table(path: Path | str, table: str) -> list[tuple[Any, ...]]:
    """Every row of one known table, ordered by its columns (for diffs and tests)."""
    if table not in TABLES:
        raise ValueError(f"unknown benchmark DB table {table!r}; known: {', '.join(TABLES)}")
    conn = open_db(path, readonly=True)
    try:
        cursor = conn.execute(f"SELECT * FROM {table}")
        count = len(cursor.description)
        order = ", ".join(str(i) for i in range(1, count + 1))
        return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    except sqlite3.DatabaseError as exc:
        raise BenchmarkDBError(path, f"cannot be read ({exc})") from exc
    finally:
        conn.close()


BUNDLED_DB = Path(__file__).resolve().parents[1] / "bundled" / "benchmarks.db"


def load_catalog_rows(cfg: Config) -> tuple[list[OfferingRow], str, list[str]]:
    """Offerings from the configured benchmark DB, or from the bundled one with a warning."""
    path = cfg.benchmarks_path
    warnings: list[str] = []
    if path.exists():
        try:
            return load_offerings(path), str(path), warnings
        except BenchmarkDBError as e:
            warnings.append(f"{e}; using the bundled benchmark DB instead")
    else:
        warnings.append(
            f"benchmark DB {path} does not exist yet; using the bundled one "
            "(run `orchestrator refresh` to build a fresh one)"
        )
    if BUNDLED_DB.exists():
        try:
            return load_offerings(BUNDLED_DB), f"bundled:{BUNDLED_DB}", warnings
        except BenchmarkDBError as e:
            warnings.append(f"bundled benchmark DB is unusable: {e}")
    warnings.append("no benchmark DB: only models declared in rules/models.yaml are candidates")
    return [], "none", warnings
