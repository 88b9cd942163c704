"""What goes upstream (`outbound`) and what comes back to the client (`replies`): plain
functions, checked case by case."""

from __future__ import annotations

import json

import pytest

from addon.proxy.outbound import has_client_key, outbound_headers, upstream_url
from addon.proxy.replies import reply_for
from addon.proxy.upstream import Answer, EngineResult, Target
from addon.routing.catalog import Candidate
from addon.routing.cost import Price
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.routing.scoring import Scored

CLIENT_AUTH = ("Authorization", "Bearer sk-client")
IDENTITY = ("Accept-Encoding", "identity")
OURS = ("Authorization", "Bearer sk-ours")
PLAIN = [("Content-Type", "application/json"), ("User-Agent", "sdk/1")]

# --------------------------------------------------------------------------- outbound_headers


@pytest.mark.parametrize(
    ("client", "same_host", "provider_key", "want"),
    [
        # the client's own key goes only to the host it addressed ...
        ([*PLAIN, CLIENT_AUTH], True, "sk-ours", [*PLAIN, CLIENT_AUTH, IDENTITY]),
        # ... any other provider gets its own key, never the client's
        ([*PLAIN, CLIENT_AUTH], False, "sk-ours", [*PLAIN, OURS, IDENTITY]),
        ([*PLAIN, CLIENT_AUTH], False, None, [*PLAIN, IDENTITY]),
        # without a client key, the same host gets ours too
        (PLAIN, True, "sk-ours", [*PLAIN, OURS, IDENTITY]),
        (PLAIN, True, None, [*PLAIN, IDENTITY]),
        # Azure's and Anthropic's key headers follow the same rule
        ([("api-key", "az"), ("x-api-key", "an")], True, "sk-ours",
         [("api-key", "az"), ("x-api-key", "an"), IDENTITY]),
        ([("api-key", "az"), ("x-api-key", "an")], False, "sk-ours", [OURS, IDENTITY]),
        # account headers only where that account lives
        ([("OpenAI-Organization", "org-1"), ("OpenAI-Project", "p"), ("Cookie", "c=1")], True,
         None, [("OpenAI-Organization", "org-1"), ("OpenAI-Project", "p"), ("Cookie", "c=1"),
                IDENTITY]),
        ([("OpenAI-Organization", "org-1"), ("OpenAI-Project", "p"), ("Cookie", "c=1")], False,
         None, [IDENTITY]),
        # proxy credentials, framing and the router's own headers never leave
        ([("Proxy-Authorization", "Basic eDp5"), ("X-Orchestrator-Profile", "speed"),
          ("x-orchestrator-anything", "1"), ("Host", "api.openai.com"), ("Content-Length", "9"),
          ("Transfer-Encoding", "chunked"), ("Connection", "keep-alive"),
          ("Accept-Encoding", "gzip"), *PLAIN], True, None, [*PLAIN, IDENTITY]),
    ],
)  # fmt: skip
def test_outbound_headers(client: list[tuple[str, str]], same_host: bool,
                          provider_key: str | None, want: list[tuple[str, str]]) -> None:  # fmt: skip
    got = outbound_headers(client, same_host=same_host, provider_key=provider_key)
    assert got == tuple(want)


def test_provider_headers_come_after_the_clients_and_before_credentials() -> None:
    got = outbound_headers(PLAIN, same_host=False, provider_headers=[("X-Title", "app")],
                           provider_key="sk-ours")  # fmt: skip
    assert got == (*PLAIN, ("X-Title", "app"), OURS, IDENTITY)


@pytest.mark.parametrize(
    ("headers", "want"),
    [(PLAIN, False), ([CLIENT_AUTH], True), ([("API-KEY", "x")], True),
     ([("x-api-key", "x")], True), ([("Proxy-Authorization", "x")], False)],
)  # fmt: skip
def test_has_client_key(headers: list[tuple[str, str]], want: bool) -> None:
    assert has_client_key(headers) is want


@pytest.mark.parametrize(
    ("path", "want"),
    [("/v1/chat/completions", "https://p.example/v1/chat/completions"),
     ("/v1/chat/completions?api-version=2024", "https://p.example/v1/chat/completions?api-version=2024"),
     ("/openai/deployments/x/chat/completions?", "https://p.example/v1/chat/completions")],
)  # fmt: skip
def test_upstream_url_keeps_the_query(path: str, want: str) -> None:
    assert upstream_url("https://p.example/v1", "/chat/completions", path) == want


