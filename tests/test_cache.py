"""The response cache's parts in process: the key's canonical body, tenants and what is
never cached (`addon.wire.cachekey`), `Cache-Control`, the SQLite and Redis stores, the
opt-in rules, and the stream recorder and replay (`addon.proxy.cachereplay`)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from addon.config.rules import PoliciesFile, ProfilesFile
from addon.config.schema_cache import CacheSettings, is_redis
from addon.proxy import cachereplay
from addon.state.redis_cache import RedisCache
from addon.store.cache import CachedAnswer, SqliteCache, migrate
from addon.wire import cachekey
from addon.wire.sse import SSEParser
from tests.services import free_port, redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

SALT = b"s" * 32
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}


def key(data: dict[str, Any], *, api: str = "chat", form: str = "body",
        target: str = "openai:gpt-4o", tenant: str = "client:a", salt: bytes = SALT) -> str:  # fmt: skip
    return cachekey.entry_key(salt, api=api, form=form, target=target, tenant=tenant,
                              body=cachekey.canonical(data))  # fmt: skip


# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize(
    "other",
    [
        {**CHAT, "stream_options": {"include_usage": True}},
        {**CHAT, "stream": True, "stream_options": {"include_usage": False}},
        {**CHAT, "user": "u-17", "metadata": {"trace": "x"}},
        {**CHAT, "model": "auto"},  # the target answering is in the key, not the alias
        {**CHAT, "safety_identifier": "h-1", "prompt_cache_key": "k", "store": False},
        dict(reversed(list(CHAT.items()))),  # key order
    ],
)
def test_delivery_only_differences_share_a_key(other: dict[str, Any]) -> None:
    assert key(other) == key(CHAT)


@pytest.mark.parametrize(
    ("other", "kw"),
    [
        ({**CHAT, "temperature": 0.7}, {}),
        ({**CHAT, "messages": [{"role": "user", "content": "hi!"}]}, {}),
        ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, {}),
        (CHAT, {"tenant": "client:b"}),
        (CHAT, {"target": "openrouter:openai/gpt-4o"}),
        (CHAT, {"api": "completions"}),
        (CHAT, {"form": "events"}),  # a whole body never answers a stream
        (CHAT, {"salt": b"t" * 32}),
    ],
)
def test_what_changes_the_answer_changes_the_key(other: dict[str, Any], kw: dict[str, Any]) -> None:
    assert key(other, **kw) != key(CHAT)


def test_integral_floats_are_written_as_integers() -> None:
    assert cachekey.canonical({"n": 1.0, "t": [2.0, 0.5]}) == b'{"n":1,"t":[2,0.5]}'


def test_tenants_differ_and_a_key_hash_never_shows_the_key() -> None:
    secret = "sk-live-0123456789abcdef"
    by_key = cachekey.tenant(SALT, None, secret, "10.0.0.1")
    assert secret not in by_key and by_key.startswith("key:")
    assert by_key != cachekey.tenant(SALT, None, secret + "x", "10.0.0.1")
    assert by_key != cachekey.tenant(b"t" * 32, None, secret, "10.0.0.1")  # keyed: salt
    assert cachekey.tenant(SALT, "team-a", secret, "10.0.0.1") == "client:team-a"
    assert cachekey.tenant(SALT, None, None, "10.0.0.1") == "addr:10.0.0.1"
    assert len({by_key, cachekey.tenant(SALT, "team-a", None, ""), "addr:10.0.0.1"}) == 3


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ({"authorization": "Bearer sk-a"}, "sk-a"),
        ({"x-api-key": "sk-ant"}, "sk-ant"),
        ({"api-key": "az"}, "az"),
        ({}, None),
    ],
)
def test_client_key(headers: dict[str, str], want: str | None) -> None:
    assert cachekey.client_key(headers) == want


TOOL_CALL = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]}  # fmt: skip


@pytest.mark.parametrize(
    ("api", "data", "why"),
    [
        ("responses", {"input": "hi"}, "store is not false"),
        ("responses", {"input": "hi", "store": True}, "store is not false"),
        ("responses", {"input": "hi", "store": False, "previous_response_id": "resp_1"},
         "previous_response_id"),
        ("responses", {"input": "hi", "store": False, "conversation": "conv_1"}, "conversation"),
        ("responses", {"input": "hi", "store": False, "background": True}, "background"),
        ("chat", {"messages": [TOOL_CALL, {"role": "tool", "tool_call_id": "c1",
                                           "content": "42"}]}, "tool results"),
        ("responses", {"store": False, "input": [{"type": "function_call_output",
                                                   "call_id": "c1", "output": "42"}]},
         "tool results"),
        ("messages", {"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "42"}]}]}, "tool results"),
    ],
)  # fmt: skip
def test_never_cached(api: str, data: dict[str, Any], why: str) -> None:
    reason = cachekey.uncacheable(api, data, tool_results=False)
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    ("api", "data"),
    [
        ("chat", CHAT),
        ("chat", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "x"}]}),
        ("responses", {"input": "hi", "store": False}),
        ("messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}),
        ("embeddings", {"input": "hi"}),
    ],
)
def test_cacheable(api: str, data: dict[str, Any]) -> None:
    assert cachekey.uncacheable(api, data, tool_results=False) is None


def test_tool_results_are_cached_when_the_policy_says_so() -> None:
    data = {"messages": [TOOL_CALL, {"role": "tool", "tool_call_id": "c1", "content": "42"}]}
    assert cachekey.uncacheable("chat", data, tool_results=True) is None
    # stored state upstream is never cached, whatever the policy says
    assert cachekey.uncacheable("responses", {"input": "hi"}, tool_results=True) is not None


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (None, cachekey.CacheControl()),
        ("no-cache", cachekey.CacheControl(no_cache=True)),
        ("No-Store", cachekey.CacheControl(no_store=True)),
        ("max-age=60", cachekey.CacheControl(max_age=60)),
        ('max-age="60", no-cache', cachekey.CacheControl(no_cache=True, max_age=60)),
        ("max-age=60, max-age=5", cachekey.CacheControl(max_age=5)),
        ("max-age=soon, private", cachekey.CacheControl()),  # a bad number is ignored
    ],
)
def test_cache_control(value: str | None, want: cachekey.CacheControl) -> None:
    assert cachekey.cache_control(value) == want


# --------------------------------------------------------------------------- config


def test_rules_opt_in_per_policy_and_profile() -> None:
    pol = PoliciesFile.model_validate(
        {"policies": [{"name": "p", "cache": {"ttl_s": 60, "tool_results": True}}]}
    )
    assert pol.policies[0].cache is not None and pol.policies[0].cache.ttl_s == 60
    prof = ProfilesFile.model_validate(
        {"profiles": {"x": {"weights": {"cost": 1}, "cache": {"enabled": False}}}}
    )
    assert prof.profiles["x"].cache is not None and not prof.profiles["x"].cache.enabled
    with pytest.raises(ValidationError, match="ttl_s"):
        PoliciesFile.model_validate({"policies": [{"name": "p", "cache": {"ttl_s": 0}}]})


@pytest.mark.parametrize(
    ("store", "state", "where", "redis"),
    [
        (None, None, "data/cache.db", False),
        (None, "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", True),
        ("redis://r:6379/1", None, "redis://r:6379/1", True),
        ("/var/lib/orq/cache.db", "redis://127.0.0.1:6379/0", "/var/lib/orq/cache.db", False),
    ],
)
def test_store_location(store: str | None, state: str | None, where: str, redis: bool) -> None:
    loc = CacheSettings(store=store).location(state)
    assert loc == where and is_redis(loc) is redis


def test_a_store_url_that_is_no_redis_is_refused() -> None:
    with pytest.raises(ValidationError, match="neither a SQLite file path nor a Redis URL"):
        CacheSettings(store="postgresql://u:secret@h/db")


# --------------------------------------------------------------------------- stores

ANSWER = CachedAnswer(200, (("content-type", "application/json"),), "beta", "m-cheap",
                      created=1000.0, body=b'{"id":"x"}', cost_usd=0.002,
                      requested_cost_usd=0.02)  # fmt: skip
STREAMED = CachedAnswer(200, (("content-type", "text/event-stream"),), "beta", "m-cheap",
                        created=1000.0, events=(b"data: 1\n\n", b"data: [DONE]\n\n"),
                        gaps_ms=(12.5,))  # fmt: skip


@pytest.mark.parametrize("answer", [ANSWER, STREAMED])
def test_an_entry_survives_encoding(answer: CachedAnswer) -> None:
    assert CachedAnswer.decode(answer.encode()) == answer


@pytest.mark.parametrize("raw", [b"", b"{}", b"not json", b'{"status": "x"}'])
def test_an_unreadable_entry_is_a_miss(raw: bytes) -> None:
    assert CachedAnswer.decode(raw) is None


def test_sqlite_store_keeps_expires_and_keeps_its_salt(tmp_path: Path) -> None:
    async def run() -> None:
        path = tmp_path / "sub" / "cache.db"
        store = SqliteCache(path)
        await store.open()
        salt = await store.salt()
        assert salt is not None and len(salt) == 32
        await store.put("k", ANSWER, 60, now=1000.0)
        assert await store.get("k", 1059.0) == ANSWER
        assert await store.get("k", 1061.0) is None  # expired
        assert await store.get("other", 1001.0) is None
        await store.close()
        again = SqliteCache(path)
        await again.open()
        assert await again.salt() == salt  # the same file, the same hashes
        await again.close()

    asyncio.run(run())
    db = sqlite3.connect(tmp_path / "sub" / "cache.db")
    assert migrate(db) == []  # already applied, recorded by name
    names = [r[0] for r in db.execute("SELECT name FROM schema_migrations")]
    assert names == ["0001_cache"]
    db.close()


def test_a_sqlite_store_that_cannot_open_serves_misses(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    async def run() -> None:
        store = SqliteCache(tmp_path / "file" / "cache.db")  # a file where a folder must be
        await store.open()
        assert await store.salt() is None and await store.get("k", 0) is None
        await store.put("k", ANSWER, 60, 0)  # never raises
        assert store.health()["open"] is False

    asyncio.run(run())


def test_redis_store_shares_entries_and_salt_between_replicas(redis_url: str) -> None:
    async def run() -> None:
        a, b = RedisCache(redis_url, prefix="t-cache:"), RedisCache(redis_url, prefix="t-cache:")
        await a.open()
        await b.open()
        salt = await a.salt()
        assert salt is not None and await b.salt() == salt
        await a.put("k", STREAMED, 60, 0)
        assert await b.get("k", 0) == STREAMED
        assert await b.get("missing", 0) is None
        await a.close()
        await b.close()

    asyncio.run(run())


def test_redis_store_unreachable_is_a_miss() -> None:
    async def run() -> None:
        store = RedisCache(f"redis://127.0.0.1:{free_port()}/0")
        await store.open()
        assert await store.salt() is None and await store.get("k", 0) is None
        await store.put("k", ANSWER, 60, 0)
        assert store.health()["errors"] >= 3
        await store.close()

    asyncio.run(run())


# --------------------------------------------------------------------------- streams


def test_the_recorder_keeps_every_event_with_its_boundaries() -> None:
    parser = SSEParser()
    first = parser.feed(b"data: 1\n\ndata: 2")  # the engine read one event and a half
    from addon.proxy.upstream import LiveStream

    live = LiveStream(None, parser, first, started=0.0, first_event_at=0.0)  # type: ignore[arg-type]
    rec = cachereplay.record(live, limit=1000)
    out = live.parser.feed(b"\n\ndata: 3\n\n") + live.parser.flush()
    assert [e.raw for e in out] == [b"data: 2\n\n", b"data: 3\n\n"]
    assert rec.kept == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    assert len(rec.gaps_ms()) == 2


def test_the_recorder_gives_up_past_its_limit() -> None:
    parser = SSEParser()
    from addon.proxy.upstream import LiveStream

    live = LiveStream(None, parser, [], started=0.0, first_event_at=0.0)  # type: ignore[arg-type]
    rec = cachereplay.record(live, limit=20)
    events = live.parser.feed(b"data: 0123456789\n\ndata: 0123456789\n\n")
    assert len(events) == 2  # the relay goes on unchanged
    assert rec.over and rec.kept == []


def test_a_replay_hands_out_one_event_per_read() -> None:
    events = (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n")

    async def run() -> list[bytes]:
        live = cachereplay.replay(events, (0.0, 0.0), pace=0.0)
        assert [e.raw for e in live.first] == [events[0]]
        got = []
        while chunk := await live.response.content.readany():
            got.append(chunk)
        return got

    assert asyncio.run(run()) == list(events[1:])
