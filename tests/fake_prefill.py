"""The fake upstream's answer to a prefilled request (an assistant turn to continue), and its
streamed tool calls.

`FakeUpstream(prefill=FORM)` makes a fake that continues an answer the way a server of that
kind does: ``assistant`` continues a trailing assistant message (llama.cpp, Ollama;
Anthropic on ``/v1/messages``, which also refuses one ending in whitespace, like the API);
``continue_final_message`` only when the request says ``continue_final_message: true``
(vLLM; without it, it answers anew); ``prefix`` only a message marked ``prefix: true``,
and it repeats the prefix at the start of its answer (Mistral), else 400; ``reject``
refuses any trailing assistant message with a 400 saying so. Without the option a fake
ignores a prefill and answers from the start, as OpenAI does.

`rest` is what such a fake streams: the part of its content after the prefill (all of it
when the prefill is not a prefix of its content), as `Tokens` counted by words.
`FakeUpstream(tool_calls=True)` streams a chat answer to a request with `tools` as one tool
call whose arguments come in pieces (`tool_plan`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from tests.fake_stream import StreamPlan, Tokens

REFUSAL = ("This model does not support assistant message prefill. The conversation must "
           "end with a user message.")  # fmt: skip
PREFIX_REQUIRED = "Expected last role User or Tool (or Assistant with prefix True) for serving"
TRAILING_SPACE = "messages: final assistant content cannot end with trailing whitespace"


def words(text: str) -> int:
    """The tokens a fake counts in `text`: its words."""
    return len(text.split())


def _error(path: str, message: str) -> bytes:
    if path == "/v1/messages":
        error = {"type": "invalid_request_error", "message": message}
        return orjson.dumps({"type": "error", "error": error, "request_id": "req_fake"})
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                   "param": "messages", "code": None}})  # fmt: skip


def _prefill(req: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    messages = req.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, list):
        content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return last, content if isinstance(content, str) else ""


def rest(path: str, req: dict[str, Any], content: str, form: str | None) -> str | bytes | None:
    """What a fake of `form` answers to `req` on `path`: the text to stream (a
    continuation), the error body of a 400 (bytes), or None to answer as usual."""
    found = _prefill(req) if form is not None else None
    if found is None or path not in ("/v1/chat/completions", "/v1/messages"):
        return None
    last, prefix = found
    if form == "reject":
        return _error(path, REFUSAL)
    if path == "/v1/messages" and prefix != prefix.rstrip():
        return _error(path, TRAILING_SPACE)
    if form == "continue_final_message" and req.get("continue_final_message") is not True:
        return None  # vLLM without the flag: a new turn after the assistant one
    if form == "prefix":
        if last.get("prefix") is not True:
            return _error(path, PREFIX_REQUIRED)
        return content  # Mistral repeats the prefix at the start of its answer
    return content[len(prefix) :] if content.startswith(prefix) else content


def tokens(prompt: int, req: dict[str, Any], streamed: str) -> Tokens:
    """The usage a continuing fake reports: its prompt plus the prefill's words, and the
    words it streamed."""
    found = _prefill(req)
    return Tokens(prompt + (words(found[1]) if found else 0), words(streamed))


def tool_plan(model: str, pieces: list[str], t: Tokens) -> StreamPlan:
    """A chat stream that calls tool `get_weather` with `pieces` as its argument deltas."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}  # fmt: skip

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps(base | {"choices": [choice]}) + b"\n\n"

    def render(i: int, piece: str) -> bytes:
        return event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})

    call = {"index": 0, "id": "call_fake1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    head = [event({"role": "assistant", "content": None, "tool_calls": [call]})]
    body = [render(i, p) for i, p in enumerate(pieces)]
    return StreamPlan(head, body, [event({}, "tool_calls")], b"data: [DONE]\n\n", b"", render)
