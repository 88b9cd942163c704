"""The relay: a live upstream stream's events, passed on to the client as they arrive.

The relay forwards SSE events unchanged, except the usage-only chunk that the router itself
asked for (`include_usage` injected), which it keeps for the ledger. A stream that breaks or
stalls after the client got bytes is continued on another target when one can
(`addon.proxy.rescue`: its events are spliced into the same client stream); otherwise it is
never presented as success: the client gets an error event in its API's format
(`addon.proxy.streamfacts`) and then a cut connection, which the openai and anthropic SDKs
raise on. Where the response goes is an `Outlet` (the flow's in-process server connection,
`addon.proxy.handoff`, or the pipe's loopback socket); once mitmproxy has taken the
headers, its body goes to the flow's `Sink` (`addon.proxy.inject`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from addon.proxy.rescue import Continuation, Rescue
from addon.proxy.streamfacts import CHAT, StreamReader, StreamReport, worth_parsing
from addon.proxy.upstream import LiveStream
from addon.proxy.watchdog import Stalled, Watchdog
from addon.routing.fallback import OutcomeKind
from addon.wire.chat import is_usage_only_chunk
from addon.wire.splice import Splice
from addon.wire.sse import SSEEvent, event_json

log = logging.getLogger("orchestrator")
ATTACH_WAIT_S = 5.0  # how long the relay waits for mitmproxy to take the stream's headers


class Sink(Protocol):
    """Where the relay puts a stream's body bytes instead of its outlet (the
    flow's client stream: `addon.proxy.inject.FlowSink`)."""

    @property
    def route(self) -> str:
        """How the bytes reach the client, for the debug log."""
        ...

    async def write(self, data: bytes) -> None:
        """Deliver `data` to the client now; waits while the client is not reading; raises
        ConnectionResetError when it is gone."""
        ...


class Outlet(Protocol):
    """Where a relayed stream's response goes: the loopback socket (`_SocketOutlet`) or the
    flow's in-process server connection (`addon.proxy.handoff.Handoff`)."""

    async def start(self) -> None:
        """Send the status and headers."""
        ...

    async def write(self, data: bytes) -> None:
        """Body bytes, when no sink took the body."""
        ...

    async def end(self) -> None:
        """The clean end of the body."""
        ...

    async def cut_off(self, why: str) -> None:
        """End the body as broken: the client sees a cut stream."""
        ...


@dataclass
class Entry:
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
class Break:
    """How a stream broke: the attempt's outcome kind and the text the client is told."""

    kind: OutcomeKind
    why: str


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


async def _sink(outlet: Outlet, entry: Entry) -> None:
    """Once the headers are out: wait for mitmproxy to take them and give the flow's
    sink; without one (or after ATTACH_WAIT_S) the body goes to the outlet."""
    sink: Sink | None = None
    if entry.attached is not None:
        with contextlib.suppress(TimeoutError):
            sink = await asyncio.wait_for(entry.attached, ATTACH_WAIT_S)
    entry.out = sink.write if sink is not None else outlet.write
    log.debug("stream body %s", sink.route if sink is not None else "to the outlet itself")


async def relay(outlet: Outlet, entry: Entry) -> None:
    """Drive `entry`'s stream into `outlet` until it ends: the headers, the body (to the
    flow's sink once mitmproxy took the headers), a rescue when it breaks and another
    target can go on, else the error event and a cut; the outcome goes to its report."""
    report = entry.report
    entry.attached = asyncio.get_running_loop().create_future()
    try:
        await outlet.start()
        await _sink(outlet, entry)
        broke = await _write(entry, entry.live.first)
        report.first_event_at = entry.live.first_event_at
        while True:
            broke = broke or await _relay(entry)
            if broke is not None and report.delivered:
                # the client has the whole answer: a cut or a stall after the end is no
                # failure of it (nor of the target), and the body ends cleanly
                log.info("%s after the end of the stream; the client has the whole answer",
                         broke.why)  # fmt: skip
                broke = None
            if broke is None:
                break
            cont = await _rescue(entry, broke)
            if isinstance(cont, str):
                await _fail(outlet, entry, cont)
                return
            entry.live, entry.splice = cont.live, cont.splice
            broke = await _write(entry, cont.live.first)
    except (ConnectionResetError, asyncio.CancelledError) as e:
        # the client (via mitmproxy) went away: after the stream's end reached it (the
        # openai SDK closes on data: [DONE]) the answer is complete, else it is an abort
        if report.delivered:
            report.outcome = "ok"
        else:
            report.outcome, report.error = "client_abort", "client disconnected"
        entry.live.close()
        if isinstance(e, asyncio.CancelledError):
            raise
        return
    except Exception as e:  # anything else the relay did not expect: a bug, shown whole
        log.exception("internal error while relaying a stream")
        await _fail(outlet, entry, f"upstream stream broke: {type(e).__name__}")
        return
    finally:
        entry.live.close()
        report.ended_at = time.monotonic()
        if entry.rescue is not None:
            entry.rescue.settle(report)
    if report.outcome == "pending":
        report.outcome = "ok"
    try:
        await outlet.end()
    except ConnectionResetError:
        if not report.delivered:
            report.outcome = "client_abort"


