"""No second hop: a stream the attempt engine holds becomes the flow's own server answer.

mitmproxy streams a response only from a server connection, which is why a live stream
used to reach it through the loopback pipe (`addon.proxy.pipe`'s server): a TCP connection,
an HTTP request and response on it, mitmproxy's HTTP/1 client parsing the pipe's answer.
A handoff gives the flow a server connection that lives in this process instead:

- `HandoffServer`, a `Server` with no socket (the connection handler ignores commands for
  a connection it holds no transport for), registered in every HTTP layer on the way to
  the flow — a CONNECT tunnel's outer layer maps it to the tunnel's stream, as mitmproxy
  maps a real server connection opened inside a tunnel — and the flow is pointed at it;
- `_Answer`, the layer standing where mitmproxy's HTTP/1 client layer would: it takes the
  request (and drops it), and turns the events the relay sends down the layer stack, as a
  socket reader would (`events.DataReceived`, `events.ConnectionClosed` for this
  connection), into the response's headers, body chunks and end, or a cut.

From the flow's stream onwards everything is mitmproxy's own machinery, as for any
upstream: the `responseheaders` and `response` hooks, HTTP/1 chunking or HTTP/2 frames,
keep-alive, a cut client connection for a broken stream. What is gone per stream is the
loopback connection's reads and writes, the pipe's HTTP server and mitmproxy's HTTP/1
parsing of its answer, and two event-loop hops before the first event.

`prepare` returns None when the flow's layer stack is not of a known shape (an upstream
proxy in between, a layer of a kind not known to pass connection events on unchanged);
the pipe's loopback server then relays that stream as before. Leans on mitmproxy 12.2's
internals (pinned < 12.3 in pyproject.toml), as `inject` and `clientwire` do.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from mitmproxy import connection, ctx, http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import (
    ErrorCode,
    HttpLayer,
    HttpStream,
    ReceiveHttp,
    RequestEndOfMessage,
    RequestHeaders,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.tls import ClientTLSLayer, ServerTLSLayer

from addon.proxy.clientwire import below

log = logging.getLogger("orchestrator")
HOST = "handoff.orchestrator.invalid"  # never resolvable: nothing can connect there
_MAX_DEPTH = 24
_PASSING = (HttpLayer, HttpStream, layer.NextLayer, ClientTLSLayer, ServerTLSLayer)
_MODES = "mitmproxy.proxy.layers.modes"
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}
_ports = itertools.count(1)


class HandoffServer(connection.Server):
    """The flow's server connection when the attempt engine holds its answer."""


class _Answer(layer.Layer):
    """The server side of a handed-off flow (see the module docstring)."""

    def __init__(self, context: Any, response: http.Response) -> None:
        super().__init__(context)
        self.response = response
        self.stream_id: int | None = None
        self.requested: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started = False
        self.cut: str | None = None  # why the body ends broken, set before the close event

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, RequestHeaders):
            self.stream_id = event.stream_id
        elif isinstance(event, RequestEndOfMessage):
            if not self.requested.done():
                self.requested.set_result(None)
        elif isinstance(event, RequestProtocolError):  # the client went away
            if not self.requested.done():
                self.requested.set_exception(ConnectionResetError(event.message))
        elif self.stream_id is not None and isinstance(event, events.DataReceived):
            if not self.started:
                self.started = True
                yield ReceiveHttp(ResponseHeaders(self.stream_id, self.response, False))
            if event.data:
                yield ReceiveHttp(ResponseData(self.stream_id, event.data))
        elif self.stream_id is not None and isinstance(event, events.ConnectionClosed):
            if self.cut is None:
                yield ReceiveHttp(ResponseEndOfMessage(self.stream_id))
            else:
                yield ReceiveHttp(
                    ResponseProtocolError(self.stream_id, self.cut, ErrorCode.GENERIC_SERVER_ERROR)
                )


