"""Rate limits on the request path, in process: the dispatcher with the attempt engine swapped
for one that answers at once (`addon.proxy.ratelimitgate` through `Dispatcher.handle` and
`finish`): the 429 and its headers, a provider at its limit skipped for the next one, the
holds reconciled with the real usage, a reload changing the limits, and `/status` rows."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from addon.config import loader
from addon.proxy.dispatch import Dispatcher
from addon.proxy.exchange import Incoming, Pending, Reply
from addon.proxy.metrics import Metrics
from addon.proxy.upstream import BREAKER_BUSY, Answer, EngineResult, Explained
from addon.proxy.view import View, build_view
from addon.routing.fallback import AttemptRecord, Outcome, OutcomeKind
from addon.state.ratelimits import LocalRateLimits

ENV = {"KA": "sk-a", "KB": "sk-b"}
APIS = ["chat", "completions", "messages", "responses"]
USAGE = {"prompt_tokens": 7, "completion_tokens": 5}


def make_view(tmp: Path, *, clients: list[dict[str, Any]] | None = None,
              default: dict[str, Any] | None = None, alpha: dict[str, Any] | None = None,
              policy: dict[str, Any] | None = None,
              beta: dict[str, Any] | None = None) -> View:  # fmt: skip
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "rules").mkdir(exist_ok=True)
    providers: dict[str, Any] = {
        "alpha": {"base_url": "https://alpha.example/v1", "api_key_env": "KA", "apis": APIS},
        "beta": {"base_url": "https://beta.example/v1", "api_key_env": "KB", "apis": APIS},
    }
    if alpha is not None:
        providers["alpha"]["limits"] = alpha
    if beta is not None:
        providers["beta"]["limits"] = beta
    settings: dict[str, Any] = {"intercept": ["api.openai.com"], "default_profile": "balanced",
                                "providers": providers, "admin": {"enabled": False},
                                "data": {"ledger": str(tmp / "ledger.db")}}  # fmt: skip
    if clients is not None:
        settings["clients"] = clients
    if default is not None:
        settings["default_client_limits"] = default
    (tmp / "orchestrator.yaml").write_text(yaml.safe_dump(settings))
    models = [
        {"id": "m-a", "provider": "alpha", "input_per_mtok": 1, "output_per_mtok": 2,
         "context_tokens": 100000, "quality": 1500},
        {"id": "m-b", "provider": "beta", "input_per_mtok": 1, "output_per_mtok": 2,
         "context_tokens": 100000, "quality": 1200},
    ]  # fmt: skip
    policies = [{"name": "capped", "match": {"headers": {"x-team": "capped"}}, **(policy or {})}]
    rules = {"profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1}}}},
             "models.yaml": {"models": models}, "policies.yaml": {"policies": policies}}  # fmt: skip
    for name, data in rules.items():
        (tmp / "rules" / name).write_text(yaml.safe_dump(data))
    return build_view(loader.load(tmp / "orchestrator.yaml"), ENV, {})


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def dispatcher(view: View, served: Counter[str], clock: Clock) -> Dispatcher:
    """A dispatcher whose engine answers from the first target it may claim (and, as the
    real one, notes why it skipped the others)."""
    d = Dispatcher(view, None)
    d.limits.limits = LocalRateLimits(clock)
    d.limits.clock = clock
    d.limits.metrics = d.metrics = Metrics(dict)

    async def run(plan: Any, *, on_outcome: Any, acquire: Any = None,
                  traceparent: Any = None) -> EngineResult:  # fmt: skip
        skipped = []
        for t in plan:
            c = t.candidate
            if acquire is not None and not await acquire(c):
                told = plan.refusals if isinstance(plan, Explained) else {}
                skipped.append((c.key, told.get(c.key) or BREAKER_BUSY))
                continue
            served[c.provider] += 1
            a = AttemptRecord(c.provider, c.provider_model_id, Outcome(OutcomeKind.OK, 200),
                              0.0, 1.0)  # fmt: skip
            body = json.dumps({"id": "x", "object": "chat.completion", "model": c.model_id,
                               "choices": [], "usage": USAGE}).encode()  # fmt: skip
            return EngineResult(Answer(t, 200, [("content-type", "application/json")], body),
                                [a], a.outcome, skipped=skipped)  # fmt: skip
        return EngineResult(None, skipped=skipped)

    d.engine.run = run  # type: ignore[method-assign]
    return d


def call(d: Dispatcher, *, client: str | None = None, addr: str = "10.0.0.1",
         path: str = "/v1/chat/completions", headers: tuple[tuple[str, str], ...] = (),
         max_tokens: int | None = 100) -> tuple[Any, Pending]:  # fmt: skip
    if path.endswith("/messages"):
        body: dict[str, Any] = {"model": "m-a", "max_tokens": max_tokens or 100,
                                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    elif path.endswith("/responses"):
        body = {"model": "m-a", "input": "hi", "max_output_tokens": max_tokens or 100}
    else:
        body = {"model": "m-a", "messages": [{"role": "user", "content": "hi"}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
    inc = Incoming("POST", "api.openai.com", path, (("content-type", "application/json"),
                   *headers), json.dumps(body).encode(), addr, client_name=client)  # fmt: skip
    pending = d.begin(inc)
    assert pending is not None
    out = asyncio.run(d.handle(pending))
    status = out.status if isinstance(out, Reply) else 200
    d.finish(pending, status=status, body=out.body if isinstance(out, Reply) else None)
    return out, pending


def test_a_client_over_its_rpm_gets_429_with_openais_headers(tmp_path: Path) -> None:
    view = make_view(tmp_path, clients=[{"name": "app", "key_env": "KA", "limits": {"rpm": 2}}])
    served: Counter[str] = Counter()
    clock = Clock()
    d = dispatcher(view, served, clock)
    for _ in range(2):
        out, _ = call(d, client="app")
        assert isinstance(out, Reply) and out.status == 200
    clock.t += 15
    out, _ = call(d, client="app")
    assert isinstance(out, Reply) and out.status == 429
    h = dict(out.headers)
    assert h["retry-after"] == "45"  # the first of the two leaves 60 s after it came
    assert h["x-ratelimit-limit-requests"] == "2"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "45s"
    err = json.loads(out.body)["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert err["message"] == ("rate limit reached for client app: 2 requests per minute; "
                              "retry in 45s")  # fmt: skip
    assert sum(served.values()) == 2  # the refused call reached no upstream
    assert 'orchestrator_rate_limited_total{name="app",scope="client"} 1.0' in (
        d.metrics.render().decode() if d.metrics else ""
    )
    clock.t += 45
    out, _ = call(d, client="app")
    assert isinstance(out, Reply) and out.status == 200


def test_anonymous_addresses_each_get_the_default_and_metrics_never_name_them(
    tmp_path: Path,
) -> None:
    d = dispatcher(make_view(tmp_path, default={"rpm": 1}), Counter(), Clock())
    assert call(d, addr="10.0.0.1")[0].status == 200
    assert call(d, addr="10.0.0.2")[0].status == 200
    out, _ = call(d, addr="10.0.0.1")
    assert out.status == 429 and "client 10.0.0.1" in json.loads(out.body)["error"]["message"]
    text = d.metrics.render().decode() if d.metrics else ""
    assert 'name="anonymous",scope="client"' in text and "10.0.0.1" not in text


def test_messages_get_anthropics_error_shape(tmp_path: Path) -> None:
    d = dispatcher(make_view(tmp_path, default={"rpm": 1}), Counter(), Clock())
    call(d, path="/v1/messages")
    out, _ = call(d, path="/v1/messages")
    assert out.status == 429
    body = json.loads(out.body)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


def test_tokens_are_reconciled_with_the_real_usage(tmp_path: Path) -> None:
    # each call holds its estimate (prompt + max_tokens 100, over 100) while it runs and
    # ends holding what it used, 12 (7 + 5): without the reconciliation only 2 would fit
    d = dispatcher(make_view(tmp_path, default={"tpm": 250}), Counter(), Clock())
    statuses = [call(d)[0].status for _ in range(20)]
    admitted = statuses.index(429)
    assert statuses[:admitted] == [200] * admitted and admitted >= 10
    row = d.limits.limits.snapshot()[0]
    assert row["tokens"] == 12 * admitted and row["requests"] == admitted


def test_a_policy_limit_is_shared_by_its_requests(tmp_path: Path) -> None:
    view = make_view(tmp_path, policy={"limits": {"rpm": 2}})
    d = dispatcher(view, Counter(), Clock())
    capped = (("x-team", "capped"),)
    assert [call(d, addr=a, headers=capped)[0].status for a in ("1.1.1.1", "2.2.2.2", "3.3.3.3")
            ] == [200, 200, 429]  # fmt: skip
    assert call(d, addr="3.3.3.3")[0].status == 200  # another policy: not limited


def test_a_per_client_policy_limit(tmp_path: Path) -> None:
    view = make_view(tmp_path, policy={"limits": {"rpm": 1, "scope": "client"}})
    d = dispatcher(view, Counter(), Clock())
    capped = (("x-team", "capped"),)
    assert [call(d, addr=a, headers=capped)[0].status for a in ("1.1.1.1", "2.2.2.2", "1.1.1.1")
            ] == [200, 200, 429]  # fmt: skip


def test_a_provider_at_its_limit_is_skipped_for_the_next_one(tmp_path: Path) -> None:
    served: Counter[str] = Counter()
    clock = Clock()
    d = dispatcher(make_view(tmp_path, alpha={"rpm": 3}), served, clock)
    pendings = [call(d)[1] for _ in range(6)]
    assert served == Counter({"alpha": 3, "beta": 3})
    # the 4th was turned away at its attempt, and the skip says why (not a breaker's
    # probe); from then on routing leaves alpha out
    assert "skipped alpha:m-a: provider rate limit: 3 rpm reached, resets in 60 s" in (
        pendings[3].reasons
    )
    assert not any(BREAKER_BUSY in r for r in pendings[3].reasons)
    assert any("provider alpha at its rate limit: not tried" in r for r in pendings[5].reasons)
    assert all(r.status == 200 for r in (call(d)[0],))
    clock.t += 61
    call(d)
    assert served["alpha"] == 4  # the window slid: alpha is first again


def test_a_reload_changes_the_limits(tmp_path: Path) -> None:
    d = dispatcher(make_view(tmp_path / "a", default={"rpm": 1}), Counter(), Clock())
    call(d)
    assert call(d)[0].status == 429
    d.swap(make_view(tmp_path / "b", default={"rpm": 5}))
    assert call(d)[0].status == 200  # the same window, measured against the new limit
    d.swap(make_view(tmp_path / "c"))
    assert all(call(d)[0].status == 200 for _ in range(10))  # no limits at all


def test_status_rows(tmp_path: Path) -> None:
    view = make_view(tmp_path, clients=[{"name": "app", "key_env": "KA", "limits": {"rpm": 10,
                     "tpm": 1000}}], alpha={"rpm": 100})  # fmt: skip
    d = dispatcher(view, Counter(), Clock())
    call(d, client="app")
    rows = {(r["scope"], r["name"]): r for r in d.limits.snapshot()}
    assert rows[("client", "app")]["remaining_requests"] == 9
    assert rows[("client", "app")]["tokens"] == 12
    assert rows[("provider", "alpha")]["requests"] == 1


SKIP_TEXT = [
    ({"rpm": 3}, {}, "provider rate limit: 3 rpm reached, resets in 60 s"),
    # each call holds 158 (the prompt's 8 + max_tokens 150) and ends holding the 12 it used
    ({"tpm": 200}, {"max_tokens": 150}, "provider rate limit: 200 tpm reached (48 in use, this "
     "request needs 158), resets in 60 s"),
    ({"tpm": 100}, {"max_tokens": 150}, "provider rate limit: this request may use 158 tokens, "
     "over the 100 tpm limit"),
]  # fmt: skip


@pytest.mark.parametrize(("limit", "ask", "text"), SKIP_TEXT, ids=["rpm", "tpm", "never"])
def test_the_skip_names_the_providers_limit(tmp_path: Path, limit: dict[str, int],
                                            ask: dict[str, int], text: str) -> None:  # fmt: skip
    served: Counter[str] = Counter()
    d = dispatcher(make_view(tmp_path, alpha=limit), served, Clock())
    last = None
    for _ in range(20):
        out, last = call(d, **ask)
        assert out.status == 200
        if any("provider rate limit" in r for r in last.reasons):
            break
    assert last is not None and f"skipped alpha:m-a: {text}" in last.reasons, last.reasons
    assert served["beta"] == 1  # the skipped call went to the next provider


BODIES = {
    "/v1/chat/completions": ("requests", "rate_limit_exceeded"),
    "/v1/responses": ("requests", "rate_limit_exceeded"),
    "/v1/messages": ("rate_limit_error", None),
}


@pytest.mark.parametrize("path", list(BODIES))
def test_every_provider_at_its_limit_is_a_429_in_the_apis_format(tmp_path: Path,
                                                                path: str) -> None:  # fmt: skip
    served: Counter[str] = Counter()
    clock = Clock()
    d = dispatcher(make_view(tmp_path, alpha={"rpm": 1}, beta={"rpm": 1}), served, clock)
    assert call(d, path=path)[0].status == 200  # alpha's one call, at 5000
    clock.t += 5
    assert call(d, path=path)[0].status == 200  # alpha refused it: beta's, at 5005
    assert served == Counter({"alpha": 1, "beta": 1})
    clock.t += 15
    # the 3rd: alpha left out by routing, beta refused at its attempt: nothing was tried;
    # the 4th: routing leaves both out. Each is the client's 429, never a 503.
    for n in (3, 4):
        out, _ = call(d, path=path)
        assert isinstance(out, Reply) and out.status == 429, (n, out.body)
        h = dict(out.headers)
        assert h["retry-after"] == "40"  # alpha frees up first: its call leaves at 5060
        assert h["x-ratelimit-limit-requests"] == "1"
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert h["x-ratelimit-reset-requests"] in ("40s", "39.9s", "40.1s")
        assert h["x-orchestrator-rate-limit"] == "provider"
        body = json.loads(out.body)
        kind, code = BODIES[path]
        err = body["error"]
        assert err["type"] == kind and err.get("code") == code
        assert err["message"] == ("every target for this request is at its provider's rate "
                                  "limit; rate limit reached for provider alpha: 1 requests "
                                  "per minute; retry in 40s")  # fmt: skip
        if path.endswith("/messages"):
            assert body["type"] == "error"
    assert sum(served.values()) == 2  # no upstream saw the refused calls
    clock.t += 40
    assert call(d, path=path)[0].status == 200  # alpha's window slid: routed again
    assert served["alpha"] == 2


def test_a_request_too_large_for_a_providers_tpm_never_blocks_the_provider(
    tmp_path: Path,
) -> None:
    served: Counter[str] = Counter()
    d = dispatcher(make_view(tmp_path, alpha={"tpm": 100}), served, Clock())
    big, _ = call(d, max_tokens=150)  # 158 tokens can never fit 100: beta answers it
    assert big.status == 200 and served == Counter({"beta": 1})
    small, pending = call(d, max_tokens=20)  # alpha is not full: routing still tries it
    assert small.status == 200 and served == Counter({"beta": 1, "alpha": 1})
    assert not any("at its rate limit: not tried" in r for r in pending.reasons)
