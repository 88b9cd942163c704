"""End to end (issue 16): the coding agents people run, unmodified, through a real
`orchestrator run` and HTTPS_PROXY, against loopback fakes, each with one fallback the
proxy absorbs. Both are installed from npm by session fixtures (pinned versions).

What each calls through the proxy (observed with these versions):

- Codex CLI (`codex exec`, Rust): `GET api.openai.com/v1/responses` as a WebSocket
  upgrade (a prewarm, then the turn; on a 426 it falls back to HTTPS at once, on a 404 or
  502 after five retries), then `POST /v1/responses` (SSE, `store: false`, its tools in
  `input`); besides, `GET api.github.com/repos/openai/plugins` (and github.com),
  `GET chatgpt.com/backend-api/plugins/export/curated` and OTLP metrics to
  `ab.chatgpt.com`, which are not intercepted (tunneled, and blocked here by the guard).
- Claude Code (`claude -p`, native binary): `GET api.anthropic.com/api/claude_code/
  policy_limits` and `/api/claude_code/settings` (not LLM calls: passed through to the
  real host with the client's own key, blocked here by the guard; it retries them and
  goes on), then one `POST /v1/messages?beta=true` (SSE, max_tokens 64000) with
  `anthropic-version: 2023-06-01` and a long `anthropic-beta`; no count_tokens, no model
  list, and with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 no other host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import all_ledger_rows
from tests.e2e_apis import (
    ANTHROPIC_CLIENT_KEY,
    OPENAI_CLIENT_KEY,
    _clean,
    assert_own_keys_only,
    forget_outside_hosts,
    outside_hosts,
    proxy,
    ups,
)
from tests.fakeupstream import FakeUpstream, Status, overloaded
from tests.proxyproc import ProxyProcess

__all__ = ["_clean", "proxy", "ups"]  # fixtures used by this module
pytestmark = pytest.mark.e2e

CODEX = "@openai/codex@0.171.0"
CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.197"  # its postinstall places the native binary
CLI_TIMEOUT_S = 120
# The hosts the proxy may be asked to reach for what it does not route (see above): Codex's
# plugin lists and telemetry (not intercepted: tunneled), Claude Code's settings reads (paths
# of the intercepted api.anthropic.com that are no LLM call: passed through).
CODEX_OTHER_HOSTS = {"api.github.com", "github.com", "chatgpt.com", "ab.chatgpt.com"}
CLAUDE_OTHER_HOSTS = {"api.anthropic.com"}


def _npm_install(tmp: pytest.TempPathFactory, package: str, binary: str) -> Path:
    """Install `package` into a fresh folder; the path of its `binary`."""
    npm = shutil.which("npm")
    if not (npm and shutil.which("node")):
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are required in CI (the machine image ships them)")
        pytest.skip("node/npm not installed")
    d = tmp.mktemp(binary)
    out = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", package],
                         cwd=d, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    path = d / "node_modules" / ".bin" / binary
    version = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=60, check=False, env=_base_env(d))  # fmt: skip
    assert version.returncode == 0, f"{package} does not run here:\n{version.stderr[-3000:]}"
    return path


@pytest.fixture(scope="session")
def codex(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `codex` command of the pinned Codex CLI."""
    return _npm_install(tmp_path_factory, CODEX, "codex")


@pytest.fixture(scope="session")
def claude(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `claude` command of the pinned Claude Code."""
    return _npm_install(tmp_path_factory, CLAUDE_CODE, "claude")


def _base_env(home: Path) -> dict[str, str]:
    """A clean environment (nothing of the developer's own agent setup) with `home` as HOME."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "LANG": "C.UTF-8", "TERM": "dumb"}  # fmt: skip


def _proxied_env(home: Path, proxy: ProxyProcess) -> dict[str, str]:
    return {**_base_env(home), "HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url,
            "https_proxy": proxy.url, "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}  # fmt: skip


def _run(cmd: list[str], home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(cmd, cwd=home, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise AssertionError(
            f"{cmd[0]} did not finish in {CLI_TIMEOUT_S}s:\n{(err or '')[-3000:]}"
        ) from None


def _rows(
    proxy: ProxyProcess, keep: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The ledger rows `keep` selects, polled until there is one (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in all_ledger_rows(proxy) if keep(r)] if proxy.ledger_path.exists() else []
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_codex_exec_through_the_proxy(
    codex: Path, proxy: ProxyProcess, ups: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    forget_outside_hosts(proxy)
    ups["alpha"].fail(Status(503, "alpha is overloaded"))  # the proxy falls back to beta
    env = {**_proxied_env(tmp_path, proxy), "SSL_CERT_FILE": str(proxy.ca_bundle),
           "OPENAI_API_KEY": OPENAI_CLIENT_KEY}  # fmt: skip
    out = _run([str(codex), "exec", "--skip-git-repo-check", "Say hi"], tmp_path / "work", env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Hello from beta" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    turns = [s for s in ups["beta"].requests() if s.path == "/v1/responses"]
    assert len(turns) == 1 and turns[0].json["model"] == "m-cheap"
    assert len(ups["alpha"].requests("/v1/responses")) == 1
    rows = _rows(proxy, lambda r: r["api"] == "responses" and r["provider"] == "beta")
    assert [(r["attempts"], r["outcome"], r["stream"]) for r in rows] == [(2, "ok", 1)]
    assert rows[0]["routed_model"] == "m-cheap" and rows[0]["cost_usd"] is not None
    assert_own_keys_only(ups)
    tried = set(outside_hosts(proxy))
    assert "api.openai.com" not in tried, (
        "the proxy passed Codex's Responses WebSocket upgrade through to the real "
        "api.openai.com (there it would bypass the router); answer it with a 426"
    )
    assert tried <= CODEX_OTHER_HOSTS, f"Codex tried other hosts: {tried - CODEX_OTHER_HOSTS}"


def test_claude_code_print_through_the_proxy(
    claude: Path, proxy: ProxyProcess, ups: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    forget_outside_hosts(proxy)
    ups["claude-a"].fail(overloaded())  # 529: the proxy falls back to claude-b
    env = {**_proxied_env(tmp_path, proxy), "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert),
           "ANTHROPIC_API_KEY": ANTHROPIC_CLIENT_KEY,
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}  # fmt: skip
    out = _run([str(claude), "-p", "Say hi"], tmp_path / "work", env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "Hello from claude-b" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    calls = [s for f in (ups["claude-a"], ups["claude-b"]) for s in f.requests()]
    assert calls and all(s.path in ("/v1/messages", "/v1/messages/count_tokens") for s in calls)
    assert ups["alpha"].requests() == [] and ups["beta"].requests() == []
    rows = _rows(proxy, lambda r: r["api"] == "messages")
    fallback = [r for r in rows if r["attempts"] == 2]
    assert len(fallback) == 1, json.dumps(rows, default=str)[:2000]
    row = fallback[0]
    assert (row["provider"], row["routed_model"], row["outcome"]) == (
        "claude-b", "claude-haiku-4-5", "ok")  # fmt: skip
    assert row["prompt_tokens"] and row["completion_tokens"] and row["cost_usd"] is not None
    assert all(r["outcome"] == "ok" for r in rows)
    seen = ups["claude-b"].requests("/v1/messages")[0]
    assert seen.headers["anthropic-version"] == "2023-06-01" and seen.headers["anthropic-beta"]
    assert_own_keys_only(ups)
    tried = set(outside_hosts(proxy))
    assert tried <= CLAUDE_OTHER_HOSTS, f"Claude Code tried other hosts: {tried}"
