"""Hugging Face Hub model API (``GET https://huggingface.co/api/models/<repo_id>``).

One snapshot file holds one model. Default fields carry the licence (``cardData.license``
or a ``license:`` tag) and the parameter count (``safetensors.total``, the sum over all
dtypes — note that packed quantized weights, e.g. gpt-oss's U8 MXFP4 blocks, are counted
as stored elements). They carry no context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from addon.refresh.sources import (
    ParseResult,
    SourceFormatError,
    SourceWarning,
    as_int,
    load_json,
    nonempty_str,
)

SOURCE = "huggingface"


@dataclass(frozen=True, slots=True)
class HFModel:
    id: str
    license: str | None
    params: int | None
    gated: bool
    pipeline_tag: str | None
    model_type: str | None

    @property
    def params_b(self) -> float | None:
        return None if self.params is None else round(self.params / 1e9, 3)


def parse(raw: bytes | str, name: str) -> ParseResult[HFModel]:
    doc = load_json(raw, name)
    if not isinstance(doc, dict):
        raise SourceFormatError(
            name,
            "expected the JSON object of /api/models/<repo_id>",
            "save the raw response body of https://huggingface.co/api/models/<repo_id>",
        )
    model_id = nonempty_str(doc.get("id")) or nonempty_str(doc.get("modelId"))
    if model_id is None or "/" not in model_id:
        warning = SourceWarning(name, "missing repo id", f"id={doc.get('id')!r}")
        return ParseResult(SOURCE, name, (), (warning,))
    warnings: list[SourceWarning] = []
    params = _params(doc.get("safetensors"))
    if params is None and doc.get("safetensors") is not None:
        warnings.append(SourceWarning(name, "unreadable safetensors parameter count"))
    config = doc.get("config")
    if not isinstance(config, dict):
        config = {}
    record = HFModel(
        id=model_id,
        license=_license(doc),
        params=params,
        gated=doc.get("gated") not in (False, None, "false"),
        pipeline_tag=nonempty_str(doc.get("pipeline_tag")),
        model_type=nonempty_str(config.get("model_type")),
    )
    return ParseResult(SOURCE, name, (record,), tuple(warnings))


def _params(safetensors: object) -> int | None:
    if not isinstance(safetensors, dict):
        return None
    total = as_int(safetensors.get("total"))
    if total:
        return total
    by_dtype = safetensors.get("parameters")
    if isinstance(by_dtype, dict):
        counts = [as_int(v) for v in by_dtype.values()]
        if counts and all(c is not None for c in counts):
            return sum(c for c in counts if c is not None)
    return None


def _license(doc: dict[str, Any]) -> str | None:
    card = doc.get("cardData")
    if isinstance(card, dict):
        value = card.get("license")
        if isinstance(value, list):
            value = value[0] if value else None
        text = nonempty_str(value)
        if text:
            return text
    for tag in doc.get("tags") or ():
        if isinstance(tag, str) and tag.startswith("license:"):
            return tag.removeprefix("license:") or None
    return None
