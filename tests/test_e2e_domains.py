"""End to end: failure domains and chain diversity through a real proxy (issue 17).

A provider with three models is ranked above a healthy one. When the first is dead (its
host does not resolve, refuses connections, or refuses the key with 401), a request costs
one attempt there, not one per model, and reaches the healthy provider; that one fault
opens the dead provider's breaker (`failures: 1`), so the next request does not try it at
all. The chain interleaves providers (`explain`, `rank --chain`), and a dated alias of a
model that just failed is not tried after it.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import CLIENT_KEY, ENV, ledger_row
from tests.fakeupstream import FakeUpstream, Status
from tests.proxyproc import ORCHESTRATOR, ProxyProcess
from tests.services import free_port

pytestmark = pytest.mark.e2e

DEAD_MODELS = ("d-1", "d-2", "d-3")
GOOD_MODELS = ("g-1", "g-1-2025-01-31", "g-2")  # g-1's dated alias ranks right after it
BAD_KEY = Status(401, "Incorrect API key provided", type="invalid_request_error")


def _model(mid: str, provider: str, quality: int) -> dict[str, Any]:
    return {"id": mid, "provider": provider, "input_per_mtok": 1, "output_per_mtok": 2,
            "context_tokens": 32000, "quality": quality}  # fmt: skip


RULES = {
    "profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1.0}}}},
    "models.yaml": {"models": [
        *(_model(m, "dead", 1500 - 10 * i) for i, m in enumerate(DEAD_MODELS)),
        *(_model(m, "good", q) for m, q in zip(GOOD_MODELS, (1300, 1299, 1200), strict=True)),
    ]},
}  # fmt: skip


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    """The healthy provider's fake, and one that refuses every key."""
    f = {n: FakeUpstream(n, content=f"Hello from {n}").start() for n in ("good", "denies")}
    yield f
    for u in f.values():
        u.stop()


def _dead_provider(fault: str, fakes: dict[str, FakeUpstream]) -> dict[str, Any]:
    key = {"api_key_env": "ORQ_TEST_KEY_ALPHA"}
    if fault == "dns":  # `.invalid` never resolves (RFC 6761)
        return {"base_url": "https://api.dead-provider.invalid/v1", **key}
    if fault == "refused":  # nothing listens there
        return {"base_url": f"http://127.0.0.1:{free_port()}/v1", "local": True, **key}
    fakes["denies"].always(BAD_KEY)
    return {"base_url": fakes["denies"].base_url, "local": True, **key}


def _start(tmp: Path, fault: str, fakes: dict[str, FakeUpstream]) -> ProxyProcess:
    for f in fakes.values():
        f.clear()
    good = {"base_url": fakes["good"].base_url, "api_key_env": "ORQ_TEST_KEY_BETA", "local": True}
    resilience = {"max_attempts": 4, "connect_timeout_ms": 1000, "first_token_timeout_ms": 3000,
                  "breaker": {"failures": 1, "cooldown_s": 60}}  # fmt: skip
    cfg = {
        "listen": "127.0.0.1:0",
        "mode": "regular",
        "intercept": ["api.openai.com"],
        "default_profile": "balanced",
        "rules": "rules/",
        "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
        "providers": {"dead": _dead_provider(fault, fakes), "good": good},
        "resilience": resilience,
        "log_level": "debug",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},  # `orchestrator status` finds it
    }
    return ProxyProcess(tmp, cfg, RULES, ENV).start()


