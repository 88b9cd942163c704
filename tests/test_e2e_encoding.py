"""End to end: compressed request bodies through a real `orchestrator run`.

Codex CLI can send its Responses requests zstd-compressed (`Content-Encoding: zstd`); other
clients gzip large bodies. The router decodes the body to route it, every provider gets it
as identity JSON, and a body that cannot be decoded, or decodes to more than
`max_request_bytes`, gets a clear error in the API's format, never a pass-through.
"""

from __future__ import annotations

import gzip
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
import zstandard

from tests.e2e import ledger_row
from tests.e2e_apis import (
    ANTHROPIC_CLIENT_KEY,
    OPENAI_CLIENT_KEY,
    QUALITY,
    _clean,
    proxy,
    stays_on_loopback,
    ups,
)
from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ProxyProcess

__all__ = ["_clean", "proxy", "stays_on_loopback", "ups"]  # fixtures used by this module
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stays_on_loopback")]

RESPONSES = "https://api.openai.com/v1/responses"
MESSAGES = "https://api.anthropic.com/v1/messages"


@pytest.fixture
def http(proxy: ProxyProcess) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20) as c:
        yield c


def _post(http: httpx.Client, url: str, body: bytes, coding: str, **headers: str) -> httpx.Response:
    key = {"x-api-key": ANTHROPIC_CLIENT_KEY, "anthropic-version": "2023-06-01"} \
        if "anthropic" in url else {"authorization": f"Bearer {OPENAI_CLIENT_KEY}"}  # fmt: skip
    return http.post(url, content=body, headers={
        "content-type": "application/json", "content-encoding": coding, **QUALITY, **key,
        **headers})  # fmt: skip


def _lower(h: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in h.items()}


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("zstd", lambda b: zstandard.ZstdCompressor().compress(b)), ("gzip", gzip.compress),
     ("br", brotli.compress)],
    ids=["zstd", "gzip", "br"],
)  # fmt: skip
def test_a_compressed_responses_call_is_routed_and_sent_on_decoded(
    http: httpx.Client, ups: dict[str, FakeUpstream], proxy: ProxyProcess, coding: str,
    encode: Any,
) -> None:  # fmt: skip
    want = {"model": "gpt-4o", "input": "Say hi", "stream": True}
    r = _post(http, RESPONSES, encode(json.dumps(want).encode()), coding)
    assert r.status_code == 200, r.text
    assert r.headers["x-orchestrator-provider"] == "alpha"
    assert '"type":"response.completed"' in r.text.replace(" ", "")
    (seen,) = ups["alpha"].requests("/responses")
    assert "content-encoding" not in _lower(seen.headers)
    assert seen.json is not None and seen.json["input"] == "Say hi"
    assert seen.json["model"] == r.headers["x-orchestrator-model"] != "gpt-4o"
    row = ledger_row(proxy, r.headers["x-orchestrator-request-id"])
    assert (row["api"], row["outcome"], row["requested_model"]) == ("responses", "ok", "gpt-4o")


def test_curl_gzip_chat_is_routed(
    proxy: ProxyProcess, ups: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    body = tmp_path / "body.json.gz"
    body.write_bytes(gzip.compress(json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()))  # fmt: skip
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--proxy", proxy.url, "--cacert", str(proxy.ca_cert),
         "-H", f"Authorization: Bearer {OPENAI_CLIENT_KEY}", "-H", "Content-Type: application/json",
         "-H", "Content-Encoding: gzip", "-H", "X-Orchestrator-Profile: quality",
         "https://api.openai.com/v1/chat/completions", "--data-binary", f"@{body}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "Hello from alpha"
    (seen,) = ups["alpha"].requests("/chat/completions")
    assert seen.json is not None and seen.json["messages"][0]["content"] == "hi"


def test_a_compression_bomb_is_413_and_nothing_is_sent(
    http: httpx.Client, ups: dict[str, FakeUpstream], proxy: ProxyProcess
) -> None:
    pad = b" " * 40_000_000  # JSON whitespace: ~1 KB of zstd, 40 MB decoded
    bomb = zstandard.ZstdCompressor().compress(b'{"model": "gpt-4o", "input": "hi"' + pad + b"}")
    assert len(bomb) < 10_000
    r = _post(http, RESPONSES, bomb, "zstd")
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and "max_request_bytes" in err["message"]
    assert all(not f.requests() for f in ups.values())
    row = ledger_row(proxy, r.headers["x-orchestrator-request-id"])
    assert row["status"] == 413
    ok = _post(http, RESPONSES, gzip.compress(b'{"model": "gpt-4o", "input": "hi"}'), "gzip")
    assert ok.status_code == 200  # the proxy is fine


@pytest.mark.parametrize(
    ("url", "coding", "body", "match"),
    [
        (RESPONSES, "gzip", b"\x1f\x8b not gzip at all", "not valid gzip"),
        (RESPONSES, "compress", b"{}", "'compress' is not one the router reads"),
        (MESSAGES, "zstd", zstandard.ZstdCompressor().compress(b'{"model": "x"}')[:-4],
         "ends early"),
    ],
    ids=["corrupt-gzip", "unknown-coding", "cut-zstd-messages"],
)  # fmt: skip
def test_an_undecodable_body_is_a_clear_400_in_the_apis_format(
    http: httpx.Client, ups: dict[str, FakeUpstream], proxy: ProxyProcess, url: str,
    coding: str, body: bytes, match: str,
) -> None:  # fmt: skip
    r = _post(http, url, body, coding)
    assert r.status_code == 400
    got = r.json()
    if url == MESSAGES:  # Anthropic's error shape
        assert got["type"] == "error" and got["error"]["type"] == "invalid_request_error"
    else:
        assert got["error"]["code"] == "invalid_encoding"
    assert match in got["error"]["message"]
    assert all(not f.requests() for f in ups.values())
    row = ledger_row(proxy, r.headers["x-orchestrator-request-id"])
    assert row["status"] == 400 and match in row["error"]
