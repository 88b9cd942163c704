"""Which canonical model a name denotes, answered from a benchmark DB (``orchestrator resolve``).

A name the refresh saw is answered as the refresh decided it: its ``aliases`` row (method and
score as recorded), a model id itself, or its ``unmatched`` row (best candidate and why it was
refused). Any other name is resolved now by the same matcher (``addon.refresh.resolve``) over
the DB's names: model ids, Hugging Face ids and every recorded alias; a dated alias recorded
for an undated model counts as a documented release date of that model. Either way the answer
lists the near candidates that were refused and why (a guard that differs, the dated/undated
rule, a never rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addon.refresh.model_names import parse_name
from addon.refresh.resolve import Match, NameIndex, Refusal
from addon.store import benchmarks

ANY_SOURCE = "query"  # the source a name is resolved as when --source is not given


@dataclass(frozen=True, slots=True)
class Answer:
    """What one name resolves to. `via` says how: ``alias`` (recorded by the refresh),
    ``model`` (a canonical id), ``unmatched`` (the refresh refused it), ``index`` (resolved
    now) or ``none``. `model_id` is None when nothing was taken; `reason` says why then."""

    name: str
    source: str | None
    model_id: str | None
    model_name: str | None
    method: str | None
    score: float | None
    via: str
    reason: str | None = None
    refused: tuple[Refusal, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "model": self.model_id,
            "model_name": self.model_name, "method": self.method, "score": self.score,
            "via": self.via, "reason": self.reason,
            "refused": [{"model": r.model_id, "name": r.name, "reason": r.reason}
                        for r in self.refused],
        }  # fmt: skip


class Lookup:
    """The names of one benchmark DB, indexed once for any number of questions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        models = benchmarks.read_table(path, "models")
        aliases = benchmarks.read_table(path, "aliases")
        unmatched = benchmarks.read_table(path, "unmatched")
        self.names = {row[0]: row[1] for row in models}
        self.aliases: dict[tuple[str, str], tuple[str, str, float]] = {
            (src, name): (model, method, score) for src, name, model, method, score in aliases
        }
        self.by_name: dict[str, list[tuple[str, str]]] = {}
        for src, name in self.aliases:
            self.by_name.setdefault(name.lower(), []).append((src, name))
        self.unmatched = {(row[0], row[1]): row for row in unmatched}
        self.index = NameIndex()
        for row in models:
            self.index.add(row[0], row[0], "id")
            if row[12]:
                self.index.add(row[0], row[12], "hf")
        for (_, name), (model, _, _) in sorted(self.aliases.items()):
            self.index.add(model, name, "alias")
            listed = parse_name(name).date
            if listed and parse_name(model).date is None:
                self.index.document_release(model, listed)

    def answer(self, name: str, source: str | None = None) -> Answer:
        """`name` (as `source` calls it, any source when None) resolved, with the near
        candidates refused."""
        got = self._recorded(name, source)
        taken = got.model_id
        refused = tuple(r for r in self.index.refusals(name) if r.model_id != taken)
        return Answer(got.name, got.source, taken, got.model_name, got.method, got.score, got.via,
                      got.reason, refused)  # fmt: skip

    def _recorded(self, name: str, source: str | None) -> Answer:
        keys = [(s, n) for s, n in self.by_name.get(name.lower(), ()) if source in (None, s)]
        keys.sort(key=lambda k: (k[1] != name, k[0]))  # exact spelling first
        if keys:
            src, spelled = keys[0]
            model, method, score = self.aliases[(src, spelled)]
            return Answer(name, src, model, self.names.get(model), method, score, "alias")
        model_id = next((m for m in self.names if m.lower() == name.lower()), None)
        if model_id is not None:
            return Answer(name, source, model_id, self.names[model_id], "exact", 100.0, "model")
        for (src, spelled), row in sorted(self.unmatched.items()):
            if spelled.lower() == name.lower() and source in (None, src):
                reason = f"the refresh left it unmatched: {row[4]}"
                return Answer(name, src, None, None, None, row[3], "unmatched", reason)
        result = self.index.resolve(source or ANY_SOURCE, name)
        if isinstance(result, Match):
            model = result.model_id
            return Answer(name, source, model, self.names.get(model), str(result.method),
                          result.score, "index")  # fmt: skip
        best = f" (best candidate {result.best_candidate})" if result.best_candidate else ""
        return Answer(name, source, None, None, None, result.score, "none", result.reason + best)
