"""Error bodies: the router's own, and an upstream's non-2xx answer as an `Outcome`."""

from __future__ import annotations

import json
from typing import Any

from addon.routing.fallback import Outcome, OutcomeKind


def error_body(
    message: str, *, type_: str, code: str | None = None, extra: dict[str, Any] | None = None
) -> bytes:
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


def _error_code(body: bytes) -> str:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return f"{err.get('code') or ''} {err.get('type') or ''}".lower()
    return ""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; HTTP dates → None)."""
    if not value:
        return None
    try:
        s = float(value.strip())
    except ValueError:
        return None
    return s if s >= 0 else None


def classify_failure(status: int, body: bytes, retry_after: str | None = None) -> Outcome:
    """An upstream's non-2xx answer as an Outcome (pure: status, body bytes, header value)."""
    msg = error_message(body)
    code = _error_code(body)
    low = f"{code} {msg}".lower()
    ra = parse_retry_after(retry_after)
    if status == 429:
        return Outcome(OutcomeKind.RATE_LIMITED, status, msg, retry_after=ra)
    if status >= 500:
        return Outcome(OutcomeKind.SERVER_ERROR, status, msg, retry_after=ra)
    if status in (401, 403):
        return Outcome(OutcomeKind.AUTH_ERROR, status, msg)
    if status == 404:
        return Outcome(OutcomeKind.NOT_FOUND, status, msg)
    if "context_length" in low or "maximum context length" in low or "too many tokens" in low:
        return Outcome(OutcomeKind.CONTEXT_TOO_LONG, status, msg)
    if "content_policy" in low or "content_filter" in low or "safety" in low:
        return Outcome(OutcomeKind.CONTENT_POLICY, status, msg)
    return Outcome(OutcomeKind.CLIENT_ERROR, status, msg)
