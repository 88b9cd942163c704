"""Request features: what a request needs and how hard it looks. Pure.

Token estimate
    No tokenizer download is possible offline (tiktoken fetches its files at first use), so
    prompt tokens are estimated from text length: ``ceil(chars / 3.5)`` per text part
    (English BPE tokenizers average ~4 characters per token; 3.5 adds a ~15% safety margin),
    plus 4 tokens of framing per message, 3 of reply priming, plus 765 tokens per image (a
    high-detail 512px tile budget) — deliberately on the high side so a context-fit check never admits a
    request that the provider would reject.

Complexity (0..1), from four features, each documented by the term it adds:
    size       0.35 * min(1, log10(prompt_tokens / 100) / 2)   (100 → 0, 10k+ → 0.35)
    reasoning  0.25 if the last user turn asks for proof, analysis, design, step-by-step…
    code       0.15 if it contains code (``` fences, def/class/function/SELECT…)
    structure  0.15 if the request carries tools or a JSON schema; +0.10 for >6 messages
    Classes: simple < 0.33 ≤ medium < 0.66 ≤ complex. The scorer shifts weight from cost to
    quality for complex requests and from quality to cost for simple ones (see scoring).
    Keywords are read from the first and last 1,000 characters of the last user turn.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 3.5
TOKENS_PER_MESSAGE = 4
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
TOKENS_PER_IMAGE = 765
SAMPLE_CHARS = 1000  # head and tail of the last user turn read for keywords

# Keyword features read the words of the last user turn once (a set), plus a few phrases
# and code patterns, each a regex with a literal prefix that only runs when that literal is
# present: linear and cheap even on long prompts.
_WORD = re.compile(r"[a-z0-9][a-z0-9;'-]*")
_CODE_LITERALS = ("```", "#include <", "console.log(", "traceback (most recent call last)", "=>")
_CODE_PATTERNS = (  # (literal, what must follow it), tried only where the literal occurs
    ("def ", re.compile(r"def \w+\(")),
    ("class ", re.compile(r"class \w+[:(]")),
    ("function", re.compile(r"function\s+\w+\s*\(")),
    ("select ", re.compile(r"select\b[^;]{1,200}?\bfrom\b")),
    ("import ", re.compile(r"import \w+")),
)
_REASONING = frozenset(
    [
        "prove",
        "proof",
        "derive",
        "analyze",
        "analyse",
        "design",
        "architect",
        "architecture",
        "tradeoff",
        "tradeoffs",
        "trade-off",
        "trade-offs",
        "compare",
        "evaluate",
        "optimize",
        "optimise",
        "reason",
        "debug",
    ]
)
_REASONING_PHRASES = ("step by step", "step-by-step", "explain why")
_MATH = frozenset(
    ["solve", "integral", "derivative", "equation", "theorem", "probability", "matrix", "calculate"]
)
_MATH_EXPR = re.compile(r"\d\s*[\^*/]\s*\d|\$[^$\n]{1,200}\$")
_CREATIVE = frozenset(["poem", "story", "lyrics", "haiku", "novel", "screenplay", "fiction"])
_SUMMARIZE = frozenset(["summarize", "summarise", "summary", "tldr", "tl;dr"])
_EXTRACT = frozenset(["extract", "parse", "classify", "label"])


def _at_word(low: str, literal: str, rx: re.Pattern[str]) -> bool:
    i = low.find(literal)
    while i >= 0:
        if (i == 0 or not low[i - 1].isalnum()) and rx.match(low, i):
            return True
        i = low.find(literal, i + 1)
    return False


def _has_code(low: str) -> bool:
    return any(lit in low for lit in _CODE_LITERALS) or any(
        _at_word(low, lit, rx) for lit, rx in _CODE_PATTERNS
    )


def _has_math_expr(low: str) -> bool:
    return ("^" in low or "*" in low or "/" in low or "$" in low) and bool(_MATH_EXPR.search(low))


@dataclass(frozen=True)
class RequestFeatures:
    requested_model: str | None
    stream: bool
    prompt_tokens: int
    max_output_tokens: int | None
    needs_tools: bool
    needs_vision: bool
    needs_json_schema: bool
    task: str
    complexity: float
    messages: int

    @property
    def complexity_class(self) -> str:
        if self.complexity < 0.33:
            return "simple"
        if self.complexity < 0.66:
            return "medium"
        return "complex"


def _text_parts(content: Any) -> tuple[list[str], int]:
    """Text pieces and image count of one message's `content`."""
    if isinstance(content, str):
        return [content], 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in ("image_url", "input_image", "image"):
                images += 1
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts, images


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def features(body: dict[str, Any]) -> RequestFeatures:
    """Features of a chat or completions request body (already parsed JSON)."""
    messages = body.get("messages")
    texts: list[str] = []
    images = 0
    n_messages = 0
    last_user = ""
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            n_messages += 1
            t, i = _text_parts(m.get("content"))
            texts.extend(t)
            images += i
            if m.get("role") == "user" and t:
                last_user = "\n".join(t)
            for call in m.get("tool_calls") or []:
                if isinstance(call, dict):
                    texts.append(str(call.get("function", "")))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        texts.append(prompt)
        last_user = prompt
        n_messages = max(n_messages, 1)
    elif isinstance(prompt, list):
        texts.extend(p for p in prompt if isinstance(p, str))
        n_messages = max(n_messages, 1)
    tools = body.get("tools") or body.get("functions")
    tool_chars = len(str(tools)) if tools else 0
    chars = sum(len(t) for t in texts) + tool_chars
    prompt_tokens = (
        estimate_tokens(chars)
        + TOKENS_PER_MESSAGE * n_messages
        + TOKENS_PER_IMAGE * images
        + REPLY_PRIMING
    )

    rf = body.get("response_format")
    needs_json_schema = isinstance(rf, dict) and rf.get("type") == "json_schema"
    max_out = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(max_out, int) or isinstance(max_out, bool) or max_out <= 0:
        max_out = None

    if len(last_user) > 2 * SAMPLE_CHARS:  # keyword features: the head and tail suffice
        last_user = last_user[:SAMPLE_CHARS] + "\n" + last_user[-SAMPLE_CHARS:]
    low = last_user.lower()
    words = set(_WORD.findall(low))
    has_code = _has_code(low)
    task = _task(low, words, has_code)
    size = 0.35 * min(1.0, max(0.0, math.log10(max(prompt_tokens, 1) / 100) / 2))
    complexity = (
        size
        + (0.25 if words & _REASONING or any(p in low for p in _REASONING_PHRASES) else 0.0)
        + (0.15 if has_code else 0.0)
        + (0.15 if (tools or needs_json_schema) else 0.0)
        + (0.10 if n_messages > 6 else 0.0)
    )
    return RequestFeatures(
        requested_model=body.get("model") if isinstance(body.get("model"), str) else None,
        stream=body.get("stream") is True,
        prompt_tokens=prompt_tokens,
        max_output_tokens=max_out,
        needs_tools=bool(tools) or body.get("tool_choice") not in (None, "none"),
        needs_vision=images > 0,
        needs_json_schema=needs_json_schema,
        task=task,
        complexity=round(min(1.0, complexity), 3),
        messages=n_messages,
    )


def _task(low: str, words: set[str], has_code: bool) -> str:
    if has_code:
        return "code"
    if words & _MATH or _has_math_expr(low):
        return "math"
    if words & _CREATIVE:
        return "creative"
    if words & _SUMMARIZE or "key points" in low:
        return "summarize"
    if words & _EXTRACT or "fill in the json" in low:
        return "extraction"
    return "chat"
