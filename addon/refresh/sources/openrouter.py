"""OpenRouter model list (``GET https://openrouter.ai/api/v1/models``).

Prices are decimal strings per token; ``"-1"`` marks router pseudo-models
(``openrouter/auto``), which are not offerings. Ids starting with ``~`` are floating
aliases ("latest Claude Haiku") that point at whichever model is newest; they are not a
fixed model either. Both are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from addon.refresh.sources import (
    ParseResult,
    SourceFormatError,
    SourceWarning,
    as_int,
    counted,
    load_json,
    nonempty_str,
    per_million,
    to_float,
)

SOURCE = "openrouter"
_TOOLS = frozenset({"tools"})
_JSON_SCHEMA = frozenset({"structured_outputs", "response_format"})
_REASONING = frozenset({"reasoning", "include_reasoning"})


@dataclass(frozen=True, slots=True)
class OpenRouterModel:
    id: str
    name: str
    canonical_slug: str | None
    hugging_face_id: str | None
    context_length: int | None
    max_completion_tokens: int | None
    input_per_mtok: float | None
    output_per_mtok: float | None
    cached_input_per_mtok: float | None
    supports_tools: bool
    supports_vision: bool
    supports_json_schema: bool
    supports_reasoning: bool
    created: int | None = None


def parse(raw: bytes | str, name: str) -> ParseResult[OpenRouterModel]:
    doc = load_json(raw, name)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise SourceFormatError(
            name,
            'expected an object with a "data" list (the /api/v1/models response)',
            "save the raw response body of https://openrouter.ai/api/v1/models",
        )
    records: list[OpenRouterModel] = []
    warnings: list[SourceWarning] = []
    skipped: Counter[str] = Counter()
    for index, item in enumerate(data):
        label = f"{name}: data[{index}]"
        if not isinstance(item, dict):
            warnings.append(SourceWarning(label, "not an object"))
            continue
        model_id = nonempty_str(item.get("id"))
        if model_id is None:
            warnings.append(SourceWarning(label, "missing id"))
            continue
        label = f"{name}: {model_id}"
        if model_id.startswith("~"):
            skipped["floating alias (~id)"] += 1
            continue
        pricing = item.get("pricing")
        if not isinstance(pricing, dict):
            warnings.append(SourceWarning(label, "missing pricing"))
            continue
        prompt = per_million(pricing.get("prompt"))
        completion = per_million(pricing.get("completion"))
        if prompt is None or completion is None:
            detail = f"prompt={pricing.get('prompt')!r}, completion={pricing.get('completion')!r}"
            warnings.append(SourceWarning(label, "unreadable prompt/completion price", detail))
            continue
        if prompt < 0 or completion < 0:
            skipped["pseudo-model (price -1)"] += 1
            continue
        cached = per_million(pricing.get("input_cache_read"))
        if cached is not None and cached < 0:
            cached = None
        records.append(_record(item, model_id, prompt, completion, cached))
    return ParseResult(SOURCE, name, tuple(records), tuple(warnings), counted(skipped))


def _record(
    item: dict[str, Any],
    model_id: str,
    prompt: Decimal,
    completion: Decimal,
    cached: Decimal | None,
) -> OpenRouterModel:
    top = _obj(item.get("top_provider"))
    arch = _obj(item.get("architecture"))
    params = {p for p in item.get("supported_parameters") or () if isinstance(p, str)}
    inputs = {m for m in arch.get("input_modalities") or () if isinstance(m, str)}
    context = as_int(top.get("context_length")) or as_int(item.get("context_length"))
    return OpenRouterModel(
        id=model_id,
        name=nonempty_str(item.get("name")) or model_id,
        canonical_slug=nonempty_str(item.get("canonical_slug")),
        hugging_face_id=nonempty_str(item.get("hugging_face_id")),
        context_length=context,
        max_completion_tokens=as_int(top.get("max_completion_tokens")),
        input_per_mtok=to_float(prompt),
        output_per_mtok=to_float(completion),
        cached_input_per_mtok=to_float(cached),
        supports_tools=bool(params & _TOOLS),
        supports_vision="image" in inputs,
        supports_json_schema=bool(params & _JSON_SCHEMA),
        supports_reasoning=bool(params & _REASONING),
        created=as_int(item.get("created")),
    )


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
