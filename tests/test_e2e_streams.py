"""End to end (issue 22): a stream goes into the client's flow as the answer of an in-process
server connection (`addon.proxy.handoff`), or with `stream_handoff: false` over the
loopback pipe's socket with its body injected (`addon.proxy.inject`); both keep every guarantee:
the whole answer in order with its usage in the ledger, a cut stream shown as a cut (an
error event, then a broken connection, `truncated` in the ledger), and a client that stops
reading makes the upstream wait instead of the proxy buffering the answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from tests.e2e import CLIENT_KEY, ENV, ledger_row
from tests.fakeupstream import CutAfterEnd, CutStream, FakeUpstream, LingerAfterEnd
from tests.proxyproc import ProxyProcess

pytestmark = pytest.mark.e2e

EVENT_BYTES = 16 * 1024
SLOW_EVENTS = 4000  # 64 MB of answer: far more than the socket buffers on the way hold


class FloodUpstream:
    """A chat stream of SLOW_EVENTS large events, each written only when the connection
    takes it (aiohttp drains); counts the bytes the proxy has taken so far."""

    def __init__(self) -> None:
        self.written = 0
        self.ended = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def reset(self) -> None:
        """Forget the last stream (between tests)."""
        self.written = 0
        self.ended.clear()

    def start(self) -> FloodUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._stream)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        piece = "x" * EVENT_BYTES
        try:
            for i in range(SLOW_EVENTS):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                         "model": "m-flood", "choices": [{"index": 0, "delta": {
                             "content": piece if i else "start"}, "finish_reason": None}]}  # fmt: skip
                data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
                await resp.write(data)
                self.written += len(data)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.ended.set()
        return resp


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeUpstream, FloodUpstream]]:
    plain = FakeUpstream("plain", content="one two three four five six", events=6).start()
    flood = FloodUpstream().start()
    yield plain, flood
    plain.stop()
    flood.stop()


def _model(mid: str, provider: str) -> dict[str, Any]:
    return {"id": mid, "provider": provider, "input_per_mtok": 1, "output_per_mtok": 2,
            "context_tokens": 32000, "quality": 1300}  # fmt: skip


# how a stream's body reaches the flow, as the debug log names it: handed to the flow's
# in-process server connection (`addon.proxy.handoff`, the default), or relayed over the
# loopback pipe's socket (`stream_handoff: false`) and injected into the flow
ROUTES = {
    "handoff": {"plain": "stream body handed to the flow's in-process server",
                "tunnel": "stream body handed to the flow's in-process server"},
    "pipe": {"plain": "stream body injected into the flow",
             "tunnel": "stream body injected into the tunnelled flow"},
}  # fmt: skip


def _route(proxy: ProxyProcess, kind: str) -> str:
    return ROUTES[proxy.route][kind]  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=sorted(ROUTES))
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          fakes: tuple[FakeUpstream, FloodUpstream]) -> Iterator[ProxyProcess]:  # fmt: skip
    """A proxy intercepting the two loopback upstreams' plain-HTTP authorities; each
    requested model is pinned to its own upstream. Once per way a stream reaches its flow."""
    plain, flood = fakes
    providers = {
        "plain": {"base_url": plain.base_url, "api_key_env": "ORQ_TEST_KEY_ALPHA", "local": True},
        "flood": {"base_url": f"http://127.0.0.1:{flood.port}/v1",
                  "api_key_env": "ORQ_TEST_KEY_BETA", "local": True},
    }  # fmt: skip
    cfg = {
        "listen": "127.0.0.1:0", "mode": "regular",
        "intercept": [f"127.0.0.1:{plain.port}", f"127.0.0.1:{flood.port}", "api.openai.com"],
        "default_profile": "balanced", "rules": "rules/",
        "data": {"benchmarks": "data/benchmarks.db", "ledger": "data/ledger.db"},
        "providers": providers, "log_level": "debug",
        "resilience": {"max_attempts": 1, "first_token_timeout_ms": 5000,
                       "stall_timeout_ms": 60000},
        "admin": {"listen": "127.0.0.1:0"},
        "stream_handoff": request.param == "handoff",
    }  # fmt: skip
    rules = {
        "profiles.yaml": {"profiles": {"balanced": {"weights": {"quality": 1.0}}}},
        "models.yaml": {"models": [_model("m-plain", "plain"), _model("m-flood", "flood")]},
        "routes.yaml": {"routes": {"m-plain": ["m-plain"], "m-flood": ["m-flood"]}},
        "policies.yaml": {"policies": [{"name": "pinned", "match": {"model": "m-*"},
                                        "pin": True}]},
    }  # fmt: skip
    p = ProxyProcess(tmp_path_factory.mktemp("streams"), cfg, rules, ENV).start()
    p.route = request.param  # type: ignore[attr-defined]
    yield p
    p.stop()


def _client(proxy: ProxyProcess, upstream: FakeUpstream) -> openai.OpenAI:
    http = httpx.Client(proxy=proxy.url, timeout=20)
    return openai.OpenAI(api_key=CLIENT_KEY, base_url=upstream.base_url, http_client=http,
                         max_retries=0)  # fmt: skip


def _stream_chat(client: openai.OpenAI) -> tuple[str, str]:
    """A streamed chat completion for `m-plain`: its request id and the text it streamed."""
    with client.chat.completions.with_streaming_response.create(
        model="m-plain", stream=True, messages=[{"role": "user", "content": "hi"}]
    ) as resp:
        rid = resp.headers["x-orchestrator-request-id"]
        chunks = list(resp.parse())
    return rid, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_plain_http_stream_is_injected_whole_with_its_usage(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    plain, _ = fakes
    plain.clear()
    rid, text = _stream_chat(_client(proxy, plain))
    assert text == "one two three four five six"
    row = ledger_row(proxy, rid)
    assert row["outcome"] == "ok" and row["stream"] == 1
    assert row["completion_tokens"] == 7 and row["prompt_tokens"] == 11  # the fake's usage
    proxy.wait_for_log(re.compile(re.escape(_route(proxy, "plain") + ", then straight to its")))


def _https_client(proxy: ProxyProcess, *, http2: bool = False) -> openai.OpenAI:
    """The openai SDK aimed at api.openai.com through the proxy, trusting its CA."""
    trust = ssl.create_default_context(cafile=str(proxy.ca_bundle))
    http = httpx.Client(proxy=proxy.url, verify=trust, timeout=20, http2=http2)
    return openai.OpenAI(api_key=CLIENT_KEY, base_url="https://api.openai.com/v1",
                         http_client=http, max_retries=0)  # fmt: skip


def test_an_https_stream_in_a_connect_tunnel_is_injected_whole_with_its_usage(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    """Regular-mode HTTPS (the openai SDK through HTTPS_PROXY): the body goes into the
    tunnelled flow as bytes read from its pipe connection, not over the loopback socket."""
    plain, _ = fakes
    plain.clear()
    rid, text = _stream_chat(_https_client(proxy))
    assert text == "one two three four five six"
    row = ledger_row(proxy, rid)
    assert row["outcome"] == "ok" and row["completion_tokens"] == 7
    proxy.wait_for_log(re.compile(re.escape(_route(proxy, "tunnel") + ", then straight to its")))


def _curl_h2_stream(
    proxy: ProxyProcess, *extra: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """A streamed chat for `m-plain` by curl over HTTP/2 through the proxy (headers on
    stdout, then the body; `extra` curl options): the finished process and the answer's
    request id."""
    body = json.dumps({"model": "m-plain", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    out = subprocess.run(
        ["curl", "-sS", "-N", "--http2", "--max-time", "30", "-x", proxy.url,
         "--cacert", str(proxy.ca_cert), "-H", f"authorization: Bearer {CLIENT_KEY}",
         "-H", "content-type: application/json", "-d", body, "-D", "-", *extra,
         "https://api.openai.com/v1/chat/completions"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    rid = re.search(r"x-orchestrator-request-id: (\S+)", out.stdout, re.I)
    assert rid is not None, out.stdout[:500] + out.stderr
    return out, rid.group(1)


def test_an_http2_client_in_a_tunnel_gets_its_stream_through_mitmproxys_framing(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    """HTTP/2 frames and flow-controls each stream: its body stays on mitmproxy's stack
    (injected as read from the pipe connection), never written to the socket directly."""
    plain, _ = fakes
    plain.clear()
    before = len(proxy.lines)
    out, rid = _curl_h2_stream(proxy, "-w", "\nhttp_version=%{http_version}\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("http_version=2"), out.stdout[-300:]
    events = [json.loads(line[6:]) for line in out.stdout.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    words = [e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")]
    assert "".join(words) == "one two three four five six"
    assert "data: [DONE]" in out.stdout
    assert ledger_row(proxy, rid)["outcome"] == "ok"
    line = proxy.wait_for_log(re.compile(re.escape(_route(proxy, "tunnel"))), since=before)
    assert "straight to its socket" not in line


def test_a_client_leaving_at_done_and_an_upstream_cut_after_it_are_complete_answers(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    """Both ways: the openai SDK closes at data: [DONE] while the upstream holds its
    connection (`ok`, not `client_abort`); curl over HTTP/2 reads to the end while the
    upstream cuts after [DONE] (a clean end, exit 0, no error event)."""
    plain, _ = fakes
    plain.clear()
    plain.fail(LingerAfterEnd(seconds=1.5))
    t0 = time.monotonic()
    rid, text = _stream_chat(_https_client(proxy))
    assert time.monotonic() - t0 < 1.5, "[DONE] waited for the upstream's end of body"
    assert text == "one two three four five six"
    row = ledger_row(proxy, rid)
    assert (row["outcome"], row["error"], row["completion_tokens"]) == ("ok", None, 7), row
    plain.clear()
    plain.fail(CutAfterEnd())
    out, rid = _curl_h2_stream(proxy)
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stdout.splitlines() if x.startswith(("data:", "event:"))]
    assert lines[-1] == "data: [DONE]" and "event: error" not in lines, lines[-3:]
    assert ledger_row(proxy, rid)["outcome"] == "ok"


def test_a_cut_stream_to_an_http2_client_ends_in_a_reset_not_a_clean_end(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    """HTTP/2 has no connection to cut per stream: the client gets the error event, then
    the stream is reset, so curl fails instead of taking the answer for complete."""
    plain, _ = fakes
    plain.clear()
    plain.fail(CutStream(after_events=3))
    plain.event_gap = 0.02
    try:
        out, rid = _curl_h2_stream(proxy)
    finally:
        plain.event_gap = 0.0
    assert "\nHTTP/2 200" in out.stdout, out.stdout[:300]  # after the CONNECT's answer
    assert out.stdout.index('"one "') < out.stdout.index("event: error")
    assert "stream_truncated" in out.stdout and "data: [DONE]" not in out.stdout
    assert out.returncode != 0, out.stderr  # the stream was reset, not ended
    assert ledger_row(proxy, rid)["outcome"] == "truncated"


def test_a_cut_https_stream_in_a_tunnel_raises_in_the_sdk(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    plain, _ = fakes
    plain.clear()
    plain.fail(CutStream(after_events=3))
    plain.event_gap = 0.02
    client = _https_client(proxy)
    got: list[str] = []
    try:
        with client.chat.completions.with_streaming_response.create(
            model="m-plain", stream=True, messages=[{"role": "user", "content": "hi"}]
        ) as resp:
            rid = resp.headers["x-orchestrator-request-id"]
            with pytest.raises((openai.APIError, httpx.HTTPError)):
                for c in resp.parse():
                    got.extend(c.choices[0].delta.content or "" for _ in [0] if c.choices)
    finally:
        plain.event_gap = 0.0
    assert "".join(got).startswith("one ")  # what came before the cut arrived, then it raised
    assert ledger_row(proxy, rid)["outcome"] == "truncated"


def _raw_stream(proxy: ProxyProcess, port: int, model: str) -> socket.socket:
    """A streamed chat request sent through the proxy on a bare socket."""
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
    host = f"127.0.0.1:{port}"
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    sock.sendall(
        f"POST http://{host}/v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
        f"authorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_a_cut_plain_http_stream_ends_as_a_cut(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    plain, _ = fakes
    plain.clear()
    plain.fail(CutStream(after_events=3))
    plain.event_gap = 0.02  # each event its own read (aiohttp drops what a cut read holds)
    try:
        sock = _raw_stream(proxy, plain.port, "m-plain")
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
        sock.close()
    finally:
        plain.event_gap = 0.0
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    rid = next(line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
               if line.lower().startswith(b"x-orchestrator-request-id"))  # fmt: skip
    # what the upstream sent before the cut, in order, then the error event, then no final
    # chunk: the connection is cut, so no client can take the answer for complete
    assert body.index(b'"one "') < body.index(b'"two t"') < body.index(b"event: error")
    assert b"stream_truncated" in body
    assert not body.endswith(b"0\r\n\r\n")
    assert ledger_row(proxy, rid)["outcome"] == "truncated"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_holds_the_upstream_not_the_proxy(
    proxy: ProxyProcess, fakes: tuple[FakeUpstream, FloodUpstream]
) -> None:
    _, flood = fakes
    flood.reset()
    assert proxy.proc is not None
    rss_before = _rss_kb(proxy.proc.pid)
    sock = _raw_stream(proxy, flood.port, "m-flood")
    head = sock.recv(4096)  # the headers (and maybe the first events); then it stops reading
    assert head.startswith(b"HTTP/1.1 200")
    # the upstream goes on until every buffer on the way is full, then waits: poll until the
    # bytes it got rid of stop growing
    last, still_since = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = flood.written
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 1.0:
            break
        time.sleep(0.05)
    total = SLOW_EVENTS * EVENT_BYTES
    assert not flood.ended.is_set()
    # what left the upstream sits in the kernel's socket buffers (loopback autotunes them to
    # several MB) and a few bounded user-space ones (aiohttp's reader, the client transport's
    # write buffer): the proxy's memory does not hold the answer
    assert 0 < flood.written < total / 2, flood.written
    grew_kb = _rss_kb(proxy.proc.pid) - rss_before
    assert grew_kb * 1024 < min(16 * 1024 * 1024, flood.written / 2), (grew_kb, flood.written)
    sock.close()
    assert flood.ended.wait(30)  # the client left: the relay closed the upstream
