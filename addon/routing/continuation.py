"""Which targets can continue a streamed answer that broke, and how a rescued answer is billed.

A target continues an answer in one `form` (its `prefill` capability, `rules/models.yaml`):

- ``assistant``: the request with the delivered text as a trailing assistant message
  (llama.cpp and Ollama continue it; Anthropic Messages' native prefill);
- ``continue_final_message``: the same, plus ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM and other servers built on HF chat templates);
- ``prefix``: the same, with ``prefix: true`` on that message (Mistral; DeepSeek's beta
  endpoint);
- ``none``: it cannot. OpenAI's chat API reads a trailing assistant message as a finished
  turn and answers anew, so a "continuation" would repeat the answer from its start.

Unless a model says otherwise, the form is its provider host's (`default_prefill`). Pure:
values in, values out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from urllib.parse import urlsplit

from addon.wire.splice import add_usage
from addon.wire.usage import Usage

NONE = "none"
FORMS = ("assistant", "continue_final_message", "prefix")
CHARS_PER_TOKEN = 3.5  # the same rule of thumb as the request-size estimate (`classify`)
# the hosts known to continue an assistant prefix, and how; every other host: none
KNOWN_HOSTS = {"api.anthropic.com": "assistant", "api.mistral.ai": "prefix"}


def default_prefill(base_url: str) -> str:
    """The form a provider at `base_url` continues an answer in when its model does not
    say: api.anthropic.com `assistant`, api.mistral.ai `prefix`, DeepSeek's
    ``https://api.deepseek.com/beta`` `prefix` (its other endpoints do not continue); every
    other host `none`: api.openai.com answers a trailing assistant message anew,
    OpenRouter's answer depends on the model behind it, and a local server's on its
    software (llama.cpp and Ollama continue, vLLM needs `continue_final_message`) — declare
    those per model."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if host == "api.deepseek.com":
        return "prefix" if parts.path.rstrip("/").endswith("/beta") else NONE
    return KNOWN_HOSTS.get(host, NONE)


def prefill_form(declared: str | bool | None, base_url: str) -> str:
    """A target's form: `declared` (`capabilities.prefill`: a form, true for `assistant`,
    false for none), else its provider's default."""
    if declared is None:
        return default_prefill(base_url)
    if declared is True:
        return "assistant"
    if declared is False:
        return NONE
    return declared


def can_continue(form: str, delivered: str) -> bool:
    """Whether a target of `form` can go on from `delivered` text: only one with a form,
    even when no text was delivered yet (the client may have lost the bytes that came with
    the cut, and a target declared unable is never asked to take over)."""
    return form != NONE


def estimate_tokens(chars: int) -> int:
    """Tokens estimated for `chars` characters of answer text (at least 1 for any text)."""
    return 0 if chars <= 0 else math.ceil(chars / CHARS_PER_TOKEN)


def broken_leg_usage(
    reported: Usage | None, chars: int, prompt_estimate: int
) -> tuple[Usage, bool]:
    """The usage of an attempt that broke after `chars` characters of answer: what it
    reported, with each count it did not report (a chat stream reports usage only at its
    end) estimated: the prompt from `prompt_estimate` tokens, the completion from `chars`.
    Also whether anything was estimated."""
    u = reported or Usage()
    completion_est = estimate_tokens(chars)
    prompt = u.prompt_tokens or prompt_estimate
    completion = max(u.completion_tokens, completion_est)
    estimated = prompt != u.prompt_tokens or completion != u.completion_tokens
    return Usage(prompt, completion, u.cached_tokens, u.reasoning_tokens,
                 u.cache_write_tokens), estimated  # fmt: skip


def total_usage(parts: Iterable[Usage | None]) -> Usage | None:
    """Every attempt's usage added up (None when none reported any)."""
    out: Usage | None = None
    for u in parts:
        if u is not None:
            out = u if out is None else add_usage(out, u)
    return out
