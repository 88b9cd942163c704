"""Token usage in an answer (JSON body or SSE chunk), and the model that answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer, as the provider reported them (missing ones are 0)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # part of prompt_tokens written to the cache (Anthropic's cache_creation_input_tokens)
    cache_write_tokens: int = 0

    @classmethod
    def from_obj(cls, u: Any) -> Usage | None:
        """Read an answer's `usage` object (chat/completions or Responses field names);
        None when it is not an object."""
        if not isinstance(u, dict):
            return None

        def num(v: Any) -> int:
            return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

        ptd = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
        ctd = u.get("completion_tokens_details") or u.get("output_tokens_details") or {}
        return cls(
            prompt_tokens=num(u.get("prompt_tokens", u.get("input_tokens"))),
            completion_tokens=num(u.get("completion_tokens", u.get("output_tokens"))),
            cached_tokens=num(ptd.get("cached_tokens")) if isinstance(ptd, dict) else 0,
            reasoning_tokens=num(ctd.get("reasoning_tokens")) if isinstance(ctd, dict) else 0,
        )


def answer_facts(body: bytes) -> tuple[Usage | None, str | None]:
    """Usage and model of a whole JSON answer, parsed once."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    model = obj.get("model")
    return Usage.from_obj(obj.get("usage")), model if isinstance(model, str) else None
