"""Embeddings wire format: what a request embeds, vector lengths, dimension checks, usage."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from addon.wire import embeddings
from addon.wire.usage import Usage


def b64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "text-embedding-3-small", "input": "The food was delicious"},
            embeddings.EmbeddingsRequest(("The food was delicious",), 0, 0, 1, None, "float"),
        ),
        (
            {"input": ["a", "bc"], "dimensions": 256, "encoding_format": "base64"},
            embeddings.EmbeddingsRequest(("a", "bc"), 0, 0, 2, 256, "base64"),
        ),
        (
            {"input": [1820, 25, 1070], "encoding_format": "float"},
            embeddings.EmbeddingsRequest((), 1, 3, 1, None, "float"),
        ),
        (
            {"input": [[1, 2], [3, 4, 5], "text"], "dimensions": 0, "encoding_format": "hex"},
            embeddings.EmbeddingsRequest(("text",), 2, 5, 3, None, "float"),
        ),
        (
            {"input": [], "dimensions": True},
            embeddings.EmbeddingsRequest((), 0, 0, 0, None, "float"),
        ),
        ({}, embeddings.EmbeddingsRequest((), 0, 0, 0, None, "float")),
    ],
)
def test_read_request(body: dict[str, Any], expected: embeddings.EmbeddingsRequest) -> None:
    assert embeddings.read_request(body) == expected


def test_chars_and_prompt_text() -> None:
    assert embeddings.read_request({"input": ["ab", "cde"]}).chars == 5
    assert embeddings.prompt_text({"input": ["é", [1]]}) == '["é", [1]]'


@pytest.mark.parametrize(
    ("embedding", "length"),
    [
        ([0.0023064255, -0.009327292, 0.015797347], 3),
        ([], 0),
        (b64([0.5] * 1536), 1536),
        (b64([0.25, -0.5, 1.0]), 3),
        (base64.b64encode(b"\x00" * 6).decode(), None),  # not whole float32 values
        ("not*base64", None),
        ("AAAA=", None),  # strict: padding in the wrong place
        ("é", None),
        (None, None),
        (3, None),
    ],
)
def test_vector_length(embedding: Any, length: int | None) -> None:
    assert embeddings.vector_length(embedding) == length


def answer(*vectors: Any, usage: Any = None) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    usage = usage or {"prompt_tokens": 8, "total_tokens": 8}
    return json.dumps(
        {"object": "list", "data": data[::-1], "model": "text-embedding-3-small", "usage": usage}
    ).encode()


def test_answer_facts_reads_vectors_in_index_order() -> None:
    facts = embeddings.answer_facts(answer([0.1] * 4, b64([0.2] * 3), "bad!"))
    assert facts == embeddings.EmbeddingsAnswer(
        model="text-embedding-3-small", usage=Usage(8, 0), lengths=(4, 3, None)
    )
    assert embeddings.answer_facts(b"[]") is None
    assert embeddings.answer_facts(b"nope") is None


@pytest.mark.parametrize(
    ("body", "expected", "items", "error"),
    [
        (answer([0.1] * 4, [0.2] * 4), 4, 2, None),
        (answer(b64([0.1] * 4), b64([0.2] * 4)), None, None, None),
        (answer([0.1] * 4, [0.2] * 3), 4, 2, "embedding 1 has 3 dimensions, expected 4"),
        (answer([0.1] * 4, [0.2] * 3), None, None, "embedding 1 has 3 dimensions, expected 4"),
        (answer(b64([0.1] * 8)), 256, 1, "embedding 0 has 8 dimensions, expected 256"),
        (answer([0.1]), None, 2, "asked for 2 embeddings, got 1"),
        (answer("??"), None, 1, "embedding 0 is neither a list of floats nor base64 float32"),
    ],
)
def test_dimension_error(body: bytes, expected: int | None, items: int | None, error: str) -> None:
    facts = embeddings.answer_facts(body)
    assert facts is not None and facts.dimension_error(expected, items) == error
