"""The loopback pipe: how an upstream stream opened by the attempt engine reaches the client.

mitmproxy cannot stream a response that an addon creates, so once the engine has a live
stream the addon registers it here under an unguessable token and points the flow at
``http://127.0.0.1:<port>/pipe/<token>``; mitmproxy then streams this server's response to
the client. The relay forwards SSE events as they arrive, unchanged, except the usage-only
chunk that the router itself asked for (`include_usage` injected), which it keeps for the
ledger. A stream that breaks or stalls is never presented as success: the client gets an
error event in its API's format (`addon.proxy.streamfacts`) and then a cut connection, which
the openai and anthropic SDKs raise on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

from addon.proxy.streamfacts import CHAT, StreamReader, StreamReport, worth_parsing
from addon.proxy.upstream import LiveStream
from addon.wire.chat import is_usage_only_chunk
from addon.wire.sse import SSEEvent, event_json

log = logging.getLogger("orchestrator")


@dataclass
class _Entry:
    live: LiveStream
    status: int
    headers: list[tuple[str, str]]
    strip_usage: bool
    report: StreamReport
    stall_s: float
    reader: StreamReader = CHAT
    created: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Pipe:
    """The loopback server (127.0.0.1, a free port) that relays registered upstream streams
    and fixed replies to mitmproxy, each under an unguessable one-use token."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._replies: dict[str, _Reply] = {}
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()
        self.port = 0

    async def ensure_started(self) -> int:
        """Start the server on first use; its port."""
        async with self._lock:
            if self._runner is None:
                app = web.Application(handler_args={"max_field_size": 65536})
                app.router.add_post("/pipe/{token}", self._handle)
                app.router.add_post("/reply/{token}", self._reply)
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
                await site.start()
                server = site._server
                assert server is not None and server.sockets  # type: ignore[attr-defined]
                self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
                self._runner = runner
        return self.port

    def register(
        self,
        live: LiveStream,
        status: int,
        headers: list[tuple[str, str]],
        *,
        strip_usage: bool,
        stall_s: float,
        report: StreamReport,
        reader: StreamReader = CHAT,
    ) -> str:
        """Hand over an open upstream stream, read as `reader`'s API; the token its
        `/pipe/<token>` URL takes."""
        token = secrets.token_urlsafe(24)
        self._entries[token] = _Entry(live, status, headers, strip_usage, report, stall_s, reader)
        return token

    def register_reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> str:
        """A fixed answer for a request whose body must not be buffered (it is read and
        dropped as it arrives): how an oversized request gets a proper 413."""
        token = secrets.token_urlsafe(24)
        self._replies[token] = _Reply(status, headers, body)
        return token

    async def _reply(self, request: web.Request) -> web.Response:
        reply = self._replies.pop(request.match_info["token"], None)
        if reply is None:
            return web.Response(status=404, text="unknown or used reply token")
        async for _ in request.content.iter_any():  # drain without keeping anything
            pass
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    @property
    def waiting(self) -> int:
        """Streams handed over but not yet fetched by mitmproxy."""
        return len(self._entries)

    def discard(self, token: str) -> None:
        """The flow ended without fetching its stream (client gone): close the upstream."""
        entry = self._entries.pop(token, None)
        if entry is not None:
            entry.live.close()

    async def close(self) -> None:
        """Close every stream not yet fetched, then stop the server."""
        for token in list(self._entries):
            self.discard(token)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        entry = self._entries.pop(request.match_info["token"], None)
        if entry is None:
            return web.Response(status=404, text="unknown or used pipe token")
        resp = web.StreamResponse(status=entry.status, headers=entry.headers)
        resp.enable_chunked_encoding()
        report = entry.report
        live = entry.live
        try:
            await resp.prepare(request)
            await self._write(resp, entry, live.first)
            report.first_event_at = live.first_event_at
            while True:
                try:
                    async with asyncio.timeout(entry.stall_s):
                        chunk = await live.response.content.readany()
                except TimeoutError:
                    await self._fail(
                        resp, request, entry, f"upstream stalled for {entry.stall_s * 1000:.0f} ms"
                    )
                    return resp
                if not chunk:
                    await self._write(resp, entry, live.parser.flush())
                    break
                await self._write(resp, entry, live.parser.feed(chunk))
                if live.parser.oversized:
                    await self._fail(resp, request, entry, "upstream sent an SSE event larger "
                                     f"than {live.parser.max_event_bytes} bytes")  # fmt: skip
                    return resp
        except (ConnectionResetError, asyncio.CancelledError) as e:
            # the client (via mitmproxy) went away
            report.outcome = "client_abort"
            report.error = "client disconnected"
            live.close()
            if isinstance(e, asyncio.CancelledError):
                raise
            return resp
        except Exception as e:  # upstream broke mid-stream (payload error, reset, ...)
            await self._fail(resp, request, entry, f"upstream stream broke: {type(e).__name__}")
            return resp
        finally:
            live.close()
            report.ended_at = time.monotonic()
        if report.outcome == "pending":
            report.outcome = "ok"
        try:
            await resp.write_eof()
        except ConnectionResetError:
            report.outcome = "client_abort"
        return resp

    async def _write(self, resp: web.StreamResponse, entry: _Entry, events: list[SSEEvent]) -> None:
        report, reader = entry.report, entry.reader
        out = []
        for ev in events:
            if ev.done:
                report.saw_done = True
                out.append(ev.raw)
                continue
            if not ev.data:
                out.append(ev.raw)
                continue
            report.events += 1
            if not (
                report.model is None or report.keep_text or worth_parsing(ev.data, reader.markers)
            ):
                out.append(ev.raw)  # an ordinary content chunk: passed on without parsing
                continue
            obj = event_json(ev)
            if obj is None:
                # not JSON: a client SDK would raise on it and lose the whole answer, so it
                # is dropped (and counted in the ledger) while the rest of the stream flows
                report.malformed += 1
                continue
            if isinstance(obj, dict):
                reader.note(report, obj)
                if entry.strip_usage and is_usage_only_chunk(obj):
                    continue
                if report.keep_text:
                    report.text.append(reader.delta_text(obj))
            out.append(ev.raw)
        if out:
            await resp.write(b"".join(out))

    async def _fail(
        self, resp: web.StreamResponse, request: web.Request, entry: _Entry, why: str
    ) -> None:
        report = entry.report
        report.outcome = "truncated"
        report.error = why
        log.warning("stream truncated: %s", why)
        with contextlib.suppress(ConnectionResetError):
            await resp.write(entry.reader.cut(why, report))
        # cut the connection without the final chunk: the client sees a broken stream
        if request.transport is not None:
            request.transport.abort()
