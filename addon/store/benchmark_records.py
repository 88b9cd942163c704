"""The rows the refresh sidecar writes into a new benchmark DB, one frozen dataclass per
table (each names its table in `TABLE`), and the two writes it makes with them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One canonical model: its name and family, context window (tokens), LMArena quality
    rating with its confidence interval (None when unrated), open weights, size in billions
    of parameters, license and Hugging Face id."""

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
    """A model's LMArena rating (and confidence interval) in one category."""

    TABLE: ClassVar[str] = "model_categories"
    model_id: str
    category: str
    rating: float
    rating_lo: float | None
    rating_hi: float | None


@dataclass(frozen=True, slots=True)
class OfferingRecord:
    """One provider's offering of a model: prices in USD per million tokens (None when
    unknown), context and output limits (tokens), capability flags, and the source."""

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
    """A source's name for a model, resolved to a canonical model id by `method` with
    `score` (0–100; 100 for an exact match)."""

    TABLE: ClassVar[str] = "aliases"
    source: str
    source_name: str
    model_id: str
    method: str
    score: float


@dataclass(frozen=True, slots=True)
class UnmatchedRecord:
    """A source's name that resolved to no model: the best candidate seen, its score, and
    why it was refused."""

    TABLE: ClassVar[str] = "unmatched"
    source: str
    source_name: str
    best_candidate: str | None
    score: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """How one source fared in the refresh that built the DB: when its data was fetched,
    `status`, how many rows it gave, the error, and the snapshot it came from."""

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
    """Set `(key, value)` pairs in the `meta` table (`built_at`, `schema_version`, …)."""
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values)
