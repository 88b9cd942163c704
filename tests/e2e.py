"""Shared pieces of the end-to-end tests: fake upstreams, a proxy config, fixtures, ledger
helpers. Test modules import the fixtures they use (`from tests.e2e import ups, proxy, ...`)."""

from __future__ import annotations

import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

import openai
import pytest

from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ProxyProcess

CLIENT_KEY = "sk-client-secret-0123456789"
KEY_ALPHA = "sk-alpha-provider-key-AAAA"
KEY_BETA = "sk-beta-provider-key-BBBB"
FIRST_TOKEN_MS = 1500
STALL_MS = 3000
# the per-request line the proxy logs at debug level, after the row is queued (Dispatcher.finish)
REQUEST_LINE = re.compile(r"\b(orq-[0-9a-f]+) \S+ \S+ -> \S+ status=")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _models() -> dict[str, Any]:
    return {
        "models": [
            {
                "id": "m-premium",
                "provider": "alpha",
                "input_per_mtok": 10,
                "output_per_mtok": 30,
                "context_tokens": 128000,
                "quality": 1400,
                "capabilities": {"tools": True, "vision": True, "json_schema": True},
            },
            {
                "id": "m-cheap",
                "provider": "beta",
                "input_per_mtok": 0.1,
                "output_per_mtok": 0.4,
                "cached_input_per_mtok": 0.025,
                "context_tokens": 32000,
                "quality": 1150,
                "capabilities": {"tools": True},
            },
            {
                "id": "m-local",
                "provider": "gamma",
                "input_per_mtok": 0.5,
                "output_per_mtok": 1.5,
                "context_tokens": 8000,
                "quality": 1100,
            },
            {
                "id": "m-secret",
                "provider": "nokey",
                "input_per_mtok": 0.01,
                "output_per_mtok": 0.01,
                "context_tokens": 1000000,
                "quality": 1500,
                "capabilities": {"tools": True, "vision": True, "json_schema": True},
            },
            {
                "id": "m-delta",
                "provider": "delta",
                "input_per_mtok": 60,
                "output_per_mtok": 160,
                "context_tokens": 8000,
                "quality": 1000,
            },
            # last in every ranking: reached only through the "dead-first" route
            {
                "id": "m-dead",
                "provider": "dead",
                "input_per_mtok": 50,
                "output_per_mtok": 150,
                "context_tokens": 8000,
                "quality": 1000,
            },
        ]
    }


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeUpstream]]:
    """One loopback fake per provider name (plus `orig` and `outside`), for the module."""
    names = ("alpha", "beta", "gamma", "delta", "orig", "outside")
    fakes = {n: FakeUpstream(n, content=f"Hello from {n}").start() for n in names}
    yield fakes
    for f in fakes.values():
        f.stop()


@pytest.fixture(autouse=True)
def _clean(ups: dict[str, FakeUpstream]) -> None:
    """Before each test: forget every fake's requests and faults, stream at full speed."""
    for f in ups.values():
        f.clear()
        f.event_gap = 0.0


def _config(ups: dict[str, FakeUpstream], mode: str = "regular") -> dict[str, Any]:
    orig = f"127.0.0.1:{ups['orig'].port}"
    return {
        "listen": "127.0.0.1:0",
        "mode": mode,
        "intercept": ["api.openai.com", orig],
        "default_profile": "balanced",
        "rules": "rules/",
        "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
        "providers": {
            # loopback fakes stand in for remote providers: `local: true` lets them be http
            "alpha": {
                "base_url": ups["alpha"].base_url,
                "api_key_env": "ORQ_TEST_KEY_ALPHA",
                "local": True,
            },
            "beta": {
                "base_url": ups["beta"].base_url,
                "api_key_env": "ORQ_TEST_KEY_BETA",
                "local": True,
            },
            "gamma": {"base_url": ups["gamma"].base_url, "local": True},
            # only reachable through routes: rate-limit tests leave cooldowns behind
            "delta": {
                "base_url": ups["delta"].base_url,
                "api_key_env": "ORQ_TEST_KEY_ALPHA",
                "local": True,
            },
            "nokey": {
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "ORQ_TEST_UNSET",
                "local": True,
            },
            "dead": {
                "base_url": f"http://127.0.0.1:{_free_port()}/v1",
                "api_key_env": "ORQ_TEST_KEY_ALPHA",
                "local": True,
            },
        },
        "resilience": {
            "max_attempts": 4,
            "connect_timeout_ms": 1000,
            "first_token_timeout_ms": FIRST_TOKEN_MS,
            "stall_timeout_ms": STALL_MS,
            "breaker": {"failures": 50, "cooldown_s": 60},
        },
        "log_level": "debug",
        "admin": {"listen": "127.0.0.1:0"},
    }


