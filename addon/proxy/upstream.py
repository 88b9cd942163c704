"""The attempt engine: the only outbound I/O on the request path.

The addon hands it an ordered plan of targets. It walks the plan (retry / fallback decided
by `addon.fallback.next_step`), mapping every aiohttp exception and status to an Outcome,
until one target answers. Each attempt is judged for its failure domain
(`addon.routing.domains`): the rest of the walk skips a provider shown down and the
same-weights aliases of a model that failed, so a dead provider costs one attempt.

- non-streaming: the whole answer body is read, then returned;
- streaming: the answer counts only once headers *and the first SSE event* arrived within
  the first-token limit; the open response is then returned as a `LiveStream` for
  `addon.pipe` to relay to the client.

aiohttp is used here (not httpx) because it costs ~3 ms CPU per proxied call against
~11 ms for httpx at concurrency 32 on this class of machine (DESIGN.md, performance facts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import aiohttp

from addon.config.schema import Resilience
from addon.proxy.outbound import HOP_BY_HOP
from addon.proxy.resolver import GuardedResolver
from addon.routing.catalog import Candidate
from addon.routing.domains import Judgement, RuledOut
from addon.routing.fallback import (
    AttemptRecord,
    Fallback,
    GiveUp,
    Outcome,
    OutcomeKind,
    Retry,
    classify_failure,
    next_step,
)
from addon.routing.scoring import Scored
from addon.wire.sse import SSEEvent, SSEParser

log = logging.getLogger("orchestrator")

BREAKER_BUSY = "breaker half-open, probe in flight"  # why `acquire` refused, unless told


@dataclass(frozen=True)
class Target:
    """One attempt, ready to send: the chain entry it was built from, its URL, headers and
    the body with the provider's `model` spliced in; how its API's errors read (`classify`),
    what makes a 2xx body no answer (`vet`), and what makes a stream's first event a failure
    (`vet_first`)."""

    scored: Scored
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stream: bool
    classify: Callable[[int, bytes, str | None], Outcome] = classify_failure
    vet: Callable[[bytes], Outcome | None] | None = None
    vet_first: Callable[[list[SSEEvent]], Outcome | None] | None = None

    @property
    def candidate(self) -> Candidate:
        """The offering this target tries."""
        return self.scored.candidate


@dataclass
class LiveStream:
    """An upstream SSE response that has produced its first event; `addon.pipe` relays it."""

    response: aiohttp.ClientResponse
    parser: SSEParser
    first: list[SSEEvent]
    started: float  # monotonic time the attempt started
    first_event_at: float
    on_close: Callable[[], None] | None = None  # gives back the provider's connection slot

    def close(self) -> None:
        """Close the upstream response and give back the provider's connection slot."""
        self.response.close()
        if self.on_close is not None:
            release, self.on_close = self.on_close, None
            release()


@dataclass
class Answer:
    """A target's answer: a whole body, or an open stream with its first event read."""

    target: Target
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: LiveStream | None = None


@runtime_checkable
class Explained(Protocol):
    """A plan whose `acquire` notes why it refused a target (target key -> why)."""

    refusals: dict[str, str]


@dataclass
class EngineResult:
    """How a walk of the plan ended: the answer (if any), every attempt, the last outcome."""

    answer: Answer | None  # a 2xx from some target, or the final upstream error to pass on
    attempts: list[AttemptRecord] = field(default_factory=list)
    last: Outcome | None = None
    failed_answer: Answer | None = None  # the last upstream error response, if any
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (target key, why) not tried


def _response_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]


