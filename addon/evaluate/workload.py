"""Labelled workloads for `orchestrator eval`: JSONL files, one prompt a line, with every
model's score on it.

    {"id": "mmlu/anatomy/0", "benchmark": "mmlu", "category": "anatomy",
     "messages": [{"role": "user", "content": "..."}],
     "scores": {"openai/gpt-4-1106-preview": 1.0, "mistralai/mixtral-8x7b-instruct-v0.1": 0.0},
     "scale": "correct"}

`scale` is `correct` (scores 0..1, 1 = right) or `judge_1_10` (an LLM judge's 1..10,
normalised here to 0..1 as (score - 1) / 9). Every item of a file must score the same
models. A bad line is an `OrchestratorError` naming the file, the line and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addon.errors import OrchestratorError

SCALES = ("correct", "judge_1_10")


@dataclass(frozen=True)
class Item:
    """One labelled prompt: its id, benchmark, category, chat messages, and each model's
    score normalised to 0..1."""

    id: str
    benchmark: str
    category: str
    messages: tuple[Mapping[str, Any], ...]
    scores: Mapping[str, float]

    @property
    def body(self) -> dict[str, Any]:
        """The chat-completions body this item's request would have."""
        return {"model": "auto", "messages": list(self.messages)}

    @property
    def last_user(self) -> str:
        """The text of the last user message (what the difficulty scorer reads)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return "\n".join(
                        p["text"]
                        for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str)
                    )
        return ""


def normalise(score: float, scale: str) -> float:
    """A raw score on `scale` as 0..1."""
    if scale == "judge_1_10":
        return min(1.0, max(0.0, (score - 1.0) / 9.0))
    return min(1.0, max(0.0, score))


def parse_line(data: Any) -> Item:
    """One item from a parsed JSON line; ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a line must be a JSON object")
    for key in ("id", "benchmark", "messages", "scores"):
        if key not in data:
            raise ValueError(f"missing key {key!r}")
    scale = data.get("scale", "correct")
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    messages = data["messages"]
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise ValueError("`messages` must be a non-empty list of message objects")
    scores = data["scores"]
    if (
        not isinstance(scores, dict)
        or len(scores) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values())
    ):
        raise ValueError("`scores` must map at least two model ids to numbers")
    return Item(
        id=str(data["id"]),
        benchmark=str(data["benchmark"]),
        category=str(data.get("category", "")),
        messages=tuple(messages),
        scores={str(k): normalise(float(v), scale) for k, v in scores.items()},
    )


def read(paths: Iterable[Path | str]) -> list[Item]:
    """Every item of the JSONL files at `paths`, in order (blank lines skipped)."""
    items: list[Item] = []
    models: frozenset[str] | None = None
    for path in paths:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise OrchestratorError(f"{p}: cannot read it ({e})") from None
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is no line end
            if not line.strip():
                continue
            try:
                item = parse_line(json.loads(line))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise OrchestratorError(
                    f"{p}:{n}: {e}; each line must be one item "
                    '{"id", "benchmark", "category", "messages", "scores", "scale"}'
                ) from None
            have = frozenset(item.scores)
            if models is None:
                models = have
            elif have != models:
                raise OrchestratorError(
                    f"{p}:{n}: item {item.id!r} scores {sorted(have)}, the items before it "
                    f"{sorted(models)}; every item must score the same models"
                )
            items.append(item)
    if not items:
        raise OrchestratorError("no items in " + ", ".join(map(str, paths)))
    return items