RULES = {
    "profiles.yaml": {
        "profiles": {
            "quality": {"weights": {"quality": 0.8, "latency": 0.1, "cost": 0.1}},
            "balanced": {"weights": {"quality": 0.4, "latency": 0.3, "cost": 0.3}},
            "speed": {"weights": {"quality": 0.1, "latency": 0.7, "cost": 0.2}},
            "budget": {
                "weights": {"quality": 0.1, "latency": 0.1, "cost": 0.8},
                "complexity_adjust": False,
            },
            "long_context": {
                "weights": {"quality": 0.3, "latency": 0.2, "cost": 0.2, "context": 0.3},
                "min_context": 100000,
            },
        }
    },
    "policies.yaml": {
        "policies": [
            {"name": "batch", "match": {"headers": {"x-workload": "batch"}}, "profile": "budget"},
        ]
    },
    "routes.yaml": {
        "routes": {
            "route-me": [
                {"provider": "beta", "model": "m-cheap"},
                {"provider": "alpha", "model": "m-premium"},
            ],
            "delta-only": [{"provider": "delta", "model": "m-delta"}],
            "gamma-only": [{"provider": "gamma", "model": "m-local"}],
            "ctx-route": [
                {"provider": "beta", "model": "m-cheap"},
                {"provider": "gamma", "model": "m-local"},
                {"provider": "alpha", "model": "m-premium"},
            ],
            "rl-route": [
                {"provider": "delta", "model": "m-delta"},
                {"provider": "beta", "model": "m-cheap"},
            ],
            "dead-first": [
                {"provider": "dead", "model": "m-dead"},
                {"provider": "beta", "model": "m-cheap"},
            ],
        }
    },
    "models.yaml": _models(),
}
ENV = {"ORQ_TEST_KEY_ALPHA": KEY_ALPHA, "ORQ_TEST_KEY_BETA": KEY_BETA}


@pytest.fixture(scope="module")
def proxy(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """One proxy on the shared config, for the module."""
    p = ProxyProcess(tmp_path_factory.mktemp("proxy"), _config(ups), RULES, ENV).start()
    yield p
    p.stop()


@pytest.fixture
def client(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[openai.OpenAI]:
    """The openai SDK aimed at api.openai.com through the proxy (HTTPS_PROXY, its CA)."""
    for k, v in proxy.client_env().items():
        monkeypatch.setenv(k, v)
    c = openai.OpenAI(api_key=CLIENT_KEY, base_url="https://api.openai.com/v1", max_retries=0)
    yield c
    c.close()


def ledger_row(proxy: ProxyProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The ledger row of `request_id`, polled until the writer has committed it; fails
    after `timeout` seconds, so a caller holding a row knows the row exists."""
    deadline = time.monotonic() + timeout
    while True:
        if proxy.ledger_path.exists():
            conn = sqlite3.connect(f"file:{proxy.ledger_path}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            try:
                row = conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
            except sqlite3.OperationalError:
                row = None
            finally:
                conn.close()
            if row is not None:
                return dict(row)
        if time.monotonic() > deadline:
            raise AssertionError(f"no ledger row {request_id}\n{proxy.log()[-3000:]}")
        time.sleep(0.05)


def wait_for_request_lines(
    proxy: ProxyProcess, request_ids: Iterable[str], timeout: float = 10.0
) -> None:
    """Block until the captured log holds the per-request debug line of every id in
    `request_ids` (needs `log_level: debug`, as the shared config has). The proxy writes that
    line last for a request, after its ledger row is queued and its budget settled: once it
    is captured, so is everything the proxy logged about the request, and a check that
    something is absent from the log inspects a log that is there."""
    want = set(request_ids)
    deadline = time.monotonic() + timeout
    while True:
        missing = want - set(REQUEST_LINE.findall(proxy.log()))
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line for {sorted(missing)[:5]}\n{proxy.log()[-3000:]}")
        time.sleep(0.05)


def all_ledger_rows(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """Every ledger row committed so far, read once: wait for the rows you need first."""
    conn = sqlite3.connect(f"file:{proxy.ledger_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests")]
    finally:
        conn.close()


def chat(client: openai.OpenAI, model: str = "gpt-4o", **kw: Any) -> Any:
    """A one-message chat completion; the raw response, so headers can be read."""
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], **kw
    )


def _auth_seen(f: FakeUpstream) -> list[str]:
    return [s.headers.get("authorization", "") for s in f.requests()]
