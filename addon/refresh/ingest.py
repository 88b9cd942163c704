"""Build the benchmark DB from source snapshots, never losing a source's previous data.

``build`` takes what this refresh got per source kind (``Collected``: fresh snapshots and
failures) and the snapshots the previous DB was built from. Per kind:

* fresh snapshots that parse are used (status ``ok``; ``partial`` when some Hugging Face
  repos or local providers failed, whose previous files are then reused);
* a kind whose fetch or parse failed is rebuilt from its previous snapshot (``failed``,
  the error is recorded in ``refreshes``); a fresh body with no usable record counts
  as a failure too, so an empty response never wipes a source;
* a kind not attempted this run (not due, ``--only``) reuses its previous snapshot
  (``kept``); a kind in ``drop`` (``enabled: false``) is left out (``disabled``).

Then names are resolved across sources (``addon.refresh.canonical``) and everything, including the
snapshots used, is written to a temporary file next to the target that replaces it with
``os.replace``. Until that rename the old DB is untouched; a killed build leaves only a
stale temporary file, removed by the next build.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from addon.errors import RefreshError
from addon.refresh.canonical import Assembly, Inputs, assemble
from addon.refresh.resolve import AliasRules, load_alias_rules
from addon.refresh.snapshots import (
    HISTORY_KINDS,
    KINDS,
    MAX_HISTORY,
    MULTI_FILE,
    PRICE_KINDS,
    Collected,
    Failure,
    Snapshot,
    load_stored,
    local_provider,
    newest_first,
    read_folder,
    to_records,
)
from addon.refresh.sources import (
    ParseResult,
    SourceFormatError,
    huggingface,
    litellm,
    lmarena,
    local,
)
from addon.refresh.sources import openrouter as openrouter_source
from addon.refresh.summary import RefreshSummary, SourceStats
from addon.store import benchmarks

Progress = Callable[[str], None]


_PARSERS: Mapping[str, Callable[[Snapshot], ParseResult[Any]]] = MappingProxyType(
    {
        "openrouter": lambda s: openrouter_source.parse(s.body, s.name),
        "lmarena": lambda s: lmarena.parse(s.body, s.name),
        "litellm": lambda s: litellm.parse(s.body, s.name),
        "huggingface": lambda s: huggingface.parse(s.body, s.name),
        "lmsys": lambda s: lmarena.parse_model_table(s.body, s.name),
        "local": lambda s: local.parse(s.body, s.name, local_provider(s.name)),
    }
)


def _quiet(message: str) -> None:
    """Progress sink for non-interactive runs."""


@dataclass(frozen=True, slots=True)
class _Used:
    """What one kind contributes to this build."""

    status: str  # ok | partial | failed | kept | missing | disabled
    results: tuple[ParseResult[Any], ...] = ()
    snapshots: tuple[Snapshot, ...] = ()
    fresh: frozenset[str] = frozenset()  # names of the snapshots fetched this run
    errors: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()  # names reused from the previous DB
    failed_keys: int = 0


def parse_snapshot(snap: Snapshot) -> ParseResult[Any]:
    """Parse one snapshot; SourceFormatError if unreadable or without any usable record."""
    result = _PARSERS[snap.kind](snap)
    if not result.records and snap.kind not in MULTI_FILE:
        raise SourceFormatError(snap.name, "no usable records", "the source may have changed "
                                "format; the previous data is kept")  # fmt: skip
    return result


def _choose(
    kind: str,
    collected: Collected | None,
    previous: tuple[Snapshot, ...],
    drop: frozenset[str],
) -> _Used:
    if kind in drop:
        return _Used("disabled")
    if collected is None:  # not attempted this run: reuse everything the previous DB had
        results, snaps = [], []
        for snap in previous:
            parsed = _try_parse(snap)
            if not isinstance(parsed, str):
                results.append(parsed)
                snaps.append(snap)
        if not snaps:
            return _Used("missing")
        pairs = dict(zip(map(id, snaps), results, strict=True))
        snaps = newest_first(kind, snaps)
        results = [pairs[id(s)] for s in snaps]
        return _Used("kept", tuple(results), tuple(snaps), kept=tuple(s.name for s in snaps))
    failures: list[Failure] = list(collected.failures)
    used: list[tuple[Snapshot, ParseResult[Any]]] = []
    for snap in collected.snapshots:
        parsed = _try_parse(snap)
        if isinstance(parsed, str):
            failures.append(Failure(snap.key, parsed))
        else:
            used.append((snap, parsed))
    fresh = frozenset(s.name for s, _ in used)
    failed = {f.key for f in failures}
    kept: list[str] = []
    history = 0
    for snap in newest_first(kind, previous):
        if snap.name in fresh:
            continue
        if snap.key in failed or (fresh and kind in HISTORY_KINDS and history < MAX_HISTORY):
            parsed = _try_parse(snap)
            if isinstance(parsed, str):
                continue
            used.append((snap, parsed))
            if snap.key in failed:
                kept.append(snap.name)
            else:
                history += 1  # an older snapshot: its names still count
    errors = tuple(f.error for f in failures)
    if fresh:
        status = "partial" if failures else "ok"
    elif failures:
        status = "failed"
    else:
        status = "missing"
    if kind in HISTORY_KINDS:
        order = {id(s): i for i, s in enumerate(newest_first(kind, [s for s, _ in used]))}
        used.sort(key=lambda pair: order[id(pair[0])])
    return _Used(
        status,
        tuple(r for _, r in used),
        tuple(s for s, _ in used),
        fresh,
        errors,
        tuple(kept),
        len(failed),
    )


def _try_parse(snap: Snapshot) -> ParseResult[Any] | str:
    try:
        return parse_snapshot(snap)
    except SourceFormatError as exc:
        return str(exc)


def build(
    fresh: Mapping[str, Collected],
    out_path: Path,
    rules: AliasRules | None = None,
    *,
    previous: Mapping[str, tuple[Snapshot, ...]] | None = None,
    drop: frozenset[str] = frozenset(),
    progress: Progress = _quiet,
) -> RefreshSummary:
    """Build the DB at ``out_path`` from ``fresh`` plus the previous DB's snapshots."""
    out_path = Path(out_path)
    notes: list[str] = []
    if previous is None:
        previous, problem = load_stored(out_path)
        notes += [problem] if problem else []
    progress("parsing snapshots")
    used = {kind: _choose(kind, fresh.get(kind), previous.get(kind, ()), drop) for kind in KINDS}
    if not any(r.records for kind in PRICE_KINDS for r in used[kind].results):
        detail = "; ".join(e for k in PRICE_KINDS for e in used[k].errors) or "none found"
        raise RefreshError(
            f"no price source could be read ({detail}) — an OpenRouter or LiteLLM snapshot is "
            f"needed; the existing DB at {out_path} is unchanged"
        )
    progress("matching names across sources")
    assembly = assemble(
        Inputs(
            openrouter=_records(used, "openrouter", newest=True),
            openrouter_older=_records(used, "openrouter", older=True),
            litellm=_records(used, "litellm"),
            arena=_records(used, "lmarena", newest=True),
            arena_file=used["lmarena"].results[0].name if used["lmarena"].results else None,
            arena_older=tuple((r.name, r.records) for r in used["lmarena"].results[1:]),
            huggingface=_records(used, "huggingface"),
            lmsys=_records(used, "lmsys"),
            local=_records(used, "local"),
            rules=rules or AliasRules(),
        )
    )
    old = _old_rows(out_path)
    stats = tuple(_stats(kind, used[kind], assembly, old.get(kind, {})) for kind in KINDS)
    fetched = [s.fetched_at for u in used.values() for s in u.snapshots if s.fetched_at]
    built_at = max(fetched) if fetched else None
    refreshes = [
        benchmarks.RefreshRecord(
            s.source,
            _newest(used[s.source].snapshots),
            s.status,
            assembly.rows_by_source.get(s.source, 0),
            s.error,
            s.snapshot,
        )
        for s in stats
    ]
    meta = [("schema_version", str(benchmarks.SCHEMA_VERSION)), ("built_at", built_at or "")]
    meta += [(f"snapshot:{s.source}", s.snapshot or "") for s in stats]
    kept = {kind: u.snapshots for kind, u in used.items() if u.snapshots}
    progress(f"writing {out_path}")
    counts = write(out_path, assembly, refreshes, meta, kept)
    return RefreshSummary(
        out_path, built_at, stats, counts, assembly.matches, assembly.misses, tuple(notes)
    )


