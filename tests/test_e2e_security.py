"""End to end: client auth, key isolation, request limits, prompt privacy and bad input thrown
at a live proxy (issue 7)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e import (
    CLIENT_KEY,
    ENV,
    KEY_ALPHA,
    KEY_BETA,
    RULES,
    _clean,
    _config,
    all_ledger_rows,
    ledger_row,
    ups,
    wait_for_request_lines,
)
from tests.fakeupstream import Delay, FakeUpstream, Status
from tests.proxyproc import ORCHESTRATOR, ProxyProcess

__all__ = ["_clean", "ups"]
pytestmark = pytest.mark.e2e
ROUTER_KEY = "rk-team-a-0123456789abcdef"
CLIENT_ENV = {"ORQ_TEST_ROUTER_KEY": ROUTER_KEY}
QUALITY = {"X-Orchestrator-Profile": "quality"}
URL = "https://api.openai.com/v1/chat/completions"


def secured(ups: dict[str, FakeUpstream], mode: str = "regular") -> dict[str, Any]:
    cfg = _config(ups, mode)
    cfg["clients"] = [{"name": "team-a", "key_env": "ORQ_TEST_ROUTER_KEY"}]
    cfg["max_request_bytes"] = 4096
    cfg["log_prompts"] = "full"
    cfg["providers"]["gamma"]["max_connections"] = 1
    return cfg


@pytest.fixture(scope="module")
def sec(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("sec"), secured(ups), RULES, {**ENV, **CLIENT_ENV})
    yield p.start()
    p.stop()


def proxy_url(p: ProxyProcess, key: str | None = ROUTER_KEY) -> str:
    return f"http://team-a:{key}@127.0.0.1:{p.port}" if key else p.url


def client(p: ProxyProcess, key: str | None = ROUTER_KEY) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(p.ca_cert))
    return httpx.Client(proxy=proxy_url(p, key), verify=ctx, timeout=15,
                        headers={"Authorization": f"Bearer {CLIENT_KEY}"})  # fmt: skip


def everything_seen(ups: dict[str, FakeUpstream]) -> str:
    return json.dumps([[s.headers, s.body.decode(errors="replace")]
                       for f in ups.values() for s in f.requests()])  # fmt: skip


# --------------------------------------------------------------------------- 1-2: clients, keys


def test_regular_mode_requires_a_client_key(
    sec: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    with client(sec, key=None) as c, pytest.raises(httpx.ProxyError, match="407"):
        c.post(URL, json={"model": "gpt-4o", "messages": []})
    with client(sec, key="wrong") as c, pytest.raises(httpx.ProxyError, match="407"):
        c.post(URL, json={"model": "gpt-4o", "messages": []})
    assert everything_seen(ups) == "[]"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_sdk_with_client_key_and_key_isolation(
    sec: ProxyProcess, ups: dict[str, FakeUpstream], monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy_url(sec))
    monkeypatch.setenv("SSL_CERT_FILE", str(sec.ca_bundle))
    ups["alpha"].fail(Status(503))
    c = openai.OpenAI(api_key=CLIENT_KEY, base_url="https://api.openai.com/v1", max_retries=0)
    try:
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "secret plans"}],
            extra_headers=QUALITY, stream=stream,
        )  # fmt: skip
        if stream:
            list(raw.parse())
    finally:
        c.close()
    assert raw.headers["x-orchestrator-attempts"] == "2"  # alpha failed, a fallback answered
    row = ledger_row(sec, raw.headers["x-orchestrator-request-id"])
    assert row["client"] == "team-a"
    # both attempts reached an upstream: the checks below inspect what was really sent
    assert ups["alpha"].requests() and ups[raw.headers["x-orchestrator-provider"]].requests()
    seen = everything_seen(ups)
    for secret in (ROUTER_KEY, CLIENT_KEY):  # neither the router key nor the app's key
        assert secret not in seen
    assert "proxy-authorization" not in seen.lower()
    for f, own in ((ups["alpha"], KEY_ALPHA), (ups["beta"], KEY_BETA)):
        for s in f.requests():
            assert s.headers.get("authorization") == f"Bearer {own}"


def test_curl_with_proxy_user(sec: ProxyProcess) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--proxy", sec.url, "--proxy-user",
         f"team-a:{ROUTER_KEY}", "--cacert", str(sec.ca_cert), "-H", "Content-Type: application/json",
         "-H", "X-Orchestrator-Profile: budget", URL,
         "-d", json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "Hello from beta"


def test_reverse_mode_router_key(ups: dict[str, FakeUpstream], tmp_path: Path) -> None:
    cfg = secured(ups, mode=f"reverse:http://127.0.0.1:{ups['alpha'].port}")
    p = ProxyProcess(tmp_path, cfg, RULES, {**ENV, **CLIENT_ENV}).start()
    try:
        bad = httpx.post(f"{p.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []},
                         headers={"Authorization": "Bearer nope"}, timeout=10)  # fmt: skip
        c = openai.OpenAI(api_key=ROUTER_KEY, base_url=f"{p.url}/v1", max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers=QUALITY
        )
        c.close()
    finally:
        p.stop()
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "client_auth_required"
    assert raw.headers["x-orchestrator-provider"] == "alpha"
    # the router key is swapped for the provider key and never forwarded
    assert [s.headers.get("authorization") for s in ups["alpha"].requests()] == [
        f"Bearer {KEY_ALPHA}"
    ]
    assert ROUTER_KEY not in everything_seen(ups) and ROUTER_KEY not in p.log()


def test_debug_logs_ledger_and_responses_hold_no_key_material(sec: ProxyProcess) -> None:
    with client(sec) as c:
        r1 = c.post(URL, json={"model": "gpt-4o", "messages": []}, headers=QUALITY)
        r2 = c.post(URL, json={"model": "route-me", "messages": []})
    # the rows and log lines of both requests are written after the responses: wait until
    # they are there, or the checks below would pass on a ledger and log without them
    rids = [r.headers["x-orchestrator-request-id"] for r in (r1, r2)]
    for rid in rids:
        assert ledger_row(sec, rid)["id"] == rid
    wait_for_request_lines(sec, rids)
    blob = sec.log() + json.dumps(all_ledger_rows(sec)) + r1.text + r2.text + str(r1.headers)
    for secret in (ROUTER_KEY, CLIENT_KEY, KEY_ALPHA, KEY_BETA):
        assert secret not in blob


def test_non_loopback_listen_without_clients_refuses_to_start(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "orchestrator.yaml").read_text().replace("listen: 127.0.0.1:8080",
                                                            "listen: 0.0.0.0:8080")  # fmt: skip
    (tmp_path / "orchestrator.yaml").write_text(text)
    (tmp_path / "rules").symlink_to(repo / "rules")
    out = subprocess.run([str(ORCHESTRATOR), "run", "-c", str(tmp_path / "orchestrator.yaml")],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 2
    assert "listen: 0.0.0.0:8080 is reachable from other machines" in out.stderr
    assert "add `clients:` (README: Security) or listen on 127.0.0.1" in out.stderr


# --------------------------------------------------------------------------- 4: limits


def test_oversized_request_gets_413(sec: ProxyProcess, ups: dict[str, FakeUpstream]) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 10000}]})
    with client(sec) as c:
        r = c.post(URL, content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and "max_request_bytes (4096)" in err["message"]
    assert everything_seen(ups) == "[]"
    assert ledger_row(sec, r.headers["x-orchestrator-request-id"])["status"] == 413


def test_request_of_unknown_size_gets_411(sec: ProxyProcess, ups: dict[str, FakeUpstream]) -> None:
    def endless() -> Any:  # a chunked body the proxy must not collect
        yield b'{"model": "gpt-4o", "messages": ['
        for _ in range(200):
            yield b'{"role": "user", "content": "' + b"y" * 1000 + b'"},'
        yield b"]}"

    with client(sec) as c:
        r = c.post(URL, content=endless(), headers={"Content-Type": "application/json"})
    assert r.status_code == 411
    assert r.json()["error"]["code"] == "length_required"
    assert everything_seen(ups) == "[]"


def test_oversized_sse_event_ends_the_stream_cleanly(
    sec: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    ups["alpha"].content, ups["alpha"].events = "y" * (5 * 1024 * 1024), 1
    try:
        with client(sec) as c, pytest.raises(httpx.HTTPError):  # noqa: SIM117
            with c.stream("POST", URL, json={"model": "gpt-4o", "stream": True, "messages": []},
                          headers=QUALITY) as r:  # fmt: skip
                rid = r.headers["x-orchestrator-request-id"]
                r.read()
    finally:
        ups["alpha"].content, ups["alpha"].events = "Hello from alpha", 5
    row = ledger_row(sec, rid)
    assert row["outcome"] == "truncated" and "larger than" in row["error"]
    with client(sec) as c:  # and the proxy is fine
        assert c.post(URL, json={"model": "gpt-4o", "messages": []}).status_code == 200


def test_provider_connection_cap_queues(sec: ProxyProcess, ups: dict[str, FakeUpstream]) -> None:
    ups["gamma"].always(Delay(0.3))
    results: list[int] = []
    try:

        def one() -> None:
            with client(sec) as c:
                results.append(
                    c.post(URL, json={"model": "gamma-only", "messages": []}).status_code
                )

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ups["gamma"].always(None)
    assert results == [200, 200, 200]  # queued, not failed
    at = sorted(s.at for s in ups["gamma"].requests())
    assert len(at) == 3 and all(b - a >= 0.25 for a, b in itertools.pairwise(at))


# --------------------------------------------------------------------------- 5: privacy


def test_prompts_stored_only_when_opted_in(sec: ProxyProcess, ups: dict[str, FakeUpstream],
                                           tmp_path: Path) -> None:  # fmt: skip
    with client(sec) as c:
        r = c.post(
            URL, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "tell me"}]}
        )
    row = ledger_row(sec, r.headers["x-orchestrator-request-id"])
    assert "tell me" in row["prompt"] and row["completion"].startswith("Hello from")
    assert len(row["prompt_sha256"]) == 64
    p = ProxyProcess(tmp_path, _config(ups), RULES, ENV).start()  # default: off
    try:
        with httpx.Client(
            proxy=p.url, verify=ssl.create_default_context(cafile=str(p.ca_cert))
        ) as c:
            r = c.post(URL, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "tell me"}]},
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"})  # fmt: skip
        row = ledger_row(p, r.headers["x-orchestrator-request-id"])
        assert (row["prompt"], row["completion"], row["prompt_sha256"]) == (None, None, None)
        wait_for_request_lines(p, [row["id"]])  # the log holds this request's lines
        assert "tell me" not in p.log() and "Hello from" not in p.log()
    finally:
        p.stop()


# --------------------------------------------------------------------------- 7: bad input


def _raw(port: int, payload: bytes, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_garbage_at_a_live_proxy(ups: dict[str, FakeUpstream], tmp_path: Path) -> None:
    p = ProxyProcess(tmp_path, _config(ups), RULES, ENV).start()
    orig = f"127.0.0.1:{ups['orig'].port}"
    auth = base64.b64encode(b"x:y").decode()
    cases = {
        "garbage": b"this is not http at all \x00\x01\r\n\r\n",
        "bad request line": b"HELLO /v1 HTTP/9.9\r\n\r\n",
        "huge header": (f"POST http://{orig}/v1/chat/completions HTTP/1.1\r\nHost: {orig}\r\n"
                        f"X-Big: {'a' * 300_000}\r\nContent-Length: 2\r\n\r\n{{}}").encode(),
        "invalid json": (f"POST http://{orig}/v1/chat/completions HTTP/1.1\r\nHost: {orig}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json").encode(),
        "wrong content type": (f"POST http://{orig}/v1/chat/completions HTTP/1.1\r\nHost: {orig}\r\n"
                               "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello").encode(),
        "bad content-length": (f"POST http://{orig}/v1/chat/completions HTTP/1.1\r\nHost: {orig}\r\n"
                               "Content-Length: banana\r\n\r\n").encode(),
        "proxy auth noise": (f"GET http://{orig}/v1/models HTTP/1.1\r\nHost: {orig}\r\n"
                             f"Proxy-Authorization: Basic {auth}\r\n\r\n").encode(),
    }  # fmt: skip
    try:
        for name, payload in cases.items():
            answer = _raw(p.port, payload)
            assert answer.startswith(b"HTTP/1.1 "), f"{name}: {answer[:100]!r}"
        # a TLS-looking blob and a truncated body: the client gives up; the proxy must not wedge
        _raw(p.port, b"\x16\x03\x01\x00\xff" + os.urandom(300), half_close=True)
        _raw(p.port, (f"POST http://{orig}/v1/chat/completions HTTP/1.1\r\nHost: {orig}\r\n"
                      "Content-Length: 100\r\n\r\n{\"model\":").encode(), half_close=True)  # fmt: skip
        with httpx.Client(
            proxy=p.url, verify=ssl.create_default_context(cafile=str(p.ca_cert))
        ) as c:
            r = c.post(URL, json={"model": "gpt-4o", "messages": []},
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"})  # fmt: skip
        assert r.status_code == 200  # still up and routing
        assert p.proc is not None and p.proc.poll() is None
    finally:
        p.stop()
