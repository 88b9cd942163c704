"""Loopback fake of an OpenAI-compatible LLM upstream, with on-demand fault injection.

In-process (tests)::

    with FakeUpstream("a") as fake:
        fake.fail(RATE_LIMIT)                     # next request gets a 429
        ...                                       # point a client at fake.base_url
        fake.wait_for_requests(2)

Separate process (benchmarks)::

    python -m tests.fakeupstream --port 8901 --events 20 --event-gap-ms 5

It speaks chat and legacy completions (``fake_chat``), OpenAI Responses (``fake_responses``),
Anthropic Messages and count_tokens (``fake_messages``, errors in Anthropic's shape) and
embeddings (``fake_embeddings``); this module is the server, the test-side API and the faults.

Faults apply only to POSTs on the inference endpoints (chat/completions, completions,
embeddings, responses, messages, messages/count_tokens); every request, faulted or not, is
recorded in ``seen`` first.  For the streaming faults, "n events" counts *content* deltas:
the events before them (the chat role chunk, ``response.created``…, ``message_start``…)
always come first and are not counted.  Queued faults (``fail``) win over persistent ones
(``always``); a model-specific persistent fault wins over the catch-all one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests import fake_chat, fake_embeddings, fake_messages, fake_prefill, fake_responses
from tests.fake_stream import StreamPlan, Tokens

_ANTHROPIC = ("/v1/messages", "/v1/messages/count_tokens")
_INFERENCE = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    *_ANTHROPIC,
)
_NO_STREAM = ("/v1/embeddings", "/v1/messages/count_tokens")
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any | None
    at: float


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """Base class of all injectable faults."""


@dataclass(frozen=True)
class Status(Fault):
    """An HTTP error with an OpenAI-style JSON error body (and optional Retry-After); on the
    Anthropic endpoints the body is Anthropic's, its type ``type`` if that is an Anthropic
    error type, else the one for ``code``."""

    code: int
    message: str = "The server had an error while processing your request. Sorry about that!"
    type: str = "server_error"
    err_code: str | None = None
    retry_after: str | None = None
    param: str | None = None


@dataclass(frozen=True)
class Reset(Fault):
    """Abort the TCP connection before any response byte."""


@dataclass(frozen=True)
class Hang(Fault):
    """Accept the request and send nothing until the fake is stopped."""


@dataclass(frozen=True)
class SlowFirstToken(Fault):
    """Send 200 + headers at once, then nothing for ``delay`` seconds (streaming)."""

    delay: float


@dataclass(frozen=True)
class CutStream(Fault):
    """Send ``after_events`` content chunks, then abort the connection (no [DONE])."""

    after_events: int


@dataclass(frozen=True)
class Stall(Fault):
    """Send ``after_events`` content chunks, then go silent until the fake is stopped."""

    after_events: int


@dataclass(frozen=True)
class MalformedEvent(Fault):
    """Insert one non-JSON ``data:`` event before content chunk ``at_index``."""

    at_index: int


@dataclass(frozen=True)
class NoDone(Fault):
    """Finish the stream normally but omit its final marker: ``data: [DONE]`` (chat; usage
    included), ``message_stop`` (Messages; usage included), ``response.completed``
    (Responses, whose usage rides on it)."""


@dataclass(frozen=True)
class LingerAfterEnd(Fault):
    """Finish the stream normally, then hold the connection ``seconds`` before ending the
    body (a client that stops at ``data: [DONE]`` has closed by then)."""

    seconds: float


@dataclass(frozen=True)
class CutAfterEnd(Fault):
    """Finish the stream normally, its final marker included, then close the connection
    (a FIN, so the bytes before it still arrive) without ending the chunked body."""


@dataclass(frozen=True)
class Delay(Fault):
    """Wait ``seconds`` before sending anything, then answer normally."""

    seconds: float


RATE_LIMIT = Status(
    429,
    "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
    "Please try again in 1s. Visit https://platform.openai.com/account/rate-limits to learn more.",
    type="rate_limit_exceeded",
    err_code="rate_limit_exceeded",
    retry_after="1",
)


def context_length_exceeded(limit: int = 8192, requested: int = 10_000) -> Status:
    return Status(
        400,
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {requested} tokens. Please reduce the length of the messages.",
        type="invalid_request_error",
        err_code="context_length_exceeded",
        param="messages",
    )


def content_policy() -> Status:
    return Status(
        400,
        "The response was filtered due to the prompt triggering the content management policy "
        "(content_filter). Please modify your prompt and retry.",
        type="invalid_request_error",
        err_code="content_policy_violation",
        param="prompt",
    )


def overloaded() -> Status:
    """Anthropic's 529: the API is overloaded for everyone."""
    return Status(529, "Overloaded", type="overloaded_error", retry_after="1")


