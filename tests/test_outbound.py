"""What goes upstream (`outbound`) and what comes back to the client (`replies`): plain
functions, checked case by case; the attempt engine's walk over a chain (failure domains,
skipped targets) with the network swapped out; the dispatcher's two breaker families."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from addon.config import loader
from addon.config.schema import Resilience
from addon.proxy.dispatch import Dispatcher
from addon.proxy.exchange import Incoming, Pending
from addon.proxy.metrics import Metrics
from addon.proxy.outbound import has_client_key, outbound_headers, upstream_url
from addon.proxy.replies import reply_for
from addon.proxy.statuspage import status_text
from addon.proxy.upstream import Answer, Engine, EngineResult, Target
from addon.proxy.view import View, build_view
from addon.routing.breaker import CLOSED, BreakerStatus
from addon.routing.catalog import Candidate
from addon.routing.cost import Price
from addon.routing.domains import Judgement, judge
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.routing.scoring import Scored
from tests.fakeupstream import FakeUpstream

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


# --------------------------------------------------------------------------- the walk


class Scripted:
    """The attempt engine with the network swapped out: each target answers the next outcome
    scripted for its key (OK once its script runs out); `tried` lists the keys attempted,
    `judged` each attempt's judgement as `on_outcome` got it."""

    def __init__(self, script: dict[str, list[Outcome]], **resilience: Any) -> None:
        self.engine = Engine(Resilience(**resilience))
        self.script = {k: list(v) for k, v in script.items()}
        self.tried: list[str] = []
        self.judged: list[tuple[str, Judgement]] = []
        self.engine._attempt = self._attempt  # type: ignore[method-assign]

    async def _attempt(self, t: Target, deadline: float) -> tuple[Answer | None, Outcome]:
        self.tried.append(t.candidate.key)
        todo = self.script.get(t.candidate.key)
        o = todo.pop(0) if todo else Outcome(OutcomeKind.OK, 200)
        return (Answer(t, 200, [], b"{}") if o.ok else None), o

    def run(self, *keys: str, acquire: Any = None) -> EngineResult:
        plan = [_target(_scored(*k.split(":", 1))) for k in keys]
        return asyncio.run(self.engine.run(plan, acquire=acquire, on_outcome=lambda c, o, ms, j:
                                           self.judged.append((c.key, j))))  # fmt: skip


REFUSED = Outcome(OutcomeKind.CONNECT_ERROR, None, "cannot connect to a:443: refused")


def test_a_cookie_an_upstream_sets_goes_nowhere() -> None:
    """The engine's one pooled session serves every client: a cookie a provider sets
    (Cloudflare's `__cf_bm` on api.openai.com) must not ride along on later calls, any
    client's. A host name, not an IP: cookie jars ignore cookies from IP addresses."""
    body = json.dumps({"model": "m-a", "messages": [{"role": "user", "content": "x"}]}).encode()
    with FakeUpstream("cookies") as up:
        up.extra_headers = {"Set-Cookie": "__cf_bm=for-the-first-caller; Path=/; HttpOnly"}
        url = f"http://localhost:{up.port}/v1/chat/completions"
        engine = Engine(Resilience())
        engine.local_hosts = frozenset({"localhost"})  # the resolver lets it reach loopback

        async def three() -> list[int]:
            try:
                out = []
                for _ in range(3):
                    t = Target(ALPHA, url, (("content-type", "application/json"),), body, False)
                    result = await engine.run([t], on_outcome=lambda *_: None)
                    assert result.answer is not None
                    out.append(result.answer.status)
                return out
            finally:
                await engine.close()

        assert asyncio.run(three()) == [200, 200, 200]
        seen = up.requests()
    assert len(seen) == 3
    assert all("cookie" not in {k.lower() for k in s.headers} for s in seen), seen


@pytest.mark.parametrize(
    "fault",
    [REFUSED, Outcome(OutcomeKind.AUTH_ERROR, 401, "Incorrect API key"),
     Outcome(OutcomeKind.AUTH_ERROR, 402, "Insufficient credits"),
     Outcome(OutcomeKind.RATE_LIMITED, 429, "You exceeded your current quota")],
)  # fmt: skip
def test_a_dead_provider_costs_one_attempt_not_one_per_model(fault: Outcome) -> None:
    s = Scripted({k: [fault] * 3 for k in ("a:m1", "a:m2", "a:m3")})
    result = s.run("a:m1", "a:m2", "a:m3", "b:m1")
    assert s.tried == ["a:m1", "b:m1"] and result.answer is not None
    assert [k for k, _ in result.skipped] == ["a:m2", "a:m3"]
    assert all(why.startswith("provider a is down for this request") for _, why in result.skipped)
    assert s.judged[0][1].provider_down and not s.judged[1][1].provider_down