# --------------------------------------------------------------------------- reply_for


def _scored(provider: str, model: str) -> Scored:
    c = Candidate(f"{provider}:{model}", model, model, provider, model, Price(1.0, 2.0), 8000,
                  None, False, False, False, False, None, 0.5, "models.yaml")  # fmt: skip
    return Scored(c, 0.5, ())


ALPHA, BETA = _scored("alpha", "m-a"), _scored("beta", "m-b")
UP_HEADERS = [("content-type", "application/json"), ("x-upstream", "1")]


def _target(s: Scored) -> Target:
    return Target(s, "https://x/v1/chat/completions", (), b"{}", False)


def _attempt(s: Scored, kind: OutcomeKind, status: int | None, msg: str = "") -> AttemptRecord:
    return AttemptRecord(s.candidate.provider, s.candidate.provider_model_id,
                         Outcome(kind, status, msg), 0.0, 12.0)  # fmt: skip


def _router_headers(attempts: int) -> list[tuple[str, str]]:
    return [("x-orchestrator-profile", "balanced"), ("x-orchestrator-attempts", str(attempts)),
            ("x-orchestrator-request-id", "orq-1")]  # fmt: skip


def test_an_answer_keeps_its_body_and_names_who_answered() -> None:
    body = b'{"model":"m-b-2024","choices":[]}'
    result = EngineResult(
        Answer(_target(BETA), 200, UP_HEADERS, body),
        [_attempt(ALPHA, OutcomeKind.SERVER_ERROR, 500), _attempt(BETA, OutcomeKind.OK, 200)],
        Outcome(OutcomeKind.OK, 200),
    )
    r = reply_for(result, request_id="orq-1", profile="balanced")
    assert (r.status, r.body, r.answered_by, r.error, r.stream) == (200, body, BETA, None, None)
    assert r.headers == [*UP_HEADERS, ("x-orchestrator-model", "m-b"),
                         ("x-orchestrator-provider", "beta"), *_router_headers(2)]  # fmt: skip


@pytest.mark.parametrize(
    "kind", [OutcomeKind.CLIENT_ERROR, OutcomeKind.CONTENT_POLICY, OutcomeKind.CONTEXT_TOO_LONG]
)
def test_a_request_at_fault_gets_the_targets_own_refusal(kind: OutcomeKind) -> None:
    body = b'{"error":{"message":"bad request"}}'
    result = EngineResult(None, [_attempt(ALPHA, kind, 400, "bad request")],
                          Outcome(kind, 400, "bad request"),
                          failed_answer=Answer(_target(ALPHA), 400, UP_HEADERS, body))  # fmt: skip
    r = reply_for(result, request_id="orq-1", profile="balanced")
    assert (r.status, r.body, r.answered_by, r.error) == (400, body, ALPHA, "bad request")
    assert r.headers == [*UP_HEADERS, *_router_headers(1)]  # no model: nobody answered


@pytest.mark.parametrize(
    ("last", "status", "retry_after"),
    [
        (Outcome(OutcomeKind.SERVER_ERROR, 503, "down"), 503, None),
        (Outcome(OutcomeKind.RATE_LIMITED, 429, "slow down", retry_after=1.2), 429, "2"),
        (Outcome(OutcomeKind.TIMEOUT, None, "no first token"), 504, None),
        (Outcome(OutcomeKind.CONNECT_ERROR, None, "refused"), 502, None),
    ],
)  # fmt: skip
def test_when_every_attempt_fails_the_router_answers(
    last: Outcome, status: int, retry_after: str | None
) -> None:
    attempts = [_attempt(ALPHA, OutcomeKind.SERVER_ERROR, 500, "boom"),
                AttemptRecord("beta", "m-b", last, 0.0, 5.0)]  # fmt: skip
    failed = Answer(_target(BETA), 503, UP_HEADERS, b"upstream page")
    r = reply_for(EngineResult(None, attempts, last, failed_answer=failed),
                  request_id="orq-1", profile="balanced")  # fmt: skip
    want_headers = [("content-type", "application/json"), *_router_headers(2)]
    if retry_after is not None:
        want_headers.append(("retry-after", retry_after))
    assert (r.status, r.headers, r.answered_by) == (status, want_headers, None)
    code = f" {last.status}" if last.status else ""
    msg = f"all 2 upstream attempts failed; last: beta/m-b {last.kind.value}{code}: {last.message}"
    assert r.error == msg
    err = json.loads(r.body)["error"]
    assert (err["message"], err["type"], err["code"]) == (msg, "upstream_error",
                                                          "all_attempts_failed")  # fmt: skip
    assert [a["provider"] for a in err["attempts"]] == ["alpha", "beta"]
    assert err["attempts"][0] == {"provider": "alpha", "model": "m-a", "outcome": "server_error",
                                  "status": 500, "message": "boom"}  # fmt: skip


