"""The response cache's entries on disk: one SQLite file (`cache.store`, by default
`data/cache.db`), and the entry value every cache store keeps (`CachedAnswer`).

    CachedAnswer     one stored answer: status, headers, a whole body or the SSE events
                     (with the gaps between them), who answered, what it cost, when
    CacheStore       what the request path needs of a store (this file, or Redis:
                     `addon.state.redis_cache.RedisCache`)
    SqliteCache      the file: `entries` (key, expiry, value) and `meta` (the salt)

The file changes only through the named steps of `MIGRATIONS`, recorded in
`schema_migrations` like the ledger's. The salt that keys every hash (`addon.wire.cachekey`)
is made once, at random, when the file is created and never leaves it: deleting the file
forgets every entry and every key hash at once.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("orchestrator")

PRUNE_EVERY = 200  # writes between two sweeps of expired entries

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_cache",
        (
            "CREATE TABLE entries (key TEXT PRIMARY KEY, expires REAL NOT NULL, "
            "value BLOB NOT NULL)",
            "CREATE INDEX entries_expires ON entries (expires)",
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
        ),
    ),
)


@dataclass(frozen=True)
class CachedAnswer:
    """One stored answer. A whole answer has its `body`; a streamed one its SSE `events`
    exactly as the client got them (one item per event, boundaries kept) and the
    milliseconds between consecutive events (`gaps_ms`, one fewer). `provider`/`model`
    name the target that answered; `cost_usd` is what the call cost, `requested_cost_usd`
    what the requested model would have cost (None when unknown); `created` is epoch
    seconds."""

    status: int
    headers: tuple[tuple[str, str], ...]
    provider: str
    model: str
    created: float
    body: bytes = b""
    events: tuple[bytes, ...] = ()
    gaps_ms: tuple[float, ...] = ()
    cost_usd: float | None = None
    requested_cost_usd: float | None = None

    @property
    def streamed(self) -> bool:
        """Whether this is an event stream (else a whole body)."""
        return bool(self.events)

    def encode(self) -> bytes:
        """The value a store keeps (JSON; bytes as base64)."""
        return json.dumps(
            {
                "status": self.status,
                "headers": [list(h) for h in self.headers],
                "provider": self.provider,
                "model": self.model,
                "created": self.created,
                "body": base64.b64encode(self.body).decode(),
                "events": [base64.b64encode(e).decode() for e in self.events],
                "gaps_ms": list(self.gaps_ms),
                "cost_usd": self.cost_usd,
                "requested_cost_usd": self.requested_cost_usd,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> CachedAnswer | None:
        """An encoded value back; None for one this version cannot read (a miss)."""
        try:
            d = json.loads(raw)
            return cls(
                status=int(d["status"]),
                headers=tuple((str(k), str(v)) for k, v in d["headers"]),
                provider=str(d["provider"]),
                model=str(d["model"]),
                created=float(d["created"]),
                body=base64.b64decode(d["body"]),
                events=tuple(base64.b64decode(e) for e in d["events"]),
                gaps_ms=tuple(float(g) for g in d["gaps_ms"]),
                cost_usd=d.get("cost_usd"),
                requested_cost_usd=d.get("requested_cost_usd"),
            )
        except (ValueError, KeyError, TypeError):
            return None


class CacheStore(Protocol):
    """Where entries live. Lookups and writes never raise: a store that fails answers a
    miss (and logs why) so the request goes upstream as if there were no cache."""

    where: str

    async def open(self) -> None:
        """Connect / create the file; a store that cannot still serves (as all misses)."""

    async def salt(self) -> bytes | None:
        """The secret that keys every hash; None while it cannot be read (cache unused)."""

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        """The live entry under `key`, or None."""

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float, now: float) -> None:
        """Keep `answer` under `key` for `ttl_s` seconds (replacing any older one)."""

    async def close(self) -> None:
        """Release the file or connection."""

    def health(self) -> dict[str, Any]:
        """For `/status`: the kind of store and what it has done."""


class SqliteCache:
    """Entries in one SQLite file (WAL). Calls run on the caller's thread: a lookup is one
    primary-key read, a write one upsert, both far below a millisecond on a local file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._db: sqlite3.Connection | None = None
        self._salt: bytes | None = None
        self._writes = 0
        self.errors = 0

    async def open(self) -> None:
        """Create or open the file, apply pending migrations, read (or make) the salt."""
        self.connect()

    def connect(self) -> None:
        """`open`, synchronously (for scripts and tests)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=2000")
            migrate(db)
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('salt', ?)",
                       (secrets.token_bytes(32),))  # fmt: skip
            row = db.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()
        except (sqlite3.Error, OSError) as e:
            log.warning("cache: cannot open %s (%s); requests are served without the "
                        "cache — fix the path in `cache.store`", self.path, e)  # fmt: skip
            return
        self._db, self._salt = db, bytes(row[0])

    async def salt(self) -> bytes | None:
        """The file's salt (None when the file could not be opened)."""
        return self._salt

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        """The entry under `key` unless it expired."""
        if self._db is None:
            return None
        try:
            row = self._db.execute(
                "SELECT value FROM entries WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
        except sqlite3.Error as e:
            self._failed("read", e)
            return None
        return CachedAnswer.decode(row[0]) if row is not None else None

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float, now: float) -> None:
        """Upsert the entry; every `PRUNE_EVERY` writes, drop the expired ones."""
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO entries (key, expires, value) VALUES (?, ?, ?)",
                (key, now + ttl_s, answer.encode()),
            )
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self._db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
        except sqlite3.Error as e:
            self._failed("write", e)

    def count(self, now: float) -> int:
        """Live entries (for `/status` and tests)."""
        if self._db is None:
            return 0
        return int(self._db.execute("SELECT count(*) FROM entries WHERE expires > ?",
                                    (now,)).fetchone()[0])  # fmt: skip

    async def close(self) -> None:
        """Close the file."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def health(self) -> dict[str, Any]:
        """Kind `sqlite`, the file, whether it is open, and failed reads/writes."""
        return {"kind": "sqlite", "path": self.where, "open": self._db is not None,
                "errors": self.errors}  # fmt: skip

    def _failed(self, what: str, e: sqlite3.Error) -> None:
        self.errors += 1
        log.warning("cache: %s of %s failed: %s", what, self.path, e)


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply every step of `MIGRATIONS` not yet recorded; the names applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, "
               "applied REAL NOT NULL DEFAULT (julianday('now')))")  # fmt: skip
    done = {r[0] for r in db.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, statements in MIGRATIONS:
        if name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO schema_migrations (name) VALUES (?)", (name,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(name)
    return applied
