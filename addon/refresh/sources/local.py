"""A local provider's model list (``GET {base_url}/models`` of a provider with
``local: true``: Ollama, vLLM, llama.cpp, LM Studio, ...).

The OpenAI list shape ``{"object": "list", "data": [{"id": ..., "owned_by": ...}]}``.
Context length is read where servers put it: vLLM's ``max_model_len``, a plain
``context_length``, or llama.cpp's ``meta.n_ctx_train``. Everything a local model costs
is 0; its quality comes only from matching it to a known model.
"""

from __future__ import annotations

from dataclasses import dataclass

from addon.refresh.sources import (
    ParseResult,
    SourceFormatError,
    SourceWarning,
    as_int,
    load_json,
    nonempty_str,
)

SOURCE = "local"


@dataclass(frozen=True, slots=True)
class LocalModel:
    provider: str  # the provider's name in orchestrator.yaml
    id: str  # what goes into the request body's "model"
    owned_by: str | None
    context_tokens: int | None


def parse(raw: bytes | str, name: str, provider: str) -> ParseResult[LocalModel]:
    doc = load_json(raw, name)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise SourceFormatError(
            name,
            'expected an object with a "data" list (the OpenAI /v1/models response)',
            f"check that provider {provider}'s base_url ends in /v1 (GET {{base_url}}/models)",
        )
    records: list[LocalModel] = []
    warnings: list[SourceWarning] = []
    for index, item in enumerate(data):
        label = f"{name}: data[{index}]"
        model_id = nonempty_str(item.get("id")) if isinstance(item, dict) else None
        if not isinstance(item, dict) or model_id is None:
            warnings.append(SourceWarning(label, "missing id"))
            continue
        meta = item.get("meta")
        context = (
            as_int(item.get("max_model_len"))
            or as_int(item.get("context_length"))
            or (as_int(meta.get("n_ctx_train")) if isinstance(meta, dict) else None)
        )
        records.append(LocalModel(provider, model_id, nonempty_str(item.get("owned_by")), context))
    return ParseResult(SOURCE, name, tuple(records), tuple(warnings))
