"""One hop, not two: a relayed stream's body goes straight into the client's HTTP stream.

A stream handed off in process (`addon.proxy.handoff`) gets a `HandoffSink`: each batch
of bytes goes down the layer stack as data read from the flow's in-process server
connection, which makes it a body chunk of the flow's response. The rest of this module
is the loopback pipe's case (`stream_handoff: false`, or a stack the handoff does not know).

The pipe (`addon.proxy.pipe`) still answers mitmproxy's request on the loopback socket with
the stream's status and headers, and ends that response there (its final chunk, or a cut
connection), so mitmproxy's own HTTP machinery frames, ends and cuts the client's response
exactly as for any upstream. The body in between is not written to the loopback socket: once
the flow's `responseheaders` hook ran (`FlowSink.attach`), each batch of bytes is handed to
the flow's `HttpStream` as if its server connection had delivered it. mitmproxy routes an
injected message straight to the flow's stream (`HttpLayer`: `events.MessageInjected`, the
path of `inject.websocket`); an event that is both that and an `http.ResponseData` is
taken by the stream as body data: relayed to the client (TLS, HTTP/1 chunking or HTTP/2
frames as the client speaks), one write, then the client transport is drained
(backpressure: a slow reader stops the relay, so nothing queues beyond the socket's write
buffer). That saves, per event, a loopback write, a socket read and mitmproxy's HTTP/1
response parsing.

Inside a CONNECT tunnel (regular-mode HTTPS) an injected message would reach the tunnel's
own stream first, which takes body data for tunnel bytes. There the body goes in one level
lower (`TunnelSink`): each batch, framed as the pipe's HTTP/1 chunk, is handed to the
connection handler as bytes read from the flow's pipe connection (`events.DataReceived`),
exactly the event its own socket reader would have produced. That saves the loopback
write, the socket read and its wake-up per batch; mitmproxy still parses the chunk framing.

This leans on mitmproxy 12.2's internals (pinned <12.3 in pyproject.toml): when anything is
not as expected `sink_for` returns None and the pipe relays over its socket as before.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import HttpLayer, HttpStream, ResponseData
from OpenSSL import SSL

from addon.proxy.clientwire import ClientWire, wire_for
from addon.proxy.handoff import HandoffServer

log = logging.getLogger("orchestrator")


class _InjectedData(ResponseData, events.MessageInjected[None]):
    """Body bytes for one flow's HTTP stream, delivered by injection."""

    def __init__(self, flow: http.HTTPFlow, data: bytes) -> None:
        self.flow = flow
        self.message = None
        self.stream_id = -1  # the HttpLayer finds the flow's stream itself
        self.data = data


class FlowSink:
    """Where a relayed stream's body bytes go: into `flow`'s client stream, through the
    client connection's handler (see the module docstring)."""

    where = "injected into the flow"

    @property
    def route(self) -> str:
        """How the bytes reach the client, for the debug log."""
        return self.where + (", then straight to its socket" if self._wire else "")

    def __init__(self, flow: http.HTTPFlow, handler: Any, writer: Any,
                 wire: ClientWire | None = None) -> None:  # fmt: skip
        self._flow, self._handler, self._writer, self._wire = flow, handler, writer, wire
        self.bytes = 0
        self.wired = 0  # body bytes written straight to the client's socket (`clientwire`)

    def _event(self, data: bytes) -> events.Event:
        return _InjectedData(self._flow, data)

    @property
    def gone(self) -> bool:
        """The client's stream is over (it went away, or the flow was killed)."""
        f = self._flow
        return not f.live or f.error is not None or not f.client_conn.connected

    async def write(self, data: bytes) -> None:
        """Deliver `data` to the client now, then wait while its socket buffer is full.
        Raises ConnectionResetError when the client is gone."""
        if self.gone:
            raise ConnectionResetError("client disconnected")
        wire = self._wire
        if wire is not None and wire.ready:
            try:
                self._writer.write(wire.encode(data))
            except SSL.Error as e:  # the client's TLS session is over
                raise ConnectionResetError("client disconnected") from e
            self.wired += len(data)
        else:
            await self._handler.server_event(self._event(data))
        self.bytes += len(data)
        if self._writer.is_closing():
            raise ConnectionResetError("client disconnected")
        await self._writer.drain()

    def buffered(self) -> int:
        """Bytes written to the client's socket but not yet taken by the kernel."""
        transport = getattr(self._writer, "transport", None)
        return int(transport.get_write_buffer_size()) if transport is not None else 0


