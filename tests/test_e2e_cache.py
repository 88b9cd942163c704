"""End to end (issue 20, part 3): the response cache through a real `orchestrator run` and
the openai SDK (HTTPS_PROXY, trusting its CA), against the loopback fakes that count every
call. A policy opts in with `cache:`; the store is the default SQLite file."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

from tests.e2e import CLIENT_KEY, ENV, RULES, _clean, _config, ledger_row, ups
from tests.fakeupstream import FakeUpstream
from tests.proxyproc import ProxyProcess
from tests.services import RedisServer, redis_server

__all__ = ["_clean", "redis_server", "ups"]  # fixtures used by this module
pytestmark = pytest.mark.e2e

CACHED = {"x-cache-test": "on"}  # the header the caching policy matches


def _rules() -> dict[str, Any]:
    rules = copy.deepcopy(RULES)
    rules["policies.yaml"]["policies"].insert(
        0,
        {
            "name": "cached",
            "match": {"headers": {"x-cache-test": "on"}},
            "profile": "budget",
            "cache": {"ttl_s": 600},
        },
    )
    return rules


@pytest.fixture(scope="module")
def proxy(
    ups: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("cache"), _config(ups), _rules(), ENV).start()
    yield p
    p.stop()


@pytest.fixture
def env(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in proxy.client_env().items():
        monkeypatch.setenv(k, v)


def _client(key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url="https://api.openai.com/v1", max_retries=0)


def _calls(ups: dict[str, FakeUpstream]) -> int:
    return sum(len(f.requests("/chat/completions")) for f in ups.values())


def _ask(c: openai.OpenAI, text: str, *, headers: dict[str, str] | None = None,
         model: str = "gpt-4o", **kw: Any) -> Any:  # fmt: skip
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}],
        extra_headers={**CACHED, **(headers or {})}, **kw,
    )  # fmt: skip


def test_a_repeated_request_is_answered_from_the_cache(
    env: None, proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    with _client() as c:
        first = _ask(c, "cache me: whole")
        second = _ask(c, "cache me: whole")
    assert _calls(ups) == 1  # the upstream saw one call
    assert first.headers["x-orchestrator-cache"] == "miss"
    assert second.headers["x-orchestrator-cache"] == "hit"
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.id == a.id and b.model == a.model
    assert second.headers["x-orchestrator-provider"] == first.headers["x-orchestrator-provider"]
    miss = ledger_row(proxy, first.headers["x-orchestrator-request-id"])
    hit = ledger_row(proxy, second.headers["x-orchestrator-request-id"])
    assert miss["outcome"] == "ok" and miss["cost_usd"] > 0
    assert hit["outcome"] == "cached" and hit["cost_usd"] == 0 and hit["attempts"] == 0
    assert hit["requested_cost_usd"] == pytest.approx(
        miss["requested_cost_usd"] or miss["cost_usd"]
    )
    assert hit["provider"] == miss["provider"] and hit["prompt_tokens"] == miss["prompt_tokens"]


def test_a_streamed_hit_arrives_as_the_same_several_events(
    env: None, proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    def stream(c: openai.OpenAI, **kw: Any) -> tuple[Any, list[Any]]:
        raw = _ask(c, "cache me: stream", stream=True, **kw)
        return raw, list(raw.parse())

    with _client() as c:
        first, events_a = stream(c, stream_options={"include_usage": True})
        second, events_b = stream(c)  # differs in stream_options only: the same entry
    assert _calls(ups) == 1
    assert first.headers["x-orchestrator-cache"] == "miss"
    assert second.headers["x-orchestrator-cache"] == "hit"
    assert second.headers["content-type"].startswith("text/event-stream")
    # the hit is the original's events, one by one: the usage chunk only for who asked
    assert len(events_b) == len(events_a) - 1 >= 5
    assert events_a[-1].usage is not None and all(e.usage is None for e in events_b)
    pieces = [e.choices[0].delta.content for e in events_b if e.choices]
    assert pieces == [e.choices[0].delta.content for e in events_a if e.choices]  # same chunks
    assert len([p for p in pieces if p]) >= 3  # the text came in several events, not one
    assert "".join(p or "" for p in pieces).startswith("Hello from")
    hit = ledger_row(proxy, second.headers["x-orchestrator-request-id"])
    assert hit["outcome"] == "cached" and hit["cost_usd"] == 0 and hit["stream"] == 1
    assert hit["completion_tokens"] is not None  # read from the replayed usage chunk


def test_a_whole_answer_never_answers_a_stream(env: None, ups: dict[str, FakeUpstream]) -> None:
    with _client() as c:
        _ask(c, "cache me: form")
        streamed = _ask(c, "cache me: form", stream=True)
        events = list(streamed.parse())
    assert _calls(ups) == 2 and streamed.headers["x-orchestrator-cache"] == "miss"
    assert len(events) > 1


def test_tenants_never_share_entries(env: None, ups: dict[str, FakeUpstream]) -> None:
    with _client() as c, _client("sk-another-tenant-99999999") as other:
        mine = _ask(c, "cache me: tenants")
        theirs = _ask(other, "cache me: tenants")
        theirs_again = _ask(other, "cache me: tenants")
    assert _calls(ups) == 2
    assert (mine.headers["x-orchestrator-cache"], theirs.headers["x-orchestrator-cache"],
            theirs_again.headers["x-orchestrator-cache"]) == ("miss", "miss", "hit")  # fmt: skip


def test_no_store_is_neither_answered_nor_stored_and_no_cache_refreshes(
    env: None, ups: dict[str, FakeUpstream]
) -> None:
    with _client() as c:
        a = _ask(c, "cache me: directives", headers={"cache-control": "no-store"})
        b = _ask(c, "cache me: directives", headers={"cache-control": "no-store"})
        assert _calls(ups) == 2
        c_ = _ask(c, "cache me: directives")  # nothing was stored by the no-store calls
        assert _calls(ups) == 3
        d = _ask(c, "cache me: directives", headers={"cache-control": "no-cache"})
        assert _calls(ups) == 4  # not looked up
        e = _ask(c, "cache me: directives", headers={"cache-control": "max-age=3600"})
        assert _calls(ups) == 4  # young enough
    assert [r.headers["x-orchestrator-cache"] for r in (a, b, c_, d, e)] == [
        "miss", "miss", "miss", "miss", "hit",
    ]  # fmt: skip
    assert e.parse().id == d.parse().id  # the no-cache call refreshed the entry


def test_a_fallback_answer_is_never_stored_under_the_target_that_failed(
    env: None, proxy: ProxyProcess, ups: dict[str, FakeUpstream]
) -> None:
    with _client() as c:
        first = _ask(c, "cache me: fallback", model="dead-first")
        second = _ask(c, "cache me: fallback", model="dead-first")
    # `dead` is still first in the chain: its lookup misses, and beta answers again
    assert len(ups["beta"].requests("/chat/completions")) == 2
    assert [r.headers["x-orchestrator-cache"] for r in (first, second)] == ["miss", "miss"]
    row = ledger_row(proxy, second.headers["x-orchestrator-request-id"])
    assert any(r.startswith("cache: miss at dead:") for r in _reasons(row))
    # the entry is beta's: a request whose chain starts at beta (the same body, another
    # requested model) is answered from it
    with _client() as c:
        third = _ask(c, "cache me: fallback", model="route-me")
    assert third.headers["x-orchestrator-cache"] == "hit"
    assert third.headers["x-orchestrator-provider"] == "beta"
    assert len(ups["beta"].requests("/chat/completions")) == 2 and _entries(proxy) >= 1


def test_requests_outside_a_caching_policy_are_never_cached(
    env: None, ups: dict[str, FakeUpstream]
) -> None:
    with _client() as c:
        for _ in range(2):
            raw = c.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "not cached"}]
            )
            assert "x-orchestrator-cache" not in raw.headers
    assert _calls(ups) == 2


def test_replicas_sharing_redis_answer_each_other_from_the_cache(
    ups: dict[str, FakeUpstream],
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = redis_server.fleet_database()
    cfg = {**_config(ups), "state": url}  # cache.store unset: the state Redis
    replicas = []
    try:
        for i in range(2):
            workdir = tmp_path_factory.mktemp(f"cache-replica{i}")
            replicas.append(ProxyProcess(workdir, cfg, _rules(), ENV).start())
        heads = []
        for p in replicas:
            for k, v in p.client_env().items():
                monkeypatch.setenv(k, v)
            with _client() as c:
                heads.append(_ask(c, "cache me: fleet").headers["x-orchestrator-cache"])
            _wait_for_entry(url)  # the write goes beside the request path: poll for it
    finally:
        for p in replicas:
            p.stop()
    assert heads == ["miss", "hit"] and _calls(ups) == 1
    assert not (replicas[0].workdir / "data" / "cache.db").exists()  # nothing on disk


def _wait_for_entry(url: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(url) as r:
        while not list(r.scan_iter("orch:cache:*")):
            assert time.monotonic() < deadline, "no cache entry reached Redis"
            time.sleep(0.02)


def _reasons(row: dict[str, Any]) -> list[str]:
    return list(json.loads(row["reasons"]))


def _entries(proxy: ProxyProcess) -> int:
    conn = sqlite3.connect(f"file:{proxy.workdir / 'data' / 'cache.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    finally:
        conn.close()
