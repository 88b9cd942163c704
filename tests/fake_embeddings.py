"""The fake upstream's embeddings API (`POST /v1/embeddings`).

Each input (a string, or a token array) gets a vector derived from its CRC32, so equal
inputs embed alike; `dimensions` sets its length (8 when not sent), and with
`encoding_format: "base64"` it is sent as the base64 of its little-endian float32 values.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import orjson

DEFAULT_DIMENSIONS = 8


def vector(item: Any, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The fake embedding of one input: 4 bits of its CRC32 per value, in [-0.5, 0.5]."""
    seed = zlib.crc32(orjson.dumps(item))
    return [((seed >> ((j * 4) % 32)) & 0xF) / 15.0 - 0.5 for j in range(dimensions)]


def body(model: str, req: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    """The answer to an embeddings request."""
    raw = req.get("input", "")
    single = isinstance(raw, str) or (raw and isinstance(raw[0], int))  # text or token list
    inputs = [raw] if single else list(raw or [""])
    dims = req.get("dimensions")
    dims = dims if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0 else None
    data = []
    for i, item in enumerate(inputs):
        vec = vector(item, dims or DEFAULT_DIMENSIONS)
        emb: Any = vec
        if req.get("encoding_format") == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
