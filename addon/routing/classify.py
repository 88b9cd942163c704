"""Request features: what a request needs and how hard it looks. Pure.

Token estimate
    No tokenizer download is possible offline (tiktoken fetches its files at first use), so
    prompt tokens are estimated from text length: ``ceil(chars / 3.5)`` per text part
    (English BPE tokenizers average ~4 characters per token; 3.5 adds a ~15% safety margin),
    plus 4 tokens of framing per message, 3 of reply priming, plus 765 tokens per image (a
    high-detail 512px tile budget) — deliberately on the high side so a context-fit check
    never admits a request that the provider would reject. Tools and tool calls count as the
    text of their Python repr; its length is bounded from above without building it (see
    `addon.routing.reprlen`).

Complexity (0..1), from four features, each documented by the term it adds:
    size       0.35 * min(1, log10(prompt_tokens / 100) / 2)   (100 → 0, 10k+ → 0.35)
    reasoning  0.25 if the last user turn asks for proof, analysis, design, step-by-step…
    code       0.15 if it contains code (``` fences, def/class/function/SELECT…)
    structure  0.15 if the request carries tools or a JSON schema; +0.10 for >6 messages
    Classes: simple < 0.33 ≤ medium < 0.66 ≤ complex. The scorer shifts weight from cost to
    quality for complex requests and from quality to cost for simple ones (see scoring).

Learned complexity (`complexity: learned`, the default): given a `difficulty` model, the
    size, reasoning and code terms are replaced by the learned scorer's estimate that a
    stronger model helps, mapped to 0..1 (`addon.routing.difficulty`); the structure terms
    (tools or a JSON schema +0.15, more than six messages +0.10) are kept, since the
    benchmark data it learned from has neither.

Per API, from the pure wire readers: chat and completions read `messages` / `prompt` (below);
Responses (`wire.responses.read_request`) its instructions and input items, Messages
(`wire.messages.read_request`) its system prompt and messages, both with the same
estimate (a turn is a message; a file or document adds an image's 765 tokens, its size is
unknown); embeddings count their string inputs' characters plus token-array inputs
exactly, no framing, task "embedding". The requested model is read once, by the caller.

Built-in tools: a Responses request offering a tool the provider runs itself (any `type`
but function/custom/namespace: web_search, file_search, code_interpreter, computer_use,
image_generation, mcp, local_shell…) needs `tools` of the model, and `hosted_tools` names
those types: the dispatcher serves it only at providers whose host is the OpenAI API
(`HOSTED_TOOL_HOSTS`) or the host the client addressed (where it meant them to run); no key
declares another host yet. Anthropic's server tools need `tools` only: every provider that
speaks Messages is taken to run them.

Keywords, phrases and code patterns are read from the first and last 1,000 characters of
the last user turn, ignoring the case of ASCII letters. A keyword counts as a whole word:
the characters just before and after it are not ASCII letters or digits, so "Prove:",
"(design)", "re-design", "story's" and "trade-offs" count, and "improve", "reasonable",
"unsolved" and "labeled" do not. Phrases ("step by step", "key points"…) and code literals
(```, "=>", "console.log("…) count anywhere. A code prefix (def, class, function, select,
import) counts where it starts a word (no letter or digit before it) and its pattern
follows ("def f(", not "undef f(").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ahocorasick_rs import AhoCorasick

from addon.routing.difficulty import DifficultyModel
from addon.routing.difficulty import complexity as learned_complexity
from addon.routing.difficulty import probability as difficulty_of
from addon.routing.reprlen import repr_len as _repr_len
from addon.wire.embeddings import EmbeddingsRequest
from addon.wire.messages import MessagesRequest
from addon.wire.responses import ResponsesRequest

CHARS_PER_TOKEN = 3.5
TOKENS_PER_MESSAGE = 4
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
TOKENS_PER_IMAGE = 765
SAMPLE_CHARS = 1000  # head and tail of the last user turn read for keywords
HOSTED_TOOL_HOSTS = frozenset({"api.openai.com"})  # run Responses' built-in tools

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

# Categories are named like the tasks they imply, plus "reasoning" (a complexity term).
_KEYWORDS = (
    ("reasoning", _REASONING),
    ("math", _MATH),
    ("creative", _CREATIVE),
    ("summarize", _SUMMARIZE),
    ("extraction", _EXTRACT),
)
_PHRASES = (
    ("reasoning", _REASONING_PHRASES),
    ("summarize", ("key points",)),
    ("extraction", ("fill in the json",)),
    ("code", _CODE_LITERALS),
)
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_DECISIVE = frozenset(["code", "reasoning"])  # once both are found, nothing else matters

# How a hit of one pattern counts: its category, whether it is a keyword (word boundaries
# apply), and for a code prefix the regex that must match where it starts.
_Rule = tuple[str, bool, re.Pattern[str] | None]


def _build() -> tuple[AhoCorasick, tuple[_Rule, ...]]:
    """One Aho-Corasick automaton over every pattern, and the rule of each pattern."""
    rules: dict[str, _Rule] = {}
    entries: list[tuple[str, _Rule]] = [
        (w, (cat, True, None)) for cat, words in _KEYWORDS for w in sorted(words)
    ]
    entries += [(p, (cat, False, None)) for cat, phrases in _PHRASES for p in phrases]
    entries += [(lit, ("code", False, rx)) for lit, rx in _CODE_PATTERNS]
    for pattern, rule in entries:
        if pattern in rules:
            raise ValueError(f"classify: pattern {pattern!r} is listed twice")
        rules[pattern] = rule
    return AhoCorasick(list(rules)), tuple(rules.values())


_AUTOMATON, _RULES = _build()


def _categories(low: str) -> set[str]:
    """The categories whose keyword, phrase or code pattern occurs in `low` (see _ascii_lower).

    The automaton reports every occurrence of every pattern, overlapping ones included
    ("trade-off" inside "trade-offs"), in one pass in Rust; Python only checks each hit.
    That is ~3 ns a character plus ~0.2 µs a hit (a 2,000-character sample of prose has
    a handful; a run of "=>" or backticks, ~1,000).
    """
    found: set[str] = set()
    n = len(low)
    for i, start, end in _AUTOMATON.find_matches_as_indexes(low, overlapping=True):
        category, is_keyword, rx = _RULES[i]
        if category in found:
            continue
        if is_keyword:
            if (start and low[start - 1] in _WORD_CHARS) or (end < n and low[end] in _WORD_CHARS):
                continue
        elif rx is not None and ((start and low[start - 1].isalnum()) or not rx.match(low, start)):
            continue
        found.add(category)
        if found >= _DECISIVE:
            break
    return found


def _ascii_lower(text: str) -> str:
    """`text` with its ASCII letters lowercased, same length; a lone surrogate becomes "?".

    Every pattern is ASCII, and ``str.lower()`` costs ~4 ns a character on non-ASCII text;
    lowering the UTF-8 bytes costs a third of that. ("?" is, like a lone surrogate, neither
    a letter, a digit nor a space, so no rule reads it differently.)
    """
    if text.isascii():
        return text.lower()
    return text.encode("utf-8", "replace").lower().decode("utf-8")


def _has_math_expr(low: str) -> bool:
    return ("^" in low or "*" in low or "/" in low or "$" in low) and bool(_MATH_EXPR.search(low))


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What routing reads of one request body: the model asked for, whether it streams,
    the estimated prompt tokens and the output cap asked for (tokens), what it needs of a
    model, its task and its complexity (0..1), and how many messages it has."""

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
    hosted_tools: tuple[str, ...] = ()  # built-in tool types the provider must run (sorted)
    difficulty: float | None = None  # the learned scorer's p (0..1); None under keyword

    @property
    def complexity_class(self) -> str:
        """The class the scorer adjusts weights by: `complexity` cut at 0.33 and 0.66 into
        "simple", "medium" and "complex"."""
        if self.complexity < 0.33:
            return "simple"
        if self.complexity < 0.66:
            return "medium"
        return "complex"


