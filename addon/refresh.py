"""Build the benchmark DB from saved public snapshots (``--from DIR``).

``build_db`` picks the newest snapshot of each kind in a directory, parses each source
(one failing source is reported, the others still build), resolves names across sources
into canonical models (``addon.resolve``), and writes a new DB file next to the target
that then replaces it with ``os.replace``. If anything fails before that, the old DB
stays. The same inputs always give the same rows: ``built_at`` is the newest snapshot
date, not the wall clock.

Run it as ``python -m addon.refresh --from DIR --out PATH [--aliases FILE] [--report]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from addon import benchmarks
from addon.canonical import Assembly, Inputs, assemble
from addon.resolve import AliasRules, AliasRulesError, Match, Miss, load_alias_rules
from addon.sources import ParseResult, SourceFormatError, huggingface, litellm, lmarena, openrouter

_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
_KINDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "openrouter": ("openrouter_models_*.json",),
        "lmarena": ("lmarena_leaderboard_text_*.json", "lmarena_leaderboard_text_*.csv"),
        "litellm": ("litellm_model_prices_*.json",),
        "lmsys": ("lmsys_leaderboard_table_*.csv",),
    }
)
SOURCES = ("openrouter", "litellm", "lmarena", "huggingface", "lmsys")


class RefreshError(Exception):
    """The build could not produce a usable DB; the previous DB (if any) is untouched."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    kind: str
    path: Path

    @property
    def date(self) -> str | None:
        found = _DATE.search(self.path.name)
        return found.group(1) if found else None


def find_snapshots(directory: Path) -> dict[str, tuple[Snapshot, ...]]:
    """The snapshots a build uses, by kind: the newest of each kind (all ``hf_model_*``).

    Arena JSON is preferred over the arena CSV whatever their dates.
    """
    if not directory.is_dir():
        raise RefreshError(f"{directory}: not a directory — pass --from a folder of snapshots")
    chosen: dict[str, tuple[Snapshot, ...]] = {}
    for kind, patterns in _KINDS.items():
        for pattern in patterns:
            found = [Snapshot(kind, p) for p in directory.glob(pattern) if p.is_file()]
            if found:
                chosen[kind] = (max(found, key=lambda s: (s.date or "", s.path.name)),)
                break
    hf = sorted(p for p in directory.glob("hf_model_*.json") if p.is_file())
    if hf:
        chosen["huggingface"] = tuple(Snapshot("huggingface", p) for p in hf)
    return chosen


