"""The loopback pipe: how an upstream stream opened by the attempt engine reaches the client.

mitmproxy cannot stream a response that an addon creates, so once the engine has a live
stream the addon registers it here under an unguessable token and points the flow at
``http://127.0.0.1:<port>/pipe/<token>``; mitmproxy then streams this server's response to
the client. The relay forwards SSE events as they arrive, unchanged, except the usage-only
chunk that the router itself asked for (`include_usage` injected), which it keeps for the
ledger. A stream that breaks or stalls after the client got bytes is continued on another
target when one can (`addon.proxy.rescue`: its events are spliced into the same client
stream); otherwise it is never presented as success: the client gets an error event in its
API's format (`addon.proxy.streamfacts`) and then a cut connection, which the openai and
anthropic SDKs raise on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from addon.proxy.exchange import Pending
from addon.proxy.rescue import Acquire, Continuation, Ended, OnOutcome, Rescue
from addon.proxy.streamfacts import CHAT, StreamReader, StreamReport, worth_parsing
from addon.proxy.upstream import Engine, LiveStream
from addon.proxy.view import View
from addon.proxy.watchdog import Stalled, Watchdog
from addon.routing.fallback import OutcomeKind
from addon.routing.scoring import Scored
from addon.wire.chat import is_usage_only_chunk
from addon.wire.splice import Splice
from addon.wire.sse import SSEEvent, event_json

log = logging.getLogger("orchestrator")
ATTACH_WAIT_S = 5.0  # how long the relay waits for mitmproxy to take the stream's headers


class Sink(Protocol):
    """Where the relay puts a stream's body bytes instead of the loopback socket (the
    flow's client stream: `addon.proxy.inject.FlowSink`)."""

    @property
    def route(self) -> str:
        """How the bytes reach the client, for the debug log."""
        ...

    async def write(self, data: bytes) -> None:
        """Deliver `data` to the client now; waits while the client is not reading; raises
        ConnectionResetError when it is gone."""
        ...


@dataclass
class _Entry:
    live: LiveStream  # the upstream stream relayed now (a continuation's after a rescue)
    status: int
    headers: list[tuple[str, str]]
    strip_usage: bool
    report: StreamReport
    stall_s: float
    reader: StreamReader = CHAT
    created: float = field(default_factory=time.monotonic)
    rescue: Rescue | None = None
    kept: list[bytes | dict[str, Any]] | None = None  # what the client got, while rescuable
    splice: Splice | None = None  # how a continuation's events reach the client
    attached: asyncio.Future[Sink | None] | None = None  # the flow's sink, once it has one
    out: Callable[[bytes], Awaitable[None]] | None = None  # where body bytes go


