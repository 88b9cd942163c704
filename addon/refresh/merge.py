"""One assembly in progress: the canonical models, offerings, matches and misses so far, and
the step that merges each source's records into them (`Merge`).

`addon.refresh.canonical.assemble` runs the steps in the fixed order its docstring gives;
a later step resolves names against everything the earlier ones indexed. Models are kept
as plain dicts while steps fill them in, and become `ModelRecord`s only at the end.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from types import MappingProxyType
from typing import Any

from addon.refresh.model_names import ROUTING_TAGS, DateTag, NameSig, parse_name, strip_prefixes
from addon.refresh.model_orgs import FIRST_PARTY, PROVIDER_OWNER, family_owner, is_org
from addon.refresh.resolve import AliasRules, Match, Method, Miss, NameIndex, settle
from addon.refresh.sources.huggingface import HFModel
from addon.refresh.sources.litellm import LiteLLMModel
from addon.refresh.sources.lmarena import OVERALL, ArenaModelInfo, ArenaScore
from addon.refresh.sources.local import LocalModel
from addon.refresh.sources.openrouter import OpenRouterModel
from addon.store.benchmarks import CategoryRecord, OfferingRecord

_METHOD_RANK = MappingProxyType(
    {Method.MANUAL: 0, Method.EXACT: 1, Method.NORMALIZED: 2, Method.EVIDENCE: 3}
)
_ORG_PREFIX = re.compile(r"^[^:]{1,40}:\s+")


def openrouter_model_id(openrouter_id: str) -> str:
    """Canonical id for an OpenRouter id: routing variants (``:free``) map to the base."""
    base, _, tag = openrouter_id.lower().partition(":")
    return base if tag in ROUTING_TAGS or not tag else f"{base}:{tag}"


class Merge:
    """The canonical models under construction and the name index they are resolved by.

    `models` maps a model id to its fields so far; `offerings` is keyed by (provider,
    provider model id), the first offering of a key winning unless replaced; `matches` and
    `misses` keep the first result per (source, name); `created` lists the names that made a
    new model; `new_models` and `duplicates` count those models and the repeated offerings
    per source. One instance serves one assembly and is then dropped.
    """

    def __init__(self, rules: AliasRules) -> None:
        self.index = NameIndex()
        self.models: dict[str, dict[str, Any]] = {}
        self.offerings: dict[tuple[str, str], OfferingRecord] = {}
        self.matches: dict[tuple[str, str], Match] = {}
        self.created: list[Match] = []
        self.misses: dict[tuple[str, str], Miss] = {}
        self.categories: list[CategoryRecord] = []
        self.hf_owner: dict[str, str] = {}
        self.attached_dates: defaultdict[str, set[DateTag]] = defaultdict(set)
        self.new_models: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.overrides: dict[tuple[str, str], str] = {
            (r.source, r.name): r.model for r in rules.overrides
        }
        never: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        for rule in rules.never:
            never[(rule.source, rule.name)].add(rule.model)
        self.never = {key: frozenset(models) for key, models in never.items()}

    def resolve(self, source: str, name: str) -> Match | Miss:
        """`name` from `source` resolved to a model: a manual override when one names it,
        else the index's match, never one of the pairings a `never` rule forbids."""
        target = self.overrides.get((source, name))
        if target is not None:
            if target in self.models:
                return Match(source, name, target, Method.MANUAL, 100.0)
            reason = f"override target {target} is not a known model — fix rules/aliases.yaml"
            return Miss(source, name, target, None, reason, True)
        return self.index.resolve(source, name, self.never.get((source, name), frozenset()))

    def record(self, result: Match | Miss) -> None:
        """Keep the first result per (source, name). A match's dated name ties its date to
        the model, so a later name with another date cannot take it too (see `settle`)."""
        key = (result.source, result.name)
        if isinstance(result, Match):
            self.matches.setdefault(key, result)
            date = parse_name(result.name).date
            if date is not None:
                self.attached_dates[result.model_id].add(date)
        else:
            self.misses.setdefault(key, result)

    def add_offering(self, offering: OfferingRecord, *, replace: bool = False) -> None:
        """Add `offering`; a repeated (provider, model id) is counted as a duplicate of its
        source and dropped, unless `replace` lets it win."""
        key = (offering.provider, offering.provider_model_id)
        if key in self.offerings and not replace:
            self.duplicates[offering.source] += 1
        else:
            self.offerings[key] = offering

    def openrouter(self, records: tuple[OpenRouterModel, ...]) -> None:
        """Step 1: OpenRouter's ids define the models; their slugs and the HF ids exactly
        one model claims become extra names in the index."""
        hf_claims: defaultdict[str, set[str]] = defaultdict(set)
        hf_spelling: dict[str, str] = {}
        for rec in sorted(records, key=lambda r: r.id):
            model_id = openrouter_model_id(rec.id)
            if model_id not in self.models or rec.id.lower() == model_id:
                name = _ORG_PREFIX.sub("", rec.name).removesuffix(" (free)").strip()
                self.models[model_id] = {
                    "id": model_id, "name": name or model_id, "org": model_id.split("/")[0],
                    "context_tokens": rec.context_length, "slug": rec.canonical_slug,
                }  # fmt: skip
            method = Method.EXACT if rec.id.lower() == model_id else Method.NORMALIZED
            self.record(Match("openrouter", rec.id, model_id, method, 100.0))
            self.add_offering(
                OfferingRecord(
                    model_id, "openrouter", rec.id, rec.input_per_mtok, rec.output_per_mtok,
                    rec.cached_input_per_mtok, rec.context_length, rec.max_completion_tokens,
                    rec.supports_tools, rec.supports_vision, rec.supports_json_schema,
                    rec.supports_reasoning, "openrouter",
                )
            )  # fmt: skip
            if rec.hugging_face_id:
                hf_claims[rec.hugging_face_id.lower()].add(model_id)
                hf_spelling.setdefault(rec.hugging_face_id.lower(), rec.hugging_face_id)
        families = {_name_family(parse_name(model_id)): model_id for model_id in self.models}
        for model_id, model in sorted(self.models.items()):
            self.add_model_names(model_id, model["slug"], families)
        for hf_key, owners in sorted(hf_claims.items()):
            spelling = hf_spelling[hf_key]
            if len(owners) > 1:
                reason = "HF id claimed by several OpenRouter models: " + ", ".join(sorted(owners))
                self.record(Miss("huggingface", spelling, None, None, reason, True))
                continue
            owner = next(iter(owners))
            self.hf_owner[hf_key] = owner
            self.models[owner]["hf_id"] = spelling
            self.index.add(owner, spelling, "hf")
            self.record(Match("huggingface", spelling, owner, Method.EVIDENCE, 100.0))

    def add_model_names(
        self, model_id: str, slug: str | None, families: dict[tuple[object, ...], str]
    ) -> None:
        """Index an OpenRouter model's id and slug. A dated slug of an undated id documents
        which release the id is (`NameIndex.document_release`)."""
        self.index.add(model_id, model_id, "id")
        useful = _useful_slug(model_id, slug, families)
        if useful:
            self.index.add(model_id, useful, "slug", drop_date=True)
        own, listing = parse_name(model_id), parse_name(slug or "")
        if listing.date and own.date is None and _name_family(listing) == _name_family(own):
            self.index.document_release(model_id, listing.date)

    def litellm(self, records: tuple[LiteLLMModel, ...]) -> None:
        """Step 2: LiteLLM entries become offerings of the models they match; entries with
        no candidate form new models, grouped by their strict name key; uncertain ones are
        recorded as misses and get no offering."""
        leftovers: defaultdict[tuple[object, ...], list[LiteLLMModel]] = defaultdict(list)
        ordered = sorted(records, key=lambda r: r.key)
        results = settle(
            self.index,
            [self.resolve("litellm", rec.key) for rec in ordered],
            self.attached_dates,
        )
        for rec, result in zip(ordered, results, strict=True):
            if isinstance(result, Match):
                self.record(result)
                self.add_offering(_litellm_offering(result.model_id, rec))
            elif result.uncertain:
                self.record(result)
            else:
                leftovers[parse_name(rec.key).strict_key()].append(rec)
        groups = [(min(group, key=_representative), group) for group in leftovers.values()]
        for rep, group in sorted(groups, key=lambda pair: _representative(pair[0])):
            model_id = self._new_model_id(rep)
            rep_base = strip_prefixes(rep.key)[0]
            self.models[model_id] = {
                "id": model_id, "name": rep.provider_model_id.split("/")[-1],
                "org": model_id.split("/")[0], "context_tokens": rep.context_tokens, "slug": None,
            }  # fmt: skip
            self.new_models["litellm"] += 1
            for rec in sorted(group, key=lambda r: r.key):
                same = strip_prefixes(rec.key)[0] == rep_base
                method = Method.EXACT if same else Method.NORMALIZED
                match = Match("litellm", rec.key, model_id, method, 100.0)
                self.created.append(match)
                self.add_offering(_litellm_offering(model_id, rec))
                self.index.add(model_id, rec.key, "new")

    def _new_model_id(self, rep: LiteLLMModel) -> str:
        """A fresh "org/slug" id for a model only LiteLLM knows; never reuses an id."""
        _, org, _ = strip_prefixes(rep.key)
        slug = re.sub(r"[:@]+", "-", parse_name(rep.key).base)
        path = rep.provider_model_id.lower().split("/")
        owner = family_owner(slug) or PROVIDER_OWNER.get(rep.provider)
        if owner is None:
            orgs = [o for o in (org, path[0] if len(path) > 1 else None) if is_org(o, rep.provider)]
            owner = orgs[0] if orgs else None
        base_id = candidate = f"{owner or rep.provider}/{slug}"
        serial = 1
        while candidate in self.models:
            serial += 1
            candidate = f"{base_id}-{serial}"
        return candidate

    def arena(
        self,
        files: tuple[tuple[str | None, tuple[ArenaScore, ...]], ...],
        table: tuple[ArenaModelInfo, ...] = (),
    ) -> None:
        """Step 3: arena ratings (overall and per category) attach to the model each name
        matches; when several names match one model, the best-matched name wins. `files`
        are (file name, scores), newest first: a model takes its ratings from the newest
        file that rates it (the file name is recorded as the quality's source); every
        file's names become aliases. A display name (``GPT-4o-2024-08-06``) that LMSYS's
        `table` lists resolves as the key the table gives it (method evidence)."""
        keys = {r.display_name.lower(): r.key for r in table if r.display_name}
        every = sorted({s.model for _, scores in files for s in scores})
        rated: set[str] = set()
        for file_name, scores in files:
            rated |= self._arena_file(scores, file_name, keys, rated, every)

    def _resolve_arena(self, name: str, keys: dict[str, str]) -> Match | Miss:
        key = keys.get(name.lower())
        if key is None or key == name or ("lmarena", name) in self.overrides:
            return self.resolve("lmarena", name)
        via = self.resolve("lmarena", key)
        if isinstance(via, Match):
            return Match("lmarena", name, via.model_id, Method.EVIDENCE, via.score, via.one_sided)
        return self.resolve("lmarena", name)

    def _arena_file(
        self,
        scores: tuple[ArenaScore, ...],
        file_name: str | None,
        keys: dict[str, str],
        rated: set[str],
        every: list[str],
    ) -> set[str]:
        by_name: defaultdict[str, dict[str, ArenaScore]] = defaultdict(dict)
        for score in scores:
            by_name[score.model].setdefault(score.category, score)
        chosen: dict[str, tuple[tuple[Any, ...], str]] = {}
        names = sorted(by_name)
        results = [self._resolve_arena(n, keys) for n in names]
        for name, result in zip(
            names, settle(self.index, results, self.attached_dates, every), strict=True
        ):
            self.record(result)
            if isinstance(result, Match) and result.model_id not in rated:
                rank = (_METHOD_RANK.get(result.method, 4), -result.score, name)
                if result.model_id not in chosen or rank < chosen[result.model_id][0]:
                    chosen[result.model_id] = (rank, name)
        for model_id, (_, name) in sorted(chosen.items()):
            model, ratings = self.models[model_id], by_name[name]
            overall = ratings.get(OVERALL)
            if overall is not None:
                model.update(quality=overall.rating, quality_lo=overall.rating_lo,
                             quality_hi=overall.rating_hi, quality_source=file_name)  # fmt: skip
                _set_license(model, overall.license)
            for category, score in sorted(ratings.items()):
                self.categories.append(
                    CategoryRecord(
                        model_id, category, score.rating, score.rating_lo, score.rating_hi
                    )
                )
        return set(chosen)

    def lmsys(self, table: tuple[ArenaModelInfo, ...]) -> int:
        """Step 4 (run before `huggingface`): LMSYS's table fills in the licence of
        arena-matched models that have none; returns how many it filled."""
        info = {row.key.lower(): row for row in table}
        filled = 0
        for (source, name), match in sorted(self.matches.items()):
            row = info.get(name.lower()) if source == "lmarena" else None
            if row and row.license and self.models[match.model_id].get("license") is None:
                _set_license(self.models[match.model_id], row.license)
                filled += 1
        return filled

    def huggingface(self, records: tuple[HFModel, ...]) -> None:
        """Step 4: Hugging Face files add the HF id, open weights, parameter count and
        licence to the model they match (an HF id claimed in step 1 matches its owner)."""
        ordered = sorted(records, key=lambda r: r.id)
        results: list[Match | Miss] = []
        for rec in ordered:
            owner = self.hf_owner.get(rec.id.lower())
            if owner is not None:
                results.append(Match("huggingface", rec.id, owner, Method.EVIDENCE, 100.0))
            else:
                results.append(self.resolve("huggingface", rec.id))
        for rec, result in zip(
            ordered, settle(self.index, results, self.attached_dates), strict=True
        ):
            self.record(result)
            if isinstance(result, Match):
                model = self.models[result.model_id]
                model.setdefault("hf_id", rec.id)
                model.update(open_weights=True, params_b=rec.params_b or model.get("params_b"))
                if rec.license:
                    model["license"] = rec.license

    def local(self, records: tuple[LocalModel, ...]) -> None:
        """Step 5: a local server's model ids become that provider's offerings at price 0
        (replacing a price map's offering of the same id), of the model they match or else
        of a `local/<id>` model of their own."""
        ordered = sorted(records, key=lambda r: (r.id, r.provider))
        results = settle(
            self.index, [self.resolve("local", r.id) for r in ordered], self.attached_dates
        )
        own: dict[str, str] = {}  # the same unmatched id on two servers is one model
        for rec, result in zip(ordered, results, strict=True):
            if isinstance(result, Match):
                self.record(result)
                model_id = result.model_id
            elif rec.id in own:
                model_id = own[rec.id]
            else:
                if result.uncertain:
                    self.record(result)
                model_id = own[rec.id] = self._local_model_id(rec.id)
                self.models[model_id] = {"id": model_id, "name": rec.id, "org": None,
                                         "context_tokens": rec.context_tokens, "slug": None}  # fmt: skip
                self.new_models["local"] += 1
                self.created.append(Match("local", rec.id, model_id, Method.EXACT, 100.0))
            self.add_offering(
                OfferingRecord(model_id, rec.provider, rec.id, 0.0, 0.0, None, rec.context_tokens,
                               None, None, None, None, None, "local"),
                replace=True,  # the server's own list beats a price map's guess for it
            )  # fmt: skip

    def _local_model_id(self, name: str) -> str:
        """A fresh "local/<name>" id; never reuses an id."""
        base = candidate = "local/" + re.sub(r"[^\w.:@-]+", "-", name.lower()).strip("-")
        serial = 1
        while candidate in self.models:
            serial += 1
            candidate = f"{base}-{serial}"
        return candidate


