"""Splicing a continuation into the stream a client already reads (pure).

A continuation is a second upstream stream that goes on from the text the client holds
(`wire.prefill`). `Splice.rewrite` turns each of its events (parsed JSON) into the events
the client gets instead, so the two read as one answer:

- chat / completions: every chunk gets the first attempt's `id`, `model` and `created`; the
  continuation's role chunk (a delta with only `role` and empty content) is dropped, the
  role left out of any other; its finish chunk, usage chunk and `[DONE]` pass on, the usage
  with the earlier attempts' counts added (`prior`);
- Messages: its `message_start` is dropped (the client has one), its first text block
  goes on in the block the client has open (no second `content_block_start`), every later
  block index is shifted past the client's, and the `message_delta` usage has `prior`'s
  input and output tokens added, so the SDK's final message counts both attempts.

Text the continuation repeats first (`echo`: a server that echoes the prefill, or the
whitespace a Messages prefill had to drop) is held back while it matches, dropped once it
fully has, and sent after all when the continuation turns out to say something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from addon.wire.prefill import Delivered
from addon.wire.usage import Usage


def add_usage(a: Usage, b: Usage) -> Usage:
    """Two attempts' usage, count by count."""
    return Usage(a.prompt_tokens + b.prompt_tokens, a.completion_tokens + b.completion_tokens,
                 a.cached_tokens + b.cached_tokens, a.reasoning_tokens + b.reasoning_tokens,
                 a.cache_write_tokens + b.cache_write_tokens)  # fmt: skip


