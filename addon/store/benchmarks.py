"""The benchmark DB: what the router and the CLI read from it, and the bundled file.

The DB is written only by the sidecar (``python -m addon.refresh`` / ``orchestrator
refresh``), always into a new file that then replaces the old one atomically. The router
reads it with ``load_offerings`` (or ``load_catalog_rows``, which falls back to the bundled
DB). This module is also the benchmark DB's one import for the rest of the package: it
re-exports the schema (``benchmark_schema``: migrations, tables, ``open_db``) and the rows
refresh writes (``benchmark_records``: the records, ``insert``, ``write_meta``).

Errors: every problem with the file (missing, not SQLite, corrupt, unknown schema) is a
``BenchmarkDBError`` whose message names the file, what is wrong and the remedy.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from addon.errors import BenchmarkDBError
from addon.routing.catalog import OfferingRow
from addon.store.benchmark_records import (
    AliasRecord,
    CategoryRecord,
    ModelRecord,
    OfferingRecord,
    Record,
    RefreshRecord,
    SnapshotRecord,
    UnmatchedRecord,
    insert,
    write_meta,
)
from addon.store.benchmark_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    Migration,
    check_schema,
    migrate,
    open_db,
)

if TYPE_CHECKING:
    from addon.config.loaded import Config

__all__ = [
    "BUNDLED_DB",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "AliasRecord",
    "BenchmarkDBError",
    "CategoryRecord",
    "Migration",
    "ModelRecord",
    "OfferingRecord",
    "Record",
    "RefreshRecord",
    "SnapshotRecord",
    "UnmatchedRecord",
    "check_schema",
    "db_info",
    "insert",
    "load_catalog_rows",
    "load_offerings",
    "migrate",
    "open_db",
    "read_table",
    "write_meta",
]

BUNDLED_DB = Path(__file__).resolve().parents[1] / "bundled" / "benchmarks.db"

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
