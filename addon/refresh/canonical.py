"""Assemble parsed source records into canonical models, offerings and aliases.

Order matters and is fixed:

1. OpenRouter ids define the canonical models (``:free``/``:exacto``-style routing variants
   are offerings of their base model; ``:thinking`` is its own model). Their canonical
   slugs and ``hugging_face_id`` values become extra names; an HF id is evidence only when
   exactly one model claims it; a dated slug of an undated id documents its release date.
   Ids only older snapshots list become aliases, or models without offerings
   (``addon.refresh.history``).
2. LiteLLM chat entries attach to those models. Entries with no plausible candidate form
   new models, grouped only with entries whose names agree token for token; uncertain
   ones go to ``unmatched`` and get no offering (a wrong merge would misprice them).
3. LMArena names attach quality; the best-matched name per model wins, from the newest
   file that rates the model; older files' names become aliases. A display name LMSYS's
   table lists resolves as its key.
4. Hugging Face files add licence, parameter count and the HF id; LMSYS's table fills in
   licences for arena keys.
5. Local providers' ``/models`` ids become offerings of that provider at price 0: of the
   model they match, or of a model of their own (``local/<id>``, no quality) otherwise.

Manual rules (``rules/aliases.yaml``, ``addon.refresh.resolve.AliasRules``) win over
everything: ``overrides`` pin a name to a model, ``never`` forbids one pairing.

Each step is a method of ``addon.refresh.merge.Merge``; this module runs them and flattens
the result into the records the benchmark DB stores, with the counts the summary reports.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import astuple, dataclass, field
from typing import Any

from addon.refresh.history import openrouter_history
from addon.refresh.merge import Merge
from addon.refresh.model_orgs import family, params_from_name
from addon.refresh.resolve import AliasRules, Match, Miss
from addon.refresh.sources.huggingface import HFModel
from addon.refresh.sources.litellm import LiteLLMModel
from addon.refresh.sources.lmarena import ArenaModelInfo, ArenaScore
from addon.refresh.sources.local import LocalModel
from addon.refresh.sources.openrouter import OpenRouterModel
from addon.store.benchmarks import (
    AliasRecord,
    CategoryRecord,
    ModelRecord,
    OfferingRecord,
    UnmatchedRecord,
)


@dataclass(frozen=True, slots=True)
class Inputs:
    """Every source's parsed records for one assembly, and the manual alias rules.

    `arena_file` names the LMArena file the ratings came from (kept as `quality_source`).
    `openrouter_older` holds older OpenRouter snapshots' records and `arena_older` older
    arena files as (file name, scores), newest first: they add names, and fill values
    only where the newer ones have none (arena ratings).
    """

    openrouter: tuple[OpenRouterModel, ...] = ()
    openrouter_older: tuple[OpenRouterModel, ...] = ()
    arena_older: tuple[tuple[str, tuple[ArenaScore, ...]], ...] = ()
    litellm: tuple[LiteLLMModel, ...] = ()
    arena: tuple[ArenaScore, ...] = ()
    arena_file: str | None = None
    huggingface: tuple[HFModel, ...] = ()
    lmsys: tuple[ArenaModelInfo, ...] = ()
    local: tuple[LocalModel, ...] = ()
    rules: AliasRules = field(default_factory=AliasRules)


@dataclass(frozen=True, slots=True)
class Assembly:
    """The canonical tables for the benchmark DB, and what the refresh summary reports.

    `matches` holds the first match per (source, name), `misses` the names that never
    matched, `created` the names that made a model of their own. `fetched` counts each source's
    records, `new_models` the models a source created, `duplicates` its repeated offerings,
    `rows_by_source` the DB rows it contributed. `keyed_rows` maps a source to its rows by
    key (an offering's (provider, model id), a model's (id,)), to diff against the previous
    DB.
    """

    models: tuple[ModelRecord, ...]
    categories: tuple[CategoryRecord, ...]
    offerings: tuple[OfferingRecord, ...]
    aliases: tuple[AliasRecord, ...]
    unmatched: tuple[UnmatchedRecord, ...]
    matches: tuple[Match, ...]
    misses: tuple[Miss, ...]
    created: tuple[Match, ...]
    fetched: dict[str, int]
    new_models: dict[str, int]
    duplicates: dict[str, int]
    rows_by_source: dict[str, int]
    keyed_rows: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]


def _model_record(model: dict[str, Any]) -> ModelRecord:
    hf_id = model.get("hf_id")
    open_weights = True if hf_id else model.get("open_weights")
    params = model.get("params_b")
    if params is None and open_weights:
        params = params_from_name(model["id"])
    return ModelRecord(
        id=model["id"], name=model["name"], org=model.get("org"), family=family(model["id"]),
        context_tokens=model.get("context_tokens"), quality=model.get("quality"),
        quality_lo=model.get("quality_lo"), quality_hi=model.get("quality_hi"),
        quality_source=model.get("quality_source"), open_weights=open_weights,
        params_b=params, license=model.get("license"), hf_id=hf_id,
    )  # fmt: skip


def assemble(inputs: Inputs) -> Assembly:
    """Merge every source's records in the fixed order above into the DB's tables; the
    same inputs always give the same tables, in the same order."""
    build = Merge(inputs.rules)
    build.openrouter(inputs.openrouter)
    openrouter_history(build, inputs.openrouter_older, {r.id for r in inputs.openrouter})
    build.litellm(inputs.litellm)
    build.arena(((inputs.arena_file, inputs.arena), *inputs.arena_older), inputs.lmsys)
    lmsys_rows = build.lmsys(inputs.lmsys)
    build.huggingface(inputs.huggingface)
    build.local(inputs.local)
    older_arena = [scores for _, scores in inputs.arena_older]
    models = tuple(_model_record(m) for _, m in sorted(build.models.items()))
    offerings = tuple(o for _, o in sorted(build.offerings.items()))
    matches = tuple(m for _, m in sorted(build.matches.items()))
    aliases = [AliasRecord(m.source, m.name, m.model_id, str(m.method), m.score) for m in matches]
    aliases += [AliasRecord(m.source, m.name, m.model_id, str(m.method), m.score)
                for m in build.created]  # fmt: skip
    misses = tuple(m for key, m in sorted(build.misses.items()) if key not in build.matches)
    unmatched = tuple(
        UnmatchedRecord(m.source, m.name, m.best_candidate, m.score, m.reason) for m in misses
    )
    keyed: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = defaultdict(dict)
    for offering in offerings:
        row = astuple(offering)
        keyed[offering.source][(offering.provider, offering.provider_model_id)] = row
    for model in models:
        if model.quality is not None:
            keyed["lmarena"][(model.id,)] = (model.quality, model.quality_lo, model.quality_hi)
        if model.hf_id is not None:
            keyed["huggingface"][(model.id,)] = (model.params_b, model.license, model.hf_id)
    return Assembly(
        models=models,
        categories=tuple(sorted(build.categories, key=lambda c: (c.model_id, c.category))),
        offerings=offerings,
        aliases=tuple(sorted(aliases, key=lambda a: (a.source, a.source_name))),
        unmatched=unmatched,
        matches=matches,
        misses=misses,
        created=tuple(build.created),
        fetched={
            "openrouter": len({r.id for r in (*inputs.openrouter, *inputs.openrouter_older)}),
            "litellm": len(inputs.litellm),
            "lmarena": len({s.model for f in (inputs.arena, *older_arena) for s in f}),
            "huggingface": len(inputs.huggingface),
            "lmsys": len(inputs.lmsys),
            "local": len(inputs.local),
        },
        new_models=dict(build.new_models),
        duplicates=dict(build.duplicates),
        rows_by_source={
            "openrouter": sum(1 for o in offerings if o.source == "openrouter"),
            "litellm": sum(1 for o in offerings if o.source == "litellm"),
            "lmarena": sum(1 for m in models if m.quality is not None),
            "huggingface": len(keyed["huggingface"]),
            "lmsys": lmsys_rows,
            "local": sum(1 for o in offerings if o.source == "local"),
        },
        keyed_rows=dict(keyed),
    )
