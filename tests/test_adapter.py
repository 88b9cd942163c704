"""The mitmproxy adapter in-process (`ClientAuth` + `Orchestrator`), with mitmproxy's own test
harness: flows are made with `tflow`/`tutils` and pushed through the hooks of both addons in
their registered order. No socket is opened: the attempt engine and the loopback pipe are
replaced by fakes that record what they were given."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import sys
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest
import yaml
from mitmproxy import exceptions, http
from mitmproxy.proxy.layers.http import (
    HttpConnectHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)

from addon.proxy import modellist, options, process
from addon.proxy.adapter import Orchestrator
from addon.proxy.admin import AdminServer
from addon.proxy.banner import startup_lines
from addon.proxy.clientauth import AUTH_META, ClientAuth
from addon.proxy.dispatch import Dispatcher
from addon.proxy.process import Listeners, router_addons
from addon.proxy.upstream import Answer, EngineResult, Target
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.store.sqlite_ledger import LedgerRow

with warnings.catch_warnings():  # mitmproxy's flow-filter grammar uses pyparsing's old names
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import taddons, tflow, tutils

ROUTER_KEY = "router-key-team-a-0123"
PROVIDER_KEY = "sk-alpha-provider-key"
CLIENT_OWN_KEY = "sk-client-own-key"
PIPE_PORT = 47001  # the pipe is never started: flows pointed at it are never fetched
CHAT = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Say hi"}]}'
ANSWER = b'{"model":"m-alpha","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
REVERSE = "reverse:https://api.openai.com"
T = TypeVar("T")


def _write_config(root: Path, *, mode: str, clients: bool, budget: bool, limit: int = 2048) -> Path:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "mode": mode,
        "intercept": ["api.openai.com"],
        "default_profile": "balanced",
        "rules": "rules/",
        "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
        "providers": {
            "alpha": {
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "ORQ_TEST_KEY_ALPHA",
                "local": True,
            },
        },
        "max_request_bytes": limit,
        "admin": {"enabled": False},
    }
    if clients:
        settings["clients"] = [{"name": "team-a", "key_env": "ORQ_TEST_ROUTER_KEY"}]
    rules: dict[str, Any] = {
        "profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1}}}},
        "models.yaml": {
            "models": [
                {
                    "id": "m-alpha",
                    "provider": "alpha",
                    "input_per_mtok": 1,
                    "output_per_mtok": 2,
                    "context_tokens": 128000,
                    "quality": 1300,
                }
            ]
        },
    }
    if budget:
        rules["policies.yaml"] = {"policies": [
            {"name": "metered", "match": {}, "budget": {"usd": 100, "per": "day"}},
        ]}  # fmt: skip
    (root / "rules").mkdir(parents=True)
    for name, data in rules.items():
        (root / "rules" / name).write_text(yaml.safe_dump(data))
    path = root / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@dataclass
class Router:
    """Both addons under `taddons.context`, with what the fakes saw."""

    tctx: taddons.context
    auth: ClientAuth
    orch: Orchestrator
    d: Dispatcher
    rows: list[LedgerRow] = field(default_factory=list)
    replies: list[tuple[int, list[tuple[str, str]], bytes]] = field(default_factory=list)
    sent: list[Target] = field(default_factory=list)  # what the fake engine was asked to send

    async def fire(self, hook: Any) -> None:
        """One hook through every addon in registration order (mitmproxy's chain)."""
        for addon in self.tctx.master.addons.chain:
            await self.tctx.master.addons.invoke_addon(addon, hook)

    def engine(self, run: Callable[[list[Target]], Awaitable[EngineResult]]) -> None:
        """Replace the attempt engine's network walk with `run(plan)`."""

        async def fake_run(plan: Any, *, on_outcome: Any, acquire: Any = None,
                           traceparent: Any = None) -> EngineResult:  # fmt: skip
            self.sent.append(plan[0])
            return await run(list(plan))

        self.d.engine.run = fake_run

    def reset(self) -> None:
        """Forget what the previous test recorded and put its fakes back."""
        self.rows.clear()
        self.replies.clear()
        self.sent.clear()
        for obj, name in ((self.d.engine, "run"), (self.d.pipe, "ensure_started"),
                          (self.d.pipe, "register")):  # fmt: skip
            vars(obj).pop(name, None)
        self.d.pipe.port = PIPE_PORT


class Routers:
    """One router per configuration for the whole module, all on one event loop: building
    one (config, catalog, ledger thread) costs far more than a test case does."""

    def __init__(self, roots: pytest.TempPathFactory) -> None:
        self.loop = asyncio.new_event_loop()
        self._roots = roots
        self._stack = AsyncExitStack()
        self._built: dict[tuple[tuple[str, Any], ...], Router] = {}

    def get(self, **config: Any) -> Router:
        """The router for this configuration (see `_write_config`), reset for a new test."""
        key = tuple(sorted(config.items()))
        if key not in self._built:
            made = router(self._roots.mktemp("router"), **config)
            self._built[key] = self.run(self._stack.enter_async_context(made))
        r = self._built[key]
        r.reset()
        return r

    def run(self, aw: Awaitable[T]) -> T:
        """Run a test's coroutine on the routers' loop."""
        return self.loop.run_until_complete(aw)

    def close(self) -> None:
        self.run(self._stack.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routers]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORQ_TEST_KEY_ALPHA", PROVIDER_KEY)
        mp.setenv("ORQ_TEST_ROUTER_KEY", ROUTER_KEY)
        rs = Routers(tmp_path_factory)
        try:
            yield rs
        finally:
            rs.close()


@asynccontextmanager
async def router(root: Path, *, mode: str = "regular", clients: bool = False,
                 budget: bool = False, limit: int = 2048) -> AsyncIterator[Router]:  # fmt: skip
    path = _write_config(root, mode=mode, clients=clients, budget=budget, limit=limit)
    auth, orch = router_addons()
    assert isinstance(auth, ClientAuth) and isinstance(orch, Orchestrator)
    with taddons.context(auth, orch) as tctx:
        tctx.configure(orch, orchestrator_config=str(path))
        d = orch.dispatcher
        assert d is not None
        r = Router(tctx, auth, orch, d)
        d.ledger = type("Sink", (), {"record": lambda _, row: r.rows.append(row)})()
        d.pipe.port = PIPE_PORT

        def register_reply(status: int, headers: list[tuple[str, str]], body: bytes) -> str:
            r.replies.append((status, headers, body))
            return "reply-token"

        d.pipe.register_reply = register_reply
        try:
            yield r
        finally:
            await tctx.master.done()  # the addons' `done` (runtime stopped), log handler removed


def _basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def _flow(*, method: str = "POST", path: str = "/v1/chat/completions", body: bytes = CHAT,
          headers: list[tuple[str, str]] | None = None, host: str = "api.openai.com",
          client_conn: Any = None) -> http.HTTPFlow:  # fmt: skip
    pairs = headers if headers is not None else [("content-type", "application/json"),
                                                 ("content-length", str(len(body)))]  # fmt: skip
    req = tutils.treq(method=method.encode(), scheme=b"https", host=host, port=443,
                      path=path.encode(), headers=http.Headers([(k.encode(), v.encode())
                                                                for k, v in pairs]),
                      content=body)  # fmt: skip
    return tflow.tflow(req=req, client_conn=client_conn)


def _connect(proxy_auth: str | None) -> http.HTTPFlow:
    headers = [("proxy-authorization", proxy_auth)] if proxy_auth is not None else []
    return _flow(method="CONNECT", path="", body=b"", headers=headers)


def _ok(plan: list[Target]) -> Awaitable[EngineResult]:
    async def answer() -> EngineResult:
        target = plan[0]
        attempt = AttemptRecord("alpha", "m-alpha", Outcome(OutcomeKind.OK, 200), 0.0, 1.0)
        return EngineResult(Answer(target, 200, [("content-type", "application/json")], ANSWER),
                            [attempt], Outcome(OutcomeKind.OK, 200))  # fmt: skip

    return answer()


async def _through(r: Router, f: http.HTTPFlow) -> None:
    """requestheaders, request, and (if answered) response, as mitmproxy runs them."""
    await r.fire(HttpRequestHeadersHook(f))
    if f.response is None:
        await r.fire(HttpRequestHook(f))
    if f.response is not None:
        await r.fire(HttpResponseHook(f))


def _error(f: http.HTTPFlow) -> dict[str, Any]:
    assert f.response is not None
    return json.loads(f.response.content or b"")["error"]


# --------------------------------------------------------------------------- 407 / 401


BAD_PROXY_AUTH = [None, "", "Bearer nope", _basic("team-b", ROUTER_KEY), "Basic !!!", "Digest x"]


@pytest.mark.parametrize("proxy_auth", BAD_PROXY_AUTH)
def test_connect_without_a_valid_client_key_gets_407(routers: Routers,
                                                      proxy_auth: str | None) -> None:  # fmt: skip
    r = routers.get(clients=True)

    async def test() -> None:
        f = _connect(proxy_auth)
        await r.fire(HttpConnectHook(f))
        assert f.response is not None and f.response.status_code == 407
        assert f.response.headers["proxy-authenticate"] == 'Basic realm="local-ai-orchestrator"'
        assert _error(f)["code"] == "client_auth_required"
        assert f.client_conn not in r.auth.authenticated

    routers.run(test())


@pytest.mark.parametrize("proxy_auth", BAD_PROXY_AUTH)
def test_a_plain_request_without_a_valid_client_key_gets_407(
    routers: Routers, proxy_auth: str | None
) -> None:
    r = routers.get(clients=True)

    async def test() -> None:
        extra = [("proxy-authorization", proxy_auth)] if proxy_auth is not None else []
        f = _flow(headers=[("content-length", str(len(CHAT))), *extra])
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 407
        assert "Proxy-Authorization" in _error(f)["message"]
        assert r.sent == [] and r.rows == []  # refused before any routing work

    routers.run(test())


@pytest.mark.parametrize("auth", [None, "Bearer nope", f"Basic {ROUTER_KEY}", ROUTER_KEY])
def test_reverse_mode_without_a_valid_router_key_gets_401(
    routers: Routers, auth: str | None
) -> None:
    r = routers.get(mode=REVERSE, clients=True)

    async def test() -> None:
        extra = [("authorization", auth)] if auth is not None else []
        f = _flow(headers=[("content-length", str(len(CHAT))), *extra])
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 401
        assert "proxy-authenticate" not in f.response.headers
        assert _error(f)["code"] == "client_auth_required"
        assert "authorization" not in f.request.headers  # never forwarded, even refused
        assert r.sent == []

    routers.run(test())


def test_a_valid_connect_authenticates_its_connection_until_it_is_gone(routers: Routers) -> None:
    r = routers.get(clients=True)

    async def test() -> None:
        r.engine(_ok)
        connect = _connect(_basic("team-a", ROUTER_KEY))
        await r.fire(HttpConnectHook(connect))
        assert connect.response is None
        assert r.auth.authenticated[connect.client_conn] == "team-a"
        conn, conn_id = weakref.ref(connect.client_conn), connect.client_conn.id
        # a request inside the tunnel carries no credentials of its own
        f = _flow(client_conn=connect.client_conn)
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 200
        assert f.metadata[AUTH_META] == {"client": "team-a"}
        assert [row.client for row in r.rows] == ["team-a"]
        # the map forgets a connection once nothing holds it any more
        del connect, f
        gc.collect()
        assert conn() is None
        assert conn_id not in {c.id for c in r.auth.authenticated}

    routers.run(test())


VALID = [("regular", "proxy-authorization", _basic("team-a", ROUTER_KEY)),
         ("regular", "proxy-authorization", f"Bearer {ROUTER_KEY}"),
         (REVERSE, "authorization", f"Bearer {ROUTER_KEY}")]  # fmt: skip


@pytest.mark.parametrize(("mode", "header", "value"), VALID)
def test_a_valid_client_key_passes_and_is_never_forwarded(
    routers: Routers, mode: str, header: str, value: str
) -> None:
    r = routers.get(mode=mode, clients=True)

    async def test() -> None:
        r.engine(_ok)
        f = _flow(headers=[("content-type", "application/json"),
                           ("content-length", str(len(CHAT))), (header, value)])  # fmt: skip
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 200
        assert f.response.headers["x-orchestrator-model"] == "m-alpha"
        assert f.metadata[AUTH_META] == {"client": "team-a"}
        (target,) = r.sent
        sent = dict((k.lower(), v) for k, v in target.headers)
        assert ROUTER_KEY not in json.dumps(target.headers)
        assert "proxy-authorization" not in sent
        assert sent["authorization"] == f"Bearer {PROVIDER_KEY}"  # the provider's own key
        assert [(row.client, row.outcome) for row in r.rows] == [("team-a", "ok")]

    routers.run(test())


@pytest.mark.parametrize(("mode", "header", "value"), VALID)
def test_a_request_mitmproxy_forwards_itself_loses_the_client_key(
    routers: Routers, mode: str, header: str, value: str
) -> None:
    r = routers.get(mode=mode, clients=True)

    async def test() -> None:
        f = _flow(method="GET", path="/v1/files", body=b"", headers=[(header, value)])
        await _through(r, f)
        assert f.response is None and r.sent == []  # not an LLM call: forwarded as it is
        assert header not in f.request.headers
        assert f.metadata[AUTH_META] == {"client": "team-a"}

    routers.run(test())


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"),
                                              ("GET", "/v1/files")])  # fmt: skip
