"""The pipe: where the dispatcher hands an open upstream stream over to reach the client.

mitmproxy cannot stream a response that an addon creates. Once the engine has a live
stream the dispatcher registers it here under an unguessable one-use token, and the adapter
hands it to its flow (`hand_off`): the flow gets an in-process server connection
(`addon.proxy.handoff`) whose answer the relay (`addon.proxy.relay`) drives. Where the
flow's layer stack is of a shape the handoff does not know, the adapter points the flow at
this module's loopback server instead (``http://127.0.0.1:<port>/pipe/<token>``), whose
response to mitmproxy the relay drives the same way. The loopback server also gives fixed
answers to requests whose body must not be buffered (`register_reply`: a 413, a 411).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from addon.proxy.exchange import Pending
from addon.proxy.relay import ATTACH_WAIT_S, Entry, Outlet, Sink, relay
from addon.proxy.rescue import Acquire, Ended, OnOutcome, Rescue
from addon.proxy.streamfacts import CHAT, StreamReader, StreamReport
from addon.proxy.upstream import Engine, LiveStream
from addon.proxy.view import View
from addon.routing.scoring import Scored

log = logging.getLogger("orchestrator")


class Handoff(Outlet, Protocol):
    """An outlet into a flow's in-process server connection (`addon.proxy.handoff`)."""

    async def requested(self, timeout: float) -> None:
        """Wait until mitmproxy sent the flow's request there (ConnectionResetError: it
        went away first, or not within `timeout` seconds)."""
        ...

    def abandon(self) -> None:
        """The flow ended before it took the stream."""
        ...

    def release(self) -> None:
        """Forget the connection in the layers that know it."""
        ...


class _SocketOutlet:
    """The pipe server's response to mitmproxy's request on the loopback socket."""

    def __init__(self, request: web.Request, entry: Entry) -> None:
        self.request = request
        self.resp = web.StreamResponse(status=entry.status, headers=entry.headers)
        self.resp.enable_chunked_encoding()

    async def start(self) -> None:
        await self.resp.prepare(self.request)

    async def write(self, data: bytes) -> None:
        await self.resp.write(data)

    async def end(self) -> None:
        await self.resp.write_eof()

    async def cut_off(self, why: str) -> None:
        # cut the connection without the final chunk: the client sees a broken stream
        if self.request.transport is not None:
            self.request.transport.abort()


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Pipe:
    """The loopback server (127.0.0.1, a free port) that relays registered upstream streams
    and fixed replies to mitmproxy, each under an unguessable one-use token."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._replies: dict[str, _Reply] = {}
        self._relaying: dict[str, Entry] = {}  # fetched by mitmproxy, not yet ended
        self._handoffs: dict[str, Handoff] = {}  # handed off, the flow not there yet
        self._tasks: set[asyncio.Task[None]] = set()
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
        self._entries[token] = Entry(live, status, headers, strip_usage, report, stall_s,
                                      reader, rescue=rescue, kept=kept)  # fmt: skip
        return token

    def rescuer(self, view: View, pending: Pending, chain: Sequence[Scored],
                answered: Scored | None, inject_usage: bool, *, engine: Engine,
                on_outcome: OnOutcome, acquire: Acquire, ended: Ended,
                trace: Callable[[int], str] | None = None) -> Rescue:  # fmt: skip
        """The `Rescue` of one stream about to be registered (`answered` is streaming it):
        the rest of the request's `chain`, tried through `engine` with the dispatcher's
        callbacks (`trace` names attempt n's span upstream), and this process's record of
        the targets that refused a prefill."""
        return Rescue(view, pending, chain, answered, inject_usage, engine=engine,
                      on_outcome=on_outcome, acquire=acquire, ended=ended,
                      incapable=self.incapable, trace=trace)  # fmt: skip

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
        its body goes to `sink` from now on (None: to the stream's outlet itself)."""
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
        handoff = self._handoffs.pop(token, None)
        if handoff is not None:
            handoff.abandon()
        entry = self._entries.pop(token, None)
        if entry is not None:
            entry.live.close()

    async def close(self) -> None:
        """Close every stream not yet fetched, then stop the server."""
        for token in list(self._entries):
            self.discard(token)
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        entry = self._entries.pop(token, None)
        if entry is None:
            return web.Response(status=404, text="unknown or used pipe token")
        outlet = _SocketOutlet(request, entry)
        self._relaying[token] = entry
        try:
            await relay(outlet, entry)
        finally:
            self._relaying.pop(token, None)
        return outlet.resp

    def head(self, token: str) -> tuple[int, list[tuple[str, str]]] | None:
        """The status and headers of a stream handed over and not yet fetched."""
        entry = self._entries.get(token)
        return (entry.status, entry.headers) if entry is not None else None

    def hand_off(self, token: str, handoff: Handoff) -> None:
        """Relay `token`'s stream into its flow's in-process server connection (`handoff`)
        instead of waiting for mitmproxy to fetch it over the loopback socket."""
        self._handoffs[token] = handoff
        task = asyncio.create_task(self._handed_off(token, handoff))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handed_off(self, token: str, handoff: Handoff) -> None:
        try:
            await handoff.requested(ATTACH_WAIT_S)
        except ConnectionResetError:  # the flow ended first: discard() closes the stream
            self.discard(token)
            handoff.release()
            return
        finally:
            self._handoffs.pop(token, None)
        entry = self._entries.pop(token, None)
        if entry is None:  # discarded meanwhile
            handoff.release()
            return
        self._relaying[token] = entry
        try:
            await relay(handoff, entry)
        finally:
            self._relaying.pop(token, None)
            handoff.release()