def prompt_too_long(tokens: int = 208_656, limit: int = 200_000) -> Status:
    """Anthropic's 400 for a prompt beyond the model's context window."""
    return Status(
        400, f"prompt is too long: {tokens} tokens > {limit} maximum", type="invalid_request_error"
    )


def _error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})


# --------------------------------------------------------------------------- server


class FakeUpstream:
    """An aiohttp server on 127.0.0.1, run on its own event loop in a background thread."""

    def __init__(
        self,
        name: str = "fake",
        *,
        content: str = "Hello from fake",
        events: int = 5,
        first_event_delay: float = 0.0,
        event_gap: float = 0.0,
        delay: float = 0.0,
        prompt_tokens: int = 11,
        completion_tokens: int = 7,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_tokens: int = 0,
        models: tuple[str, ...] = ("fake-model",),
        host: str = "127.0.0.1",
        port: int = 0,
        stamp_events: bool = False,
        prefill: str | None = None,
        tool_calls: bool = False,
    ) -> None:
        self.name, self.content, self.events = name, content, max(1, events)
        # append " @<time.perf_counter_ns()>" to each streamed content piece as it is written,
        # so a client on this machine can tell the gaps the upstream made from those it saw
        self.stamp_events = stamp_events
        self.first_event_delay, self.event_gap, self.delay = first_event_delay, event_gap, delay
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.cached_tokens, self.reasoning_tokens = cached_tokens, reasoning_tokens
        self.cache_write_tokens = cache_write_tokens
        # how it answers a prefilled request, and whether it streams tool calls (fake_prefill)
        self.prefill, self.tool_calls = prefill, tool_calls
        self.models, self.host, self.port = models, host, port
        self.seen: list[Seen] = []
        self.extra_headers: dict[str, str] = {}  # added to every answer (e.g. a Set-Cookie)
        self._cond = threading.Condition()
        self._queue: list[tuple[str | None, Fault]] = []
        self._always: dict[str | None, Fault] = {}
        self._stored: set[str] = set()  # ids of the Responses it produced and stored
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._startup_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---- lifecycle

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        ready = threading.Event()
        name = f"fakeupstream-{self.name}"
        self._thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            err, self._startup_error = self._startup_error, None
            raise RuntimeError(f"fake upstream {self.name!r} failed to start") from err
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:
                self._startup_error = exc
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(self._ashutdown())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            loop.close()

    async def _astart(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = self._runner.addresses[0][1]

    async def _ashutdown(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()  # wakes Hang/Stall/sleeping handlers, which abort and return
        if pending := {t for t in self._tasks if not t.done()}:
            _, late = await asyncio.wait(pending, timeout=1.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._runner.cleanup()

    # ---- test-side API (thread-safe)

    def requests(self, path_suffix: str | None = None) -> list[Seen]:
        with self._cond:
            return self._matching(path_suffix)

    def clear(self, *, faults: bool = True) -> None:
        """Forget recorded requests and (unless ``faults=False``) all queued/persistent faults."""
        with self._cond:
            self.seen.clear()
            self.extra_headers = {}
            if faults:
                self._queue.clear()
                self._always.clear()

    def fail(self, *faults: Fault, model: str | None = None) -> None:
        with self._cond:
            self._queue.extend((model, f) for f in faults)

    def always(self, fault: Fault | None, model: str | None = None) -> None:
        with self._cond:
            if fault is None:
                self._always.pop(model, None)
            else:
                self._always[model] = fault

    def wait_for_requests(
        self, n: int, timeout: float = 5.0, path_suffix: str | None = None
    ) -> list[Seen]:
        """Block until at least ``n`` (matching) requests were seen; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._matching(path_suffix)) >= n, timeout):
                got = len(self._matching(path_suffix))
                raise TimeoutError(f"{self.name}: saw {got} of {n} requests within {timeout}s")
            return self._matching(path_suffix)

    def stored_responses(self) -> set[str]:
        """The ids of the responses it produced with ``store`` on (the API's default): the
        ids a later ``previous_response_id`` may name."""
        with self._cond:
            return set(self._stored)

    def _matching(self, path_suffix: str | None) -> list[Seen]:
        return [s for s in self.seen if path_suffix is None or s.path.endswith(path_suffix)]

    def _take_fault(self, model: str | None) -> Fault | None:
        with self._cond:
            for i, (want, fault) in enumerate(self._queue):
                if want is None or want == model:
                    del self._queue[i]
                    return fault
            return self._always.get(model) if model in self._always else self._always.get(None)

    # ---- request handling (event-loop thread)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await self._dispatch(request)
        except ConnectionError:  # client went away mid-response
            return self._abort(request, web.Response())
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        at = time.monotonic()
        body = await request.read()
        parsed: Any = None
        if body:
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(body)
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        with self._cond:
            self.seen.append(Seen(request.method, request.path, headers, body, parsed, at))
            self._cond.notify_all()

        path, method = request.path.rstrip("/"), request.method
        if method == "GET" and path == "/v1/models":
            return self._json(200, self._models_body())
        if path.startswith("/v1/responses/") and method in ("GET", "DELETE"):
            return self._stored_call(method, path.removeprefix("/v1/responses/"))
        if method != "POST" or path not in _INFERENCE:
            msg = f"Invalid URL ({method} {request.path})"
            return self._json(404, _error_body(msg, "invalid_request_error"))
        anthropic = path in _ANTHROPIC
        if not isinstance(parsed, dict):
            if anthropic:
                return self._json(400, fake_messages.error_body(400, "There was an issue with "
                                  "the format of your request: invalid JSON"))  # fmt: skip
            msg = (
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON.)"
            )
            return self._json(400, _error_body(msg, "invalid_request_error"))

        model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
        fault = self._take_fault(model)
        stream = parsed.get("stream") is True and path not in _NO_STREAM
        pre = self.delay + (fault.seconds if isinstance(fault, Delay) else 0.0)
        if isinstance(fault, Reset):
            return self._abort(request, web.Response())
        if isinstance(fault, Hang):
            pre = math.inf
        if pre > 0 and not await self._sleep(pre):
            return self._abort(request, web.Response())
        if isinstance(fault, Status):
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            if anthropic:
                err = fake_messages.error_body(fault.code, fault.message, fault.type)
            else:
                err = _error_body(fault.message, fault.type, fault.err_code, fault.param)
            return self._json(fault.code, err, extra)
        model = model or "fake-model"
        cont = fake_prefill.rest(path, parsed, self.content, self.prefill) if stream else None
        if isinstance(cont, bytes):  # the prefill refused
            return self._json(400, cont)
        if path == "/v1/responses":
            return await self._responses(request, model, parsed, fault, stream)
        if path == "/v1/messages":
            mid = fake_messages.new_id("msg")
            if stream:
                plan = fake_messages.plan(
                    mid, model, self._pieces(cont), self._tokens(parsed, cont)
                )
                return await self._play(request, plan, fault)
            payload = fake_messages.message(mid, model, self.content, self._tokens())
        elif path == "/v1/messages/count_tokens":
            payload = {"input_tokens": self.prompt_tokens}
        elif stream and self.tool_calls and parsed.get("tools"):
            plan = fake_prefill.tool_plan(model, self._pieces(), self._tokens())
            return await self._play(request, plan, fault)
        elif stream:
            pieces, tokens = self._pieces(cont), self._tokens(parsed, cont)
            plan = fake_chat.plan(path, model, parsed, pieces, tokens)
            return await self._play(request, plan, fault)
        elif path == "/v1/embeddings":
            payload = fake_embeddings.body(model, parsed, self.prompt_tokens)
        else:
            payload = fake_chat.completion(path, model, self.content, self._tokens())
        return await self._send_whole(request, payload, fault)

    def _stored_call(self, method: str, rid: str) -> web.Response:
        """Retrieve (GET) or delete (DELETE) a Responses answer this fake stored; 404 in
        OpenAI's format for any other id."""
        with self._cond:
            known = rid in self._stored
            if known and method == "DELETE":
                self._stored.discard(rid)
        if not known:
            msg = f"Response with id '{rid}' not found."
            return self._json(404, _error_body(msg, "invalid_request_error"))
        if method == "DELETE":
            body = {"id": rid, "object": "response.deleted", "deleted": True}
            return self._json(200, orjson.dumps(body))
        payload = fake_responses.response(
            rid, "stored", {}, created_at=int(time.time()), item_id=fake_responses.new_id("msg"),
            text=self.content, tokens=self._tokens(),
        )  # fmt: skip
        return self._json(200, orjson.dumps(payload))

    async def _responses(
        self,
        request: web.Request,
        model: str,
        req: dict[str, Any],
        fault: Fault | None,
        stream: bool,
    ) -> web.StreamResponse:
        """Answer a Responses request; 400 if it continues a response this fake never stored."""
        previous = req.get("previous_response_id")
        if previous is not None:
            with self._cond:
                known = previous in self._stored
            if not known:
                return self._json(400, fake_responses.previous_not_found(str(previous)))
        rid = fake_responses.new_id("resp")
        if req.get("store") is not False:
            with self._cond:
                self._stored.add(rid)
        created = int(time.time())
        if stream:
            plan = fake_responses.plan(rid, model, req, self._pieces(), self._tokens(), created)
            return await self._play(request, plan, fault)
        payload = fake_responses.response(
            rid, model, req, created_at=created, item_id=fake_responses.new_id("msg"),
            text=self.content, tokens=self._tokens(),
        )  # fmt: skip
        return await self._send_whole(request, payload, fault)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (inf = forever); False if the fake started stopping."""
        assert self._stopping is not None
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(seconds) else seconds):
                    await self._stopping.wait()
        return not self._stopping.is_set()

    @staticmethod
    def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        return resp  # aiohttp's own write to the dead transport fails quietly

    def _headers(self) -> dict[str, str]:
        return {"x-fake-upstream": self.name, "x-request-id": f"req_{uuid.uuid4().hex}",
                **self.extra_headers}  # fmt: skip

    def _json(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> web.Response:
        headers = self._headers() | (extra or {})
        ctype = "application/json"
        return web.Response(status=status, body=body, content_type=ctype, headers=headers)

    async def _send_whole(
        self, request: web.Request, payload: dict[str, Any], fault: Fault | None
    ) -> web.StreamResponse:
        body = orjson.dumps(payload)
        if isinstance(fault, MalformedEvent):
            return self._json(200, body[: len(body) // 2])
        if not isinstance(fault, CutStream | Stall):
            return self._json(200, body)
        # Truncated body: promise the full Content-Length, deliver half, then abort or stall.
        headers = self._headers() | {"Content-Type": "application/json"}
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        if isinstance(fault, Stall):
            await self._sleep(math.inf)
        return self._abort(request, resp)

    # ---- payloads

    def _tokens(self, req: dict[str, Any] | None = None, streamed: str | None = None) -> Tokens:
        if req is not None and streamed is not None:  # a continuation (fake_prefill)
            return fake_prefill.tokens(self.prompt_tokens, req, streamed)
        return Tokens(
            self.prompt_tokens,
            self.completion_tokens,
            cached=self.cached_tokens,
            reasoning=self.reasoning_tokens,
            cache_write=self.cache_write_tokens,
        )

    def _models_body(self) -> bytes:
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": self.name}
            for m in self.models
        ]
        return orjson.dumps({"object": "list", "data": data})

    def _pieces(self, rest: str | None = None) -> list[str]:
        n, text = self.events, self.content
        if rest is not None:  # a continuation: as many pieces as that share of the content
            n, text = max(1, round(n * len(rest) / max(1, len(text)))), rest
        cuts = [round(i * len(text) / n) for i in range(n + 1)]
        return [text[cuts[i] : cuts[i + 1]] for i in range(n)]

    # ---- streaming

    async def _play(
        self, request: web.Request, plan: StreamPlan, fault: Fault | None
    ) -> web.StreamResponse:
        """Send a planned stream, applying the streaming faults to its content deltas."""
        pieces, body = self._pieces(), list(plan.body)

        def at(kind: type[Fault], attr: str) -> int:
            return min(max(getattr(fault, attr), 0), len(body)) if isinstance(fault, kind) else -1

        cut, stall = at(CutStream, "after_events"), at(Stall, "after_events")
        bad = at(MalformedEvent, "at_index")
        resp = web.StreamResponse(status=200, headers=self._headers() | _SSE_HEADERS)
        await resp.prepare(request)  # headers go out now
        first = fault.delay if isinstance(fault, SlowFirstToken) else self.first_event_delay
        if not await self._sleep(first):
            return self._abort(request, resp)
        for chunk in plan.head:
            await resp.write(chunk)
        for i in range(len(body) + 1):
            if i == cut:
                return self._abort(request, resp)
            if i == stall:
                await self._sleep(math.inf)
                return self._abort(request, resp)
            if i == bad:
                await resp.write(plan.malformed)
            if i == len(body):
                break
            if i and self.event_gap > 0 and not await self._sleep(self.event_gap):
                return self._abort(request, resp)
            if self.stamp_events:
                body[i] = plan.render(i, f"{pieces[i]} @{time.perf_counter_ns()}")
            await resp.write(body[i])
        for chunk in plan.tail:
            await resp.write(chunk)
        if plan.end is not None and not isinstance(fault, NoDone):
            await resp.write(plan.end)
        if isinstance(fault, LingerAfterEnd) and not await self._sleep(fault.seconds):
            return self._abort(request, resp)
        if isinstance(fault, CutAfterEnd):
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    p = argparse.ArgumentParser(prog="python -m tests.fakeupstream", description=doc)
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed on stdout)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="fake")
    p.add_argument("--content", default="Hello from fake")
    p.add_argument("--delay-ms", type=float, default=0.0, help="delay before every answer")
    p.add_argument("--events", type=int, default=5, help="content chunks per stream")
    p.add_argument("--event-gap-ms", type=float, default=0.0)
    p.add_argument("--first-event-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    fake = FakeUpstream(
        args.name,
        content=args.content,
        events=args.events,
        delay=args.delay_ms / 1000,
        event_gap=args.event_gap_ms / 1000,
        first_event_delay=args.first_event_ms / 1000,
        host=args.host,
        port=args.port,
    )
    with fake:
        print(f"fakeupstream {fake.name} listening on {fake.base_url}", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