def test_without_clients_proxy_credentials_are_still_dropped(
    routers: Routers, method: str, path: str
) -> None:
    r = routers.get()

    async def test() -> None:
        r.engine(_ok)
        f = _flow(method=method, path=path,
                  headers=[("content-length", str(len(CHAT))),
                           ("proxy-authorization", _basic("x", "y")),
                           ("authorization", f"Bearer {CLIENT_OWN_KEY}")])  # fmt: skip
        await _through(r, f)
        assert AUTH_META not in f.metadata
        assert "proxy-authorization" not in f.request.headers
        assert f.request.headers["authorization"] == f"Bearer {CLIENT_OWN_KEY}"  # the app's own
        for target in r.sent:
            assert "proxy-authorization" not in {k.lower() for k, _ in target.headers}

    routers.run(test())


# --------------------------------------------------------------------------- 411 / 413


def test_a_chunked_llm_request_without_length_gets_411_unbuffered(routers: Routers) -> None:
    r = routers.get()

    async def test() -> None:
        f = _flow(headers=[("content-type", "application/json"),
                           ("transfer-encoding", "chunked")])  # fmt: skip
        await r.fire(HttpRequestHeadersHook(f))
        ((status, headers, body),) = r.replies
        assert status == 411 and json.loads(body)["error"]["code"] == "length_required"
        rid = dict(headers)["x-orchestrator-request-id"]
        # the body streams into the pipe, which drops it and answers
        req = f.request
        assert (req.host, req.port, req.path, req.stream) == ("127.0.0.1", PIPE_PORT,
                                                              "/reply/reply-token", True)  # fmt: skip
        assert f.metadata["orchestrator"] == {"request_id": rid, "kind": "routed"}
        f.response = tutils.tresp(status_code=411, content=body)
        await r.fire(HttpResponseHook(f))
        assert [(row.id, row.status, row.outcome) for row in r.rows] == [(rid, 411, "error")]

    routers.run(test())


