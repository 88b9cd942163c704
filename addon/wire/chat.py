"""Chat completions (and legacy completions): the text a request asks and an answer gives."""

from __future__ import annotations

import json
from typing import Any


def _choices_text(obj: Any, part: str) -> str:
    """The text of every choice's `part` ("delta" or "message"), or of its legacy `text`."""
    out = []
    for ch in (obj.get("choices") or ()) if isinstance(obj, dict) else ():
        if isinstance(ch, dict):
            holder = ch.get(part)
            piece = holder.get("content") if isinstance(holder, dict) else ch.get("text")
            if isinstance(piece, str):
                out.append(piece)
    return "".join(out)


def delta_text(obj: dict[str, Any]) -> str:
    """The text a streamed chunk (its parsed JSON) adds: chat deltas or legacy `text`."""
    return _choices_text(obj, "delta")


def answer_text(body: bytes) -> str | None:
    """The text of a whole (non-streamed) answer body; None if it is not JSON."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return _choices_text(obj, "message")


def prompt_text(data: dict[str, Any]) -> str:
    """The request's prompt as canonical JSON (messages, or the legacy prompt)."""
    return json.dumps(data.get("messages", data.get("prompt")), sort_keys=True, ensure_ascii=False)


def is_usage_only_chunk(obj: Any) -> bool:
    """The extra chunk `include_usage` adds: empty `choices` and a `usage` object."""
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)