class Handoff:
    """One handed-off flow: what the pipe's relay drives instead of its loopback socket."""

    def __init__(self, flow: http.HTTPFlow, handler: Any, conn: HandoffServer,
                 answer: _Answer, hops: list[tuple[HttpLayer, layer.Layer]]) -> None:  # fmt: skip
        self.flow, self.handler, self.conn, self.answer = flow, handler, conn, answer
        self._hops = hops

    async def requested(self, timeout: float) -> None:
        """Wait until mitmproxy sent the flow's request to this connection; raises
        ConnectionResetError when the client went away first or it did not within
        `timeout` seconds."""
        try:
            await asyncio.wait_for(asyncio.shield(self.answer.requested), timeout)
        except TimeoutError:
            raise ConnectionResetError("the flow never took its stream") from None

    def abandon(self) -> None:
        """The flow ended before it took the stream: stop waiting for it."""
        if not self.answer.requested.done():
            self.answer.requested.set_exception(ConnectionResetError("flow ended"))

    async def _event(self, event: events.Event) -> None:
        await self.handler.server_event(event)

    async def start(self) -> None:
        """The response's status and headers go to the flow (its `responseheaders` hook)."""
        await self._event(events.DataReceived(self.conn, b""))

    async def write(self, data: bytes) -> None:
        """Body bytes through the layer stack (when no sink took them)."""
        await self._event(events.DataReceived(self.conn, data))

    async def end(self) -> None:
        """The clean end of the body (its `response` hook)."""
        await self._event(events.ConnectionClosed(self.conn))
        self.release()

    async def cut_off(self, why: str) -> None:
        """End the body as broken: mitmproxy cuts the client's connection (HTTP/1) or
        resets its stream (HTTP/2), as for an upstream that broke off."""
        self.answer.cut = why
        await self._event(events.ConnectionClosed(self.conn))
        self.release()

    def release(self) -> None:
        """Forget the connection in every layer that knows it."""
        self.conn.state = connection.ConnectionState.CLOSED
        for http_layer, _ in self._hops:
            http_layer.connections.pop(self.conn, None)
        self._hops = []


def _route(node: Any, flow: http.HTTPFlow, depth: int = 0) -> list[tuple[HttpLayer, Any]] | None:
    """The HTTP layers from `node` down to the one holding `flow`'s stream, each with the
    child that events for the flow's server connection must go to (a CONNECT stream; the
    flow's own layer gets None); None when the way passes a layer of unknown kind."""
    if node is None or depth > _MAX_DEPTH:
        return None
    if not isinstance(node, _PASSING) and type(node).__module__ != _MODES:
        return None
    if isinstance(node, HttpLayer):
        if any(getattr(s, "flow", None) is flow for s in node.streams.values()):
            return [(node, None)]
        for s in list(node.streams.values()):
            child = getattr(s, "child_layer", None)
            if child is not None and (rest := _route(child, flow, depth + 1)) is not None:
                return [(node, s), *rest]
        return None
    return _route(below(node), flow, depth + 1)


def _response(status: int, headers: list[tuple[str, str]]) -> http.Response:
    pairs = [(k.encode("latin-1"), v.encode("latin-1", "replace"))
             for k, v in headers if k.lower() not in _HOP_BY_HOP]  # fmt: skip
    pairs.append((b"transfer-encoding", b"chunked"))
    reason = status_codes.RESPONSES.get(status, "").encode()
    now = time.time()
    return http.Response(b"HTTP/1.1", status, reason, http.Headers(pairs), None, None, now, None)


def prepare(flow: http.HTTPFlow, status: int, headers: list[tuple[str, str]]) -> Handoff | None:
    """Point `flow` (in its `request` hook) at an in-process server connection that will
    answer `status` and `headers`, or None when its layer stack is not of a known shape."""
    try:
        if flow.server_conn.via is not None:  # an upstream proxy: leave it to the pipe
            return None
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(flow.client_conn.id) if server is not None else None
        hops = _route(getattr(handler, "layer", None), flow) if handler is not None else None
        if hops is None or not hasattr(handler, "server_event"):
            return None
        port = next(_ports)
        conn = HandoffServer(address=(HOST, port), transport_protocol="tcp")
        conn.state = connection.ConnectionState.OPEN
        conn.timestamp_start = time.time()
        if flow.client_conn.alpn == b"h2":  # else mitmproxy opens one per HTTP/2 stream
            conn.alpn = b"h2"
        inner = hops[-1][0]
        context = inner.context.fork()
        context.server = conn
        answer = _Answer(context, _response(status, headers))
        for http_layer, child in hops:
            http_layer.connections[conn] = child if child is not None else answer
    except Exception:  # an internal shape this version does not have
        log.debug("stream handoff unavailable; relaying over the loopback pipe", exc_info=True)
        return None
    req = flow.request
    req.scheme, req.host, req.port = "http", HOST, port
    req.content = b""
    return Handoff(flow, handler, conn, answer, hops)