def _text_parts(content: list[Any]) -> tuple[list[str], int]:
    """Text pieces and image count of a multi-part message `content`."""
    texts: list[str] = []
    images = 0
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
    """Tokens estimated for `chars` characters of text (see the module docstring)."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def features(body: dict[str, Any], *, requested_model: str | None,
             difficulty: DifficultyModel | None = None) -> RequestFeatures:  # fmt: skip
    """Features of a chat or completions request body (already parsed JSON); the requested
    model is the one `wire.request.parse_request` read from it (read once, carried along);
    `difficulty` the learned scorer, None for the keyword heuristic."""
    messages = body.get("messages")
    chars = 0
    images = 0
    n_messages = 0
    last_user: str | list[str] = ""  # a list of parts is joined only once, at the end
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            n_messages += 1
            content = m.get("content")
            if isinstance(content, str):
                chars += len(content)
                if m.get("role") == "user":
                    last_user = content
            elif isinstance(content, list):
                texts, i = _text_parts(content)
                chars += sum(map(len, texts))
                images += i
                if texts and m.get("role") == "user":
                    last_user = texts
            calls = m.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, dict):
                        fn = call.get("function", "")
                        chars += len(fn) if isinstance(fn, str) else _repr_len(fn)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
        last_user = prompt
        n_messages = max(n_messages, 1)
    elif isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
        n_messages = max(n_messages, 1)
    tools = body.get("tools") or body.get("functions")
    if tools:
        chars += _repr_len(tools)
    prompt_tokens = _framed(chars, n_messages, images)
    rf = body.get("response_format")
    needs_json_schema = isinstance(rf, dict) and rf.get("type") == "json_schema"
    max_out = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(max_out, int) or isinstance(max_out, bool) or max_out <= 0:
        max_out = None
    if isinstance(last_user, list):
        last_user = "\n".join(last_user)
    return _features(
        requested_model, body.get("stream") is True, prompt_tokens, max_out, last_user,
        n_messages, structured=bool(tools) or needs_json_schema,
        needs_tools=bool(tools) or body.get("tool_choice") not in (None, "none"),
        needs_vision=images > 0, needs_json_schema=needs_json_schema, difficulty=difficulty,
    )  # fmt: skip


def _framed(chars: int, turns: int, images: int) -> int:
    """The prompt-token estimate of `chars` characters in `turns` turns with `images`."""
    framing = TOKENS_PER_MESSAGE * turns + TOKENS_PER_IMAGE * images + REPLY_PRIMING
    return estimate_tokens(chars) + framing


def responses_features(r: ResponsesRequest, *, requested_model: str | None,
                       difficulty: DifficultyModel | None = None) -> RequestFeatures:  # fmt: skip
    """Features of an OpenAI Responses request (`wire.responses.read_request`)."""
    hosted = tuple(sorted(r.builtin_tools))
    return _features(
        requested_model, r.stream, _framed(r.chars, r.turns, r.images + r.files),
        r.max_output_tokens, r.last_user, r.turns,
        structured=r.function_tools or bool(hosted) or r.needs_json_schema,
        needs_tools=r.needs_tools, needs_vision=r.needs_vision,
        needs_json_schema=r.needs_json_schema, hosted_tools=hosted, difficulty=difficulty,
    )  # fmt: skip


def messages_features(r: MessagesRequest, *, requested_model: str | None,
                      difficulty: DifficultyModel | None = None) -> RequestFeatures:  # fmt: skip
    """Features of an Anthropic Messages (or count_tokens) request
    (`wire.messages.read_request`)."""
    return _features(
        requested_model, r.stream, _framed(r.chars, r.turns, r.images + r.documents),
        r.max_tokens, r.last_user, r.turns, structured=r.needs_tools or r.needs_json_schema,
        needs_tools=r.needs_tools, needs_vision=r.needs_vision,
        needs_json_schema=r.needs_json_schema, difficulty=difficulty,
    )  # fmt: skip


def embeddings_features(r: EmbeddingsRequest, *, requested_model: str | None) -> RequestFeatures:
    """Features of an embeddings request (`wire.embeddings.read_request`): its size only."""
    return RequestFeatures(
        requested_model=requested_model, stream=False,
        prompt_tokens=estimate_tokens(r.chars) + r.tokens, max_output_tokens=None,
        needs_tools=False, needs_vision=False, needs_json_schema=False, task="embedding",
        complexity=0.0, messages=r.items,
    )  # fmt: skip


def _features(requested_model: str | None, stream: bool, prompt_tokens: int, max_out: int | None,
              last_user: str, turns: int, *, structured: bool, needs_tools: bool,
              needs_vision: bool, needs_json_schema: bool, hosted_tools: tuple[str, ...] = (),
              difficulty: DifficultyModel | None = None) -> RequestFeatures:  # fmt: skip
    """The features of a request of any API: task and complexity from the last user turn
    (see the module docstring), the rest as read."""
    p = None if difficulty is None else difficulty_of(difficulty, last_user)
    learned = None if p is None or difficulty is None else learned_complexity(difficulty, p)
    if len(last_user) > 2 * SAMPLE_CHARS:  # keyword features: the head and tail suffice
        last_user = last_user[:SAMPLE_CHARS] + "\n" + last_user[-SAMPLE_CHARS:]
    low = _ascii_lower(last_user)
    found = _categories(low)
    size = 0.35 * min(1.0, max(0.0, math.log10(max(prompt_tokens, 1) / 100) / 2))
    complexity = (
        (
            size + (0.25 if "reasoning" in found else 0.0) + (0.15 if "code" in found else 0.0)
            if learned is None
            else learned
        )
        + (0.15 if structured else 0.0)
        + (0.10 if turns > 6 else 0.0)
    )
    return RequestFeatures(
        requested_model=requested_model, stream=stream, prompt_tokens=prompt_tokens,
        max_output_tokens=max_out, needs_tools=needs_tools, needs_vision=needs_vision,
        needs_json_schema=needs_json_schema, task=_task(low, found),
        complexity=round(min(1.0, complexity), 3), messages=turns, hosted_tools=hosted_tools,
        difficulty=None if p is None else round(p, 4),
    )  # fmt: skip


def _task(low: str, found: set[str]) -> str:
    if "code" in found:
        return "code"
    if "math" in found or _has_math_expr(low):
        return "math"
    for task in ("creative", "summarize", "extraction"):
        if task in found:
            return task
    return "chat"
