"""What the adapter reads from and writes to a mitmproxy request: its authority, and where
it goes (the loopback pipe); header pairs as mitmproxy's `Headers`."""

from __future__ import annotations

from mitmproxy import http


class Authorities:
    """The `host[:port]` each request is for (its Host header preferred, as mitmproxy's
    `pretty_host`), remembered for the few hosts a proxy sees: parsing the authority is a
    regex and an IDNA decode, run twice per request otherwise. One per adapter."""

    MAX = 1024  # more hosts than this (transparent capture): start over

    def __init__(self) -> None:
        self._known: dict[tuple[str | None, str, int, str], str] = {}

    def of(self, req: http.Request) -> str:
        key = (req.host_header, req.host, req.port, req.scheme)
        known = self._known.get(key)
        if known is not None:
            return known
        host = req.pretty_host.lower()
        default = 443 if req.scheme == "https" else 80
        known = host if req.port == default else f"{host}:{req.port}"
        if len(self._known) >= self.MAX:
            self._known.clear()
        self._known[key] = known
        return known


def point_at_pipe(req: http.Request, port: int, path: str, *, keep_length: bool) -> None:
    """Send this flow to the in-process loopback pipe instead of any upstream."""
    framing = {"content-length", "transfer-encoding"} if keep_length else set()
    keep = {"content-type", "accept"} | framing
    pairs = [(k, v) for k, v in req.headers.items(multi=True) if k.lower() in keep]
    req.scheme = "http"
    req.host = "127.0.0.1"
    req.port = port
    req.path = path
    req.headers = as_headers([*pairs, ("host", f"127.0.0.1:{port}")])


def as_headers(pairs: list[tuple[str, str]]) -> http.Headers:
    return http.Headers([(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in pairs])