@pytest.mark.parametrize(
    ("method", "path", "chunked", "refused"),
    [("POST", "/v1/chat/completions", True, True),
     ("POST", "/v1/embeddings?x=1", True, True),
     ("GET", "/v1/chat/completions", True, False),
     ("POST", "/v1/files", True, False),
     ("POST", "/v1/chat/completions", False, False)],
)  # fmt: skip
def test_only_llm_posts_of_unknown_size_are_refused(
    routers: Routers, method: str, path: str, chunked: bool, refused: bool
) -> None:
    r = routers.get()

    async def test() -> None:
        framing = ("transfer-encoding", "chunked") if chunked else ("content-length", "10")
        f = _flow(method=method, path=path, headers=[framing])
        await r.fire(HttpRequestHeadersHook(f))
        assert [s for s, _, _ in r.replies] == ([411] if refused else [])
        assert (f.request.host == "127.0.0.1") is refused

    routers.run(test())


def test_an_announced_body_over_max_request_bytes_gets_413_unbuffered(routers: Routers) -> None:
    r = routers.get()

    async def test() -> None:
        f = _flow(headers=[("content-type", "application/json"), ("content-length", "4096")])
        await r.fire(HttpRequestHeadersHook(f))
        ((status, _, body),) = r.replies
        err = json.loads(body)["error"]
        assert (status, err["code"]) == (413, "request_too_large")
        assert "request body of 4096 bytes is over max_request_bytes (2048)" in err["message"]
        assert f.request.path == "/reply/reply-token" and f.request.stream is True
        assert f.request.headers["content-length"] == "4096"  # the pipe reads it all

    routers.run(test())


