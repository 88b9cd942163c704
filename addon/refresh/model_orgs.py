"""What a model's names say about it: who makes it, its family word, its parameter count.

Used by ``addon.refresh.canonical`` for models only LiteLLM lists (their owner becomes the org of a
new canonical id) and for the ``family`` and ``params_b`` columns.
"""

from __future__ import annotations

import re
from types import MappingProxyType

from addon.refresh.model_names import parse_name

# LiteLLM providers that are the model maker's own API (their key is the representative).
FIRST_PARTY = frozenset(
    {"openai", "anthropic", "gemini", "mistral", "deepseek", "xai", "cohere_chat", "ai21",
     "zai", "moonshot", "minimax", "dashscope", "amazon_nova", "meta_llama", "perplexity"}
)  # fmt: skip
PROVIDER_OWNER = MappingProxyType({
    "openai": "openai", "azure": "openai", "anthropic": "anthropic", "gemini": "google",
    "vertex_ai-language-models": "google", "vertex_ai-anthropic_models": "anthropic",
    "vertex_ai-mistral_models": "mistralai", "vertex_ai-llama_models": "meta-llama",
    "mistral": "mistralai", "codestral": "mistralai", "xai": "x-ai", "zai": "z-ai",
    "moonshot": "moonshotai", "dashscope": "qwen", "amazon_nova": "amazon",
    "meta_llama": "meta-llama", "cohere_chat": "cohere", "deepseek": "deepseek",
    "perplexity": "perplexity", "minimax": "minimax", "ai21": "ai21",
})  # fmt: skip
FAMILY_OWNER = (
    (re.compile(r"^(gpt|o\d|chatgpt|codex)"), "openai"),
    (re.compile(r"^claude"), "anthropic"),
    (re.compile(r"^(gemini|gemma)"), "google"),
    (re.compile(r"^(meta-)?llama"), "meta-llama"),
    (re.compile(r"^(mistral|mixtral|codestral|magistral|ministral|pixtral|devstral)"), "mistralai"),
    (re.compile(r"^(qwen|qwq)"), "qwen"),
    (re.compile(r"^deepseek"), "deepseek"),
    (re.compile(r"^grok"), "x-ai"),
    (re.compile(r"^glm"), "z-ai"),
    (re.compile(r"^kimi"), "moonshotai"),
    (re.compile(r"^(command|c4ai|aya)"), "cohere"),
    (re.compile(r"^phi-?\d"), "microsoft"),
    (re.compile(r"^nova"), "amazon"),
    (re.compile(r"^jamba"), "ai21"),
)
PATH_WORDS = frozenset({"models", "accounts", "fireworks", "global", "invoke", "converse", "ps"})
_PLAIN_SIZE = re.compile(r"^(\d+)(?:p(\d+))?b$")


def is_org(word: str | None, provider: str) -> bool:
    """Whether a path segment names a model maker (not a provider, region or folder)."""
    return bool(
        word
        and word != provider
        and word not in PATH_WORDS
        and not word.startswith("@")
        and not re.match(r"^[a-z]{2}(-gov)?(-[a-z]+-\d)?$", word)
    )


def family_owner(base: str) -> str | None:
    return next((owner for pattern, owner in FAMILY_OWNER if pattern.match(base)), None)


def family(model_id: str) -> str | None:
    first = re.split(r"[-_.:\s]", model_id.split("/")[-1])[0]
    split = re.match(r"^([a-z]{3,})\d", first)
    return (split.group(1) if split else first) or None


def params_from_name(model_id: str) -> float | None:
    found = [m for m in map(_PLAIN_SIZE.match, parse_name(model_id).sizes) if m]
    if len(found) != 1:
        return None
    whole, fraction = found[0].groups()
    return float(f"{whole}.{fraction or 0}")
