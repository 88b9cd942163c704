"""The response cache's key, in plain values: which requests may be cached at all, the
canonical form of a request body, the tenant a request belongs to, the client's
`Cache-Control`, and the keyed hash that names an entry. PURE (no I/O, no clock).

    uncacheable(api, data, tool_results)   why a request must never be cached, or None
    canonical(data)                        the body's fields that change the answer, as bytes
    tenant(salt, name, key, addr)          whose entry it is: client name, key hash, address
    entry_key(salt, ...)                   the entry's name: HMAC-SHA256 of all of it
    cache_control(value)                   a request's `Cache-Control` directives

The key covers the API, the answer's form (a whole body or an event stream), the target
that answers (`provider:model`), the tenant and the canonical body. Fields that only change
how an answer is delivered or labelled (`stream`, `stream_options`, `user`, `metadata`, …)
are left out of the body, so requests differing only there share an entry. Every hash is
keyed with the store's secret salt: neither a client key nor a prompt can be recovered from
an entry's name, nor guessed and checked without that salt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

# Top-level request fields that never change the answer's content. `model` is replaced by
# the target that answers (part of the key); `store` only matters as `store: false`, the one
# value a cached Responses request can have.
DROPPED = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
TOOL_RESULT_ROLES = ("tool", "function")  # chat messages that carry a tool's output


def uncacheable(api: str, data: dict[str, Any], *, tool_results: bool) -> str | None:
    """Why this request's answer must not be cached (a reason for `explain`), or None.

    Never cached: a Responses request that keeps or continues state upstream (`store` not
    false, `previous_response_id`, `conversation`, `background`), and, unless
    `tool_results`, a request carrying tool results (chat `tool`/`function` messages,
    Responses `*_call_output` items, Messages `tool_result` blocks)."""
    if api == "responses":
        if data.get("store") is not False:
            return "store is not false (the answer is kept upstream)"
        for field in ("previous_response_id", "conversation"):
            if data.get(field):
                return f"{field} continues upstream state"
        if data.get("background"):
            return "background response"
    if not tool_results and _has_tool_results(api, data):
        return "carries tool results (the policy's cache.tool_results is false)"
    return None


def _has_tool_results(api: str, data: dict[str, Any]) -> bool:
    if api in ("chat", "completions"):
        msgs = data.get("messages")
        return isinstance(msgs, list) and any(
            isinstance(m, dict) and m.get("role") in TOOL_RESULT_ROLES for m in msgs
        )
    if api == "responses":
        items = data.get("input")
        return isinstance(items, list) and any(
            isinstance(i, dict) and str(i.get("type", "")).endswith("_call_output") for i in items
        )
    if api == "messages":
        msgs = data.get("messages")
        return isinstance(msgs, list) and any(
            isinstance(m, dict)
            and isinstance(m.get("content"), list)
            and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])
            for m in msgs
        )
    return False


def canonical(data: dict[str, Any]) -> bytes:
    """The body's answer-changing fields as canonical JSON: `DROPPED` fields left out, keys
    sorted, no whitespace, integral floats written as integers (`1.0` is `1`)."""
    kept = {k: _normal(v) for k, v in data.items() if k not in DROPPED}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _normal(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_normal(x) for x in v]
    return v


def _mac(salt: bytes, *parts: bytes) -> str:
    h = hmac.new(salt, digestmod=hashlib.sha256)
    for p in parts:  # length-prefixed: no two part lists give the same input
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def tenant(salt: bytes, name: str | None, key: str | None, addr: str) -> str:
    """Whose entries these are: the authenticated client's name; else a keyed hash of the
    API key the client sent (never the key); else the client's address."""
    if name:
        return f"client:{name}"
    if key:
        return "key:" + _mac(salt, b"client-key", key.encode())[:32]
    return f"addr:{addr}"


def client_key(headers: dict[str, str]) -> str | None:
    """The API key a client sent (`authorization` without its scheme, `x-api-key`,
    `api-key`), from lower-cased headers; None when it sent none."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, rest = auth.partition(" ")
        return rest.strip() or scheme
    return headers.get("x-api-key") or headers.get("api-key") or None


def entry_key(salt: bytes, *, api: str, form: str, target: str, tenant: str,
              body: bytes) -> str:  # fmt: skip
    """The name of one entry: HMAC-SHA256 (keyed with `salt`) over the API, the answer's
    `form` (`body` or `events`), the target key, the tenant and the canonical body."""
    return _mac(salt, api.encode(), form.encode(), target.encode(), tenant.encode(), body)


@dataclass(frozen=True)
class CacheControl:
    """A request's `Cache-Control` as far as the cache reads it: `no_cache` (do not answer
    from the cache, refresh the entry), `no_store` (neither answer from nor store),
    `max_age` (accept only an entry at most that many seconds old)."""

    no_cache: bool = False
    no_store: bool = False
    max_age: int | None = None


def cache_control(value: str | None) -> CacheControl:
    """Parse a `Cache-Control` header value; unknown directives and bad numbers are ignored
    (a malformed `max-age` is treated as absent, never as an error)."""
    if not value:
        return CacheControl()
    no_cache = no_store = False
    max_age: int | None = None
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            arg = arg.strip().strip('"')
            if arg.isdigit():
                max_age = int(arg) if max_age is None else min(max_age, int(arg))
    return CacheControl(no_cache, no_store, max_age)