def test_a_chunked_body_seen_whole_over_the_limit_gets_413(routers: Routers) -> None:
    r = routers.get()

    async def test() -> None:
        r.d.pipe.port = 0  # no pipe yet: requestheaders cannot refuse, request does
        f = _flow(body=b'{"model":"x","pad":"' + b"x" * 3000 + b'"}',
                  headers=[("transfer-encoding", "chunked")])  # fmt: skip
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 413
        assert r.sent == [] and [row.status for row in r.rows] == [413]

    routers.run(test())


# --------------------------------------------------------------------------- stream flags


class _Live:
    """Stands in for an open upstream stream; the pipe (faked) never reads it."""

    def close(self) -> None:
        pass


def test_our_pipe_streams_and_a_passthrough_sse_is_tapped(routers: Routers) -> None:
    r = routers.get()

    async def test() -> None:

        async def streaming(plan: list[Target]) -> EngineResult:
            ans = Answer(plan[0], 200, [("content-type", "text/event-stream")],
                         stream=_Live())  # fmt: skip
            return EngineResult(ans, [], Outcome(OutcomeKind.OK, 200))

        async def started() -> int:
            return PIPE_PORT

        r.engine(streaming)
        r.d.pipe.ensure_started = started
        r.d.pipe.register = lambda *a, **kw: "pipe-token"
        f = _flow(body=b'{"model":"gpt-4o","stream":true,"messages":[]}')
        await r.fire(HttpRequestHeadersHook(f))
        await r.fire(HttpRequestHook(f))
        assert (f.request.port, f.request.path) == (PIPE_PORT, "/pipe/pipe-token")
        f.response = tutils.tresp(headers=http.Headers(content_type="text/event-stream"))
        await r.fire(HttpResponseHeadersHook(f))
        assert f.response.stream is True  # already relayed event by event

        # a body the router cannot read passes through untouched, its stream's usage read
        # aside in its API's terms
        g = _flow(path="/v1/responses", body=b'{"model":"gpt-4o","stream":true')
        await r.fire(HttpRequestHeadersHook(g))
        await r.fire(HttpRequestHook(g))
        assert g.response is None and g.request.host == "api.openai.com"
        g.response = tutils.tresp(headers=http.Headers(content_type="text/event-stream"))
        await r.fire(HttpResponseHeadersHook(g))
        tap = g.response.stream
        assert callable(tap)
        sse = (b'event: response.completed\ndata: {"type":"response.completed","response":'
               b'{"usage":{"input_tokens":7,"output_tokens":3}}}\n\n')  # fmt: skip
        assert tap(sse[:10]) + tap(sse[10:]) + tap(b"") == sse
        await r.fire(HttpResponseHook(g))
        row = r.rows[-1]
        assert (row.outcome, row.prompt_tokens, row.completion_tokens) == ("unrouted", 7, 3)

    routers.run(test())


