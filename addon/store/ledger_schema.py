"""The ledger's `requests` table, described once: the row, the columns and their types,
the named migrations in order, and their two renderings (SQLite, PostgreSQL).

    LedgerRow        one row per intercepted LLM request, as the proxy records it
    COLUMNS          the table's columns in table order (`SELECT *` gives this order)
    MIGRATIONS       the named schema changes, oldest first, each in both dialects
    migrations()     the steps of one dialect rendered as SQL statements
    insert_sql()     the INSERT of a whole LedgerRow in one dialect

The SQLite ledger came first: its `0001_requests` made the table without the prompt
columns and `0002_prompt_logging` added them; `0003_api` adds, in both dialects, which API a
call spoke and the prompt tokens it wrote to a cache. The PostgreSQL ledger arrived after that, so
its `0001_requests` creates the whole table at once and `0002` does not apply to it. Files
already written keep the names they recorded; a new change is a new step at the end with
both renderings. Pure: the standard library only (no driver, no clock).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

TABLE = "requests"
OUTCOMES = ("ok", "error", "truncated", "client_abort", "unrouted", "rescued")
SPEND_COLUMNS = ("client", "policy", "profile")


@dataclass(frozen=True)
class LedgerRow:
    """One intercepted request as stored: identity, routing, attempts, usage, cost, timing.

    `ts` is seconds since the epoch; `*_ms` are milliseconds; `cost_usd` is None when the
    call could not be priced (`unpriced`). `attempt_log` and `reasons` are stored as JSON
    text, `stream` and `unpriced` as 0/1. The field order is the constructor's and the
    order of `ROW_COLUMNS`, not the table's.
    """

    id: str
    ts: float
    outcome: str
    client: str | None = None
    host: str | None = None
    path: str | None = None
    profile: str | None = None
    profile_reason: str | None = None
    policy: str | None = None
    requested_model: str | None = None
    routed_model: str | None = None
    provider: str | None = None
    attempts: int = 0
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    unpriced: bool = False
    requested_cost_usd: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    reasons: list[str] = field(default_factory=list)
    error: str | None = None
    prompt_sha256: str | None = None  # log_prompts: hash (or full)
    prompt: str | None = None  # log_prompts: full only
    completion: str | None = None  # log_prompts: full only
    api: str | None = None  # chat | completions | responses | messages | embeddings
    cache_write_tokens: int | None = None  # prompt tokens written to a cache (Anthropic)

    def as_row(self) -> tuple[Any, ...]:
        """Values in `ROW_COLUMNS` order as stored: lists as JSON text, flags as 0/1
        (cheaper than `asdict` on the writer's hot loop). Raises TypeError or ValueError
        when `attempt_log` holds something JSON cannot encode."""
        return tuple(
            json.dumps(v) if name in _JSON_COLUMNS
            else int(v) if name in _FLAG_COLUMNS
            else v
            for name in ROW_COLUMNS
            for v in (getattr(self, name),)
        )  # fmt: skip


class Dialect(Enum):
    """The two SQL dialects the ledger is rendered in."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class ColumnType:
    """One column type in both dialects, and how a LedgerRow value is stored in it:
    `as is`, `json` (a list as JSON text) or `flag` (a bool as 0/1)."""

    sqlite: str
    postgresql: str
    stored: str = "as is"

    def render(self, dialect: Dialect) -> str:
        """The type's name in `dialect`."""
        return self.sqlite if dialect is Dialect.SQLITE else self.postgresql


TEXT = ColumnType("TEXT", "TEXT")
REAL = ColumnType("REAL", "DOUBLE PRECISION")
INTEGER = ColumnType("INTEGER", "INTEGER")
BIGINT = ColumnType("INTEGER", "BIGINT")  # token counts: SQLite's INTEGER is 64-bit already
JSON_TEXT = ColumnType("TEXT", "TEXT", "json")
FLAG = ColumnType("INTEGER", "INTEGER", "flag")


@dataclass(frozen=True)
class Column:
    """One column of `requests`: its name, type and constraint (`NOT NULL`, …), the same
    in both dialects."""

    name: str
    type: ColumnType
    constraint: str = ""

    def render(self, dialect: Dialect) -> str:
        """The column's definition in `dialect`, as CREATE TABLE and ADD COLUMN take it."""
        return " ".join(filter(None, (self.name, self.type.render(dialect), self.constraint)))


COLUMNS: tuple[Column, ...] = (
    Column("id", TEXT, "PRIMARY KEY"),
    Column("ts", REAL, "NOT NULL"),
    Column("client", TEXT),
    Column("host", TEXT),
    Column("path", TEXT),
    Column("profile", TEXT),
    Column("profile_reason", TEXT),
    Column("policy", TEXT),
    Column("requested_model", TEXT),
    Column("routed_model", TEXT),
    Column("provider", TEXT),
    Column("attempts", INTEGER, "NOT NULL DEFAULT 0"),
    Column("attempt_log", JSON_TEXT),
    Column("status", INTEGER),
    Column("outcome", TEXT, "NOT NULL"),
    Column("stream", FLAG, "NOT NULL DEFAULT 0"),
    Column("prompt_tokens", BIGINT),
    Column("completion_tokens", BIGINT),
    Column("cached_tokens", BIGINT),
    Column("reasoning_tokens", BIGINT),
    Column("cost_usd", REAL),
    Column("unpriced", FLAG, "NOT NULL DEFAULT 0"),
    Column("requested_cost_usd", REAL),
    Column("ttft_ms", REAL),
    Column("latency_ms", REAL),
    Column("reasons", JSON_TEXT),
    Column("error", TEXT),
    Column("prompt_sha256", TEXT),
    Column("prompt", TEXT),
    Column("completion", TEXT),
    Column("api", TEXT),
    Column("cache_write_tokens", BIGINT),
)
ROW_COLUMNS = tuple(f.name for f in fields(LedgerRow))  # LedgerRow order, for INSERTs
_JSON_COLUMNS = frozenset(c.name for c in COLUMNS if c.type.stored == "json")
_FLAG_COLUMNS = frozenset(c.name for c in COLUMNS if c.type.stored == "flag")
_BY_NAME = {c.name: c for c in COLUMNS}


# --------------------------------------------------------------------------- schema changes


@dataclass(frozen=True)
class CreateTable:
    """Create `requests` with these columns (names from COLUMNS, in table order)."""

    columns: tuple[str, ...]

    def render(self, dialect: Dialect) -> str:
        """The CREATE TABLE statement in `dialect`."""
        body = ",\n".join(f"    {_BY_NAME[c].render(dialect)}" for c in self.columns)
        return f"CREATE TABLE {TABLE} (\n{body}\n)"


@dataclass(frozen=True)
class AddColumn:
    """Add one column of COLUMNS to `requests`."""

    column: str

    def render(self, dialect: Dialect) -> str:
        """The ALTER TABLE statement in `dialect`."""
        return f"ALTER TABLE {TABLE} ADD COLUMN {_BY_NAME[self.column].render(dialect)}"


@dataclass(frozen=True)
class CreateIndex:
    """Create the index `name` on these columns of `requests`."""

    name: str
    columns: tuple[str, ...]

    def render(self, dialect: Dialect) -> str:
        """The CREATE INDEX statement (the same in both dialects)."""
        return f"CREATE INDEX {self.name} ON {TABLE} ({', '.join(self.columns)})"


type Change = CreateTable | AddColumn | CreateIndex


@dataclass(frozen=True)
class Migration:
    """One named schema step, recorded in `schema_migrations` once applied. `sqlite` and
    `postgresql` are its changes in each dialect; None means the step does not exist there
    (it is neither applied nor recorded)."""

    name: str
    sqlite: tuple[Change, ...] | None
    postgresql: tuple[Change, ...] | None

    def changes(self, dialect: Dialect) -> tuple[Change, ...] | None:
        """The step's changes in `dialect`, None when it does not apply there."""
        return self.sqlite if dialect is Dialect.SQLITE else self.postgresql


_PROMPT_COLUMNS = ("prompt_sha256", "prompt", "completion")
_API_COLUMNS = ("api", "cache_write_tokens")
_LATER_SQLITE = (*_PROMPT_COLUMNS, *_API_COLUMNS)  # added by SQLite's later steps
_BY_TS = CreateIndex("requests_ts", ("ts",))

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_requests",
        sqlite=(
            CreateTable(tuple(c.name for c in COLUMNS if c.name not in _LATER_SQLITE)),
            _BY_TS,
        ),
        postgresql=(
            CreateTable(tuple(c.name for c in COLUMNS if c.name not in _API_COLUMNS)),
            _BY_TS,
            CreateIndex("requests_policy_ts", ("policy", "ts")),  # the budget seed's query
        ),
    ),
    Migration(
        "0002_prompt_logging",
        sqlite=tuple(AddColumn(c) for c in _PROMPT_COLUMNS),
        postgresql=None,  # already in PostgreSQL's 0001_requests
    ),
    Migration(
        "0003_api",
        sqlite=tuple(AddColumn(c) for c in _API_COLUMNS),
        postgresql=tuple(AddColumn(c) for c in _API_COLUMNS),
    ),
)


def migrations(dialect: Dialect) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`(name, statements)` of every step that exists in `dialect`, oldest first."""
    return tuple(
        (m.name, tuple(change.render(dialect) for change in changes))
        for m in MIGRATIONS
        if (changes := m.changes(dialect)) is not None
    )


def insert_sql(dialect: Dialect, *, replace: bool = False) -> str:
    """The INSERT of one LedgerRow (`as_row()` values, positional placeholders). A row
    whose `id` is already stored is left alone, or (SQLite only) replaced with `replace`."""
    names = ", ".join(ROW_COLUMNS)
    if dialect is Dialect.SQLITE:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        return f"{verb} INTO {TABLE} ({names}) VALUES ({', '.join('?' for _ in ROW_COLUMNS)})"
    if replace:
        raise ValueError("the PostgreSQL ledger never replaces a stored row")
    marks = ", ".join("%s" for _ in ROW_COLUMNS)
    return f"INSERT INTO {TABLE} ({names}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"


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
