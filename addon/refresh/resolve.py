"""Entity resolution: decide which names from different sources denote the same model.

A wrong merge gives a model its neighbour's price, so resolution is conservative:

1. ``addon.model_names.parse_name`` normalizes a name and sorts its tokens into name
   words, versions, sizes, tiers, variants, soft words, a date and a revision.
2. Hard guards must agree exactly: versions, sizes, tiers, variants, and the date/revision
   when both names carry one. Name words are compared with rapidfuzz (ratio >= 90).
3. An undated name never takes a dated release (it often means an older release than the
   dated one it fuzzes to: ``command-r-plus`` is not ``command-r-plus-08-2024``) unless a
   source documents the alias, i.e. the model also carries that undated name (its
   OpenRouter id, slug or HF id, an older snapshot's id, a manual override). A dated name
   (an API version) may join an undated product id: when a source documents the product's
   release date (OpenRouter's canonical slug, up to ``LISTING_LAG_DAYS`` after it) the dates
   must agree; when none does, only if that is unambiguous (one candidate model, no sibling
   with a conflicting date).
4. Anything ambiguous or low-scoring becomes a ``Miss`` with the best candidate, its score
   and a reason, instead of a guess. ``settle`` re-checks dated/undated matches against
   the other dates a source (or an earlier source) lists for the same family.

Manual rules from ``rules/aliases.yaml`` (``AliasRules``: ``overrides`` and ``never``) are
defined and loaded in ``addon.refresh.alias_rules`` (re-exported here) and applied by
``addon.refresh.merge`` before any automatic matching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from rapidfuzz import fuzz, process

from addon.errors import AliasRulesError as AliasRulesError
from addon.refresh.alias_rules import AliasRule as AliasRule
from addon.refresh.alias_rules import AliasRules as AliasRules
from addon.refresh.alias_rules import load_alias_rules as load_alias_rules
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
class Refusal:
    """A near candidate a name did not take, and why (``orchestrator resolve`` shows them)."""

    model_id: str
    name: str  # the candidate's name that came near
    reason: str


@dataclass(frozen=True, slots=True)
class _Candidate:
    known: KnownName
    score: float
    one_sided: bool
    exact_terms: bool
    documented: bool = False  # a source's release date for the model agrees with the name's


_ORIGIN_RANK = MappingProxyType({"id": 0, "new": 1, "hf": 2, "slug": 3, "alias": 4})


class NameIndex:
    """The canonical names resolution matches against. Built per refresh, then discarded."""

    def __init__(self) -> None:
        self._by_guard: dict[GuardKey, list[KnownName]] = {}
        self._by_base: dict[str, set[str]] = {}
        self._known: list[KnownName] = []
        self._keys: list[str] = []
        self._dates: dict[str, set[DateTag]] = {}
        self._released: dict[str, set[DateTag]] = {}

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

    def document_release(self, model_id: str, listed: DateTag) -> None:
        """A source lists the (undated) model `model_id` as the release of date `listed`
        (OpenRouter's canonical slug): a dated name joins it only if its date fits."""
        self._released.setdefault(model_id, set()).add(listed)

    def dates_of(self, model_id: str) -> frozenset[DateTag]:
        return frozenset(self._dates.get(model_id, ()))

    def resolve(self, source: str, name: str, never: frozenset[str] = frozenset()) -> Match | Miss:
        sig = parse_name(name)
        exact = self._by_base.get(sig.base, set()) - never
        if len(exact) == 1:
            return Match(source, name, next(iter(exact)), Method.EXACT, 100.0)
        refused: dict[str, Refusal] = {}
        candidates, conflicted = self._candidates(sig, never, refused)
        if not candidates and refused:
            first = next(iter(refused.values()))
            return Miss(source, name, first.model_id, None, first.reason, False)
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
        if best.known.origin == "hf" or best.documented:
            method = Method.EVIDENCE
        elif best.exact_terms:
            method = Method.NORMALIZED
        else:
            method = Method.FUZZY
        score = round(best.score, 1)
        return Match(source, name, best.known.model_id, method, score, best.one_sided)

    def refusals(self, name: str, limit: int = 5, near: float = 70.0) -> list[Refusal]:
        """The models whose names come nearest to `name` (rapidfuzz token-sort ratio of the
        canonical keys >= `near`) and the reason each was not taken (`resolve`'s "refused"
        column): a guard that differs, the dated/undated rule, a never rule."""
        sig = parse_name(name)
        refused: dict[str, Refusal] = {}
        self._candidates(sig, frozenset(), refused)
        found = process.extract(
            sig.key, self._keys, scorer=fuzz.token_sort_ratio, limit=limit * 4, score_cutoff=near
        )
        for _, _, position in found:
            known = self._known[position]
            problems = guard_conflicts(sig, known.sig)
            if problems and known.model_id not in refused:
                reason = "guards differ: " + "; ".join(problems)
                refused[known.model_id] = Refusal(known.model_id, known.name, reason)
        return list(refused.values())[:limit]

    def _candidates(
        self, sig: NameSig, never: frozenset[str], refused: dict[str, Refusal] | None = None
    ) -> tuple[list[_Candidate], set[str]]:
        per_model: dict[str, _Candidate] = {}
        conflicted: set[str] = set()
        why: dict[str, Refusal] = {} if refused is None else refused

        def refuse(known: KnownName, reason: str) -> None:
            why.setdefault(known.model_id, Refusal(known.model_id, known.name, reason))

        for known in self._by_guard.get(sig.guard_key, ()):
            if known.model_id in never:
                refuse(known, "forbidden by a never rule (rules/aliases.yaml)")
                continue
            other = known.sig
            ratio = name_similarity(sig, other)
            if ratio < NAME_THRESHOLD:
                continue
            if sig.revision and other.revision and sig.revision != other.revision:
                refuse(known, f"revision {sig.revision} vs {other.revision}")
                continue
            if sig.date and other.date and not self._dates_agree(sig.date, known):
                conflicted.add(known.model_id)
                refuse(known, f"date {sig.date} vs {other.date}")
                continue
            if other.date and not sig.date:
                refuse(known, f"undated name vs the dated release {known.name}; no source "
                              "documents which release the undated name means")  # fmt: skip
                continue
            documented = False
            if sig.date and not other.date and known.model_id in self._released:
                listed = sorted(self._released[known.model_id], key=str)
                if not any(sig.date.listed_by(d) for d in listed):
                    conflicted.add(known.model_id)
                    shown = ", ".join(map(str, listed))
                    refuse(known, f"date {sig.date} vs {shown}, the release a source documents "
                                  f"for {known.model_id}")  # fmt: skip
                    continue
                documented = True
            both_dated = bool(sig.date and other.date)
            soft_diff = sig.soft ^ other.soft
            if "preview" in soft_diff and not both_dated:
                refuse(known, "preview vs release")
                continue
            one_sided = (bool(sig.date) != bool(other.date) and not documented) or (
                bool(sig.revision) != bool(other.revision)
            )
            score = ratio - _SOFT_PENALTY * len(soft_diff) - _ONE_SIDED_PENALTY * one_sided
            exact_terms = ratio == 100 and not soft_diff and not one_sided
            candidate = _Candidate(known, score, one_sided, exact_terms, documented)
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

    def _dates_agree(self, date: DateTag, known: KnownName) -> bool:
        """Both names are dated: the same release, or (for a slug, which carries the
        listing date) a release listed shortly after its date."""
        other = known.sig.date
        assert other is not None
        return date.compatible(other) or (known.origin == "slug" and date.listed_by(other))

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
        problems = guard_conflicts(sig, known.sig)
        if problems:
            reason = "guards differ: " + "; ".join(problems)
        elif known.sig.date and not sig.date:
            reason = (f"undated name; {known.model_id} is a dated release and no source "
                      "documents the alias")  # fmt: skip
        else:
            reason = "dates conflict with every candidate of the family"
        return Miss(source, name, known.model_id, round(found[1], 1), reason, False)


def settle(
    index: NameIndex,
    results: list[Match | Miss],
    attached: Mapping[str, Set[DateTag]] | None = None,
    family: Iterable[str] = (),
) -> list[Match | Miss]:
    """Undo dated/undated matches that the sources themselves show to be ambiguous.

    One source listing ``gpt-audio-mini-2025-10-06`` and ``gpt-audio-mini-2025-12-15``
    means neither may take the undated ``gpt-audio-mini``; an undated ``mistral-small``
    may not take ``mistral-small-2603`` when the same source also lists ``-2503``; and a
    dated name may not take an undated model that an earlier source already tied to
    another date (``attached``: model id -> dates of names matched to it so far).
    Such matches become ``Miss(uncertain=False)``: a distinct model, not a guess. `family`
    names more names of the same source (its older files) whose dates count too.
    """
    attached = attached or {}
    family_dates: dict[tuple[object, ...], set[DateTag]] = {}
    sigs = [parse_name(r.name) for r in results]
    for sig in [*sigs, *map(parse_name, family)]:
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