@dataclass(frozen=True)
class _Break:
    """How a stream broke: the attempt's outcome kind and the text the client is told."""

    kind: OutcomeKind
    why: str


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


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
        self._relaying: dict[str, _Entry] = {}  # fetched by mitmproxy, not yet ended
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()
        self.port = 0
        self.incapable: set[str] = set()  # target keys that refused a prefill (`rescue`)

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
        rescue: Rescue | None = None,
    ) -> str:
        """Hand over an open upstream stream, read as `reader`'s API, with the `rescue` that
        continues it elsewhere should it break; the token its `/pipe/<token>` URL takes."""
        token = secrets.token_urlsafe(24)
        kept: list[bytes | dict[str, Any]] | None = [] if rescue and rescue.possible else None
        self._entries[token] = _Entry(live, status, headers, strip_usage, report, stall_s,
                                      reader, rescue=rescue, kept=kept)  # fmt: skip
        return token

    def rescuer(self, view: View, pending: Pending, chain: Sequence[Scored],
                answered: Scored | None, inject_usage: bool, *, engine: Engine,
                on_outcome: OnOutcome, acquire: Acquire, ended: Ended) -> Rescue:  # fmt: skip
        """The `Rescue` of one stream about to be registered (`answered` is streaming it):
        the rest of the request's `chain`, tried through `engine` with the dispatcher's
        callbacks, and this process's record of the targets that refused a prefill."""
        return Rescue(view, pending, chain, answered, inject_usage, engine=engine,
                      on_outcome=on_outcome, acquire=acquire, ended=ended,
                      incapable=self.incapable)  # fmt: skip

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
        try:
            async for _ in request.content.iter_any():  # drain without keeping anything
                pass
        except ConnectionResetError:  # the client gave up mid-body: nobody reads the answer
            log.debug("request body abandoned by the client before its end; its %d answer "
                      "is dropped", reply.status)  # fmt: skip
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    def attach(self, token: str, sink: Sink | None) -> None:
        """mitmproxy took the headers of `token`'s stream (its `responseheaders` hook ran):
        its body goes to `sink` from now on (None: over the loopback socket)."""
        entry = self._relaying.get(token)
        if entry is not None and entry.attached is not None and not entry.attached.done():
            entry.attached.set_result(sink)

    @property
    def relaying(self) -> int:
        """Streams being relayed now."""
        return len(self._relaying)

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
        token = request.match_info["token"]
        entry = self._entries.pop(token, None)
        if entry is None:
            return web.Response(status=404, text="unknown or used pipe token")
        self._relaying[token] = entry
        try:
            return await self._stream(request, entry)
        finally:
            self._relaying.pop(token, None)

    async def _sink(self, resp: web.StreamResponse, entry: _Entry) -> None:
        """Once the headers are out: wait for mitmproxy to take them and give the flow's
        sink; without one (or after ATTACH_WAIT_S) the body goes over the socket."""
        sink: Sink | None = None
        if entry.attached is not None:
            with contextlib.suppress(TimeoutError):
                sink = await asyncio.wait_for(entry.attached, ATTACH_WAIT_S)
        entry.out = sink.write if sink is not None else resp.write
        log.debug("stream body %s", sink.route if sink is not None else "over the pipe socket")

    async def _stream(self, request: web.Request, entry: _Entry) -> web.StreamResponse:
        resp = web.StreamResponse(status=entry.status, headers=entry.headers)
        resp.enable_chunked_encoding()
        report = entry.report
        entry.attached = asyncio.get_running_loop().create_future()
        try:
            await resp.prepare(request)
            await self._sink(resp, entry)
            broke = await self._write(resp, entry, entry.live.first)
            report.first_event_at = entry.live.first_event_at
            while True:
                broke = broke or await self._relay(resp, entry)
                if broke is None:
                    break
                cont = await self._rescue(entry, broke)
                if isinstance(cont, str):
                    await self._fail(resp, request, entry, cont)
                    return resp
                entry.live, entry.splice = cont.live, cont.splice
                broke = await self._write(resp, entry, cont.live.first)
        except (ConnectionResetError, asyncio.CancelledError) as e:
            # the client (via mitmproxy) went away
            report.outcome = "client_abort"
            report.error = "client disconnected"
            entry.live.close()
            if isinstance(e, asyncio.CancelledError):
                raise
            return resp
        except Exception as e:  # anything else the relay did not expect
            await self._fail(resp, request, entry, f"upstream stream broke: {type(e).__name__}")
            return resp
        finally:
            entry.live.close()
            report.ended_at = time.monotonic()
            if entry.rescue is not None:
                entry.rescue.settle(report)
        if report.outcome == "pending":
            report.outcome = "ok"
        try:
            await resp.write_eof()
        except ConnectionResetError:
            report.outcome = "client_abort"
        return resp

    async def _relay(self, resp: web.StreamResponse, entry: _Entry) -> _Break | None:
        """Relay the current upstream stream until it ends (None) or breaks. Whatever one
        read returns (every event that arrived together) is passed on in one write."""
        live = entry.live
        dog = Watchdog(live.response.content, entry.stall_s)
        clock = asyncio.get_running_loop().time
        readany, parser = live.response.content.readany, live.parser
        try:
            while True:
                dog.since = clock()
                try:
                    chunk = await readany()
                except Stalled:
                    why = f"upstream stalled for {entry.stall_s * 1000:.0f} ms"
                    return _Break(OutcomeKind.TIMEOUT, why)
                except Exception as e:  # the upstream broke (payload error, reset, ...)
                    return _Break(
                        OutcomeKind.PROTOCOL_ERROR, f"upstream stream broke: {type(e).__name__}"
                    )
                dog.since = None
                if not chunk:
                    return await self._write(resp, entry, parser.flush())
                broke = await self._write(resp, entry, parser.feed(chunk))
                if broke is not None:
                    return broke
                if parser.oversized:
                    return _Break(OutcomeKind.PROTOCOL_ERROR, "upstream sent an SSE event larger "
                                  f"than {parser.max_event_bytes} bytes")  # fmt: skip
        finally:
            dog.cancel()

    async def _rescue(self, entry: _Entry, broke: _Break) -> Continuation | str:
        """The continuation of a broken stream, or the client's error text."""
        entry.live.close()  # give the broken upstream's connection back before going on
        if entry.rescue is None:
            return broke.why
        events = [e if isinstance(e, dict) else _json(e) for e in entry.kept or ()]
        return await entry.rescue.broke(broke.kind, broke.why, events, entry.report)

    async def _write(
        self, resp: web.StreamResponse, entry: _Entry, events: list[SSEEvent]
    ) -> _Break | None:
        """Pass `events` on to the client (a continuation's through its splice); a break
        when one of them is a malformed or error event another target could take over."""
        report, reader, kept, splice = entry.report, entry.reader, entry.kept, entry.splice
        out: list[bytes] = []
        broke: _Break | None = None
        for ev in events:
            if ev.done:
                report.saw_done = True
                out.append(ev.raw)
                continue
            if not ev.data:
                out.append(ev.raw)
                continue
            report.events += 1
            if splice is None and not (
                report.model is None or report.keep_text or worth_parsing(ev.data, reader.markers)
            ):
                out.append(ev.raw)  # an ordinary content chunk: passed on without parsing
                if kept is not None:
                    kept.append(ev.data)
                continue
            obj = event_json(ev)
            if obj is None:
                # not JSON: a client SDK would raise on it and lose the whole answer, so it
                # is dropped (and counted in the ledger) while the rest of the stream flows,
                # unless another target can take over from here
                report.malformed += 1
                if entry.rescue is not None and entry.rescue.has_capable():
                    broke = _Break(OutcomeKind.PROTOCOL_ERROR, "upstream sent a malformed event")
                    break
                continue
            if not isinstance(obj, dict):
                out.append(ev.raw)
                continue
            failure = report.failure
            reader.note(report, obj)
            if (
                report.failure != failure
                and entry.rescue is not None
                and entry.rescue.has_capable()
            ):
                why = f"upstream reported an error in the stream: {report.failure}"
                report.failure = ""
                broke = _Break(OutcomeKind.SERVER_ERROR, why)
                break
            for shown in splice.rewrite(obj) if splice is not None else (obj,):
                if entry.strip_usage and is_usage_only_chunk(shown):
                    continue
                if report.keep_text:
                    report.text.append(reader.delta_text(shown))
                out.append(ev.raw if splice is None else splice.render(shown))
                if kept is not None:
                    kept.append(ev.data if splice is None else shown)
        if out:
            await (entry.out or resp.write)(b"".join(out))
        return broke

    async def _fail(
        self, resp: web.StreamResponse, request: web.Request, entry: _Entry, why: str
    ) -> None:
        report = entry.report
        report.outcome = "truncated"
        report.error = why
        log.warning("stream truncated: %s", why)
        with contextlib.suppress(ConnectionResetError):
            await (entry.out or resp.write)(entry.reader.cut(why, report))
        # cut the connection without the final chunk: the client sees a broken stream
        if request.transport is not None:
            request.transport.abort()
