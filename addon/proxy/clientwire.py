"""The shortest way to a client's socket: a stream's body bytes framed and written there
without passing mitmproxy's layer stack.

Once mitmproxy has sent a streamed response's headers to an HTTP/1 client, every body chunk
it would send is the same few bytes: the chunk framing (`%x\\r\\n…\\r\\n`, when the answer
is chunked) and, when the client speaks TLS, that encrypted by the client connection's
OpenSSL object — which the layer stack (HTTP layer, tunnel stream, TLS layer, HTTP/1
server, each as a generator) spends most of a relayed event's CPU to produce. `ClientWire`
produces exactly those bytes and writes them to the client's transport itself. Everything
else still goes through mitmproxy: the headers before, and the end of the body (the last
chunk, a cut) after, arrive as for any upstream, so HTTP/1 framing, keep-alive and a cut
connection behave as before.

It is used only where the stack's work on a body chunk is stateless, checked on a live
flow (`wire_for`): an HTTP/1 client (HTTP/2 and 3 frame and flow-control per stream), no
body stored by mitmproxy (`store_streamed_bodies` off), a layer chain of known shape (HTTP
layers, CONNECT streams, next-layer and TLS layers, at most one TLS layer on the client
connection), and the flow's stream past its headers (`ready`). Anything else: None, and the
caller uses the stack as before. Leans on mitmproxy 12.2's internals (pinned < 12.3).
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.http import HttpLayer, HttpStream
from mitmproxy.proxy.layers.tls import ClientTLSLayer, ServerTLSLayer
from OpenSSL import SSL

log = logging.getLogger("orchestrator")
_MAX_DEPTH = 24
# layers that hand a body chunk's bytes for the client on unchanged (mode layers too)
_PLAIN = (HttpLayer, HttpStream, layer.NextLayer, ServerTLSLayer)
_MODES = "mitmproxy.proxy.layers.modes"


class ClientWire:
    """Encodes a flow's body chunks as its client connection expects them on the wire."""

    def __init__(self, stream: HttpStream, chain: list[layer.Layer], tls: Any,
                 chunked: bool, watchdog: Any) -> None:  # fmt: skip
        self._stream, self._chain, self._tls = stream, chain, tls
        self._chunked, self._watchdog = chunked, watchdog

    @property
    def ready(self) -> bool:
        """mitmproxy has sent the headers and streams the body, with nothing queued: the
        next bytes on the client connection are body bytes."""
        s = self._stream
        if s.server_state != s.state_stream_response_body:
            return False
        return all(getattr(n, "_paused", None) is None for n in self._chain)

    def encode(self, data: bytes) -> bytes:
        """The bytes the client connection carries for body chunk `data`."""
        raw = b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data
        self._watchdog.register_activity()  # as the stack would: the connection is busy
        if self._tls is None:
            return raw
        self._tls.sendall(raw)
        out = []
        while True:
            try:
                out.append(self._tls.bio_read(65535))
            except SSL.WantReadError:
                return b"".join(out)


def below(node: layer.Layer) -> layer.Layer | None:
    """The one layer under `node` (not an HTTP layer, which has many)."""
    if isinstance(node, HttpStream):
        return node.child_layer
    nxt = getattr(node, "layer", None) or getattr(node, "child_layer", None)
    if not isinstance(nxt, layer.Layer):  # mode layers hand their events on by method
        owner = getattr(getattr(node, "_handle_event", None), "__self__", None)
        nxt = owner if isinstance(owner, layer.Layer) and owner is not node else None
    return nxt


def _next(node: layer.Layer, flow: http.HTTPFlow) -> layer.Layer | None:
    """The layer under `node` on the way to `flow`'s stream."""
    if isinstance(node, HttpLayer):
        owner = node.connections.get(flow.server_conn)
        return owner if isinstance(owner, HttpStream) and owner.flow is not flow else None
    return below(node)


def _flow_stream(node: layer.Layer, flow: http.HTTPFlow) -> HttpStream | None:
    if not isinstance(node, HttpLayer):
        return None
    return next((s for s in node.streams.values() if getattr(s, "flow", None) is flow), None)


def wire_for(flow: http.HTTPFlow, handler: Any) -> ClientWire | None:
    """A `ClientWire` for `flow`, or None where the stack must do the work (see the module
    docstring)."""
    resp = flow.response
    if (
        resp is None
        or not flow.request.http_version.startswith("HTTP/1")
        or flow.client_conn.alpn not in (None, b"", b"http/1.1")
        or handler.layer.context.options.store_streamed_bodies
    ):
        return None
    chain: list[layer.Layer] = []
    tls: list[Any] = []
    node: layer.Layer | None = handler.layer
    stream: HttpStream | None = None
    for _ in range(_MAX_DEPTH):
        if node is None:
            return None
        chain.append(node)
        if isinstance(node, ClientTLSLayer):
            if node.conn is not flow.client_conn or node.tls is None:
                return None
            tls.append(node.tls)
        elif not isinstance(node, _PLAIN) and type(node).__module__ != _MODES:
            return None  # a layer that may transform client bytes: leave it to the stack
        stream = _flow_stream(node, flow)
        if stream is not None:
            break
        node = _next(node, flow)
    if stream is None or len(tls) > 1:
        return None
    chunked = "chunked" in resp.headers.get("transfer-encoding", "").lower()
    return ClientWire(stream, chain, tls[0] if tls else None, chunked, handler.timeout_watchdog)
