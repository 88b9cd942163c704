"""What a refresh tells the operator: the per-source summary table and the match report.

``RefreshSummary.format_table`` is printed at the end of every run (columns: fetched,
added, updated, matched, unmatched, new, failed, skipped); ``format_report``
(``--report``) lists every match and every unmatched name with its best candidate and score.

Statuses: ``ok`` fresh data; ``partial`` fresh data, some repos/providers failed (their
previous files reused); ``failed`` nothing fresh, previous data reused when there was any;
``kept`` not refreshed this run, previous data reused; ``missing`` no data at all;
``disabled`` ``enabled: false`` in rules/sources.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from addon.refresh.resolve import Match, Miss

FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SourceStats:
    """One source's line in the refresh summary."""

    source: str
    status: str
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
    kept: str | None = None  # which previous snapshots were reused, if any


@dataclass(frozen=True, slots=True)
class RefreshSummary:
    out_path: Path
    built_at: str | None
    sources: tuple[SourceStats, ...]
    counts: dict[str, int] = field(default_factory=dict)
    matches: tuple[Match, ...] = ()
    misses: tuple[Miss, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(s.status != FAILED for s in self.sources)

    def stats(self, source: str) -> SourceStats:
        return next(s for s in self.sources if s.source == source)

    def format_table(self) -> str:
        head = ["source", "status", "fetched", "added", "updated", "matched", "unmatched"]
        head += ["new", "failed", "skipped"]
        rows = [head]
        for s in self.sources:
            counts = (s.fetched, s.added, s.updated, s.matched, s.unmatched, s.new, s.failed)
            rows.append([s.source, s.status, *map(str, counts), str(s.skipped)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]  # fmt: skip
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("")
        written = ", ".join(f"{n} {table}" for table, n in self.counts.items())
        lines.append(f"wrote {self.out_path} (built_at {self.built_at}): {written}")
        for s in self.sources:
            if s.error:
                lines.append(f"{s.source}: {s.error}")
            if s.kept and s.status != "kept":
                lines.append(f"{s.source}: {s.kept}")
            lines.extend(f"{s.source}: warning: {w}" for w in s.warnings[:5])
            if len(s.warnings) > 5:
                lines.append(f"{s.source}: ... {len(s.warnings) - 5} more warnings")
        lines.extend(f"note: {n}" for n in self.notes)
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
