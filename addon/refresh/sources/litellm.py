"""LiteLLM's published price map (``model_prices_and_context_window.json``).

A flat ``{model_key: spec}`` object; costs are floats per token. Only ``mode: chat``
entries, and ``mode: responses`` entries that list ``/v1/chat/completions`` among their
endpoints, are offerings. ``sample_spec`` documents the fields and is not a model;
``ft:`` keys are fine-tuning price templates, not requestable models.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from addon.refresh.sources import (
    ParseResult,
    SourceFormatError,
    SourceWarning,
    as_flag,
    as_int,
    counted,
    load_json,
    nonempty_str,
    per_million,
    to_float,
)

SOURCE = "litellm"
_CHAT_ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class LiteLLMModel:
    key: str
    provider: str
    provider_model_id: str
    mode: str
    input_per_mtok: float | None
    output_per_mtok: float | None
    cached_input_per_mtok: float | None
    context_tokens: int | None
    max_output_tokens: int | None
    supports_tools: bool | None
    supports_vision: bool | None
    supports_json_schema: bool | None
    supports_reasoning: bool | None
    deprecation_date: str | None = None


def provider_model_id(key: str, provider: str) -> str:
    """The request-body model string: the key minus a ``provider/`` prefix naming the provider."""
    prefix = provider + "/"
    return key[len(prefix) :] if key.startswith(prefix) else key


def parse(raw: bytes | str, name: str) -> ParseResult[LiteLLMModel]:
    doc = load_json(raw, name)
    if not isinstance(doc, dict):
        raise SourceFormatError(
            name,
            "expected a JSON object mapping model keys to specs",
            "use litellm's model_prices_and_context_window.json unchanged",
        )
    records: list[LiteLLMModel] = []
    warnings: list[SourceWarning] = []
    skipped: Counter[str] = Counter()
    for key, spec in doc.items():
        label = f"{name}: {key}"
        if key == "sample_spec":
            skipped["sample_spec (documentation)"] += 1
            continue
        if not isinstance(spec, dict):
            warnings.append(SourceWarning(label, "spec is not an object"))
            continue
        mode = spec.get("mode")
        if not _is_chat(mode, spec):
            skipped[f"mode {mode or 'missing'}"] += 1
            continue
        if key.startswith("ft:"):
            skipped["fine-tune template (ft:)"] += 1
            continue
        provider = nonempty_str(spec.get("litellm_provider"))
        if provider is None:
            warnings.append(SourceWarning(label, "missing litellm_provider"))
            continue
        records.append(_record(key, provider, str(mode), spec))
    return ParseResult(SOURCE, name, tuple(records), tuple(warnings), counted(skipped))


def _is_chat(mode: object, spec: dict[str, Any]) -> bool:
    if mode == "chat":
        return True
    if mode == "responses":
        endpoints = spec.get("supported_endpoints")
        return isinstance(endpoints, list) and _CHAT_ENDPOINT in endpoints
    return False


def _price(spec: dict[str, Any], field: str) -> float | None:
    value = per_million(spec.get(field))
    return None if value is None or value < 0 else to_float(value)


def _record(key: str, provider: str, mode: str, spec: dict[str, Any]) -> LiteLLMModel:
    context = as_int(spec.get("max_input_tokens")) or as_int(spec.get("max_tokens"))
    return LiteLLMModel(
        key=key,
        provider=provider,
        provider_model_id=provider_model_id(key, provider),
        mode=mode,
        input_per_mtok=_price(spec, "input_cost_per_token"),
        output_per_mtok=_price(spec, "output_cost_per_token"),
        cached_input_per_mtok=_price(spec, "cache_read_input_token_cost"),
        context_tokens=context,
        max_output_tokens=as_int(spec.get("max_output_tokens")),
        supports_tools=as_flag(spec.get("supports_function_calling")),
        supports_vision=as_flag(spec.get("supports_vision")),
        supports_json_schema=as_flag(spec.get("supports_response_schema")),
        supports_reasoning=as_flag(spec.get("supports_reasoning")),
        deprecation_date=nonempty_str(spec.get("deprecation_date")),
    )