@pytest.mark.parametrize(
    ("path", "content_type", "stream"),
    [("/v1/files", "application/json", False),  # buffered as mitmproxy does by default
     ("/v1/files", "text/event-stream", True)],  # a stream, even one not ours: never buffered
)  # fmt: skip
def test_other_answers_keep_or_get_plain_streaming(
    routers: Routers, path: str, content_type: str, stream: bool
) -> None:
    r = routers.get()

    async def test() -> None:
        f = _flow(method="GET", path=path, body=b"")
        await r.fire(HttpRequestHeadersHook(f))
        await r.fire(HttpRequestHook(f))
        f.response = tutils.tresp(headers=http.Headers(content_type=content_type))
        await r.fire(HttpResponseHeadersHook(f))
        assert f.response.stream is stream

    routers.run(test())


# --------------------------------------------------------------------------- 500


def test_an_internal_error_answers_500_records_it_and_releases_the_budget(routers: Routers) -> None:
    r = routers.get(budget=True)

    async def test() -> None:
        held: list[float] = []

        async def broken(plan: list[Target]) -> EngineResult:
            held.extend(b["reserved"] for b in r.d.budgets.snapshot(time.time()))
            raise KeyError(f"secret {PROVIDER_KEY}")

        r.engine(broken)
        f = _flow()
        await _through(r, f)
        assert held and held[0] > 0  # the call held part of the budget when it failed
        assert f.response is not None and f.response.status_code == 500
        rid = f.response.headers["x-orchestrator-request-id"]
        err = _error(f)
        assert (err["type"], err["code"]) == ("server_error", "orchestrator_internal_error")
        assert err["message"] == (f"internal router error (KeyError); see the proxy log for "
                                  f"request {rid}")  # fmt: skip
        (row,) = r.rows
        assert (row.id, row.status, row.outcome) == (rid, 500, "error")
        assert "internal_error: KeyError" in row.reasons
        assert PROVIDER_KEY not in json.dumps([row.error, row.reasons, err])
        assert [b["reserved"] for b in r.d.budgets.snapshot(time.time())] == [0]

    routers.run(test())


# --------------------------------------------------------------------------- other APIs