def build_from_folder(
    directory: Path, out_path: Path, aliases: Path | None = None
) -> RefreshSummary:
    """``refresh --from DIR --out PATH [--aliases FILE]`` as a function (tests, benchmarks)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RefreshError(f"{directory}: not a directory — pass --from a folder of snapshots")
    rules = load_alias_rules(aliases) if aliases else AliasRules()
    return build(read_folder(directory), Path(out_path), rules)


def _records(
    used: Mapping[str, _Used], kind: str, *, newest: bool = False, older: bool = False
) -> tuple[Any, ...]:
    """A kind's records: of every snapshot, or (history kinds, newest first) of the newest
    one only, or of the older ones only."""
    results = used[kind].results
    if newest:
        results = results[:1]
    elif older:
        results = results[1:]
    return tuple(r for result in results for r in result.records)


def _newest(snaps: tuple[Snapshot, ...]) -> str | None:
    dates = [s.fetched_at for s in snaps if s.fetched_at]
    return max(dates) if dates else None


def _stats(
    kind: str, used: _Used, assembly: Assembly, old_rows: dict[tuple[Any, ...], tuple[Any, ...]]
) -> SourceStats:
    names = sorted(s.name for s in used.snapshots)
    label = ", ".join(names) if len(names) <= 2 else f"{len(names)} files"
    error = "; ".join(used.errors) or None
    if not used.results:
        return SourceStats(kind, used.status, label or None, error=error)
    new_rows = assembly.keyed_rows.get(kind, {})
    warnings = tuple(str(w) for r in used.results for w in r.warnings)
    failed = len(warnings) + used.failed_keys
    dupes = assembly.duplicates.get(kind, 0)
    if dupes:
        warnings += (f"{dupes} offerings repeat a (provider, model id) already seen; kept first",)
    matched = sum(1 for m in assembly.matches if m.source == kind)
    if kind == "lmsys":  # the table only fills licences of arena-matched models
        matched = assembly.rows_by_source.get(kind, 0)
    if not used.fresh:
        fetched = 0
    elif not used.kept:
        fetched = assembly.fetched.get(kind, 0)
    else:
        fetched = sum(len(r.records) for r in used.results if r.name in used.fresh)
    kept = None
    if used.kept:
        label_kept = ", ".join(used.kept) if len(used.kept) <= 2 else f"{len(used.kept)} files"
        kept = f"previous data reused: {label_kept}"
    return SourceStats(
        source=kind,
        status=used.status,
        snapshot=label,
        fetched=fetched,
        added=sum(1 for k in new_rows if k not in old_rows),
        updated=sum(1 for k, v in new_rows.items() if k in old_rows and old_rows[k] != v),
        matched=matched,
        unmatched=sum(1 for m in assembly.misses if m.source == kind),
        new=assembly.new_models.get(kind, 0),
        failed=failed,
        skipped=sum(r.skipped_total for r in used.results),
        error=error,
        warnings=warnings,
        kept=kept,
    )


def _old_rows(path: Path) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    """The previous DB's rows keyed like ``Assembly.keyed_rows`` (empty if unusable)."""
    try:
        offerings = benchmarks.read_table(path, "offerings")
        models = benchmarks.read_table(path, "models")
    except benchmarks.BenchmarkDBError:
        return {}
    old: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    for row in offerings:
        source = row[12]
        old.setdefault(source, {})[(row[1], row[2])] = tuple(row)
    for row in models:
        if row[5] is not None:
            old.setdefault("lmarena", {})[(row[0],)] = (row[5], row[6], row[7])
        if row[12] is not None:
            old.setdefault("huggingface", {})[(row[0],)] = (row[10], row[11], row[12])
    return old


