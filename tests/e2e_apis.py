"""Shared pieces of the end-to-end tests of every API an app speaks (issue 16): loopback
fakes per provider, a proxy intercepting api.openai.com and api.anthropic.com whose
providers declare their `apis:`, and a guard that keeps that proxy on loopback.

Test modules import the fixtures they use (`from tests.e2e_apis import ups, proxy, oai,
ant, ...`): `oai` and `ant` are the openai and anthropic SDKs aimed at the real hosts
through the proxy.

The guard: the proxy passes whatever it does not route (a host it does not intercept, a
path it does not know on one it does) to the real host. Here the real hosts must never be
reached, so the proxy process starts with a `sitecustomize` on its PYTHONPATH that makes
every name lookup beyond loopback fail and writes the name to a file: `outside_hosts`
reads back which hosts the proxy was asked to reach for what it did not route (clients name
hosts, never IP literals, which are not looked up).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ProxyProcess

OPENAI_CLIENT_KEY = "sk-client-openai-0123456789"
ANTHROPIC_CLIENT_KEY = "sk-ant-client-0123456789abcdef"
CLIENT_KEYS = (OPENAI_CLIENT_KEY, ANTHROPIC_CLIENT_KEY)
# provider name -> (its key, the APIs it declares)
PROVIDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alpha": ("sk-alpha-provider-key-AAAA", ("chat", "responses", "embeddings")),
    "beta": ("sk-beta-provider-key-BBBB", ("chat", "responses", "embeddings")),
    "embed-a": ("sk-embed-a-provider-key-EAAA", ("embeddings",)),
    "embed-b": ("sk-embed-b-provider-key-EBBB", ("embeddings",)),
    "gamma": ("sk-gamma-provider-key-GGGG", ("embeddings",)),
    "claude-a": ("sk-ant-provider-a-key-CAAA", ("messages",)),
    "claude-b": ("sk-ant-provider-b-key-CBBB", ("messages",)),
}
INTERCEPT = ("api.openai.com", "api.anthropic.com")
FIRST_TOKEN_MS = 1500
STALL_MS = 3000
# what the fakes report unless a test says otherwise (FakeUpstream's defaults)
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7
STAMP = re.compile(r" @(\d+)$")  # what `stamp_events` appends to each streamed piece
QUALITY = {"X-Orchestrator-Profile": "quality"}
BUDGET = {"X-Orchestrator-Profile": "budget"}

GUARD = '''"""Loaded by every Python process started with this folder on PYTHONPATH (written by
tests/e2e_apis.py): a name lookup beyond loopback fails, and the name is appended to
$ORQ_TEST_OUTSIDE_LOG, so a test proxy never reaches the internet and shows what it tried."""

import ipaddress
import os
import socket

_LOG = os.environ.get("ORQ_TEST_OUTSIDE_LOG")
_REAL = socket.getaddrinfo


def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded(host, *args, **kwargs):
    if not _loopback(host):
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"{host}\\n")
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: beyond loopback, blocked by the test")
    return _REAL(host, *args, **kwargs)


if _LOG:
    socket.getaddrinfo = _guarded
'''


def env_key(provider: str) -> str:
    """The environment variable holding `provider`'s key in the test config."""
    return "ORQ_TEST_KEY_" + provider.upper().replace("-", "_")


EMBEDDING_SMALL: dict[str, Any] = {"id": "text-embedding-3-small", "input_per_mtok": 0.02,
                                   "output_per_mtok": 0, "context_tokens": 8191}  # fmt: skip