def test_a_model_listing_is_answered_with_the_routers_list(
    routers: Routers, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = routers.get()

    async def fetch(engine: Any, url: str, headers: Any, timeout_s: float) -> Any:
        return [{"id": "gpt-4o", "object": "model", "owned_by": "openai"}]

    monkeypatch.setattr(modellist, "fetch_own", fetch)

    async def test() -> None:
        f = _flow(method="GET", path="/v1/models", body=b"", headers=[])
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 200
        ids = [m["id"] for m in json.loads(f.response.content or b"")["data"]]
        assert ids == ["gpt-4o", "m-alpha", "auto", "orchestrator/balanced"]
        assert r.rows == [] and r.sent == []  # no LLM call: no ledger row

    routers.run(test())


def test_a_messages_call_nobody_speaks_is_refused_in_anthropics_format(routers: Routers) -> None:
    r = routers.get()  # alpha is a local server: chat, completions, embeddings

    async def test() -> None:
        body = b'{"model":"claude-x","max_tokens":5,"messages":[]}'
        f = _flow(path="/v1/messages", body=body, host="api.openai.com",
                  headers=[("content-length", str(len(body))), ("x-api-key", "sk-ant")])  # fmt: skip
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 400
        err = json.loads(f.response.content or b"")
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        assert "only providers that speak the messages API" in err["error"]["message"]
        assert r.sent == [] and [row.outcome for row in r.rows] == ["error"]

    routers.run(test())


# --------------------------------------------------------------------------- bad input (issue 18)


def test_an_integer_too_long_to_read_gets_400_in_the_apis_format(
    routers: Routers, caplog: pytest.LogCaptureFixture
) -> None:
    r = routers.get(limit=1_000_000)

    async def test() -> None:
        body = b'{"model":"gpt-4o","messages":[],"seed":' + b"9" * 100_000 + b"}"
        f = _flow(body=body)
        await _through(r, f)
        assert f.response is not None and f.response.status_code == 400
        err = _error(f)
        assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_number")
        assert err["message"] == ("request body holds an integer of 100000 digits; integers "
                                  "of more than 4300 digits cannot be read: send such a number "
                                  "as a string")  # fmt: skip
        assert r.sent == [] and [row.status for row in r.rows] == [400]  # never forwarded
        # no "internal error while routing" traceback
        assert not [x for x in caplog.records if x.name == "orchestrator" and x.levelno >= 40]

    routers.run(test())


# --------------------------------------------------------------------------- listeners


@asynccontextmanager
async def _fresh(root: Path, *, mode: str = "regular", clients: bool = False,
                 **before: Any) -> AsyncIterator[tuple[taddons.context, Listeners]]:  # fmt: skip
    """A router of its own whose mitmproxy options are `before` when the config loads, with
    the options mitmproxy's proxy server and terminal log declare (so the settings apply in
    full, as in mitmdump); the log levels it sets are put back afterwards."""
    path = _write_config(root, mode=mode, clients=clients, budget=False)
    auth, orch = router_addons()
    (listeners,) = orch.addons
    assert isinstance(listeners, Listeners)
    levels = {n: logging.getLogger(n).level for n in options.log_levels("info")}
    with taddons.context(auth, orch) as tctx:
        tctx.options.add_option("connection_strategy", str, "eager", "as proxyserver declares it")
        tctx.options.add_option("termlog_verbosity", str, "info", "as termlog declares it")
        if before:
            tctx.options.update(**before)
        tctx.configure(orch, orchestrator_config=str(path))
        try:
            yield tctx, listeners
        finally:
            await tctx.master.done()
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def test_listen_and_mode_follow_the_config_where_mitmproxy_keeps_its_defaults(
    tmp_path: Path,
) -> None:
    async def test() -> None:
        async with _fresh(tmp_path / "a") as (t, ls):
            assert (t.options.listen_host, t.options.listen_port, t.options.mode) == (
                "127.0.0.1", 0, ["regular"])  # fmt: skip
            assert ls.refused is None
        async with _fresh(tmp_path / "b", mode=REVERSE) as (t, _):
            assert t.options.mode == [REVERSE]

    asyncio.run(test())


def test_explicit_listen_options_win_and_an_exposed_one_is_refused(tmp_path: Path) -> None:
    async def test() -> None:
        async with _fresh(tmp_path / "a", listen_host="0.0.0.0", listen_port=18080) as (t, ls):
            assert (t.options.listen_host, t.options.listen_port) == ("0.0.0.0", 18080)
            assert ls.refused == (
                "listening on 0.0.0.0:18080 (mitmproxy's listen_host / --listen-host, or the "
                "mode's @address) is reachable from other machines and no `clients:` are "
                "configured in orchestrator.yaml, so anyone there could spend your provider "
                "keys — add `clients:` (README: Security) or listen on 127.0.0.1"
            )
            client = tflow.tclient_conn()
            ls.client_connected(client)
            assert client.error  # nothing is served
        async with _fresh(tmp_path / "b", clients=True, listen_host="0.0.0.0") as (t, ls):
            assert (t.options.listen_port, ls.refused) == (0, None)  # clients prove a key

    asyncio.run(test())


def test_a_live_edit_to_an_exposed_address_is_rolled_back(tmp_path: Path) -> None:
    async def test() -> None:
        async with _fresh(tmp_path) as (t, ls):
            await ls.running()  # serving from here on
            with pytest.raises(exceptions.OptionsError, match="reachable from other machines"):
                t.options.update(listen_host="::")
            assert t.options.listen_host == "127.0.0.1"
            t.options.update(listen_host="::1")  # loopback: fine

    asyncio.run(test())


@pytest.mark.parametrize(
    ("listeners", "clients", "refused"),
    [
        ([("127.0.0.1", 8080), ("::1", 8080), ("localhost", 1), ("127.1", 2)], False, None),
        ([("127.0.0.1", 8080), ("", 8081)], False, "0.0.0.0:8081"),
        ([("::", 8080)], False, "[::]:8080"),
        ([("192.0.2.2", 8080)], False, "192.0.2.2:8080"),
        ([("0.0.0.0", 8080)], True, None),
    ],
)
def test_exposed_listeners_need_clients(
    listeners: list[tuple[str, int]], clients: bool, refused: str | None
) -> None:
    got = options.exposed(listeners, has_clients=clients, config_name="orchestrator.yaml")
    assert (got.split(" (")[0].removeprefix("listening on ") if got else None) == refused


def test_only_options_left_at_their_defaults_follow_the_config() -> None:
    from addon.config.schema import Settings

    s = Settings(listen="127.0.0.1:9999", mode="transparent")
    assert options.launch_options(s, explicit=["listen_port"]) == {
        "listen_host": "127.0.0.1", "mode": ["transparent"]}  # fmt: skip


def test_healthz_is_503_while_a_listener_is_down(
    routers: Routers, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = routers.get().orch.runtime
    assert rt is not None and rt.health()["status"] == "ok"
    server = SimpleNamespace(is_running=False, last_exception=OSError("address in use\nmore"),
                             mode=SimpleNamespace(description="HTTP(S) proxy",
                                                  full_spec="regular@8080"))  # fmt: skip
    running = SimpleNamespace(is_running=True, last_exception=None, mode=server.mode)
    problems = process.down([server, running])
    assert problems == ["HTTP(S) proxy (regular@8080) is not running: address in use"]
    monkeypatch.setattr(rt, "listener_problems", lambda: problems)
    resp = routers.run(AdminServer(rt).healthz(cast(Any, None)))
    assert resp.status == 503
    assert json.loads(resp.body)["problems"] == problems  # type: ignore[arg-type]
    assert json.loads(resp.body)["status"] == "failing"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- local capture

BTF = "[aya::bpf] object BTF couldn't be loaded in the kernel: the BPF_BTF_LOAD syscall returned"
REDIRECTOR_OUTPUT = [  # what mitmproxy_rs logged when the kernel refused the program
    (logging.INFO, "[mitmproxy_linux_redirector] remove limit on locked memory failed, ret is: -1"),
    (logging.WARNING, BTF),
    (logging.WARNING, "    [2] STRUCT bpf_sock size=80 vlen=16"),
    (logging.WARNING, "Error: eBPF initialization failed"),
    (logging.WARNING, ""),
    (logging.WARNING, "Caused by:"),
    (logging.WARNING, "    0: failed to attach cgroup_sock_create program"),
    (logging.WARNING, "    1: `bpf_link_create` failed"),
    (logging.WARNING, "    2: Bad file descriptor (os error 9)"),
    (logging.WARNING, ""),
    (logging.WARNING, "Stack backtrace:"),
    (logging.WARNING, "   0: <unknown>"),
    (logging.WARNING, "   1: clone3"),
    (logging.ERROR, "[linux-redirector] exited: Ok(ExitStatus(unix_wait_status(256)))"),
]
INSTEAD = "use `mode: transparent` with `sudo .venv/bin/orchestrator capture install`"


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def test_a_redirector_the_kernel_refuses_is_one_line_with_its_reason() -> None:
    told: list[str] = []
    f = process.RedirectorLog(lambda line: told.append(line) or True, verbose=False)
    records = [_record(process.REDIRECTOR_LOG, lvl, msg) for lvl, msg in REDIRECTOR_OUTPUT]
    kept = [r.getMessage() for r in records if f.filter(r)]
    line = ("local mode failed: mitmproxy's eBPF redirector stopped (eBPF initialization failed: "
            "failed to attach cgroup_sock_create program: `bpf_link_create` failed: Bad file "
            "descriptor (os error 9)); this kernel does not let it capture (it needs BPF with "
            f"BTF, the cgroup v2 root at /sys/fs/cgroup, and root) — {INSTEAD}")  # fmt: skip
    assert kept == told == [line]
    verbose = process.RedirectorLog(lambda line: True, verbose=True)
    assert all(
        verbose.filter(_record(process.REDIRECTOR_LOG, lvl, m)) for lvl, m in REDIRECTOR_OUTPUT
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("Failed to run sudo.\n\nCaused by:\n    No such file or directory (os error 2)\n\n"
         "Stack backtrace:\n   0: <unknown>", "local mode could not start (Failed to run sudo)"),
        ("Failed to elevate privileges", "local mode could not start (Failed to elevate privileges)"),
        ("HTTP(S) proxy failed to listen on 127.0.0.1:8080 with [Errno 98] address in use", None),
    ],
)  # fmt: skip
def test_a_redirector_that_cannot_start_is_one_line(text: str, line: str | None) -> None:
    told: list[str] = []
    f = process.RedirectorLog(lambda line: told.append(line) or True, verbose=False)
    rec = _record(process.SERVER_LOG, logging.ERROR, text)
    assert f.filter(rec)
    if line is None:
        assert (rec.getMessage(), told) == (text, [])
    else:
        assert rec.getMessage() == told[0] and told[0].startswith(line + ": mitmproxy runs")
        assert told[0].endswith(f"or as root), or {INSTEAD}") and "\n" not in told[0]


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux redirector's prerequisites")
@pytest.mark.parametrize(
    ("sudo", "cgroup", "missing"),
    [
        (None, "cgroup2", "local mode needs `sudo`: mitmproxy starts its eBPF redirector with "
         "sudo (even as root) and this host has none — install sudo, or " + INSTEAD),
        ("/usr/bin/sudo", "tmpfs", "local mode needs the cgroup v2 hierarchy mounted at "
         "/sys/fs/cgroup (mitmproxy's eBPF program attaches to its root) and this host has "
         "tmpfs there — boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1), "
         "or " + INSTEAD),
        ("/usr/bin/sudo", "cgroup2", None),  # root: nothing known to be missing
    ],
)  # fmt: skip
def test_local_capture_names_what_this_host_lacks(
    monkeypatch: pytest.MonkeyPatch, sudo: str | None, cgroup: str, missing: str | None
) -> None:
    monkeypatch.setattr(process.shutil, "which", lambda name: sudo)
    monkeypatch.setattr(process, "_mounted", lambda path: cgroup)
    monkeypatch.setattr(process.os, "geteuid", lambda: 0)
    assert process.local_capture_missing() == missing


# --------------------------------------------------------------------------- startup hints


@pytest.mark.parametrize(
    ("mode", "clients", "first", "hint"),
    [
        ("regular", False, "listening on 0.0.0.0:8080",
         "Point an app at it:\n  export HTTPS_PROXY=http://127.0.0.1:8080\n"
         "  export SSL_CERT_FILE=/ca.pem\n  export NO_PROXY=localhost,127.0.0.1\n"
         "(SSL_CERT_FILE = system roots + this proxy's CA; Node: NODE_EXTRA_CA_CERTS)"),
        (REVERSE, False, "listening on 0.0.0.0:8080",
         "Point an SDK at it (no proxy settings):\n"
         "  export OPENAI_BASE_URL=http://127.0.0.1:8080/v1"),
        (REVERSE, True, "listening on 0.0.0.0:8080",
         "Point an SDK at it (no proxy settings):\n"
         "  export OPENAI_BASE_URL=http://127.0.0.1:8080/v1\n"
         "  export OPENAI_API_KEY=<your router key>   (clients: it proves who you are)"),
        ("reverse:https://api.anthropic.com", False, "listening on 0.0.0.0:8080",
         "Point an SDK at it (no proxy settings):\n"
         "  export ANTHROPIC_BASE_URL=http://127.0.0.1:8080"),
        ("reverse:http://127.0.0.1:9", False, "listening on 0.0.0.0:8080",  # alpha: /v1
         "Point an SDK at it (no proxy settings):\n"
         "  export OPENAI_BASE_URL=http://127.0.0.1:8080/v1"),
        ("transparent", False, "listening on 0.0.0.0:8080",
         "Transparent mode: apps need no proxy settings once their connections are redirected "
         "here.\n  set that up (root): sudo .venv/bin/orchestrator capture install\n"
         "  see its rules and counters: sudo .venv/bin/orchestrator capture status\n"
         "  confirm, as an app's user: .venv/bin/orchestrator doctor\n"
         "  apps must trust this proxy's CA: export SSL_CERT_FILE=/ca.pem\n"
         "  (`.venv/bin/orchestrator trust` prints the setting for each runtime)"),
        ("local", False, "capturing every local app's connections",
         "Local mode: apps need no proxy settings; mitmproxy's eBPF redirector captures their "
         "connections.\n  confirm, as an app's user: .venv/bin/orchestrator doctor\n"
         "  apps must trust this proxy's CA: export SSL_CERT_FILE=/ca.pem\n"
         "  (`.venv/bin/orchestrator trust` prints the setting for each runtime)"),
        ("local:!curl", False, "capturing the connections of '!curl'", None),
    ],
)  # fmt: skip
def test_the_startup_hint_matches_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           mode: str, clients: bool, first: str,
                                           hint: str | None) -> None:  # fmt: skip
    from addon.config import loader
    from addon.proxy.view import build_view

    monkeypatch.setenv("ORQ_TEST_ROUTER_KEY", ROUTER_KEY)
    cfg = loader.load(_write_config(tmp_path, mode=mode, clients=clients, budget=False))
    lines = startup_lines(build_view(cfg, {}, {}), "0.0.0.0", 8080, "/ca.pem")
    assert f": {first}, mode {mode}, " in lines[0]
    if hint is not None:
        assert lines[1:] == [hint]
