"""Error bodies: the router's own, an upstream's message and code, and `Retry-After`."""

from __future__ import annotations

import json
from typing import Any


def error_body(
    message: str, *, type_: str, code: str | None = None, extra: dict[str, Any] | None = None
) -> bytes:
    """An OpenAI-style error body, ``{"error": {message, type, param, code, …extra}}``."""
    err: dict[str, Any] = {"message": message, "type": type_, "param": None, "code": code}
    if extra:
        err.update(extra)
    return json.dumps({"error": err}).encode()


def error_message(body: bytes) -> str:
    """The upstream's own error message, or a short excerpt of its body."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(obj.get("message"), str):
            return str(obj["message"])
    return body[:200].decode("utf-8", "replace").strip()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; HTTP dates → None)."""
    if not value:
        return None
    try:
        s = float(value.strip())
    except ValueError:
        return None
    return s if s >= 0 else None


def error_code(body: bytes) -> str:
    """An upstream error body's `code` and `type`, lower-cased and space-joined ("" if it
    has neither), for matching against known failure words."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return f"{err.get('code') or ''} {err.get('type') or ''}".lower()
    return ""