def test_a_storm_across_two_models_rules_the_provider_out() -> None:
    e503 = Outcome(OutcomeKind.SERVER_ERROR, 503, "overloaded")
    s = Scripted({"a:m1": [e503], "a:m2": [e503], "a:m3": [e503]})
    s.run("a:m1", "a:m2", "a:m3", "b:m1")
    assert s.tried == ["a:m1", "a:m2", "b:m1"]
    assert [j.domain.value if j.domain else None for _, j in s.judged] == [
        "model", "provider", None
    ]  # fmt: skip


def test_a_failed_models_dated_alias_is_no_fallback() -> None:
    s = Scripted({"a:gpt-4o": [Outcome(OutcomeKind.SERVER_ERROR, 503)]})
    result = s.run("a:gpt-4o", "a:gpt-4o-2024-08-06", "a:gpt-4o-mini")
    assert s.tried == ["a:gpt-4o", "a:gpt-4o-mini"]
    assert result.skipped == [("a:gpt-4o-2024-08-06",
                               "same weights as a:gpt-4o, which failed in this request")]  # fmt: skip


def test_no_retry_on_a_provider_just_shown_down_and_no_next_counts_skips() -> None:
    # a 429 without Retry-After is retried with backoff; one that says the quota is spent
    # marks the provider down: no retry, and a chain of only its targets has nowhere left
    quota = Outcome(OutcomeKind.RATE_LIMITED, 429, "insufficient_quota")
    s = Scripted({"a:m1": [quota], "a:m2": [quota]})
    result = s.run("a:m1", "a:m2")
    assert s.tried == ["a:m1"] and result.answer is None and result.last == quota
    # a Retry-After 429 with no other target left waits: the skipped ones do not count
    ra = Outcome(OutcomeKind.RATE_LIMITED, 429, "slow down", retry_after=0.01)
    s = Scripted({"a:m1": [ra]})
    result = s.run("a:m1", "a:m1-2024-01-01")
    assert s.tried == ["a:m1", "a:m1"] and result.answer is not None


def test_a_refused_acquire_is_skipped_with_why() -> None:
    async def only_b(c: Candidate) -> bool:
        return c.provider == "b"

    s = Scripted({})
    result = s.run("a:m1", "b:m1", acquire=only_b)
    assert s.tried == ["b:m1"]
    assert result.skipped == [("a:m1", "breaker half-open, probe in flight")]


def test_a_429_burst_on_one_target_is_one_breaker_fault() -> None:
    limited = Outcome(OutcomeKind.RATE_LIMITED, 429, "Rate limit reached")
    s = Scripted({"a:m1": [limited] * 3}, total_timeout_ms=60_000)
    s.run("a:m1", "b:m1")
    assert s.tried == ["a:m1"] * 3 + ["b:m1"]
    verdicts = [j.target.value for k, j in s.judged if k == "a:m1"]
    assert verdicts == ["failure", "release", "release"]  # the retries are the same evidence


# --------------------------------------------------------------------------- the dispatcher


def _view(tmp: Path) -> View:
    """alpha: three models ranked first; beta: one; a provider breaker opens at one fault."""
    (tmp / "rules").mkdir()
    providers = {n: {"base_url": f"https://{n}.example/v1", "api_key_env": f"K_{n.upper()}"}
                 for n in ("alpha", "beta")}  # fmt: skip
    settings = {"intercept": ["api.openai.com"], "default_profile": "balanced",
                "providers": providers, "admin": {"enabled": False},
                "resilience": {"breaker": {"failures": 1, "cooldown_s": 60}}}  # fmt: skip
    (tmp / "orchestrator.yaml").write_text(yaml.safe_dump(settings))
    models = [{"id": m, "provider": p, "input_per_mtok": 1, "output_per_mtok": 2,
               "context_tokens": 100000, "quality": q}
              for m, p, q in (("a1", "alpha", 1500), ("a2", "alpha", 1490),
                              ("a3", "alpha", 1480), ("b1", "beta", 1200))]  # fmt: skip
    rules = {"profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1}}}},
             "models.yaml": {"models": models}}  # fmt: skip
    for name, data in rules.items():
        (tmp / "rules" / name).write_text(yaml.safe_dump(data))
    return build_view(loader.load(tmp / "orchestrator.yaml"), {"K_ALPHA": "a", "K_BETA": "b"}, {})


CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def _ask(d: Dispatcher) -> tuple[Any, Pending]:
    inc = Incoming("POST", "api.openai.com", "/v1/chat/completions", (), CHAT, "127.0.0.1")
    pending = d.begin(inc)
    assert pending is not None
    return asyncio.run(d.handle(pending)), pending


def test_a_dead_provider_opens_its_breaker_and_the_next_request_skips_it(tmp_path: Path) -> None:
    view = _view(tmp_path)
    metrics = Metrics(lambda: {})
    d = Dispatcher(view, None, metrics=metrics)
    s = Scripted({k: [REFUSED] * 5 for k in ("alpha:a1", "alpha:a2", "alpha:a3")})
    d.engine._attempt = s._attempt  # type: ignore[method-assign]
    reply, pending = _ask(d)
    assert reply.status == 200 and s.tried == ["alpha:a1", "beta:b1"]
    chain = [r for r in pending.reasons if r.startswith("chain ")]
    assert [r.split()[2] for r in chain] == ["alpha:a1", "beta:b1", "alpha:a2", "alpha:a3"]
    assert "next provider: rank 4, the first target at beta" in chain[1]
    # one fault opened alpha's provider breaker (threshold 1), and counted the transition
    st = d.provider_breakers.get("alpha")
    assert st is not None and st.status is BreakerStatus.OPEN
    assert d.provider_breakers.get("beta") is None
    counted = metrics.registry.get_sample_value(
        "orchestrator_provider_breaker_transitions_total", {"provider": "alpha", "to": "open"}
    )
    assert counted == 1.0
    # the next request does not try alpha at all
    s.tried.clear()
    reply, pending = _ask(d)
    assert reply.status == 200 and s.tried == ["beta:b1"]
    assert pending.decision is not None and pending.decision.filtered["provider_open"] == 3
    # with every provider open, the answer is the router's state: 503, not 400
    d.provider_breakers.record("beta", success=False, threshold=1)
    reply, _ = _ask(d)
    assert reply.status == 503 and b"provider_open" in reply.body


def test_verdicts_reach_both_breaker_families(tmp_path: Path) -> None:
    d = Dispatcher(_view(tmp_path), None)
    a1 = d.view.catalog.lookup("a1")[0]
    # a model's own fault: the target counts it, the provider's breaker does not
    e503 = Outcome(OutcomeKind.SERVER_ERROR, 503)
    d._on_outcome(a1, e503, 5.0, judge([AttemptRecord("alpha", "a1", e503, 0.0, 5.0)]))
    assert d.breakers.get(a1.key) is not None and d.provider_breakers.get("alpha") is None
    # a refused key: the provider counts it, the target releases
    d.breakers.record(a1.key, success=True, threshold=1)
    e401 = Outcome(OutcomeKind.AUTH_ERROR, 401)
    d._on_outcome(a1, e401, 5.0, judge([AttemptRecord("alpha", "a1", e401, 0.0, 5.0)]))
    assert d.breakers.get(a1.key) in (None, CLOSED)  # released: still closed, no fault
    prov = d.provider_breakers.get("alpha")
    assert prov is not None and prov.status is BreakerStatus.OPEN


def test_status_text_shows_provider_breakers_with_their_cooldown() -> None:
    st = {"config": {"path": "o.yaml", "version": "v1", "loaded_at": 0.0},
          "catalog": {"candidates": 3, "source": "db"}, "providers": [], "budgets": [],
          "breakers": [{"target": "a:m", "state": "open", "failures": 3, "cooldown_left_s": 4.25}],
          "provider_breakers": [{"provider": "openai", "state": "open", "failures": 2,
                                 "cooldown_left_s": 41.0},
                                {"provider": "groq", "state": "closed", "failures": 1,
                                 "cooldown_left_s": 0.0}],
          "ledger": {"where": "l.db", "rows": 0, "bytes": 0}}  # fmt: skip
    lines = status_text(st).splitlines()
    assert f"provider breaker {'openai':<32} open      failures 2, cooldown 41.0 s left" in lines
    assert f"provider breaker {'groq':<32} closed    failures 1" in lines
    assert f"breaker  {'a:m':<40} open      failures 3, cooldown 4.2 s left" in lines