class Engine:
    """Owns the pooled aiohttp session; created on first use inside the event loop."""

    def __init__(self, resilience: Resilience) -> None:
        self.resilience = resilience
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self.local_hosts: frozenset[str] = frozenset()  # hosts of `local: true` providers
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._caps: dict[str, int | None] = {}

    def client(self) -> aiohttp.ClientSession:
        """The pooled session (opened on first use), with the guarded resolver; also for
        the router's own small reads (a host's `/models`)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(lambda host: host.lower() in self.local_hosts),
                limit=0,
                limit_per_host=0,
                ttl_dns_cache=60,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # one session serves every client: a cookie a provider sets (Cloudflare's
                # `__cf_bm`) must not be kept and sent with everyone's later calls
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def connections(self) -> dict[str, int]:
        """Upstream connections in use and idle in the pool (for /status and leak checks)."""
        conn = self._session.connector if self._session is not None else None
        if conn is None:
            return {"active": 0, "idle": 0}
        idle = sum(len(v) for v in getattr(conn, "_conns", {}).values())
        return {"active": len(getattr(conn, "_acquired", ())), "idle": idle}

    async def close(self) -> None:
        """Close the pooled session (a later attempt opens a new one)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def run(
        self,
        plan: Sequence[Target],
        *,
        on_outcome: Callable[[Candidate, Outcome, float, Judgement], None],
        acquire: Callable[[Candidate], Awaitable[bool]] | None = None,
        traceparent: Callable[[int], str] | None = None,
    ) -> EngineResult:
        """Walk `plan` until a target answers. A target is skipped (`EngineResult.skipped`)
        when this request's attempts so far rule it out (`domains.RuledOut`) or when
        `acquire(candidate)`, asked before its first attempt, refuses: a plan that is
        `Explained` says why (its provider's rate limit, the budget); else, or when it says
        nothing, a breaker refused (another request holds its half-open probe).
        `on_outcome(candidate, outcome, ms, judgement)` is called after each attempt."""
        res = self.resilience
        result = EngineResult(None)
        deadline = time.monotonic() + res.total_timeout_ms / 1000
        ruled = RuledOut()
        idx = 0
        tries_on_target = 0
        while idx < len(plan):
            target = plan[idx]
            c = target.candidate
            if tries_on_target == 0:
                why = ruled.skip(c)
                if why is None and acquire is not None and not await acquire(c):
                    told = plan.refusals if isinstance(plan, Explained) else {}
                    why = told.get(c.key) or BREAKER_BUSY
                if why is not None:
                    result.skipped.append((c.key, why))
                    idx += 1
                    continue
            tries_on_target += 1
            started = time.monotonic()
            n = len(result.attempts)  # this attempt's index: its span's traceparent upstream
            sent = target if traceparent is None else _traced(target, traceparent(n))
            answer, outcome = await self._attempt(sent, deadline)
            elapsed = (time.monotonic() - started) * 1000
            result.attempts.append(AttemptRecord(c.provider, c.provider_model_id, outcome,
                                                 started, round(elapsed, 1)))  # fmt: skip
            judged = ruled.judge(c, result.attempts, tries_on_target)
            on_outcome(c, outcome, elapsed, judged)
            result.last = outcome
            if outcome.ok:
                result.answer = answer
                return result
            if answer is not None:
                result.failed_answer = answer
            remaining = deadline - time.monotonic()
            step = next_step(
                outcome,
                tries_on_target=tries_on_target,
                attempts_total=len(result.attempts),
                max_attempts=res.max_attempts,
                has_next=ruled.any_left(plan[k].candidate for k in range(idx + 1, len(plan))),
                remaining_s=max(0.0, remaining),
                jitter=self._rng.random(),
            )
            if remaining <= 0:
                step = GiveUp("total_timeout_ms reached")
            elif isinstance(step, Retry) and judged.provider_down:
                step = Fallback(judged.reason)  # never retry a provider just shown down
            match step:
                case Retry(delay=d):
                    if d > 0:
                        await asyncio.sleep(d)
                case Fallback(larger_context=True):
                    idx = _next_larger(plan, idx)
                    tries_on_target = 0
                case Fallback():
                    idx += 1
                    tries_on_target = 0
                case GiveUp():
                    break
        return result

    def set_limits(self, limits: Mapping[str, int | None]) -> None:
        """Per-provider caps on concurrent upstream requests (`max_connections`)."""
        for name, cap in limits.items():
            if cap is None:
                self._slots.pop(name, None)
            elif name not in self._slots or self._caps.get(name) != cap:
                self._slots[name] = asyncio.Semaphore(cap)
            self._caps[name] = cap

    async def _attempt(self, t: Target, deadline: float) -> tuple[Answer | None, Outcome]:
        slot = self._slots.get(t.candidate.provider)
        if slot is None:
            return await self._attempt_unlimited(t, deadline)
        try:  # over the cap: queue (within the request's time budget) rather than fail
            async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                await slot.acquire()
        except TimeoutError:
            return None, Outcome(OutcomeKind.TIMEOUT, None,
                                 f"no free connection to {t.candidate.provider} within the "
                                 "time budget (max_connections)")  # fmt: skip
        answer, outcome = await self._attempt_unlimited(t, deadline)
        if answer is not None and answer.stream is not None:
            answer.stream.on_close = slot.release  # held until the stream is relayed
        else:
            slot.release()
        return answer, outcome

    async def _attempt_unlimited(self, t: Target, deadline: float) -> tuple[Answer | None, Outcome]:
        res = self.resilience
        started = time.monotonic()
        first_limit = min(res.first_token_timeout_ms / 1000, max(0.001, deadline - started))
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=res.connect_timeout_ms / 1000,
            connect=res.connect_timeout_ms / 1000,
        )
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_limit):
                resp = await self.client().post(
                    t.url,
                    data=t.body,
                    headers=list(t.headers),
                    timeout=timeout,
                    allow_redirects=False,
                )
                if resp.status >= 400 or not t.stream:
                    body = await self._read_body(resp)
                    headers = _response_headers(resp)
                    status = resp.status
                    resp.release()
                    answer = Answer(t, status, headers, body)
                    if status >= 400:
                        return answer, t.classify(status, body, resp.headers.get("Retry-After"))
                    if 200 <= status < 300:
                        bad = t.vet(body) if t.vet is not None else None
                        return answer, bad or Outcome(OutcomeKind.OK, status)
                    return answer, Outcome(
                        OutcomeKind.PROTOCOL_ERROR, status, f"unexpected status {status}"
                    )
                return await self._first_event(t, resp, started)
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: before that clause
            return None, Outcome(OutcomeKind.CONNECT_ERROR, None, f"cannot connect to "
                                 f"{t.candidate.provider} within {res.connect_timeout_ms} ms")  # fmt: skip
        except TimeoutError:
            if resp is not None:
                resp.close()
            what = "first token" if t.stream else "response"
            return None, Outcome(OutcomeKind.TIMEOUT, None,
                                 f"no {what} within {first_limit * 1000:.0f} ms")  # fmt: skip
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, ConnectionError) as e:  # fmt: skip
            return None, Outcome(OutcomeKind.CONNECT_ERROR, None, _describe(e))
        except aiohttp.ClientPayloadError as e:
            if resp is not None:
                resp.close()
            return None, Outcome(OutcomeKind.PROTOCOL_ERROR, None, f"broken response body: {e}")
        except aiohttp.ClientError as e:
            return None, Outcome(OutcomeKind.CONNECT_ERROR, None, _describe(e))

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        # Headers came within the first-byte limit; the rest of the body may take up to the
        # stall timeout between chunks.
        chunks: list[bytes] = []
        stall = self.resilience.stall_timeout_ms / 1000
        while True:
            async with asyncio.timeout(stall):
                chunk = await resp.content.readany()
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def _first_event(
        self, t: Target, resp: aiohttp.ClientResponse, started: float
    ) -> tuple[Answer | None, Outcome]:
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            body = await resp.read()
            resp.release()
            return Answer(t, resp.status, _response_headers(resp), body), Outcome(
                OutcomeKind.OK, resp.status
            )
        parser = SSEParser()
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                resp.close()
                return None, Outcome(
                    OutcomeKind.PROTOCOL_ERROR, resp.status, "stream ended before the first event"
                )
            events = parser.feed(chunk)
            if any(e.data for e in events):
                if t.vet_first is not None and (bad := t.vet_first(events)) is not None:
                    resp.close()  # an error event before any answer: a failed attempt
                    return None, bad
                live = LiveStream(resp, parser, events, started, time.monotonic())
                return Answer(t, resp.status, _response_headers(resp), stream=live), Outcome(
                    OutcomeKind.OK, resp.status
                )


def _traced(t: Target, traceparent: str) -> Target:
    """`t` with `traceparent` naming its attempt's span (in place of the client's)."""
    kept = tuple((k, v) for k, v in t.headers if k.lower() != "traceparent")
    return dataclasses.replace(t, headers=(*kept, ("traceparent", traceparent)))


def _next_larger(plan: Sequence[Target], idx: int) -> int:
    """Index of the next target whose context window is larger than plan[idx]'s."""
    have = plan[idx].candidate.context_tokens or 0
    for j in range(idx + 1, len(plan)):
        if (plan[j].candidate.context_tokens or 0) > have:
            return j
    return len(plan)  # (building a skipped target is cheap next to a failed attempt)


def _describe(e: BaseException) -> str:
    """An exception as text safe for clients and logs (no headers, no keys)."""
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect to {e.host}:{e.port}: {e.os_error.strerror or e.os_error}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "server closed the connection before answering"
    return f"{type(e).__name__}: {e}"
