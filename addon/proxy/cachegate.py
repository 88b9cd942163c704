"""The response cache on the request path: look up after routing chose the target and
before the attempt engine runs, record what the engine brought back, store it when the
call ended well, and turn a hit's ledger row into `cached` at cost 0.

The dispatcher calls, per request: `lookup` (a hit is the whole answer: a reply, or a
replayed stream on the pipe), `ran` (after the engine: the `x-orchestrator-cache: miss`
header, and a stream's events recorded as they are relayed), `finished` (building the
ledger row: a hit's row, or the store of a miss's answer). What is open between those
calls is kept by request id and dropped by `finished`, which runs exactly once a request.

An answer is stored under the target that gave it: a fallback's answer under the fallback,
never under the target that failed, so the next identical request finds it only once
routing puts that target first. Never stored: non-2xx answers, errors, truncated, rescued
or malformed streams, and what `addon.wire.cachekey.uncacheable` refuses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from addon.config.loaded import Config
from addon.config.schema_cache import CacheRule, is_redis
from addon.proxy import cachereplay
from addon.proxy.exchange import Pending, Reply, ToPipe
from addon.proxy.metrics import Metrics
from addon.proxy.pipe import Pipe
from addon.proxy.streamfacts import StreamReport, reader_for
from addon.proxy.upstream import Answer, EngineResult
from addon.proxy.view import View
from addon.routing import decide
from addon.routing.scoring import Scored
from addon.store.cache import CachedAnswer, CacheStore, SqliteCache
from addon.store.sqlite_ledger import LedgerRow
from addon.wire import cachekey
from addon.wire.usage import Usage

log = logging.getLogger("orchestrator")

KEPT_HEADERS = ("content-type",)  # of the upstream's, what a stored answer keeps


@dataclass
class _Open:
    """A miss under way: what its entry's key is made of, and what the engine got."""

    salt: bytes
    api: str
    form: str  # "body" | "events"
    tenant: str
    body: bytes  # the canonical request body
    ttl_s: float
    storable: bool
    answer: Answer | None = None
    limit: int = 0  # cache.max_entry_bytes when the engine answered
    recorder: cachereplay.Recorder | None = None


def rule_for(view: View, decision: decide.RoutingDecision) -> CacheRule | None:
    """The cache rule a request is routed under: its policy's `cache:`, else its
    profile's; None when neither has one or it says `enabled: false`."""
    policy = next((p for p in view.config.policies if p.name == decision.policy), None)
    rule = policy.cache if policy is not None else None
    if rule is None:
        profile = view.config.profiles.get(decision.profile)
        rule = profile.cache if profile is not None else None
    return rule if rule is not None and rule.enabled else None