class TunnelSink(FlowSink):
    """A `FlowSink` for a flow inside a CONNECT tunnel: its bytes arrive as read from the
    flow's (plain HTTP/1, chunked) pipe connection."""

    where = "injected into the tunnelled flow"

    def _event(self, data: bytes) -> events.Event:
        framed = b"%x\r\n%b\r\n" % (len(data), data)
        return events.DataReceived(self._flow.server_conn, framed)


class HandoffSink(FlowSink):
    """A `FlowSink` for a handed-off flow (`addon.proxy.handoff`): its bytes arrive as read
    from the flow's in-process server connection, which turns them into body chunks."""

    where = "handed to the flow's in-process server"

    def _event(self, data: bytes) -> events.Event:
        return events.DataReceived(self._flow.server_conn, data)


def _first_http_layer(top: Any) -> HttpLayer | None:
    """The outermost HTTP layer under a connection's top layer."""
    node = top
    for _ in range(16):
        if isinstance(node, HttpLayer):
            return node
        nxt = getattr(node, "layer", None) or getattr(node, "child_layer", None)
        if not isinstance(nxt, layer.Layer):  # mode layers hand their events on by method
            owner = getattr(getattr(node, "_handle_event", None), "__self__", None)
            nxt = owner if isinstance(owner, layer.Layer) and owner is not node else None
        if nxt is None:
            return None
        node = nxt
    return None


def _chunked_pipe(flow: http.HTTPFlow, handler: Any) -> bool:
    """The flow's server connection is an open plain HTTP/1 one answering in chunks (the
    pipe's): bytes framed as chunks can be handed in as read from it."""
    conn, resp = flow.server_conn, flow.response
    return (
        resp is not None
        and resp.headers.get("transfer-encoding", "").lower() == "chunked"
        and not conn.tls
        and conn.alpn in (None, b"", b"http/1.1")
        and conn.connected
        and conn in handler.transports
    )


def sink_for(flow: http.HTTPFlow) -> FlowSink | None:
    """The injection sink of a live flow, or None when it cannot take one and the pipe
    relays over its socket: this mitmproxy is not shaped as expected. A flow inside a
    CONNECT tunnel (regular-mode HTTPS), whose passthrough would take injected body bytes
    for tunnel bytes, gets a `TunnelSink`."""
    try:
        server = ctx.master.addons.get("proxyserver")
        handler = server.connections.get(flow.client_conn.id) if server is not None else None
        io = handler.transports.get(flow.client_conn) if handler is not None else None
        writer = io.writer if io is not None else None
        if isinstance(flow.server_conn, HandoffServer):
            if writer is None:
                return None
            return HandoffSink(flow, handler, writer, wire_for(flow, handler))
        outer = _first_http_layer(getattr(handler, "layer", None))
        # the outer HTTP layer must own the flow's server connection itself: in a tunnel
        # it maps it to the CONNECT stream, which would take injected bytes as tunnel bytes
        owner = outer.connections.get(flow.server_conn) if outer is not None else None
        direct = owner is not None and not isinstance(owner, HttpStream)
        tunnel = isinstance(owner, HttpStream) and _chunked_pipe(flow, handler)
        wire = wire_for(flow, handler) if direct or tunnel else None
    except Exception:  # an internal shape this version does not have
        log.debug("stream injection unavailable; relaying over the loopback socket",
                  exc_info=True)  # fmt: skip
        return None
    if not (direct or tunnel) or writer is None or not hasattr(handler, "server_event"):
        return None
    kind = FlowSink if direct else TunnelSink
    return kind(flow, handler, writer, wire)
