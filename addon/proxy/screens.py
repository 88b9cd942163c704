"""The router's answers before any routing: what a request's framing alone decides.

- 411 for an LLM request of unknown size (chunked, no Content-Length: it could grow without
  bound in memory; every OpenAI and Anthropic SDK sends Content-Length);
- 413 for one over `max_request_bytes` (announced, or a chunked body seen whole);
- 426 for a WebSocket upgrade on a routed endpoint: Codex CLI opens
  `wss://api.openai.com/v1/responses` first and falls back to HTTPS + SSE at once on a 426;
  passed through, the socket would reach the real host and bypass the router;
- a compressed body (`Content-Encoding`: gzip, deflate, br, zstd) is decoded to be routed
  and sent on as identity (`decoded`); 400 when it cannot be (an unknown coding, corrupt
  data), 413 when it decodes to more than `max_request_bytes`;
- 400 for a well-formed JSON body the router cannot read because it holds an integer longer
  than Python reads (4300 digits): no API reads it either, so it is refused here rather
  than passed through (every other unreadable body is passed through as sent).

Each is in the API's own error format and (but the 426, which is no LLM call) has its
ledger row.
"""

from __future__ import annotations

import dataclasses
import time

from addon.errors import BodyEncodingError
from addon.proxy import apis
from addon.proxy.exchange import Canned, Incoming, Pending, Reply, json_reply, request_id
from addon.wire import bodycoding
from addon.wire.request import overlong_integer


def header(inc: Incoming, name: str) -> str | None:
    """A request header's value, repeated ones joined as mitmproxy joins them; None if absent."""
    values = [v for k, v in inc.headers if k.lower() == name]
    return ", ".join(values) if values else None


def routed(inc: Incoming, pending: Pending | None) -> Pending:
    """The record of a call the router answers itself (`pending`, or a new one)."""
    if pending is None:
        pending = Pending(request_id(), time.monotonic(), inc, "routed",
                          endpoint=apis.endpoint(inc.method, inc.path))  # fmt: skip
    pending.kind = "routed"
    return pending


def too_large(inc: Incoming, size: int, limit: int, pending: Pending | None = None) -> Reply | None:
    """413 for an LLM request whose body of `size` bytes is over `limit` (`max_request_bytes`)."""
    if size <= limit or apis.endpoint(inc.method, inc.path) is None:
        return None
    msg = (f"request body of {size} bytes is over max_request_bytes ({limit}); send a "
           "smaller request or raise `max_request_bytes` in orchestrator.yaml")  # fmt: skip
    return json_reply(413, msg, type_="invalid_request_error", code="request_too_large",
                      pending=routed(inc, pending))  # fmt: skip


def length_required(inc: Incoming) -> Reply | None:
    """411 for an LLM request sent without Content-Length (chunked, size unknown)."""
    if apis.endpoint(inc.method, inc.path) is None:
        return None
    msg = ("request body sent without Content-Length; send it with a Content-Length "
           "header (a body of unknown size could exhaust the router's memory)")  # fmt: skip
    return json_reply(411, msg, type_="invalid_request_error", code="length_required",
                      pending=routed(inc, None))  # fmt: skip


def screen(inc: Incoming, limit: int) -> Reply | None:
    """Before the body is read (`inc.body` empty): 411 for an LLM request of unknown size,
    413 for one announced over `limit`; None to read the body as usual."""
    length = header(inc, "content-length")
    if length is None and "chunked" in (header(inc, "transfer-encoding") or ""):
        return length_required(inc)
    try:
        size = int(length or "0")
    except ValueError:
        return None
    return too_large(inc, size, limit)


def decoded(inc: Incoming, pending: Pending, limit: int) -> Incoming | Reply:
    """`inc` with its body's `Content-Encoding` undone (and the header gone), as routing and
    every provider read it; 400 (`invalid_encoding`) when it cannot be undone, 413 when it
    decodes to more than `limit`. `inc` itself when the body is not encoded."""
    coding = header(inc, "content-encoding")
    if not bodycoding.codings(coding):
        return inc
    try:
        body = bodycoding.decode(inc.body, coding, limit)
    except BodyEncodingError as e:
        status, code = (413, "request_too_large") if e.too_large else (400, "invalid_encoding")
        return json_reply(status, str(e), type_="invalid_request_error", code=code,
                          pending=routed(inc, pending))  # fmt: skip
    headers = tuple((k, v) for k, v in inc.headers if k.lower() != "content-encoding")
    return dataclasses.replace(inc, body=body, headers=headers)


def unreadable(inc: Incoming, pending: Pending) -> Reply | None:
    """400 (`invalid_number`, in the API's format) for an LLM request whose body
    `parse_request` refused only because it holds an integer longer than Python reads; None
    for any other unreadable body, which is passed through as sent. Call it only for a body
    `parse_request` refused: it reads the body again."""
    problem = overlong_integer(inc.body)
    if problem is None:
        return None
    return json_reply(400, problem, type_="invalid_request_error", code="invalid_number",
                      pending=routed(inc, pending))  # fmt: skip


def websocket_refused(inc: Incoming) -> Canned | None:
    """426 for a WebSocket upgrade on a routed endpoint (see the module docstring)."""
    if apis.endpoint("POST", inc.path) is None:
        return None
    if "websocket" not in (header(inc, "upgrade") or "").lower():
        return None
    msg = ("this router serves the API over HTTPS (streams as server-sent events), not "
           "WebSocket; send the request as an HTTPS POST")  # fmt: skip
    body = apis.error_body(None, 426, msg, type_="invalid_request_error",
                           code="websocket_not_supported")  # fmt: skip
    return Canned(426, [("content-type", "application/json")], body)