@pytest.fixture
def http() -> Iterator[Any]:
    """A client factory: httpx through proxy `p`, trusting its CA."""
    made: list[httpx.Client] = []

    def make(p: ProxyProcess) -> httpx.Client:
        c = httpx.Client(proxy=p.url, verify=ssl.create_default_context(cafile=str(p.ca_cert)),
                         headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=20)  # fmt: skip
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _chat(c: httpx.Client, stream: bool = False) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    r = c.post("https://api.openai.com/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


def _cli(p: ProxyProcess, *args: str) -> str:
    out = subprocess.run([str(ORCHESTRATOR), *args, "-c", str(p.config_path)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=p.workdir,
                         env={**os.environ, **ENV})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def _provider_breaker(
    p: ProxyProcess, name: str, want: str, timeout: float = 5.0
) -> dict[str, Any]:
    """`name`'s provider breaker row in /status, polled until its state is `want`."""
    deadline = time.monotonic() + timeout
    while True:
        rows = httpx.get(f"{p.admin_url()}/status", timeout=10).json()["provider_breakers"]
        row = next((r for r in rows if r["provider"] == name), None)
        if row is not None and row["state"] == want:
            return dict(row)
        if time.monotonic() > deadline:
            raise AssertionError(f"provider breaker {name} never {want}: {rows}")
        time.sleep(0.05)


@pytest.mark.parametrize("fault", ["dns", "refused", "401"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_dead_provider_costs_one_attempt_then_none(
    fault: str, stream: bool, fakes: dict[str, FakeUpstream], http: Any, tmp_path: Path
) -> None:
    p = _start(tmp_path, fault, fakes)
    try:
        c = http(p)
        first = _chat(c, stream)
        assert first.headers["x-orchestrator-provider"] == "good"
        assert first.headers["x-orchestrator-model"] == "g-1"
        assert first.headers["x-orchestrator-attempts"] == "2"  # one at dead, not three
        row = ledger_row(p, first.headers["x-orchestrator-request-id"])
        log = json.loads(row["attempt_log"])
        assert [(a["provider"], a["model"]) for a in log] == [("dead", "d-1"), ("good", "g-1")]
        want = "auth_error" if fault == "401" else "connect_error"
        assert log[0]["outcome"] == want
        reasons = json.loads(row["reasons"])
        # the chain interleaves providers: after d-1 comes the other provider's best
        chain = [r for r in reasons if r.startswith("chain ")]
        assert [r.split()[2] for r in chain[:3]] == ["dead:d-1", "good:g-1", "dead:d-2"]
        assert "next provider" in chain[1]
        if fault == "401":
            assert len(fakes["denies"].requests()) == 1
        # the one fault opened the provider's breaker: the next request never tries it
        row = _provider_breaker(p, "dead", "open")
        assert 0 < row["cooldown_left_s"] <= 60
        second = _chat(c, stream)
        assert second.headers["x-orchestrator-attempts"] == "1"
        assert second.headers["x-orchestrator-provider"] == "good"
        log = json.loads(ledger_row(p, second.headers["x-orchestrator-request-id"])["attempt_log"])
        assert [a["provider"] for a in log] == ["good"]
        if fault == "401":
            assert len(fakes["denies"].requests()) == 1
        assert "provider breaker dead: closed -> open" in p.log()
        status = _cli(p, "status")
        assert any(line.startswith("provider breaker dead") and " open " in line
                   and "cooldown" in line for line in status.splitlines()), status  # fmt: skip
    finally:
        p.stop()
        fakes["denies"].always(None)


def test_a_failed_models_dated_alias_is_not_tried_after_it(
    fakes: dict[str, FakeUpstream], http: Any, tmp_path: Path
) -> None:
    p = _start(tmp_path, "refused", fakes)
    try:
        # before any request: `rank --chain` shows the interleaved chain and why
        lines = _cli(p, "rank", "--chain").splitlines()
        assert [ln.split()[1] for ln in lines] == [
            "dead:d-1", "good:g-1", "dead:d-2", "good:g-1-2025-01-31", "dead:d-3", "good:g-2"
        ]  # fmt: skip
        assert lines[0].endswith("first: rank 1 of 6")
        assert "next provider: rank 4, the first target at good" in lines[1]
        c = http(p)
        _chat(c)  # dead is found dead, its breaker opens
        _provider_breaker(p, "dead", "open")
        fakes["good"].fail(Status(503, "g-1 is overloaded"), model="g-1")
        r = _chat(c)
        assert r.headers["x-orchestrator-model"] == "g-2"
        assert r.headers["x-orchestrator-attempts"] == "2"
        assert [s.json["model"] for s in fakes["good"].requests()[-2:]] == ["g-1", "g-2"]
        row = ledger_row(p, r.headers["x-orchestrator-request-id"])
        assert ("skipped good:g-1-2025-01-31: same weights as good:g-1, which failed in this "
                "request") in json.loads(row["reasons"])  # fmt: skip
        assert "skipped good:g-1-2025-01-31" in _cli(p, "explain", row["id"])
    finally:
        p.stop()
