"""Entity resolution: decide which names from different sources denote the same model.

A wrong merge gives a model its neighbour's price, so resolution is conservative:

1. ``addon.model_names.parse_name`` normalizes a name and sorts its tokens into name
   words, versions, sizes, tiers, variants, soft words, a date and a revision.
2. Hard guards must agree exactly: versions, sizes, tiers, variants, and the date/revision
   when both names carry one. Name words are compared with rapidfuzz (ratio >= 90).
3. An undated name may match a dated one (or the reverse) only when that is unambiguous:
   one candidate model, and no sibling with a conflicting date.
4. Anything ambiguous or low-scoring becomes a ``Miss`` with the best candidate, its score
   and a reason, instead of a guess. ``settle`` re-checks dated/undated matches against
   the other dates a source (or an earlier source) lists for the same family.

Manual rules from ``rules/aliases.yaml`` (``AliasRules``: ``overrides`` and ``never``) are
loaded here and applied by ``addon.refresh.canonical`` before any automatic matching.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Set
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rapidfuzz import fuzz, process

from addon.errors import AliasRulesError
from addon.refresh.model_names import (
    NAME_THRESHOLD,
    DateTag,
    GuardKey,
    NameSig,
    guard_conflicts,
    name_similarity,
    parse_name,
    without_date,
)


class Method(StrEnum):
    EXACT = "exact"
    NORMALIZED = "normalized"
    FUZZY = "fuzzy"
    MANUAL = "manual"
    EVIDENCE = "evidence"


ACCEPT = 85.0  # final score needed to accept a match
MARGIN = 3.0  # a runner-up (other model) this close makes the match ambiguous
_SOFT_PENALTY = 3.0
_ONE_SIDED_PENALTY = 5.0


@dataclass(frozen=True, slots=True)
class KnownName:
    """A name that identifies a canonical model; ``origin`` says where it came from."""

    model_id: str
    name: str
    sig: NameSig
    origin: str  # "id", "slug", "hf", "new"


@dataclass(frozen=True, slots=True)
class Match:
    source: str
    name: str
    model_id: str
    method: Method
    score: float
    one_sided: bool = False  # only one of the two names carried a date/revision


@dataclass(frozen=True, slots=True)
class Miss:
    source: str
    name: str
    best_candidate: str | None
    score: float | None
    reason: str
    uncertain: bool  # True: a plausible candidate exists but is not safe to take


@dataclass(frozen=True, slots=True)
class _Candidate:
    known: KnownName
    score: float
    one_sided: bool
    exact_terms: bool


_ORIGIN_RANK = MappingProxyType({"id": 0, "new": 1, "hf": 2, "slug": 3})


class NameIndex:
    """The canonical names resolution matches against. Built per refresh, then discarded."""

    def __init__(self) -> None:
        self._by_guard: dict[GuardKey, list[KnownName]] = {}
        self._by_base: dict[str, set[str]] = {}
        self._known: list[KnownName] = []
        self._keys: list[str] = []
        self._dates: dict[str, set[DateTag]] = {}

    def add(self, model_id: str, name: str, origin: str, *, drop_date: bool = False) -> None:
        sig = parse_name(name)
        if drop_date:
            sig = without_date(sig)
        known = KnownName(model_id, name, sig, origin)
        self._by_guard.setdefault(sig.guard_key, []).append(known)
        if origin in ("id", "new"):
            self._by_base.setdefault(sig.base, set()).add(model_id)
        self._known.append(known)
        self._keys.append(sig.key)
        if sig.date:
            self._dates.setdefault(model_id, set()).add(sig.date)

    def dates_of(self, model_id: str) -> frozenset[DateTag]:
        return frozenset(self._dates.get(model_id, ()))

    def resolve(self, source: str, name: str, never: frozenset[str] = frozenset()) -> Match | Miss:
        sig = parse_name(name)
        exact = self._by_base.get(sig.base, set()) - never
        if len(exact) == 1:
            return Match(source, name, next(iter(exact)), Method.EXACT, 100.0)
        candidates, conflicted = self._candidates(sig, never)
        if not candidates:
            return self._miss_without_candidate(source, name, sig, never)
        firm = [c for c in candidates if not c.one_sided]
        if firm:
            candidates = firm
        else:
            models = sorted({c.known.model_id for c in candidates})
            # A dated name that cannot safely take an undated model is a model of its own
            # (uncertain=False); an undated name facing several dated ones is a real doubt.
            distinct = sig.date is not None
            if len(models) > 1:
                reason = "ambiguous: only dated/undated candidates " + ", ".join(models)
                return self._uncertain(source, name, candidates, reason, not distinct)
            if sig.date and conflicted - set(models):
                others = ", ".join(sorted(conflicted - set(models)))
                reason = f"undated candidate but the family has other dated versions ({others})"
                return self._uncertain(source, name, candidates, reason, not distinct)
        ranked = sorted(candidates, key=lambda c: (-c.score, _ORIGIN_RANK[c.known.origin]))
        best = ranked[0]
        if best.score < ACCEPT:
            return self._uncertain(source, name, ranked, f"low score {best.score:.1f}")
        for other in ranked[1:]:
            if other.known.model_id != best.known.model_id:
                if best.score - other.score < MARGIN and not self._org_breaks_tie(sig, best, other):
                    reason = f"ambiguous with {other.known.model_id} ({other.score:.1f})"
                    return self._uncertain(source, name, ranked, reason)
                break
        if best.known.origin == "hf":
            method = Method.EVIDENCE
        elif best.exact_terms:
            method = Method.NORMALIZED
        else:
            method = Method.FUZZY
        score = round(best.score, 1)
        return Match(source, name, best.known.model_id, method, score, best.one_sided)

    def _candidates(self, sig: NameSig, never: frozenset[str]) -> tuple[list[_Candidate], set[str]]:
        per_model: dict[str, _Candidate] = {}
        conflicted: set[str] = set()
        for known in self._by_guard.get(sig.guard_key, ()):
            if known.model_id in never:
                continue
            other = known.sig
            ratio = name_similarity(sig, other)
            if ratio < NAME_THRESHOLD:
                continue
            if sig.revision and other.revision and sig.revision != other.revision:
                continue
            if sig.date and other.date and not sig.date.compatible(other.date):
                conflicted.add(known.model_id)
                continue
            both_dated = bool(sig.date and other.date)
            soft_diff = sig.soft ^ other.soft
            if "preview" in soft_diff and not both_dated:
                continue
            one_sided = bool(sig.date) != bool(other.date) or (
                bool(sig.revision) != bool(other.revision)
            )
            score = ratio - _SOFT_PENALTY * len(soft_diff) - _ONE_SIDED_PENALTY * one_sided
            exact_terms = ratio == 100 and not soft_diff and not one_sided
            candidate = _Candidate(known, score, one_sided, exact_terms)
            current = per_model.get(known.model_id)
            if current is None or (candidate.score, -_ORIGIN_RANK[known.origin]) > (
                current.score,
                -_ORIGIN_RANK[current.known.origin],
            ):
                per_model[known.model_id] = candidate
        for model_id in conflicted & per_model.keys():
            if per_model[model_id].one_sided:
                del per_model[model_id]  # a dated name of this model contradicts the date
        return list(per_model.values()), conflicted - per_model.keys()

    @staticmethod
    def _org_breaks_tie(sig: NameSig, best: _Candidate, other: _Candidate) -> bool:
        return bool(sig.org) and best.known.sig.org == sig.org != other.known.sig.org

    @staticmethod
    def _uncertain(
        source: str, name: str, ranked: list[_Candidate], reason: str, uncertain: bool = True
    ) -> Miss:
        best = max(ranked, key=lambda c: c.score)
        return Miss(source, name, best.known.model_id, round(best.score, 1), reason, uncertain)

    def _miss_without_candidate(
        self, source: str, name: str, sig: NameSig, never: frozenset[str]
    ) -> Miss:
        found = process.extractOne(sig.key, self._keys, scorer=fuzz.token_sort_ratio)
        if found is None:
            return Miss(source, name, None, None, "no candidates", False)
        known = self._known[found[2]]
        if known.model_id in never:
            return Miss(source, name, known.model_id, None, "forbidden by never rule", False)
        problems = guard_conflicts(sig, known.sig) or ("date family conflict",)
        reason = "guards differ: " + "; ".join(problems)
        return Miss(source, name, known.model_id, round(found[1], 1), reason, False)


def settle(
    index: NameIndex,
    results: list[Match | Miss],
    attached: Mapping[str, Set[DateTag]] | None = None,
) -> list[Match | Miss]:
    """Undo dated/undated matches that the sources themselves show to be ambiguous.

    One source listing ``gpt-audio-mini-2025-10-06`` and ``gpt-audio-mini-2025-12-15``
    means neither may take the undated ``gpt-audio-mini``; an undated ``mistral-small``
    may not take ``mistral-small-2603`` when the same source also lists ``-2503``; and a
    dated name may not take an undated model that an earlier source already tied to
    another date (``attached``: model id -> dates of names matched to it so far).
    Such matches become ``Miss(uncertain=False)``: a distinct model, not a guess.
    """
    attached = attached or {}
    family_dates: dict[tuple[object, ...], set[DateTag]] = {}
    sigs = [parse_name(r.name) for r in results]
    for sig in sigs:
        if sig.date:
            family_dates.setdefault((sig.name_text, sig.guard_key), set()).add(sig.date)
    settled: list[Match | Miss] = []
    for result, sig in zip(results, sigs, strict=True):
        if isinstance(result, Match) and result.one_sided:
            dates = set(family_dates.get((sig.name_text, sig.guard_key), set()))
            if sig.date:
                dates |= attached.get(result.model_id, set())
            anchors = {sig.date} if sig.date else set(index.dates_of(result.model_id))
            clash = sorted(
                str(d) for d in dates if anchors and not any(d.compatible(a) for a in anchors)
            )
            if clash:
                reason = (
                    f"other dated versions are known ({', '.join(clash)}); "
                    f"matching {result.model_id} across dated/undated names would be a guess"
                )
                result = Miss(
                    result.source, result.name, result.model_id, result.score, reason, False
                )
        settled.append(result)
    return settled


class AliasRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Literal["litellm", "lmarena", "huggingface", "local"]
    name: str = Field(min_length=1)
    model: str = Field(min_length=1)


class AliasRules(BaseModel):
    """Manual entity-resolution rules: ``overrides`` pin, ``never`` forbid."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    overrides: tuple[AliasRule, ...] = ()
    never: tuple[AliasRule, ...] = ()


def load_alias_rules(path: Path) -> AliasRules:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AliasRulesError(f"{path}: cannot be read ({exc.strerror}) — fix the path") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise AliasRulesError(f"{path}{where}: invalid YAML ({problem}) — fix the syntax") from exc
    try:
        rules = AliasRules.model_validate(doc or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise AliasRulesError(
            f"{path}: {problems} — each rule is {{source: litellm|lmarena|huggingface|local, "
            "name: ..., model: ...}"
        ) from exc
    seen = Counter((r.source, r.name) for r in rules.overrides)
    dupes = sorted(f"{s}:{n}" for (s, n), count in seen.items() if count > 1)
    if dupes:
        raise AliasRulesError(f"{path}: overrides lists {', '.join(dupes)} twice — keep one")
    return rules
