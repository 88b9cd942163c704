"""Source snapshots: the raw bodies a refresh builds the benchmark DB from.

A snapshot comes from one of three places:

* a folder of saved files (``--from DIR``: ``openrouter_models_<date>.json``, ...),
* the network (``addon.collect``), named the same way with the fetch date,
* the previous benchmark DB, which keeps every body it was built from (zlib) in
  ``source_snapshots``. A source that fails, or is not due in an ``--every`` loop, is
  rebuilt from there, so its rows survive and name matching stays consistent.

``Collected`` is what one refresh got for one source kind: fresh snapshots, plus the
keys that failed (the kind itself, or one Hugging Face repo / one local provider).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from addon.store import benchmarks

# Build order and summary order. lmsys is read from --from folders only (no live source).
KINDS = ("openrouter", "litellm", "lmarena", "huggingface", "lmsys", "local")
MULTI_FILE = frozenset({"huggingface", "local"})  # one snapshot per repo / per provider
# Kinds whose older snapshots are read too (newest first): they add names, not values.
HISTORY_KINDS = frozenset({"openrouter", "lmarena"})
MAX_HISTORY = 4  # older snapshots a network refresh keeps per history kind
PRICE_KINDS = ("openrouter", "litellm")
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
_PATTERNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "openrouter": ("openrouter_models_*.json",),
        "lmarena": ("lmarena_leaderboard_text_*.json", "lmarena_leaderboard_text_*.csv"),
        "litellm": ("litellm_model_prices_*.json",),
        "lmsys": ("lmsys_leaderboard_table_*.csv",),
        "huggingface": ("hf_model_*.json",),
        "local": ("local_models_*.json",),
    }
)
_LOCAL_PREFIX, _HF_PREFIX = "local_models_", "hf_model_"


@dataclass(frozen=True, slots=True)
class Snapshot:
    kind: str
    name: str  # file-style name; the parsers put it in their messages
    body: bytes = field(repr=False)
    fetched_at: str | None  # ISO date (files) or UTC timestamp (network)
    origin: str  # the path or URL it came from

    @property
    def key(self) -> str:
        """What a failure is about: the kind, or one repo / provider for multi-file kinds."""
        return self.name if self.kind in MULTI_FILE else self.kind


@dataclass(frozen=True, slots=True)
class Failure:
    key: str  # Snapshot.key of what could not be had
    error: str


@dataclass(frozen=True, slots=True)
class Collected:
    """One kind's outcome in one refresh: fresh snapshots and what failed."""

    kind: str
    snapshots: tuple[Snapshot, ...] = ()
    failures: tuple[Failure, ...] = ()


# --- names ---------------------------------------------------------------------------------


def hf_name(repo: str) -> str:
    return f"{_HF_PREFIX}{repo.replace('/', '__')}.json"


def local_name(provider: str) -> str:
    return f"{_LOCAL_PREFIX}{provider}.json"


def local_provider(name: str) -> str:
    return name.removeprefix(_LOCAL_PREFIX).removesuffix(".json")


def dated_name(kind: str, date: str, suffix: str = ".json") -> str:
    stem = {
        "openrouter": "openrouter_models",
        "lmarena": "lmarena_leaderboard_text",
        "litellm": "litellm_model_prices",
        "lmsys": "lmsys_leaderboard_table",
    }[kind]
    return f"{stem}_{date}{suffix}"


def date_of(name: str) -> str | None:
    found = _DATE.search(name)
    return found.group(1) if found else None


# --- a folder of saved snapshots -------------------------------------------------------------


def newest_first(kind: str, snaps: list[Snapshot] | tuple[Snapshot, ...]) -> list[Snapshot]:
    """`snaps` of one kind, newest first (by the date in the name, else the fetch time); for
    the arena every JSON file comes before every CSV file, whatever the dates."""
    return sorted(snaps, key=lambda s: _age_key(kind, s.name, s.fetched_at), reverse=True)