def temp_path(out_path: Path) -> Path:
    return out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")


def remove_stale_temps(out_path: Path) -> list[Path]:
    """Delete temporary files left by builds that were killed (their process is gone)."""
    removed = []
    for tmp in out_path.parent.glob(f".{out_path.name}.*.tmp"):
        pid = tmp.name.removeprefix(f".{out_path.name}.").removesuffix(".tmp")
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
        except PermissionError:
            continue  # alive, another user's
    return removed


def write(
    out_path: Path,
    assembly: Assembly,
    refreshes: list[benchmarks.RefreshRecord],
    meta: list[tuple[str, str]],
    snapshots: Mapping[str, tuple[Snapshot, ...]],
) -> dict[str, int]:
    """Write a new DB next to ``out_path`` and swap it in; the old file stays until then."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_path)
    tmp = temp_path(out_path)
    tmp.unlink(missing_ok=True)
    try:
        conn = benchmarks.open_db(tmp, readonly=False)
        try:
            with conn:
                counts = {
                    "models": benchmarks.insert(conn, assembly.models),
                    "model_categories": benchmarks.insert(conn, assembly.categories),
                    "offerings": benchmarks.insert(conn, assembly.offerings),
                    "aliases": benchmarks.insert(conn, assembly.aliases),
                    "unmatched": benchmarks.insert(conn, assembly.unmatched),
                    "refreshes": benchmarks.insert(conn, refreshes),
                    "source_snapshots": benchmarks.insert(conn, to_records(snapshots)),
                }
                benchmarks.write_meta(conn, meta)
            problems = conn.execute("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RefreshError(f"internal error: offerings without a model: {problems[:3]}")
        finally:
            conn.close()
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return counts
