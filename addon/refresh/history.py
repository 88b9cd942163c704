"""Older OpenRouter snapshots: the ids a source listed before still name models clients ask
for (``anthropic/claude-3.7-sonnet``, ``mistralai/ministral-3b``), so they are resolved too.

The newest snapshot wins for values; an older one contributes names. An older id that is a
routing variant of a current model (``:free``, ``:extended``) or that resolves to one becomes
an alias of it (source ``openrouter``). One that resolves to nothing is a model of its own,
with the older snapshot's name and context but no offering: OpenRouter no longer serves it,
so routing to it would fail, yet LiteLLM's and the arena's names for it have a home and an
undated older id (``mistralai/ministral-3b``) keeps its price map entries off the dated
release that replaced it (``mistralai/ministral-3b-2512``). Uncertain ids go to ``unmatched``.
"""

from __future__ import annotations

from addon.refresh.merge import Merge, openrouter_model_id
from addon.refresh.resolve import Match, Method, settle
from addon.refresh.sources.openrouter import OpenRouterModel


def openrouter_history(build: Merge, older: tuple[OpenRouterModel, ...], current: set[str]) -> None:
    """Step 1b: the ids of older OpenRouter snapshots (newest first) that the newest lacks.
    `current` holds the newest snapshot's ids."""
    first: dict[str, OpenRouterModel] = {}
    for rec in older:
        if rec.id not in current:
            first.setdefault(rec.id, rec)
    pending: list[OpenRouterModel] = []
    for oid in sorted(first):
        base = openrouter_model_id(oid)
        if base in build.models:
            method = Method.EXACT if base == oid.lower() else Method.NORMALIZED
            build.record(Match("openrouter", oid, base, method, 100.0))
        else:
            pending.append(first[oid])
    results = settle(
        build.index, [build.resolve("openrouter", r.id) for r in pending], build.attached_dates
    )
    created: list[OpenRouterModel] = []
    for rec, result in zip(pending, results, strict=True):
        if isinstance(result, Match):
            build.record(result)
            continue
        if result.uncertain:
            build.record(result)
            continue
        model_id = openrouter_model_id(rec.id)
        if model_id in build.models:  # a variant of an older id made a model just above
            build.record(Match("openrouter", rec.id, model_id, Method.NORMALIZED, 100.0))
            continue
        name = rec.name.split(": ", 1)[-1].removesuffix(" (free)").strip()
        build.models[model_id] = {
            "id": model_id, "name": name or model_id, "org": model_id.split("/")[0],
            "context_tokens": rec.context_length, "slug": rec.canonical_slug,
        }  # fmt: skip
        build.new_models["openrouter"] += 1
        method = Method.EXACT if rec.id.lower() == model_id else Method.NORMALIZED
        build.created.append(Match("openrouter", rec.id, model_id, method, 100.0))
        build.add_model_names(model_id, rec.canonical_slug, {})
        created.append(rec)
    _claim_hf_ids(build, created)


def _claim_hf_ids(build: Merge, records: list[OpenRouterModel]) -> None:
    """The `hugging_face_id` of the models just made from older ids: evidence, as for the
    newest snapshot's, when no other model claims that HF id."""
    claims: dict[str, set[str]] = {}
    spelling: dict[str, str] = {}
    for rec in records:
        if rec.hugging_face_id:
            key = rec.hugging_face_id.lower()
            claims.setdefault(key, set()).add(openrouter_model_id(rec.id))
            spelling.setdefault(key, rec.hugging_face_id)
    for key, owners in sorted(claims.items()):
        if len(owners) > 1 or key in build.hf_owner:
            continue  # claimed twice, or already a newer model's: no evidence either way
        owner = next(iter(owners))
        build.hf_owner[key] = owner
        build.models[owner]["hf_id"] = spelling[key]
        build.index.add(owner, spelling[key], "hf")
        build.record(Match("huggingface", spelling[key], owner, Method.EVIDENCE, 100.0))