class CacheGate:
    """The dispatcher's response cache over one `CacheStore` (None: no cache at all)."""

    def __init__(self, store: CacheStore | None = None, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._open: dict[str, _Open] = {}
        self._hits: dict[str, CachedAnswer] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_config(cls, cfg: Config, metrics: Metrics | None = None) -> CacheGate:
        """The store `cache.store` names (else the `state:` Redis, else data/cache.db)."""
        where = cfg.settings.cache.location(cfg.settings.state)
        if is_redis(where):
            from addon.state.redis_cache import RedisCache

            return cls(RedisCache(where), metrics)
        return cls(SqliteCache(Path(cfg.resolve(where))), metrics)

    async def start(self) -> None:
        """Open the store (a store that cannot be opened serves every request as a miss)."""
        if self.store is not None:
            await self.store.open()

    async def close(self) -> None:
        """Finish the writes under way, then close the store."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.store is not None:
            await self.store.close()

    def health(self) -> dict[str, Any]:
        """For `/status`: the store's health, or `off`."""
        return self.store.health() if self.store is not None else {"kind": "off"}

    # ------------------------------------------------------------------ before the engine

    async def lookup(self, view: View, pending: Pending, data: dict[str, Any],
                     chain: Sequence[Scored], pipe: Pipe,
                     inject_usage: bool) -> Reply | ToPipe | None:  # fmt: skip
        """The cached answer for this request at `chain[0]` (a reply, or the replayed
        stream on `pipe`), or None to go upstream (a miss is remembered for `ran`)."""
        d, ep, api = pending.decision, pending.endpoint, pending.api
        if self.store is None or d is None or ep is None or api is None or not chain:
            return None
        if ep.count_tokens or (rule := rule_for(view, d)) is None:
            return None
        headers = {k.lower(): v for k, v in pending.incoming.headers}
        cc = cachekey.cache_control(headers.get("cache-control"))
        why = cachekey.uncacheable(api, data, tool_results=rule.tool_results)
        why = why or ("Cache-Control: no-store" if cc.no_store else None)
        salt = await self.store.salt() if why is None else b""
        if salt is None:
            why = f"the cache store ({self.store.where}) is unavailable"
        inc = pending.incoming
        form = "events" if pending.stream else "body"
        tenant = cachekey.tenant(salt or b"", inc.client_name,
                                 cachekey.client_key(headers), inc.client_addr)  # fmt: skip
        body = cachekey.canonical(data) if why is None else b""
        opened = _Open(salt or b"", api, form, tenant, body, rule.ttl_s, storable=why is None)
        self._open[pending.id] = opened
        entry = await self._find(pending, opened, why, cc, chain[0].candidate.key)
        self._count("bypass" if why is not None else "miss" if entry is None else "hit")
        if entry is None:
            return None
        age = max(0.0, time.time() - entry.created)
        if self._open.pop(pending.id, None) is not None:  # else `finished` ran meanwhile
            self._hits[pending.id] = entry
        pending.answered_by = chain[0]
        pending.reasons.append(f"cache: hit at {chain[0].candidate.key}, {age:.0f}s old")
        out = [*entry.headers,
               ("x-orchestrator-model", entry.model), ("x-orchestrator-provider", entry.provider),
               ("x-orchestrator-profile", d.profile), ("x-orchestrator-attempts", "0"),
               ("x-orchestrator-request-id", pending.id), ("x-orchestrator-cache", "hit"),
               ("age", str(int(age)))]  # fmt: skip
        if not entry.streamed:
            return Reply(entry.status, out, entry.body, pending)
        return await self._replay(view, pending, entry, out, pipe, inject_usage)

    async def _find(self, pending: Pending, opened: _Open, why: str | None,
                    cc: cachekey.CacheControl, target: str) -> CachedAnswer | None:  # fmt: skip
        """The live entry at `target` that this request may be answered from, or None (the
        reason appended to `pending.reasons`)."""
        if why is not None:
            pending.reasons.append(f"cache: not used: {why}")
            return None
        if cc.no_cache:
            pending.reasons.append("cache: Cache-Control: no-cache: not looked up; refreshed")
            return None
        assert self.store is not None
        now = time.time()
        entry = await self.store.get(self._key(opened, target), now)
        if entry is None or entry.streamed != (opened.form == "events"):
            pending.reasons.append(f"cache: miss at {target}")
            return None
        age = now - entry.created
        if cc.max_age is not None and age > cc.max_age:
            pending.reasons.append(f"cache: entry {age:.0f}s old, over max-age={cc.max_age}")
            return None
        return entry

    async def _replay(self, view: View, pending: Pending, entry: CachedAnswer,
                      headers: list[tuple[str, str]], pipe: Pipe,
                      inject_usage: bool) -> ToPipe:  # fmt: skip
        """A streamed hit: the stored events on the pipe, as a live stream."""
        s = view.config.settings
        report = StreamReport(keep_text=s.log_prompts == "full")
        pending.report = report
        port = await pipe.ensure_started()
        live = cachereplay.replay(entry.events, entry.gaps_ms, s.cache.pace)
        pending.token = pipe.register(live, entry.status, headers, strip_usage=inject_usage,
                                      stall_s=s.resilience.stall_timeout_ms / 1000,
                                      report=report, reader=reader_for(pending.api))  # fmt: skip
        return ToPipe(port, pending.token, pending)

    # ------------------------------------------------------------------ after the engine

    def ran(self, pending: Pending, result: EngineResult, view: View) -> None:
        """The engine is done with a miss: mark its answer `x-orchestrator-cache: miss` and
        keep what an entry needs (a stream's events are recorded as the pipe relays them)."""
        opened = self._open.get(pending.id)
        ans = result.answer
        if opened is None or ans is None:
            return
        ans.headers.append(("x-orchestrator-cache", "miss"))
        if not opened.storable or not 200 <= ans.status < 300:
            return
        opened.answer = ans
        opened.limit = view.config.settings.cache.max_entry_bytes
        if ans.stream is not None:
            opened.recorder = cachereplay.record(ans.stream, opened.limit)

    def finished(self, pending: Pending, row: LedgerRow,
                 usage: Usage | None) -> tuple[LedgerRow, Usage | None]:  # fmt: skip
        """The row and billed usage of a finished request: a hit's is `cached` (or how its
        replay ended) at cost 0, with the cost it saved as `requested_cost_usd`, and bills
        nothing; a miss that ended well is stored, its row unchanged."""
        hit = self._hits.pop(pending.id, None)
        if hit is not None:
            saved = hit.requested_cost_usd if hit.requested_cost_usd is not None else hit.cost_usd
            outcome = "cached" if row.outcome == "ok" else row.outcome
            return replace(row, outcome=outcome, cost_usd=0.0, unpriced=False,
                           requested_cost_usd=saved), None  # fmt: skip
        opened = self._open.pop(pending.id, None)
        if opened is not None and opened.answer is not None and row.outcome == "ok":
            entry = self._entry(pending, opened, opened.answer, row)
            if entry is not None and self.store is not None:
                key = self._key(opened, opened.answer.target.candidate.key)
                self._spawn(self.store.put(key, entry, opened.ttl_s, entry.created))
        return row, usage

    def _entry(self, pending: Pending, opened: _Open, ans: Answer,
               row: LedgerRow) -> CachedAnswer | None:  # fmt: skip
        """What to store of a miss's answer; None when it must not be (too big, a stream
        that was not whole and clean)."""
        c = ans.target.candidate
        kept = tuple((k, v) for k, v in ans.headers if k.lower() in KEPT_HEADERS)
        base = CachedAnswer(ans.status, kept, c.provider, c.provider_model_id, time.time(),
                            cost_usd=row.cost_usd,
                            requested_cost_usd=row.requested_cost_usd)  # fmt: skip
        rec, report = opened.recorder, pending.report
        if rec is None:
            fits = 0 < len(ans.body) <= opened.limit
            return replace(base, body=ans.body) if fits else None
        clean = report is not None and report.saw_done and not report.failure
        clean = clean and report is not None and not report.malformed and not report.rescued
        if not clean or rec.over or not rec.kept:
            pending.reasons.append("cache: not stored: the stream was not whole and clean")
            return None
        return replace(base, events=tuple(rec.kept), gaps_ms=rec.gaps_ms())

    def _key(self, opened: _Open, target: str) -> str:
        return cachekey.entry_key(opened.salt, api=opened.api, form=opened.form, target=target,
                                  tenant=opened.tenant, body=opened.body)  # fmt: skip

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_lookups.labels(result).inc()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a store write beside the request path (it never raises)."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no event loop (a synchronous caller): write nothing
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