def _age_key(kind: str, name: str, fetched_at: str | None = None) -> tuple[bool, str, str]:
    json_first = kind != "lmarena" or name.lower().endswith(".json")
    return (json_first, date_of(name) or (fetched_at or "")[:10], name)


def find_files(directory: Path) -> dict[str, tuple[Path, ...]]:
    """The files a build uses, by kind: the newest of each single-file kind, every file of
    the multi-file kinds, and every file of the history kinds, newest first (arena JSON
    before the arena CSV whatever the dates: the first file is the one values come from).
    """
    chosen: dict[str, tuple[Path, ...]] = {}
    for kind, patterns in _PATTERNS.items():
        found = [p for pattern in patterns for p in directory.glob(pattern) if p.is_file()]
        if not found:
            continue
        if kind in MULTI_FILE:
            chosen[kind] = tuple(sorted(found))
            continue
        ordered = sorted(found, key=lambda p: _age_key(kind, p.name), reverse=True)
        chosen[kind] = tuple(ordered) if kind in HISTORY_KINDS else (ordered[0],)
    return chosen


def read_folder(directory: Path, kinds: frozenset[str] | None = None) -> dict[str, Collected]:
    """Every kind with files in ``directory`` (limited to ``kinds``), read into memory."""
    result: dict[str, Collected] = {}
    for kind, paths in find_files(directory).items():
        if kinds is not None and kind not in kinds:
            continue
        snaps: list[Snapshot] = []
        failures: list[Failure] = []
        for path in paths:
            key = path.name if kind in MULTI_FILE else kind
            try:
                body = path.read_bytes()
            except OSError as exc:
                failures.append(Failure(key, f"{path}: cannot be read ({exc.strerror}) — check it"))
                continue
            snaps.append(Snapshot(kind, path.name, body, date_of(path.name), str(path)))
        result[kind] = Collected(kind, tuple(snaps), tuple(failures))
    return result


def save(snapshots: Mapping[str, Collected], directory: Path) -> list[Path]:
    """Write fresh snapshots as files ``--from`` can read back later."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for collected in snapshots.values():
        for snap in collected.snapshots:
            path = directory / re.sub(r"[^\w.@-]", "_", snap.name)
            path.write_bytes(snap.body)
            written.append(path)
    return written


# --- snapshots kept in the benchmark DB ------------------------------------------------------


def to_records(snapshots: Mapping[str, tuple[Snapshot, ...]]) -> list[benchmarks.SnapshotRecord]:
    return [
        benchmarks.SnapshotRecord(
            snap.kind,
            snap.name,
            snap.fetched_at,
            snap.origin,
            hashlib.sha256(snap.body).hexdigest(),
            len(snap.body),
            zlib.compress(snap.body, 6),
        )
        for kind in sorted(snapshots)
        for snap in sorted(snapshots[kind], key=lambda s: s.name)
    ]


def load_stored(db_path: Path) -> tuple[dict[str, tuple[Snapshot, ...]], str | None]:
    """The snapshots the DB at ``db_path`` was built from, by kind, and why none could be
    read (None when the DB simply does not exist yet). A damaged body is left out."""
    if not db_path.exists():
        return {}, None
    try:
        rows = benchmarks.read_table(db_path, "source_snapshots")
    except benchmarks.BenchmarkDBError as exc:
        return {}, (
            f"the previous DB {db_path} cannot be read ({exc.problem}); a source that fails "
            "in this run has no earlier rows to keep"
        )
    stored: dict[str, list[Snapshot]] = {}
    for source, name, fetched_at, origin, sha256, _size, blob in rows:
        try:
            body = zlib.decompress(blob)
        except zlib.error:
            continue
        if hashlib.sha256(body).hexdigest() != sha256:
            continue
        stored.setdefault(source, []).append(Snapshot(source, name, body, fetched_at, origin))
    return {kind: tuple(snaps) for kind, snaps in stored.items()}, None