def _num(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


@dataclass
class Echo:
    """The text a continuation may start by repeating: `take` each piece of its text in
    order and get what the client should see now; `release` whatever is held at the end."""

    expect: str
    held: str = ""
    done: bool = False

    def __post_init__(self) -> None:
        self.done = self.done or not self.expect

    def take(self, piece: str) -> str:
        """What of `piece` reaches the client now ("" while it still repeats `expect`)."""
        if self.done:
            return piece
        cand = self.held + piece
        if self.expect.startswith(cand):
            self.held, self.done = ("", True) if len(cand) == len(self.expect) else (cand, False)
            return ""
        self.held, self.done = "", True
        return cand[len(self.expect) :] if cand.startswith(self.expect) else cand

    def release(self) -> str:
        """The text held back (the continuation ended while still matching): sent after all."""
        out, self.held, self.done = self.held, "", True
        return out


class Splice(Protocol):
    """One continuation's rewriting: its events in, the client's events out."""

    def rewrite(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """The events the client gets for the continuation's event `obj` (maybe none)."""
        ...

    def render(self, obj: dict[str, Any]) -> bytes:
        """One event the client gets, as SSE bytes."""
        ...


@dataclass
class ChatSplice:
    """The continuation of a chat or completions stream (see the module docstring)."""

    identity: dict[str, Any]
    prior: Usage | None
    echo: Echo

    def rewrite(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunk as the rest of the first attempt's stream (none for a role chunk)."""
        obj = obj | self.identity
        usage = obj.get("usage")
        if isinstance(usage, dict) and self.prior is not None:
            obj["usage"] = _chat_usage(self.prior, usage)
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return [obj]
        kept = [c for c in (self._choice(ch) for ch in choices) if c is not None]
        if not kept and not isinstance(obj.get("usage"), dict):
            return []
        return [obj | {"choices": kept}]

    def _choice(self, ch: Any) -> Any:
        if not isinstance(ch, dict):
            return ch
        finish = ch.get("finish_reason")
        part = "delta" if isinstance(ch.get("delta"), dict) else "text"
        holder = {k: v for k, v in ch["delta"].items() if k != "role"} if part == "delta" else ch
        piece = holder.get("content") if part == "delta" else holder.get("text")
        text = self.echo.take(piece) if isinstance(piece, str) else ""
        if finish is not None:
            text += self.echo.release()
        if part == "text":
            return ch | {"text": text}
        if isinstance(piece, str) or text:
            holder["content"] = text
        meaningful = any(v not in (None, "", [], {}) for v in holder.values())
        if not meaningful and finish is None:
            return None
        return ch | {"delta": holder}

    def render(self, obj: dict[str, Any]) -> bytes:
        """`data: <json>` and a blank line."""
        return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat_usage(prior: Usage, u: dict[str, Any]) -> dict[str, Any]:
    p = prior.prompt_tokens + _num(u.get("prompt_tokens"))
    c = prior.completion_tokens + _num(u.get("completion_tokens"))
    out = u | {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    ptd, ctd = u.get("prompt_tokens_details"), u.get("completion_tokens_details")
    if isinstance(ptd, dict):
        out["prompt_tokens_details"] = ptd | {
            "cached_tokens": prior.cached_tokens + _num(ptd.get("cached_tokens"))
        }
    if isinstance(ctd, dict):
        out["completion_tokens_details"] = ctd | {
            "reasoning_tokens": prior.reasoning_tokens + _num(ctd.get("reasoning_tokens"))
        }
    return out


@dataclass
class MessagesSplice:
    """The continuation of a Messages stream (see the module docstring); `blocks` and
    `block_open` are what the client saw (`Delivered`)."""

    blocks: int
    block_open: bool
    prior: Usage | None
    echo: Echo
    _start: dict[str, Any] = field(default_factory=dict)  # the continuation's opening usage
    _offset: int = 0

    def __post_init__(self) -> None:
        self._offset = self.blocks - 1 if self.block_open else self.blocks

    def rewrite(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """The event as the rest of the first attempt's message."""
        kind = obj.get("type")
        if kind == "message_start":
            msg = obj.get("message")
            usage = msg.get("usage") if isinstance(msg, dict) else None
            self._start = usage if isinstance(usage, dict) else {}
            return []
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "content_block_delta":
            obj = obj | {"index": _num(obj.get("index")) + self._offset}
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                piece = delta.get("text")
                text = self.echo.take(piece if isinstance(piece, str) else "")
                if not text:
                    return []
                obj["delta"] = delta | {"text": text}
            return [obj]
        if kind == "content_block_stop":
            index = _num(obj.get("index")) + self._offset
            held = self.echo.release()
            lead = [_text_delta(index, held)] if held else []
            return [*lead, obj | {"index": index}]
        if kind == "message_delta" and isinstance(obj.get("usage"), dict):
            return [obj | {"usage": self._usage(obj["usage"])}]
        return [obj]

    def _block_start(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        index = _num(obj.get("index"))
        block = obj.get("content_block")
        if self.block_open:  # the client's text block is still open
            self.block_open = False
            if index == 0 and isinstance(block, dict) and block.get("type") == "text":
                first = block.get("text")
                return (
                    [_text_delta(self._offset, first)] if isinstance(first, str) and first else []
                )
            out = [{"type": "content_block_stop", "index": self._offset}]
            self._offset += 1
            return [*out, obj | {"index": index + self._offset}]
        return [obj | {"index": index + self._offset}]

    def _usage(self, u: dict[str, Any]) -> dict[str, Any]:
        prior = self.prior or Usage()

        def leg(key: str) -> int:
            return _num(u[key]) if u.get(key) is not None else _num(self._start.get(key))

        fresh = prior.prompt_tokens - prior.cached_tokens - prior.cache_write_tokens
        return u | {
            "output_tokens": prior.completion_tokens + _num(u.get("output_tokens")),
            "input_tokens": fresh + leg("input_tokens"),
            "cache_creation_input_tokens": prior.cache_write_tokens
            + leg("cache_creation_input_tokens"),
            "cache_read_input_tokens": prior.cached_tokens + leg("cache_read_input_tokens"),
        }

    def render(self, obj: dict[str, Any]) -> bytes:
        """`event: <type>`, `data: <json>` and a blank line."""
        kind = str(obj.get("type") or "message").encode()
        return b"event: " + kind + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _text_delta(index: int, text: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}}  # fmt: skip


def splice_for(
    api: str | None, got: Delivered, prior: Usage | None, echo: str
) -> ChatSplice | MessagesSplice:
    """The splice of a continuation of an `api` stream after the client `got` this."""
    if api == "messages":
        return MessagesSplice(got.blocks, got.block_open, prior, Echo(echo))
    return ChatSplice(dict(got.identity), prior, Echo(echo))