def test_when_every_target_was_skipped_the_router_says_retry() -> None:
    """Every target's breaker had its half-open probe in flight: nothing was tried."""
    r = reply_for(EngineResult(None, [], None), request_id="orq-1", profile="balanced")
    assert r.status == 503 and r.answered_by is None
    assert ("retry-after", "1") in r.headers
    err = json.loads(r.body)["error"]
    assert (err["type"], err["code"]) == ("service_unavailable", "all_targets_cooling_down")
    assert "half-open probe" in err["message"]


# --------------------------------------------------------------------------- per API

VERSION = ("anthropic-version", "2023-06-01")


@pytest.mark.parametrize(
    ("api", "client", "same_host", "want"),
    [
        # Messages: the provider's key as x-api-key, and a version when none came along
        ("messages", PLAIN, False, [*PLAIN, ("x-api-key", "sk-ours"), VERSION, IDENTITY]),
        ("messages", [("x-api-key", "sk-ant-client")], False,
         [("x-api-key", "sk-ours"), VERSION, IDENTITY]),
        # the client's version and betas go along byte for byte
        ("messages", [("anthropic-version", "2024-10-22"), ("anthropic-beta", "a,b")], False,
         [("anthropic-version", "2024-10-22"), ("anthropic-beta", "a,b"),
          ("x-api-key", "sk-ours"), IDENTITY]),
        # at the client's own host: its own key, and nothing added
        ("messages", [("x-api-key", "sk-ant-client"), ("anthropic-beta", "x")], True,
         [("anthropic-beta", "x"), ("x-api-key", "sk-ant-client"), IDENTITY]),
        ("messages", PLAIN, True, [*PLAIN, ("x-api-key", "sk-ours"), IDENTITY]),
        # every other API: Bearer, no Anthropic header added
        ("responses", PLAIN, False, [*PLAIN, OURS, IDENTITY]),
        ("embeddings", [("x-api-key", "k")], False, [OURS, IDENTITY]),
    ],
)  # fmt: skip
def test_outbound_headers_per_api(api: str, client: list[tuple[str, str]], same_host: bool,
                                  want: list[tuple[str, str]]) -> None:  # fmt: skip
    got = outbound_headers(client, same_host=same_host, provider_key="sk-ours", api=api)
    assert got == tuple(want)


def test_a_configured_anthropic_version_is_not_doubled() -> None:
    got = outbound_headers(PLAIN, same_host=False, provider_headers=[("anthropic-version", "v")],
                           provider_key="sk-ours", api="messages")  # fmt: skip
    assert got == (*PLAIN, ("anthropic-version", "v"), ("x-api-key", "sk-ours"), IDENTITY)


@pytest.mark.parametrize(
    ("base", "endpoint", "path", "want"),
    [("https://api.anthropic.com/v1", "/messages", "/v1/messages?beta=true",
      "https://api.anthropic.com/v1/messages?beta=true"),
     ("https://api.anthropic.com/v1", "/messages/count_tokens", "/v1/messages/count_tokens",
      "https://api.anthropic.com/v1/messages/count_tokens"),
     ("https://p.example/v1", "/responses", "/v1/responses", "https://p.example/v1/responses")],
)  # fmt: skip
def test_upstream_url_per_endpoint(base: str, endpoint: str, path: str, want: str) -> None:
    assert upstream_url(base, endpoint, path) == want
