"""Every API the router serves, piece by piece: the endpoint table, the router's error bodies
per API, the Responses pinning rules, the embeddings checks and `GET …/models` — plain
functions and the dispatcher with its attempt engine faked (no socket)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from addon.config import loader
from addon.proxy import apis, eligible, modellist, responsestate
from addon.proxy.clientauth import auth_required
from addon.proxy.dispatch import Dispatcher
from addon.proxy.exchange import Incoming, Pending, Reply, internal_error_reply, json_reply
from addon.proxy.plan import vector_check
from addon.proxy.replies import reply_for
from addon.proxy.upstream import Answer, EngineResult, Target
from addon.proxy.view import View, build_view
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.state.response_homes import LocalResponseHomes
from addon.wire import embeddings
from addon.wire.responses import read_request

ALL = ["chat", "completions", "responses", "messages", "embeddings"]
ENV = {"KA": "sk-alpha", "KB": "sk-beta", "KO": "sk-openai"}

# --------------------------------------------------------------------------- endpoint table


@pytest.mark.parametrize(
    ("method", "path", "want"),
    [
        ("POST", "/v1/chat/completions", ("chat", "/chat/completions")),
        ("POST", "/openai/deployments/x/chat/completions?api-version=1", ("chat", "/chat/completions")),
        ("POST", "/v1/completions", ("completions", "/completions")),
        ("POST", "/v1/responses", ("responses", "/responses")),
        ("POST", "/v1/embeddings?x=1", ("embeddings", "/embeddings")),
        ("POST", "/v1/messages", ("messages", "/messages")),
        ("POST", "/v1/messages?beta=true", ("messages", "/messages")),
        ("POST", "/v1/messages/count_tokens", ("messages", "/messages/count_tokens")),
        # OpenAI's Assistants API: not Anthropic Messages
        ("POST", "/v1/threads/thread_abc/messages", None),
        ("POST", "/v1/responses/resp_1/cancel", None),
        ("GET", "/v1/responses", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/files", None),
    ],
)  # fmt: skip
def test_endpoint_table(method: str, path: str, want: tuple[str, str] | None) -> None:
    ep = apis.endpoint(method, path)
    assert (None if ep is None else (ep.api, ep.path)) == want
    if ep is not None:
        assert ep.count_tokens is path.startswith("/v1/messages/count_tokens")


# --------------------------------------------------------------------------- error bodies


def _pending(path: str = "/v1/chat/completions") -> Pending:
    inc = Incoming("POST", "api.openai.com", path, (), b"{}", "127.0.0.1")
    return Pending("orq-1", 0.0, inc, "routed", endpoint=apis.endpoint("POST", path))


OPENAI = {"message": "no", "type": "invalid_request_error", "param": None, "code": "no_candidate"}


@pytest.mark.parametrize(
    ("path", "status", "want"),
    [
        ("/v1/chat/completions", 400, {"error": OPENAI}),
        ("/v1/responses", 400, {"error": OPENAI}),
        ("/v1/embeddings", 400, {"error": OPENAI}),
        ("/v1/messages", 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "no"}, "request_id": "orq-1"}),
        ("/v1/messages/count_tokens", 503, {"type": "error", "error": {"type": "api_error",
                                                                      "message": "no"},
                                            "request_id": "orq-1"}),
        ("/v1/messages", 429, {"type": "error", "error": {"type": "rate_limit_error",
                                                         "message": "no"}, "request_id": "orq-1"}),
    ],
)  # fmt: skip
def test_the_routers_own_answers_speak_the_apis_error_format(
    path: str, status: int, want: dict[str, Any]
) -> None:
    p = _pending(path)
    reply = json_reply(status, "no", type_="invalid_request_error", code="no_candidate", pending=p)
    assert json.loads(reply.body) == want
    assert dict(reply.headers)["x-orchestrator-request-id"] == "orq-1"


@pytest.mark.parametrize(("path", "shape"), [("/v1/messages", "anthropic"),
                                             ("/v1/responses", "openai")])  # fmt: skip
def test_internal_errors_and_failed_attempts_speak_it_too(path: str, shape: str) -> None:
    api = apis.endpoint("POST", path)
    assert api is not None
    err = json.loads(internal_error_reply(_pending(path), "KeyError").body)
    attempt = AttemptRecord("alpha", "m", Outcome(OutcomeKind.SERVER_ERROR, 529, "Overloaded"),
                            0.0, 3.0)  # fmt: skip
    failed = reply_for(EngineResult(None, [attempt], attempt.outcome), request_id="orq-1",
                       profile="balanced", api=api.api)  # fmt: skip
    body = json.loads(failed.body)
    assert failed.status == 529
    if shape == "anthropic":
        assert err["type"] == "error" and err["error"]["type"] == "api_error"
        assert body["error"]["type"] == "overloaded_error"
        assert body["error"]["attempts"][0]["provider"] == "alpha"
    else:
        assert err["error"]["code"] == "orchestrator_internal_error"
        assert body["error"]["code"] == "all_attempts_failed"


def test_client_auth_refusals_speak_the_apis_format() -> None:
    anthropic = json.loads(auth_required(proxy=True, api="messages").content or b"")
    assert anthropic["type"] == "error" and "client key" in anthropic["error"]["message"]
    openai = json.loads(auth_required(proxy=False).content or b"")
    assert openai["error"]["code"] == "client_auth_required"


# --------------------------------------------------------------------------- pinning


def _config(tmp: Path, providers: dict[str, Any], models: list[dict[str, Any]]) -> View:
    (tmp / "rules").mkdir()
    settings = {"intercept": ["api.openai.com"], "default_profile": "balanced",
                "providers": providers, "admin": {"enabled": False},
                "data": {"ledger": str(tmp / "ledger.db")}}  # fmt: skip
    (tmp / "orchestrator.yaml").write_text(yaml.safe_dump(settings))
    rules = {"profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1}}}},
             "models.yaml": {"models": models}}  # fmt: skip
    for name, data in rules.items():
        (tmp / "rules" / name).write_text(yaml.safe_dump(data))
    return build_view(loader.load(tmp / "orchestrator.yaml"), ENV, {})


def _model(mid: str, provider: str, quality: int) -> dict[str, Any]:
    return {"id": mid, "provider": provider, "input_per_mtok": 1, "output_per_mtok": 2,
            "context_tokens": 100000, "quality": quality,
            "capabilities": {"tools": True}}  # fmt: skip


PROVIDERS = {
    "alpha": {"base_url": "https://alpha.example/v1", "api_key_env": "KA", "apis": ALL},
    "beta": {"base_url": "https://beta.example/v1", "api_key_env": "KB", "apis": ALL},
    # `catalog:` keeps the bundled benchmark DB's OpenAI offerings out of this table
    "openai": {"base_url": "https://api.openai.com/v1", "api_key_env": "KO", "catalog": "x"},
    "chatonly": {"base_url": "https://chat.example/v1", "api_key_env": "KA"},
}
MODELS = [
    _model("m-a", "alpha", 1200),
    _model("m-b", "beta", 1400),
    _model("m-o", "openai", 1300),
    _model("m-c", "chatonly", 1500),
    _model("emb", "alpha", 900),
    _model("emb", "beta", 900),
]


@pytest.fixture
def view(tmp_path: Path) -> View:
    return _config(tmp_path, PROVIDERS, MODELS)


def _pin(view: View, homes: LocalResponseHomes, body: dict[str, Any],
         host: str = "api.openai.com") -> Any:  # fmt: skip
    r = read_request(body)
    return asyncio.run(responsestate.pin_for(homes, r, view.catalog.providers, host, 100.0))


@pytest.mark.parametrize(
    ("body", "home", "host", "want"),
    [
        ({"input": "hi"}, None, "api.openai.com", None),
        ({"input": "hi", "store": False}, None, "api.openai.com", None),
        ({"previous_response_id": "resp_1"}, "beta", "api.openai.com", ({"beta"}, "produced by beta")),
        ({"previous_response_id": "resp_1"}, "gone", "api.openai.com", (503, "no longer configured")),
        ({"previous_response_id": "resp_1"}, None, "api.openai.com", ({"openai"}, "lives at api.openai.com")),
        ({"previous_response_id": "resp_1"}, None, "elsewhere.example", (400, "not produced through this router")),
        ({"conversation": "conv_1"}, None, "api.openai.com", ({"openai"}, "conversation conv_1")),
        ({"conversation": {"id": "conv_1"}}, None, "alpha.example", ({"alpha"}, "pinned to alpha")),
        ({"conversation": "conv_1"}, None, "elsewhere.example", (400, "no provider is configured")),
    ],
)  # fmt: skip
def test_pinning_rules(view: View, body: dict[str, Any], home: str | None, host: str,
                       want: Any) -> None:  # fmt: skip
    homes = LocalResponseHomes()
    if home is not None:
        homes.remember("resp_1", home, 50.0)
    got = _pin(view, homes, body, host)
    if want is None:
        assert got is None
    elif isinstance(want[0], set):
        assert isinstance(got, responsestate.Pin) and got.providers == want[0]
        assert want[1] in got.reason
    else:
        assert isinstance(got, responsestate.Refusal) and got.status == want[0]
        assert want[1] in got.message


def test_an_unusable_pin_names_why(view: View) -> None:
    pin = responsestate.Pin(frozenset({"chatonly", "alpha"}), "previous_response_id r lives at x")
    r = responsestate.unusable_pin(pin, frozenset(), view.catalog.providers, "responses")
    assert r.status == 503 and r.code == "pinned_provider_unavailable"
    assert "chatonly does not speak the responses API" in r.message
    assert "alpha has no key for this request (set KA)" in r.message


@pytest.mark.parametrize(
    ("homes", "want"),
    [({"b1": "beta", "b2": "beta"}, {"beta"}),
     ({}, {"openai"}),  # never seen: from the addressed host
     ({"b1": "beta", "b2": "alpha"}, set()),  # from two providers: nobody reads them all
     ({"b1": "openai"}, {"openai"})],
)  # fmt: skip
def test_who_can_read_encrypted_reasoning(
    view: View, homes: dict[str, str], want: set[str]
) -> None:
    store = LocalResponseHomes()
    for blob, provider in homes.items():
        store.remember(responsestate.reasoning_key(blob), provider, 1.0)
    got = asyncio.run(responsestate.reasoning_readers(store, ("b1", "b2"), view.catalog.providers,
                                                      "api.openai.com", 2.0))  # fmt: skip
    assert got == want


# --------------------------------------------------------------------------- the dispatcher


def _dispatcher(view: View, seen: list[Target], answer: bytes, status: int = 200) -> Dispatcher:
    d = Dispatcher(view, None)

    async def run(plan: Any, *, on_outcome: Any, acquire: Any = None,
                  traceparent: Any = None) -> EngineResult:  # fmt: skip
        seen.extend(plan)
        t = plan[0]
        a = AttemptRecord(t.candidate.provider, t.candidate.provider_model_id,
                          Outcome(OutcomeKind.OK, status), 0.0, 1.0)  # fmt: skip
        return EngineResult(Answer(t, status, [("content-type", "application/json")], answer),
                            [a], a.outcome)  # fmt: skip

    d.engine.run = run  # type: ignore[method-assign]
    return d


def _call(d: Dispatcher, path: str, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = (),
          host: str = "api.openai.com") -> Any:  # fmt: skip
    inc = Incoming("POST", host, path, headers, json.dumps(body).encode(), "127.0.0.1")
    pending = d.begin(inc)
    assert pending is not None
    return asyncio.run(d.handle(pending)), pending


RESP = b'{"id":"resp_9","object":"response","model":"m-b","output":[],"usage":{"input_tokens":3}}'


def test_only_providers_that_speak_the_api_are_candidates(view: View) -> None:
    seen: list[Target] = []
    out, p = _call(_dispatcher(view, seen, RESP), "/v1/responses", {"model": "x", "input": "hi"})
    assert isinstance(out, Reply) and out.status == 200
    # chatonly (quality 1500) would win; it does not speak responses
    assert {t.candidate.provider for t in seen} <= {"alpha", "beta", "openai"}
    assert (
        seen[0].candidate.provider == "beta" and seen[0].url == "https://beta.example/v1/responses"
    )
    assert any("left out at providers that do not speak it (chatonly)" in r for r in p.reasons)


def test_a_follow_up_stays_where_its_response_lives(view: View) -> None:
    seen: list[Target] = []
    d = _dispatcher(view, seen, RESP)
    _call(d, "/v1/responses", {"model": "x", "input": "hi"})
    assert seen[0].candidate.provider == "beta"  # the best
    assert asyncio.run(d.homes.home("resp_9", time.time())) == "beta"  # remembered
    d.homes.remember("resp_9", "alpha", time.time())  # as if alpha had produced it
    seen.clear()
    out, p = _call(d, "/v1/responses", {"model": "x", "input": "again",
                                        "previous_response_id": "resp_9"})  # fmt: skip
    assert isinstance(out, Reply) and out.status == 200
    assert {t.candidate.provider for t in seen} == {"alpha"}
    assert "previous_response_id resp_9 was produced by alpha: pinned there" in p.reasons


def test_a_pinned_provider_in_an_open_breaker_is_a_503_naming_the_pin(view: View) -> None:
    seen: list[Target] = []
    d = _dispatcher(view, seen, RESP)
    d.homes.remember("resp_9", "alpha", time.time())
    for key in ("alpha:m-a", "alpha:emb"):
        for _ in range(5):
            d.breakers.record(key, success=False, threshold=1)
    out, _ = _call(d, "/v1/responses", {"model": "x", "previous_response_id": "resp_9"})
    assert isinstance(out, Reply) and out.status == 503 and seen == []
    err = json.loads(out.body)["error"]
    assert err["message"].startswith("previous_response_id resp_9 was produced by alpha: pinned "
                                     "there, but: no candidate")  # fmt: skip
    assert "breaker_open: 2" in err["message"]


def test_encrypted_reasoning_is_stripped_for_another_provider(view: View) -> None:
    seen: list[Target] = []
    d = _dispatcher(view, seen, RESP)
    d.homes.remember(responsestate.reasoning_key("blob"), "alpha", time.time())
    body = {"model": "x", "store": False, "input": [
        {"type": "reasoning", "summary": [], "encrypted_content": "blob"},
        {"role": "user", "content": "hi"}]}  # fmt: skip
    out, p = _call(d, "/v1/responses", body)
    assert isinstance(out, Reply) and seen[0].candidate.provider == "beta"
    sent = json.loads(seen[0].body)
    assert sent["input"] == [{"role": "user", "content": "hi"}] and sent["model"] == "m-b"
    assert "stripped 1 encrypted reasoning item(s) beta cannot read" in p.reasons


def test_messages_go_with_x_api_key_and_a_version(view: View) -> None:
    seen: list[Target] = []
    msg = b'{"id":"msg_1","type":"message","model":"m-b","content":[],"usage":{"input_tokens":2}}'
    out, _ = _call(_dispatcher(view, seen, msg), "/v1/messages",
                   {"model": "claude-x", "max_tokens": 10, "messages": []},
                   (("x-api-key", "sk-ant-client"), ("anthropic-beta", "a,b")), "api.anthropic.com")  # fmt: skip
    assert isinstance(out, Reply) and out.status == 200
    headers = dict(seen[0].headers)
    assert headers["x-api-key"] == "sk-beta" and "Authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01" and headers["anthropic-beta"] == "a,b"
    assert seen[0].url == "https://beta.example/v1/messages"


def test_no_provider_speaking_the_api_is_a_400_naming_the_fix(tmp_path: Path) -> None:
    chat_only = {"c": {"base_url": "https://chat.example/v1", "api_key_env": "KA"}}
    v = _config(tmp_path, chat_only, [_model("m", "c", 1000)])
    out, _ = _call(_dispatcher(v, [], RESP), "/v1/messages", {"model": "m", "messages": []})
    assert isinstance(out, Reply) and out.status == 400
    msg = json.loads(out.body)["error"]["message"]
    assert "api: 1" in msg and "only providers that speak the messages API" in msg
    assert "none is configured" in msg and "`apis:`" in msg


# --------------------------------------------------------------------------- embeddings


def _vectors(*lengths: int, b64: bool = False) -> bytes:
    def vec(n: int) -> Any:
        floats = [0.5] * n
        return base64.b64encode(struct.pack(f"<{n}f", *floats)).decode() if b64 else floats

    data = [{"object": "embedding", "index": i, "embedding": vec(n)} for i, n in enumerate(lengths)]
    return json.dumps({"object": "list", "data": data, "model": "emb",
                       "usage": {"prompt_tokens": 2, "total_tokens": 2}}).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("body", "expected", "items", "wrong"),
    [
        (_vectors(8, 8), 8, 2, None),
        (_vectors(8, 8, b64=True), 8, 2, None),
        (_vectors(8, 8), None, 2, None),
        (_vectors(8, 4), None, 2, "embedding 1 has 4 dimensions, expected 8"),
        (_vectors(16), 8, 1, "embedding 0 has 16 dimensions, expected 8"),
        (_vectors(8), 8, 2, "asked for 2 embeddings, got 1"),
        (b"<html>", 8, 1, "answer is not a JSON object"),
    ],
)  # fmt: skip
def test_embeddings_check(body: bytes, expected: int | None, items: int, wrong: str | None) -> None:
    bad, _ = apis.embeddings_check(body, expected, items)
    assert (bad.message if bad else None) == wrong
    if bad is not None:
        assert bad.kind is OutcomeKind.PROTOCOL_ERROR  # a failed attempt, never an answer


def test_a_models_first_vector_length_is_what_later_answers_must_match(view: View) -> None:
    lengths: dict[str, int] = {}
    e = embeddings.read_request({"input": "a"})
    check = vector_check(e, lengths)
    assert check is not None
    emb = next(c for c in view.catalog.candidates if c.model_id == "emb")
    assert check(emb)(_vectors(8)) is None and lengths == {"emb": 8}
    bad = check(emb)(_vectors(12))
    assert bad is not None and "expected 8" in bad.message


def test_embedding_space(view: View) -> None:
    space = eligible.embedding_space(view.catalog, "emb", "api.openai.com")
    assert isinstance(space, tuple) and {c.key for c in space} == {"alpha:emb", "beta:emb"}
    assert isinstance(eligible.embedding_space(view.catalog, "nope", "h"), str)
    for alias in ("auto", "orchestrator/balanced", None):
        refused = eligible.embedding_space(view.catalog, alias, "h")
        assert isinstance(refused, responsestate.Refusal) and refused.status == 400


def test_embeddings_never_move_to_another_model(view: View) -> None:
    seen: list[Target] = []
    out, _ = _call(_dispatcher(view, seen, _vectors(8)), "/v1/embeddings",
                   {"model": "emb", "input": "a", "dimensions": 8})  # fmt: skip
    assert isinstance(out, Reply) and out.status == 200
    assert {t.candidate.model_id for t in seen} == {"emb"}
    assert json.loads(seen[0].body)["dimensions"] == 8  # passed through untouched


# --------------------------------------------------------------------------- /models


@pytest.mark.parametrize(
    ("method", "path", "headers", "want"),
    [("GET", "/v1/models", (), True), ("GET", "/v1/models?limit=5", (), True),
     ("GET", "/v1/models/gpt-4o", (), False), ("POST", "/v1/models", (), False),
     ("GET", "/v1/models", (("anthropic-version", "2023-06-01"),), False)],
)  # fmt: skip
def test_is_listing(
    method: str, path: str, headers: tuple[tuple[str, str], ...], want: bool
) -> None:
    assert modellist.is_listing(Incoming(method, "h", path, headers, b"", "1")) is want


def test_the_model_list_merges_the_hosts_own_with_the_catalog_and_aliases(
    view: View, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    async def fetch(engine: Any, url: str, headers: Any, timeout_s: float) -> Any:
        got.append((url, headers))
        return [{"id": "gpt-4o", "object": "model", "owned_by": "openai"},
                {"id": "m-o", "object": "model", "owned_by": "openai"}]  # fmt: skip

    monkeypatch.setattr(modellist, "fetch_own", fetch)
    d = Dispatcher(view, None)
    inc = Incoming("GET", "api.openai.com", "/v1/models", (("accept", "*/*"),), b"", "1")
    listing = asyncio.run(d.own_answer(inc))
    assert listing is not None and listing.status == 200
    body = json.loads(listing.body)
    ids = [e["id"] for e in body["data"]]
    assert body["object"] == "list" and ids[:2] == ["gpt-4o", "m-o"]
    assert set(ids) >= {"m-a", "m-b", "m-c", "emb", "auto", "orchestrator/balanced"}
    assert len(ids) == len(set(ids))
    assert dict(listing.headers)["x-orchestrator-models"] == "host+router"
    url, headers = got[0]
    assert url == "https://api.openai.com/v1/models"
    assert ("Authorization", "Bearer sk-openai") in headers  # the provider at that host


def test_a_host_without_a_list_leaves_the_routers_own(view: View,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    async def fetch(*_: Any) -> None:
        return None

    monkeypatch.setattr(modellist, "fetch_own", fetch)
    listing = asyncio.run(modellist.answer(view, Dispatcher(view, None).engine,
                                           Incoming("GET", "x.example", "/models", (), b"", "1")))  # fmt: skip
    assert dict(listing.headers)["x-orchestrator-models"] == "router"
    assert json.loads(listing.body)["data"][-1]["id"] == "orchestrator/balanced"


@pytest.mark.parametrize(
    ("body", "want"),
    [(b'{"object":"list","data":[{"id":"a"},{"id":3},"x"]}', [{"id": "a"}]),
     (b'{"data":{}}', None), (b"<html>", None), (b"[]", None)],
)  # fmt: skip
def test_own_entries(body: bytes, want: Any) -> None:
    assert modellist.own_entries(body) == want


# --------------------------------------------------------------------------- WebSocket, embeddings


@pytest.mark.parametrize(
    ("path", "upgrade", "refused"),
    [("/v1/responses", "websocket", True), ("/v1/chat/completions", "WebSocket", True),
     ("/v1/responses", None, False), ("/v1/realtime", "websocket", False)],
)  # fmt: skip
def test_a_websocket_upgrade_on_a_routed_endpoint_gets_426(
    view: View, path: str, upgrade: str | None, refused: bool
) -> None:
    headers = (("connection", "Upgrade"), ("upgrade", upgrade)) if upgrade else ()
    got = asyncio.run(Dispatcher(view, None).own_answer(Incoming("GET", "api.openai.com", path,
                                                                 headers, b"", "1")))  # fmt: skip
    assert (got is not None and got.status == 426) is refused
    if got is not None:
        assert json.loads(got.body)["error"]["code"] == "websocket_not_supported"


def test_generation_never_goes_to_an_embedding_model(tmp_path: Path) -> None:
    cheap_embedding = {**_model("text-embedding-3-small", "beta", 2000), "input_per_mtok": 0.01}
    v = _config(tmp_path, PROVIDERS, [*MODELS, cheap_embedding])
    seen: list[Target] = []
    out, p = _call(_dispatcher(v, seen, RESP), "/v1/responses", {"model": "x", "input": "hi"})
    assert isinstance(out, Reply) and out.status == 200
    assert all("embed" not in t.candidate.model_id for t in seen)
    assert p.decision is not None and p.decision.filtered.get("embedding_model") == 1
