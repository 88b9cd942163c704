"""addon.fetch / addon.urlguard against a loopback server: retries, timeouts, size cap,
redirects and URL safety. Loopback and http are opted into explicitly per test."""

from __future__ import annotations

import ipaddress
import random
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from addon.refresh.fetch import Fetcher, FetchError, retry_after, user_agent
from addon.refresh.sources.schema import FetchSettings
from addon.refresh.urlguard import Guard, UnsafeURLError, check_url, checked_addresses
from tests.sourceserver import OPENROUTER, Redirect, SourceServer

FAST = FetchSettings(connect_timeout_s=2, read_timeout_s=2, attempts=3, backoff_s=0.5,
                     max_backoff_s=10)  # fmt: skip


class Sleeps:
    """A fake sleep: records each delay, never blocks, never asks to stop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return False


@pytest.fixture
def server() -> Iterator[SourceServer]:
    with SourceServer() as srv:
        srv.serve_fixtures()
        yield srv


def fetcher(
    sleeps: Sleeps | None = None,
    settings: FetchSettings = FAST,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    **kwargs: object,
) -> Fetcher:
    kwargs.setdefault("allow_loopback", True)
    return Fetcher(settings, hosts, sleep=sleeps or Sleeps(), rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


def test_fetches_the_real_snapshot_with_an_identifying_user_agent(server: SourceServer) -> None:
    with fetcher() as f:
        got = f.get(server.url(OPENROUTER))
    assert got.body == server.routes[OPENROUTER].body and got.attempts == 1
    assert server.agents == [user_agent()]
    assert user_agent().startswith("local-ai-orchestrator/") and user_agent().endswith(
        " (+refresh)"
    )


def test_environment_proxies_are_ignored(
    server: SourceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    with fetcher() as f:
        assert f.get(server.url(OPENROUTER)).attempts == 1


def test_the_connection_goes_to_the_address_that_was_checked(server: SourceServer) -> None:
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    with fetcher(hosts=("sources.test",), resolver=resolver) as f:
        got = f.get(server.url(OPENROUTER, host="sources.test"))
    assert got.body == server.routes[OPENROUTER].body and resolved == ["sources.test"]


# --- retries ---------------------------------------------------------------------------------


def test_500_is_retried_with_exponential_backoff_and_jitter(server: SourceServer) -> None:
    server.script(OPENROUTER, 500, 502, "ok")
    sleeps = Sleeps()
    with fetcher(sleeps) as f:
        got = f.get(server.url(OPENROUTER))
    assert got.attempts == 3 and server.hits[OPENROUTER] == 3
    first, second = sleeps.delays
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0  # 0.5 s, 1 s, each x U(0.5, 1)


def test_persistent_500_gives_up_after_the_attempts(server: SourceServer) -> None:
    server.script(OPENROUTER, 500)
    with fetcher() as f, pytest.raises(FetchError) as info:
        f.get(server.url(OPENROUTER))
    assert server.hits[OPENROUTER] == 3
    assert str(info.value) == (
        f"{server.url(OPENROUTER)}: HTTP 500 from {server.url(OPENROUTER)} (gave up after 3 "
        "attempts) — the source may be down; its previous data is kept; try again later"
    )


def test_retry_after_is_honoured(server: SourceServer) -> None:
    server.script(OPENROUTER, 429, "ok", retry_after="7")
    sleeps = Sleeps()
    with fetcher(sleeps) as f:
        f.get(server.url(OPENROUTER))
    assert sleeps.delays == [7.0]


def test_a_retry_after_beyond_the_cap_fails_at_once(server: SourceServer) -> None:
    server.script(OPENROUTER, 503, retry_after="3600")
    with fetcher() as f, pytest.raises(FetchError, match="asks to wait 3600 s"):
        f.get(server.url(OPENROUTER))
    assert server.hits[OPENROUTER] == 1


def test_stopping_while_waiting_to_retry(server: SourceServer) -> None:
    server.script(OPENROUTER, 500)
    stopping = Fetcher(FAST, ["127.0.0.1"], allow_loopback=True, sleep=lambda s: True)
    with stopping as f, pytest.raises(FetchError, match="stopped while waiting to retry"):
        f.get(server.url(OPENROUTER))
    assert server.hits[OPENROUTER] == 1


@pytest.mark.parametrize(
    ("status", "remedy"),
    [(404, "check the url in rules/sources.yaml"), (403, "refuses anonymous access")],
)
def test_other_4xx_fail_without_retry(server: SourceServer, status: int, remedy: str) -> None:
    server.script(OPENROUTER, status)
    with fetcher() as f, pytest.raises(FetchError, match=remedy) as info:
        f.get(server.url(OPENROUTER))
    assert f"HTTP {status}" in str(info.value) and server.hits[OPENROUTER] == 1


def test_a_hanging_server_times_out_and_is_retried(server: SourceServer) -> None:
    server.script(OPENROUTER, "hang")
    settings = FetchSettings(connect_timeout_s=2, read_timeout_s=0.2, attempts=2, backoff_s=0)
    with fetcher(settings=settings) as f, pytest.raises(FetchError) as info:
        f.get(server.url(OPENROUTER))
    assert "timed out (no data within the read timeout; raise fetch.read_timeout_s" in str(
        info.value
    )
    assert "gave up after 2 attempts" in str(info.value) and server.hits[OPENROUTER] == 2


def test_an_incomplete_body_is_retried(server: SourceServer) -> None:
    server.script(OPENROUTER, "short", "ok")
    with fetcher() as f:
        got = f.get(server.url(OPENROUTER))
    assert got.attempts == 2 and got.body == server.routes[OPENROUTER].body


def test_the_size_cap(server: SourceServer) -> None:
    settings = FetchSettings(max_bytes=1000)
    with fetcher(settings=settings) as f, pytest.raises(FetchError) as info:
        f.get(server.url(OPENROUTER))
    assert "over the cap — raise fetch.max_bytes (1000 bytes)" in str(info.value)
    assert server.hits[OPENROUTER] == 1


# --- redirects and URL safety ----------------------------------------------------------------


def test_a_redirect_on_an_allowed_host_is_followed(server: SourceServer) -> None:
    server.script("/old", Redirect(OPENROUTER))
    with fetcher() as f:
        got = f.get(server.url("/old"))
    assert got.url == server.url(OPENROUTER) and got.body == server.routes[OPENROUTER].body


def test_a_redirect_to_a_private_address_is_refused_before_connecting(
    server: SourceServer,
) -> None:
    server.script("/old", Redirect(f"http://internal.test:{server.port}{OPENROUTER}"))
    hosts = ("127.0.0.1", "internal.test")
    with (
        fetcher(hosts=hosts, resolver=lambda h, p: ["10.0.0.7"]) as f,
        pytest.raises(FetchError) as info,
    ):
        f.get(server.url("/old"))
    message = str(info.value)
    assert f"redirect to http://internal.test:{server.port}{OPENROUTER} refused" in message
    assert (
        "internal.test resolves to 10.0.0.7, a private address: refused — only providers "
        "marked local: true may use such addresses" in message
    )
    assert server.hits == {"/old": 1}


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://evil.example/x", "host evil.example is not allowed — add it to allowed_hosts"),
        ("ftp://127.0.0.1/x", "not an http(s) URL"),
    ],
)
def test_unsafe_redirects_are_refused(server: SourceServer, location: str, expected: str) -> None:
    server.script("/old", Redirect(location))
    with (
        fetcher(hosts=("127.0.0.1", "169.254.169.254")) as f,
        pytest.raises(FetchError, match="refused") as info,
    ):
        f.get(server.url("/old"))
    assert expected in str(info.value)


def test_a_redirect_loop_stops(server: SourceServer) -> None:
    server.script("/loop", Redirect("/loop"))
    with fetcher() as f, pytest.raises(FetchError, match="more than 5 redirects"):
        f.get(server.url("/loop"))
    assert server.hits["/loop"] == 6


def test_loopback_and_http_are_refused_unless_opted_in(server: SourceServer) -> None:
    with (
        fetcher(allow_loopback=False) as f,
        pytest.raises(FetchError, match="plain http is refused for public sources"),
    ):
        f.get(server.url(OPENROUTER))
    resolver = lambda h, p: ["127.0.0.1"]  # noqa: E731
    with (
        fetcher(hosts=("sources.test",), allow_loopback=False, resolver=resolver) as f,
        pytest.raises(FetchError, match=r"resolves to 127\.0\.0\.1, a loopback address"),
    ):
        f.get(f"https://sources.test:{server.port}{OPENROUTER}")
    assert server.hits[OPENROUTER] == 0


def test_a_non_allowlisted_host_is_refused(server: SourceServer) -> None:
    with fetcher() as f, pytest.raises(FetchError) as info:
        f.get(server.url(OPENROUTER, host="localhost"))
    assert "host localhost is not allowed — add it to allowed_hosts in rules/sources.yaml" in str(
        info.value
    )
    assert server.hits[OPENROUTER] == 0


def test_local_provider_urls_may_be_loopback_but_only_on_local_hosts(server: SourceServer) -> None:
    with fetcher(allow_loopback=False, hosts=(), local_hosts=("127.0.0.1",)) as f:
        assert f.get(server.url("/v1/models"), local=True).body.startswith(b'{"object": "list"')
        with pytest.raises(FetchError, match="plain http is refused"):
            f.get(server.url("/v1/models"))  # the same URL as a public source
        server.script("/hop", Redirect("http://169.254.169.254/"))
        with pytest.raises(FetchError, match="may only lead to hosts of providers marked local"):
            f.get(server.url("/hop"), local=True)


@pytest.mark.parametrize(
    ("address", "guard", "allowed"),
    [
        ("8.8.8.8", Guard(frozenset()), True),
        ("2606:4700::1111", Guard(frozenset()), True),
        ("10.1.2.3", Guard(frozenset()), False),
        ("192.168.1.1", Guard(frozenset()), False),
        ("100.64.0.1", Guard(frozenset()), False),  # carrier-grade NAT
        ("169.254.169.254", Guard(frozenset()), False),
        ("fe80::1", Guard(frozenset()), False),
        ("::ffff:10.0.0.1", Guard(frozenset()), False),
        ("127.0.0.1", Guard(frozenset()), False),
        ("127.0.0.1", Guard(frozenset(), allow_loopback=True), True),
        ("10.1.2.3", Guard(frozenset(), allow_loopback=True), False),
        ("10.1.2.3", Guard(frozenset(), allow_private=True), True),
        ("0.0.0.0", Guard(frozenset(), allow_private=True), False),
    ],
)
def test_address_rules(address: str, guard: Guard, allowed: bool) -> None:
    assert guard.address_allowed(ipaddress.ip_address(address)) is allowed


def test_temporary_dns_failures_are_retried_unknown_hosts_are_not() -> None:
    def flaky(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def unknown(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    sleeps = Sleeps()
    with (
        fetcher(sleeps, hosts=("dns.test",), resolver=flaky) as f,
        pytest.raises(FetchError, match=r"Temporary failure .* \(gave up after 3 attempts\)"),
    ):
        f.get("http://dns.test/x")
    assert len(sleeps.delays) == 2
    with fetcher(hosts=("dns.test",), resolver=unknown) as f, pytest.raises(FetchError) as info:
        f.get("http://dns.test/x")
    assert str(info.value) == (
        "http://dns.test/x: dns.test: no such host ([Errno -2] Name or service not known) — "
        "check the host name"
    )


def test_any_bad_dns_answer_refuses_the_host() -> None:
    guard = Guard(frozenset({"mixed.test"}))
    with pytest.raises(UnsafeURLError, match=r"resolves to 10\.0\.0\.1"):
        checked_addresses("mixed.test", 443, guard, lambda h, p: ["8.8.8.8", "10.0.0.1"])
    assert checked_addresses("ok.test", 443, guard, lambda h, p: ["8.8.8.8"]) == ["8.8.8.8"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://openrouter.ai/api/v1/models", None),
        ("https://cdn.example.com/x", None),
        ("https://example.com/x", "host example.com is not allowed"),
        ("https://user:pw@openrouter.ai/x", "URLs with credentials are refused"),
        ("http://openrouter.ai/x", "plain http is refused"),
        ("file:///etc/passwd", "not an http(s) URL"),
    ],
)
def test_check_url(url: str, expected: str | None) -> None:
    guard = Guard(frozenset({"openrouter.ai", "*.example.com"}))
    if expected is None:
        assert check_url(url, guard)[0] == "https"
    else:
        with pytest.raises(UnsafeURLError, match=re.escape(expected)):
            check_url(url, guard)


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after("120", now.timestamp()) == 120.0
    assert retry_after(later, now.timestamp()) == pytest.approx(90.0)
    assert retry_after("soon", now.timestamp()) is None and retry_after(None, 0) is None
