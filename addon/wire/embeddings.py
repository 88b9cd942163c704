"""Embeddings (`POST /v1/embeddings`): what a request embeds, what an answer gives back.

A request's `input` is one string, a list of strings, one token array (a list of integers)
or a list of token arrays; `dimensions` asks for shorter vectors (text-embedding-3 and
later) and `encoding_format` is "float" (the default) or "base64", in which case each
vector comes back as the base64 of its little-endian float32 values (4 bytes a dimension).
The answer's `usage` has `prompt_tokens` and `total_tokens` (the same number).
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any

import orjson

from addon.wire.usage import Usage

FLOAT32_BYTES = 4
ENCODING_FORMATS = frozenset({"float", "base64"})


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """What an embeddings request asks for, read once from its JSON body.

    `texts` are the string inputs; token-array inputs are counted in `token_arrays` and
    their exact length in `tokens` (they need no estimate). `items` is how many vectors the
    answer must hold.
    """

    texts: tuple[str, ...]
    token_arrays: int
    tokens: int
    items: int
    dimensions: int | None
    encoding_format: str  # "float" or "base64" ("float" when not sent)

    @property
    def chars(self) -> int:
        """Characters of string input, the basis of the size estimate."""
        return sum(map(len, self.texts))


def _is_tokens(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(type(t) is int for t in v)


def read_request(data: dict[str, Any]) -> EmbeddingsRequest:
    """The facts of an embeddings request body (already parsed JSON)."""
    raw = data.get("input")
    inputs: list[Any] = [raw] if isinstance(raw, str) or _is_tokens(raw) else []
    if not inputs and isinstance(raw, list):
        inputs = raw
    texts = tuple(v for v in inputs if isinstance(v, str))
    arrays = [v for v in inputs if _is_tokens(v)]
    dims = data.get("dimensions")
    fmt = data.get("encoding_format")
    return EmbeddingsRequest(
        texts=texts,
        token_arrays=len(arrays),
        tokens=sum(map(len, arrays)),
        items=len(texts) + len(arrays),
        dimensions=dims if type(dims) is int and dims > 0 else None,
        encoding_format=fmt if fmt in ENCODING_FORMATS else "float",
    )


def prompt_text(data: dict[str, Any]) -> str:
    """The request's `input` as canonical JSON, for the ledger."""
    return json.dumps(data.get("input"), sort_keys=True, ensure_ascii=False)


def vector_length(embedding: Any) -> int | None:
    """The dimension of one answer vector: a list of numbers, or the base64 of float32
    values (decoded length / 4); None if it is neither, or the base64 is broken."""
    if isinstance(embedding, list):
        return len(embedding)
    if not isinstance(embedding, str):
        return None
    try:
        n = len(binascii.a2b_base64(embedding, strict_mode=True))
    except (binascii.Error, ValueError):
        return None
    return n // FLOAT32_BYTES if n % FLOAT32_BYTES == 0 else None


@dataclass(frozen=True, slots=True)
class EmbeddingsAnswer:
    """An embeddings answer's facts: model, usage, and each vector's length by `index`."""

    model: str | None
    usage: Usage | None
    lengths: tuple[int | None, ...]  # in `index` order; None where a vector is unreadable

    def dimension_error(self, expected: int | None, items: int | None = None) -> str | None:
        """What is wrong with the vectors for a request that asked for `expected`
        dimensions (None: any, but all alike) and `items` vectors; None if nothing is."""
        if items is not None and len(self.lengths) != items:
            return f"asked for {items} embeddings, got {len(self.lengths)}"
        for i, n in enumerate(self.lengths):
            if n is None:
                return f"embedding {i} is neither a list of floats nor base64 float32"
            want = expected if expected is not None else self.lengths[0]
            if n != want:
                return f"embedding {i} has {n} dimensions, expected {want}"
        return None


def answer_facts(body: bytes) -> EmbeddingsAnswer | None:
    """The facts of an embeddings answer; None if it is not a JSON object."""
    try:
        obj = orjson.loads(body)  # a batch answer can be megabytes of floats
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    data = obj.get("data")
    rows = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    rows.sort(key=lambda d: d["index"] if type(d.get("index")) is int else len(rows))
    model = obj.get("model")
    return EmbeddingsAnswer(
        model=model if isinstance(model, str) else None,
        usage=Usage.from_obj(obj.get("usage")),
        lengths=tuple(vector_length(d.get("embedding")) for d in rows),
    )