@dataclass(frozen=True, slots=True)
class SourceStats:
    """One source's line in the refresh summary."""

    source: str
    status: str  # ok | failed | missing
    snapshot: str | None = None
    fetched: int = 0
    added: int = 0
    updated: int = 0
    matched: int = 0
    unmatched: int = 0
    new: int = 0
    failed: int = 0
    skipped: int = 0
    error: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RefreshSummary:
    out_path: Path
    built_at: str | None
    sources: tuple[SourceStats, ...]
    counts: dict[str, int] = field(default_factory=dict)
    matches: tuple[Match, ...] = ()
    misses: tuple[Miss, ...] = ()

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.sources)

    def format_table(self) -> str:
        head = ["source", "status", "fetched", "added", "updated", "matched", "unmatched"]
        head += ["new", "failed", "skipped"]
        rows = [head]
        for s in self.sources:
            counts = (s.fetched, s.added, s.updated, s.matched, s.unmatched, s.new, s.failed)
            rows.append([s.source, s.status, *map(str, counts), str(s.skipped)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("")
        lines.append(f"wrote {self.out_path} (built_at {self.built_at}): " + _counts(self.counts))
        for s in self.sources:
            if s.error:
                lines.append(f"{s.source}: {s.error}")
            lines.extend(f"{s.source}: warning: {w}" for w in s.warnings[:5])
            if len(s.warnings) > 5:
                lines.append(f"{s.source}: ... {len(s.warnings) - 5} more warnings")
        return "\n".join(lines)

    def format_report(self) -> str:
        lines = ["matches (source: name -> canonical id, method, score):"]
        for m in sorted(self.matches, key=lambda m: (m.source, m.name)):
            lines.append(f"  {m.source}: {m.name} -> {m.model_id} ({m.method}, {m.score:g})")
        lines.append("unmatched (source: name; best candidate, score; reason):")
        for miss in sorted(self.misses, key=lambda m: (m.source, m.name)):
            score = "-" if miss.score is None else f"{miss.score:g}"
            best = miss.best_candidate or "-"
            lines.append(f"  {miss.source}: {miss.name}; {best}, {score}; {miss.reason}")
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {table}" for table, n in counts.items())


_PARSERS: Mapping[str, Callable[[bytes, str], ParseResult[Any]]] = MappingProxyType(
    {
        "openrouter": openrouter.parse,
        "lmarena": lmarena.parse,
        "litellm": litellm.parse,
        "huggingface": huggingface.parse,
        "lmsys": lmarena.parse_model_table,
    }
)


def _parse_kind(
    kind: str, snapshots: Sequence[Snapshot]
) -> tuple[list[ParseResult[Any]], str | None]:
    results: list[ParseResult[Any]] = []
    errors: list[str] = []
    for snap in snapshots:
        try:
            results.append(_PARSERS[kind](snap.path.read_bytes(), snap.path.name))
        except SourceFormatError as exc:
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"{snap.path}: cannot be read ({exc.strerror}) — check the file")
    if errors and (kind != "huggingface" or not results):
        return [], "; ".join(errors)
    return results, ("; ".join(errors) or None)


def build_db(snapshot_dir: Path, out_path: Path, overrides: Path | None = None) -> RefreshSummary:
    """Build the benchmark DB at ``out_path`` from the snapshots in ``snapshot_dir``."""
    snapshot_dir, out_path = Path(snapshot_dir), Path(out_path)
    rules = load_alias_rules(overrides) if overrides else AliasRules()
    chosen = find_snapshots(snapshot_dir)
    parsed: dict[str, list[ParseResult[Any]]] = {}
    errors: dict[str, str | None] = {}
    for kind in SOURCES:
        if kind in chosen:
            parsed[kind], errors[kind] = _parse_kind(kind, chosen[kind])
    if not parsed.get("openrouter") and not parsed.get("litellm"):
        detail = "; ".join(e for e in errors.values() if e) or f"none found in {snapshot_dir}"
        raise RefreshError(
            f"no price source could be read ({detail}) — add an openrouter_models_*.json or "
            f"litellm_model_prices_*.json snapshot; the existing DB at {out_path} is unchanged"
        )
    inputs = Inputs(
        openrouter=_records(parsed, "openrouter"),
        litellm=_records(parsed, "litellm"),
        arena=_records(parsed, "lmarena"),
        arena_file=_first_name(parsed, "lmarena"),
        huggingface=_records(parsed, "huggingface"),
        lmsys=_records(parsed, "lmsys"),
        rules=rules,
    )
    assembly = assemble(inputs)
    dates = [s.date for snaps in chosen.values() for s in snaps if s.date and parsed.get(s.kind)]
    built_at = max(dates) if dates else None
    old = _old_rows(out_path)
    stats = tuple(
        _stats(kind, chosen.get(kind, ()), parsed.get(kind), errors.get(kind), assembly, old)
        for kind in SOURCES
    )
    refreshes = [
        benchmarks.RefreshRecord(
            s.source,
            _fetched_at(chosen.get(s.source, ())),
            s.status,
            assembly.rows_by_source.get(s.source, 0),
            s.error,
            s.snapshot,
        )
        for s in stats
    ]
    meta = [("schema_version", str(benchmarks.SCHEMA_VERSION)), ("built_at", built_at or "")]
    meta += [(f"snapshot:{s.source}", s.snapshot or "") for s in stats]
    counts = _write(out_path, assembly, refreshes, meta)
    return RefreshSummary(out_path, built_at, stats, counts, assembly.matches, assembly.misses)


def _records(parsed: dict[str, list[ParseResult[Any]]], kind: str) -> tuple[Any, ...]:
    return tuple(r for result in parsed.get(kind, ()) for r in result.records)


def _first_name(parsed: dict[str, list[ParseResult[Any]]], kind: str) -> str | None:
    results = parsed.get(kind)
    return results[0].name if results else None


def _fetched_at(snaps: Sequence[Snapshot]) -> str | None:
    dates = [s.date for s in snaps if s.date]
    return max(dates) if dates else None


def _stats(
    kind: str,
    snaps: Sequence[Snapshot],
    results: list[ParseResult[Any]] | None,
    error: str | None,
    assembly: Assembly,
    old: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]],
) -> SourceStats:
    names = ", ".join(s.path.name for s in snaps) if len(snaps) <= 2 else f"{len(snaps)} files"
    if not snaps:
        return SourceStats(kind, "missing")
    if not results:
        return SourceStats(kind, "failed", names, error=error)
    new_rows = assembly.keyed_rows.get(kind, {})
    old_rows = old.get(kind, {})
    added = sum(1 for k in new_rows if k not in old_rows)
    updated = sum(1 for k, v in new_rows.items() if k in old_rows and old_rows[k] != v)
    warnings = tuple(str(w) for r in results for w in r.warnings)
    failed = len(warnings) + (1 if error else 0)
    dupes = assembly.duplicates.get(kind, 0)
    if dupes:
        warnings += (f"{dupes} offerings repeat a (provider, model id) already seen; kept first",)
    matched = sum(1 for m in assembly.matches if m.source == kind)
    if kind == "lmsys":  # the table only fills licences of arena-matched models
        matched = assembly.rows_by_source.get(kind, 0)
    fetched = assembly.fetched.get(kind, sum(len(r.records) for r in results))
    return SourceStats(
        source=kind,
        status="ok",
        snapshot=names,
        fetched=fetched,
        added=added,
        updated=updated,
        matched=matched,
        unmatched=sum(1 for m in assembly.misses if m.source == kind),
        new=assembly.new_models.get(kind, 0),
        failed=failed,
        skipped=sum(r.skipped_total for r in results),
        error=error,
        warnings=warnings,
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


def _write(
    out_path: Path,
    assembly: Assembly,
    refreshes: list[benchmarks.RefreshRecord],
    meta: list[tuple[str, str]],
) -> dict[str, int]:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m addon.refresh",
        description="Build the benchmark DB from saved public data snapshots.",
    )
    parser.add_argument("--from", dest="source_dir", required=True, type=Path, metavar="DIR",
                        help="folder of snapshots (openrouter_models_*.json, ...)")  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, metavar="PATH",
                        help="benchmark DB to write (replaced atomically)")  # fmt: skip
    parser.add_argument("--aliases", type=Path, metavar="FILE",
                        help="manual entity-resolution rules (rules/aliases.yaml)")  # fmt: skip
    parser.add_argument("--report", action="store_true",
                        help="also print every match and every unmatched name")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        summary = build_db(args.source_dir, args.out, args.aliases)
    except (RefreshError, AliasRulesError, benchmarks.BenchmarkDBError, OSError,
            sqlite3.Error) as exc:  # fmt: skip
        print(f"refresh failed: {exc}", file=sys.stderr)
        return 1
    if args.report:
        print(summary.format_report())
        print()
    print(summary.format_table())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