def _models() -> list[dict[str, Any]]:
    chat_caps = {"tools": True, "vision": True, "json_schema": True, "reasoning": True}
    return [
        # chat + Responses: alpha wins on quality, beta on price
        {"id": "m-premium", "provider": "alpha", "input_per_mtok": 10, "output_per_mtok": 30,
         "cached_input_per_mtok": 2.5, "context_tokens": 400000, "quality": 1400,
         "capabilities": chat_caps},
        {"id": "m-cheap", "provider": "beta", "input_per_mtok": 0.1, "output_per_mtok": 0.4,
         "cached_input_per_mtok": 0.025, "context_tokens": 400000, "quality": 1150,
         "capabilities": chat_caps},
        # one embedding space on two providers, and another model that must never stand in
        # (on providers serving embeddings only: `embedding_models_among_chat` puts them
        # beside chat models)
        *(EMBEDDING_SMALL | {"provider": p} for p in ("embed-a", "embed-b")),
        {"id": "text-embedding-3-large", "provider": "gamma", "input_per_mtok": 0.13,
         "output_per_mtok": 0, "context_tokens": 8191},
        # Anthropic Messages: claude-a wins on quality, claude-b on price
        {"id": "claude-sonnet-4-5", "provider": "claude-a", "input_per_mtok": 3,
         "output_per_mtok": 15, "cached_input_per_mtok": 0.3, "context_tokens": 400000,
         "quality": 1350, "capabilities": chat_caps},
        {"id": "claude-haiku-4-5", "provider": "claude-b", "input_per_mtok": 1,
         "output_per_mtok": 5, "cached_input_per_mtok": 0.1, "context_tokens": 400000,
         "quality": 1100, "capabilities": chat_caps},
    ]  # fmt: skip


RULES: dict[str, Any] = {
    "profiles.yaml": {
        "profiles": {
            "quality": {"weights": {"quality": 0.8, "latency": 0.1, "cost": 0.1}},
            "balanced": {"weights": {"quality": 0.4, "latency": 0.3, "cost": 0.3}},
            "budget": {
                "weights": {"quality": 0.1, "latency": 0.1, "cost": 0.8},
                "complexity_adjust": False,
            },
        }
    },
    "models.yaml": {"models": _models()},
}
ENV = {env_key(name): key for name, (key, _) in PROVIDERS.items()}


def embedding_models_among_chat() -> dict[str, Any]:
    """RULES with text-embedding-3-small also offered by alpha and beta, beside their chat
    models (as api.openai.com offers both): the cheapest offering there is."""
    models = [*_models(), *(EMBEDDING_SMALL | {"provider": p} for p in ("alpha", "beta"))]
    return {**RULES, "models.yaml": {"models": models}}


def apis_config(
    ups: dict[str, FakeUpstream], intercept: Iterable[str] = INTERCEPT
) -> dict[str, Any]:
    """`orchestrator.yaml` for these tests: every provider a loopback fake (`local: true`)
    declaring its `apis:`, the `quality` profile by default (alpha, claude-a first)."""
    providers = {
        name: {"base_url": ups[name].base_url, "api_key_env": env_key(name), "local": True,
               "apis": list(apis)}
        for name, (_, apis) in PROVIDERS.items()
    }  # fmt: skip
    return {
        "listen": "127.0.0.1:0",
        "mode": "regular",
        "intercept": list(intercept),
        "default_profile": "quality",
        "rules": "rules/",
        "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
        "providers": providers,
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


def guarded_proxy(
    workdir: Path, config: dict[str, Any], rules: dict[str, Any] | None = None
) -> ProxyProcess:
    """A (not yet started) proxy process on `config` whose name lookups beyond loopback
    fail and are logged for `outside_hosts`."""
    guard = workdir / "netguard"
    guard.mkdir(parents=True, exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    path = os.pathsep.join(p for p in (str(guard), os.environ.get("PYTHONPATH", "")) if p)
    env = {**ENV, "PYTHONPATH": path, "ORQ_TEST_OUTSIDE_LOG": str(workdir / "outside.log")}
    return ProxyProcess(workdir, config, RULES if rules is None else rules, env)


def outside_hosts(proxy: ProxyProcess) -> list[str]:
    """The host names beyond loopback the proxy was asked to reach so far, in order (each
    lookup failed: nothing left the machine)."""
    log = proxy.workdir / "outside.log"
    return log.read_text().split() if log.exists() else []


def forget_outside_hosts(proxy: ProxyProcess) -> None:
    """Start `outside_hosts` afresh."""
    (proxy.workdir / "outside.log").unlink(missing_ok=True)


@pytest.fixture
def stays_on_loopback(proxy: ProxyProcess) -> Iterator[None]:
    """The test's calls are all routed or refused by the proxy: it never tried a host
    beyond loopback (a call it passed through would have gone to the real api.openai.com
    or api.anthropic.com). A module asks for it with `pytest.mark.usefixtures`."""
    forget_outside_hosts(proxy)
    yield
    assert outside_hosts(proxy) == [], "the proxy passed a call through to the real host"


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeUpstream]]:
    """One loopback fake per provider of `PROVIDERS`, for the module."""
    fakes = {n: FakeUpstream(n, content=f"Hello from {n}").start() for n in PROVIDERS}
    yield fakes
    for f in fakes.values():
        f.stop()


