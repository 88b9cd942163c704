"""End to end (issue 17, point 4): a stream that breaks after its first byte counts as a
failure of the target that broke it, so a target cutting every stream opens its breaker
(it was recorded `ok` at hand-off, so the breaker never opened), and one that finishes its
streams cleanly stays closed. No target here can continue a prefix: the breaks are not
rescued, they are `truncated`."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e import CLIENT_KEY, ENV, ledger_row
from tests.fakeupstream import CutStream, FakeUpstream
from tests.proxyproc import ProxyProcess

pytestmark = pytest.mark.e2e

FAILURES = 3


def _model(mid: str, provider: str, quality: int) -> dict[str, Any]:
    return {"id": mid, "provider": provider, "input_per_mtok": 1, "output_per_mtok": 2,
            "context_tokens": 32000, "quality": quality}  # fmt: skip


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    """`cuts` (ranked first) and the healthy `steady`."""
    f = {n: FakeUpstream(n, content=f"Hello from {n} " * 5).start() for n in ("cuts", "steady")}
    yield f
    for u in f.values():
        u.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory,
          fakes: dict[str, FakeUpstream]) -> Iterator[ProxyProcess]:  # fmt: skip
    """A real proxy: `cuts` ranks above `steady`; the breaker opens after three faults."""
    providers = {
        "cuts": {"base_url": fakes["cuts"].base_url, "api_key_env": "ORQ_TEST_KEY_ALPHA",
                 "local": True},
        "steady": {"base_url": fakes["steady"].base_url, "api_key_env": "ORQ_TEST_KEY_BETA",
                   "local": True},
    }  # fmt: skip
    cfg = {
        "listen": "127.0.0.1:0", "mode": "regular", "intercept": ["api.openai.com"],
        "default_profile": "balanced", "rules": "rules/",
        "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
        "providers": providers,
        "resilience": {"max_attempts": 4, "first_token_timeout_ms": 3000,
                       "stall_timeout_ms": 3000,
                       "breaker": {"failures": FAILURES, "cooldown_s": 600}},
        "admin": {"listen": "127.0.0.1:0"},
    }  # fmt: skip
    rules = {
        "profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1.0}}}},
        "models.yaml": {"models": [_model("m-cuts", "cuts", 1400),
                                   _model("m-steady", "steady", 1200)]},
    }  # fmt: skip
    p = ProxyProcess(tmp_path_factory.mktemp("stream-breaker"), cfg, rules, ENV).start()
    yield p
    p.stop()


def _stream(proxy: ProxyProcess) -> tuple[str, str, bool]:
    """One streamed call: (request id, answering provider, whether the SDK saw it break)."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca_bundle))
    http = httpx.Client(proxy=proxy.url, verify=ctx, timeout=20)
    client = openai.OpenAI(api_key=CLIENT_KEY, http_client=http, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="auto", stream=True, messages=[{"role": "user", "content": "hi"}]
    ) as resp:
        rid, provider = (
            resp.headers["x-orchestrator-request-id"],
            resp.headers["x-orchestrator-provider"],
        )
        broke = False
        try:
            for _ in resp.parse():
                pass
        except (httpx.HTTPError, openai.APIError):
            broke = True
    http.close()
    return rid, provider, broke


def test_a_target_that_cuts_every_stream_opens_its_breaker(
    proxy: ProxyProcess, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["cuts"].always(CutStream(2))
    seen = [_stream(proxy) for _ in range(FAILURES + 2)]
    assert [p for _, p, _ in seen] == ["cuts"] * FAILURES + ["steady"] * 2
    assert [b for _, _, b in seen] == [True] * FAILURES + [False] * 2
    assert len(fakes["cuts"].requests("/chat/completions")) == FAILURES
    assert [ledger_row(proxy, rid)["outcome"] for rid, _, _ in seen] == (
        ["truncated"] * FAILURES + ["ok"] * 2
    )
    status = httpx.get(proxy.admin_url() + "/status", timeout=10).json()
    states = {b["target"]: b["state"] for b in status["breakers"]}
    assert states["cuts:m-cuts"] == "open"
    assert states.get("steady:m-steady", "closed") == "closed"