def _name_family(sig: NameSig) -> tuple[object, ...]:
    return (sig.names, sig.guard_key)


def _useful_slug(
    model_id: str, slug: str | None, families: dict[tuple[object, ...], str]
) -> str | None:
    """OpenRouter's canonical slug as an extra name, when it adds tokens the id lacks.

    Its date is a listing date (``claude-4.5-opus-20251124`` for the 20251101 model), so
    it is dropped; a slug that then looks like another model's id is not used at all.
    """
    if not slug:
        return None
    tag = model_id.partition(":")[2]
    slug = f"{slug}:{tag}" if tag else slug  # ":thinking" slugs lack the variant
    family = _name_family(parse_name(slug))
    if family == _name_family(parse_name(model_id)) or families.get(family, model_id) != model_id:
        return None
    return slug


def _set_license(model: dict[str, Any], license_text: str | None) -> None:
    if license_text and model.get("license") is None:
        model["license"] = license_text
        if model.get("open_weights") is None:
            model["open_weights"] = "propr" not in license_text.lower()  # sic: "Propretary"


def _representative(rec: LiteLLMModel) -> tuple[int, int, str]:
    return (0 if rec.provider in FIRST_PARTY else 1, len(rec.key), rec.key)


def _litellm_offering(model_id: str, rec: LiteLLMModel) -> OfferingRecord:
    return OfferingRecord(
        model_id, rec.provider, rec.provider_model_id, rec.input_per_mtok, rec.output_per_mtok,
        rec.cached_input_per_mtok, rec.context_tokens, rec.max_output_tokens, rec.supports_tools,
        rec.supports_vision, rec.supports_json_schema, rec.supports_reasoning, "litellm",
    )  # fmt: skip