@pytest.fixture(autouse=True)
def _clean(ups: dict[str, FakeUpstream]) -> None:
    """Before each test: every fake forgets its requests and faults and answers as built
    (5 events at full speed, 11 prompt and 7 completion tokens, no cache, no reasoning)."""
    for f in ups.values():
        f.clear()
        f.event_gap, f.first_event_delay, f.events, f.stamp_events = 0.0, 0.0, 5, False
        f.prompt_tokens, f.completion_tokens = PROMPT_TOKENS, COMPLETION_TOKENS
        f.cached_tokens = f.reasoning_tokens = f.cache_write_tokens = 0


@pytest.fixture(scope="module")
def proxy(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    """One guarded proxy on `apis_config`, for the module."""
    p = guarded_proxy(tmp_path_factory.mktemp("apis"), apis_config(ups)).start()
    yield p
    p.stop()


@pytest.fixture
def oai(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[openai.OpenAI]:
    """The openai SDK aimed at api.openai.com through the proxy (HTTPS_PROXY, its CA)."""
    for k, v in proxy.client_env().items():
        monkeypatch.setenv(k, v)
    c = openai.OpenAI(api_key=OPENAI_CLIENT_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture
def ant(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[anthropic.Anthropic]:
    """The anthropic SDK aimed at api.anthropic.com through the proxy (HTTPS_PROXY, its CA)."""
    for k, v in proxy.client_env().items():
        monkeypatch.setenv(k, v)
    c = anthropic.Anthropic(api_key=ANTHROPIC_CLIENT_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


def cost_usd(usage: tuple[int, int, int, int], price: tuple[float, float, float]) -> float:
    """USD of (fresh input, cache reads, cache writes, output) tokens at (input, cached
    input, output) per million tokens; a cache write costs 1.25x the input price."""
    fresh, read, written, out = usage
    inp, cached, outp = price
    return (fresh * inp + read * cached + written * inp * 1.25 + out * outp) / 1e6


def unstamp(pieces: list[str]) -> tuple[str, list[int]]:
    """The text of stamped pieces without their stamps, and the stamps (perf_counter_ns
    at which the fake wrote each piece)."""
    text, stamps = [], []
    for p in pieces:
        m = STAMP.search(p)
        assert m is not None, f"piece without a send stamp: {p!r}"
        text.append(p[: m.start()])
        stamps.append(int(m.group(1)))
    return "".join(text), stamps


def slow_stamped(f: FakeUpstream) -> None:
    """Make `f` stream 5 stamped pieces 0.2 s apart: >= 0.8 s from first to last."""
    f.event_gap, f.stamp_events = 0.2, True


def everything_seen(ups: dict[str, FakeUpstream]) -> str:
    """Every header and body any fake received, as one string to search for leaks."""
    return json.dumps([[s.headers, s.body.decode(errors="replace")]
                       for f in ups.values() for s in f.requests()])  # fmt: skip


def assert_own_keys_only(ups: dict[str, FakeUpstream]) -> None:
    """No client key reached any fake, and each fake saw only its own provider key (as
    `x-api-key` on the Messages providers, `Authorization: Bearer` elsewhere)."""
    seen = everything_seen(ups)
    for key in CLIENT_KEYS:
        assert key not in seen, "a client's own key reached another provider"
    for name, f in ups.items():
        own = PROVIDERS[name][0]
        others = [k for n, (k, _) in PROVIDERS.items() if n != name]
        for s in f.requests():
            blob = json.dumps(s.headers)
            assert not any(k in blob for k in others), f"{name} saw another provider's key"
            if "messages" in PROVIDERS[name][1]:
                assert s.headers.get("x-api-key") == own, f"{name}: {s.headers}"
                assert "authorization" not in s.headers, f"{name}: {s.headers}"
            else:
                assert s.headers.get("authorization") == f"Bearer {own}", f"{name}: {s.headers}"