async def _relay(entry: Entry) -> Break | None:
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
                return Break(OutcomeKind.TIMEOUT, why)
            except Exception as e:  # the upstream broke (payload error, reset, ...)
                cut = Break(
                    OutcomeKind.PROTOCOL_ERROR, f"upstream stream broke: {type(e).__name__}"
                )
                rest = _leftover(live)  # what came with the break (often the last events)
                return (await _write(entry, parser.feed(rest)) if rest else None) or cut

            dog.since = None
            if not chunk:
                return await _write(entry, parser.flush())
            broke = await _write(entry, parser.feed(chunk))
            if broke is not None:
                return broke
            if parser.oversized:
                return Break(OutcomeKind.PROTOCOL_ERROR, "upstream sent an SSE event larger "
                              f"than {parser.max_event_bytes} bytes")  # fmt: skip
    finally:
        dog.cancel()


def _leftover(live: LiveStream) -> bytes:
    """The body bytes aiohttp had read when it raised the error of a broken body (its
    `readany` raises without them). Reaches into aiohttp's StreamReader; nothing when its
    shape is not the known one."""
    content = live.response.content
    try:
        return content._read_nowait(-1) if content._buffer else b""
    except Exception:
        return b""


async def _rescue(entry: Entry, broke: Break) -> Continuation | str:
    """The continuation of a broken stream, or the client's error text."""
    entry.live.close()  # give the broken upstream's connection back before going on
    if entry.rescue is None:
        return broke.why
    events = [e if isinstance(e, dict) else _json(e) for e in entry.kept or ()]
    return await entry.rescue.broke(broke.kind, broke.why, events, entry.report)


async def _write(entry: Entry, events: list[SSEEvent]) -> Break | None:
    """Pass `events` on to the client (a continuation's through its splice); a break
    when one of them is a malformed or error event another target could take over."""
    report, reader, kept, splice = entry.report, entry.reader, entry.kept, entry.splice
    out: list[bytes] = []
    broke: Break | None = None
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
                broke = Break(OutcomeKind.PROTOCOL_ERROR, "upstream sent a malformed event")
                break
            continue
        if not isinstance(obj, dict):
            out.append(ev.raw)
            continue
        failure = report.failure
        reader.note(report, obj)
        if report.failure != failure and entry.rescue is not None and entry.rescue.has_capable():
            why = f"upstream reported an error in the stream: {report.failure}"
            report.failure = ""
            broke = Break(OutcomeKind.SERVER_ERROR, why)
            break
        for shown in splice.rewrite(obj) if splice is not None else (obj,):
            if entry.strip_usage and is_usage_only_chunk(shown):
                continue
            if report.keep_text:
                report.text.append(reader.delta_text(shown))
            out.append(ev.raw if splice is None else splice.render(shown))
            if kept is not None:
                kept.append(ev.data if splice is None else shown)
    if out and entry.out is not None:
        await entry.out(b"".join(out))
        report.delivered = report.saw_done
    return broke


async def _fail(outlet: Outlet, entry: Entry, why: str) -> None:
    report = entry.report
    report.outcome = "truncated"
    report.error = why
    log.warning("stream truncated: %s", why)
    with contextlib.suppress(ConnectionResetError):
        await (entry.out or outlet.write)(entry.reader.cut(why, report))
    with contextlib.suppress(ConnectionResetError):
        await outlet.cut_off(why)
