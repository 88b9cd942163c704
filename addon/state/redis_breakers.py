"""Circuit breakers shared by the fleet through Redis (`memory.Breakers`).

Failures count across replicas and one replica at a time holds the half-open probe. The
request path reads a local mirror; a verdict is applied to it at once and queued for
Redis, whose answer (the fleet's state) replaces the optimistic one. Keys, for the target
breakers (`RedisBreakers`):

    brk:<target>    HASH status, failures, opened_at (ms, Redis clock); 1 day TTL
    probe:<target>  STRING the replica holding the half-open probe; PX lease
    brks            SET of targets with a brk: hash

The provider breakers (`provider_breakers`) are the same family under another namespace,
run by the same scripts: `provider-brk:<provider>`, `provider-probe:<provider>`,
`provider-brks`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from redis.exceptions import RedisError

from addon.routing import breaker as brk
from addon.routing.breaker import BreakerStatus
from addon.state.memory import PROVIDER_LABEL, TARGET_LABEL, log_transition
from addon.state.redis_connection import DOWN, Call, RedisConnection, ms
from addon.state.redis_writes import WriteQueue

PROBE_LEASE_S = 30.0  # a crashed replica's half-open probe is free again after this
BREAKER_TTL_S = 86_400
PROVIDER_NAMESPACE = "provider-"  # the provider breakers' keys: provider-brk:<name>, …


class RedisBreakers:
    """`memory.Breakers` shared by the fleet: failures count across replicas and one
    replica at a time holds the half-open probe. `namespace` prefixes its key names (""
    for the target breakers), `label` names the family in the log."""

    def __init__(
        self,
        conn: RedisConnection,
        writes: WriteQueue,
        *,
        namespace: str = "",
        label: str = TARGET_LABEL,
    ) -> None:
        self._conn = conn
        self._writes = writes
        self._ns = namespace
        self.label = label
        self._states: dict[str, brk.BreakerState] = {}  # not closed-with-no-failures
        self._pending: Counter[str] = Counter()  # queued writes per target
        self._touched: dict[str, int] = {}  # target -> version of its last local change
        self._version = 0

    def get(self, key: str) -> brk.BreakerState | None:
        """The mirrored state of `key`, None when closed with no failures; `opened_at` is
        on this process's `time.monotonic()`."""
        return self._states.get(key)

    def snapshot(self) -> dict[str, brk.BreakerState]:
        """A copy of every breaker that is not closed-with-no-failures, by target."""
        return dict(self._states)

    async def acquire(self, key: str, cooldown_s: float) -> bool:
        """Claim the right to try `key` now. An open breaker past `cooldown_s` gives its
        one half-open probe to one replica, decided in Redis; while Redis is unreachable
        this replica decides alone."""
        state = self._states.get(key)
        if state is None or state.status is BreakerStatus.CLOSED:
            return True
        if not brk.available(state, time.monotonic(), cooldown_s):
            return False
        conn = self._conn
        if conn.connected:
            args = ["0", "0", key, round(cooldown_s * 1000), ms(PROBE_LEASE_S)]
            try:
                ok, reply = await conn.eval("brk_acquire", self._keys(key), [*args, conn.token])
            except DOWN as e:
                conn.down(e)
            except RedisError as e:
                conn.throttle.warn("acquire-error", "breaker %s: Redis refused: %s", key, e)
            else:
                if not self._pending[key]:
                    new = _from_reply(reply, time.monotonic())
                    self._set(key, new, " (probe)" if ok else " (fleet)",
                              logging.WARNING if ok else logging.INFO)  # fmt: skip
                return bool(ok)
        conn.throttle.warn(
            "acquire", "breaker %s: Redis at %s unreachable; this replica decides alone",
            key, conn.where,
        )  # fmt: skip
        state = self._states.get(key, brk.CLOSED)
        ok, new = brk.acquire(state, time.monotonic(), cooldown_s)
        if new is not state:
            self._set(key, new, " (probe, this replica alone)")
        return ok

    def record(self, key: str, *, success: bool, threshold: int) -> None:
        """An attempt's verdict on `key`: applied here at once, queued for the fleet (a
        success closes, `threshold` failures in a row open)."""
        state = self._states.get(key)
        if success and state is None:
            return  # the hot path: nothing to reset anywhere
        new = brk.record(
            state or brk.CLOSED, success=success, now=time.monotonic(), threshold=threshold
        )
        self._set(key, new)
        self._write("brk_record", key, [int(success), threshold, BREAKER_TTL_S * 1000])

    def release(self, key: str) -> None:
        """The attempt ended without a verdict: give a probe claimed here back."""
        state = self._states.get(key)
        if state is not None and state.probing:
            self._set(key, brk.release(state))
            self._write("brk_release", key, [self._conn.token])

    # ----------------------------------------------------------------------- sync

    @property
    def version(self) -> int:
        """A counter of local changes; pass it to `refresh` with the read it preceded."""
        return self._version

    def snapshot_call(self) -> Call:
        """The script call that reads every breaker of the fleet, for `refresh`."""
        conn = self._conn
        ns = self._ns
        return ("brk_snapshot", [conn.key(ns, "brks")],
                [conn.key(ns, "brk:"), conn.key(ns, "probe:")])  # fmt: skip

    def refresh(self, reply: list[Any], mono: float, version: int) -> None:
        """The fleet's states (the reply to `snapshot_call`, received at monotonic `mono`),
        except for targets changed here since `version` was read or with writes queued."""
        now_ms, rows = reply
        seen = {
            rows[i]: _breaker(rows[i + 1], int(rows[i + 2]), int(rows[i + 3]), rows[i + 4],
                              now_ms, mono)
            for i in range(0, len(rows), 5)
        }  # fmt: skip
        for key in set(self._states) | set(seen):
            if self._pending[key] or self._touched.get(key, 0) > version:
                continue
            new = seen.get(key, brk.CLOSED)
            if not _same(new, self._states.get(key, brk.CLOSED)):
                self._set(key, new, " (fleet)", logging.INFO)

    # ----------------------------------------------------------------------- internals

    def _keys(self, key: str) -> list[str]:
        conn, ns = self._conn, self._ns
        return [conn.key("applied:", conn.token), conn.key(ns, "brk:", key),
                conn.key(ns, "probe:", key), conn.key(ns, "brks")]  # fmt: skip

    def _write(self, script: str, key: str, args: list[Any]) -> None:
        self._pending[key] += 1
        self._writes.enqueue(script, self._keys(key), [key, *args],
                             lambda r: self._written(key, r))  # fmt: skip

    def _written(self, key: str, reply: Any) -> None:
        self._pending[key] -= 1
        if self._pending[key] <= 0:
            del self._pending[key]
            if reply is not None:  # the fleet's verdict replaces the optimistic one
                self._set(key, _from_reply(reply, time.monotonic()), " (fleet)")

    def _set(
        self, key: str, new: brk.BreakerState, note: str = "", level: int = logging.WARNING
    ) -> None:
        old = self._states.get(key, brk.CLOSED)
        if new == brk.CLOSED:
            self._states.pop(key, None)
        else:
            self._states[key] = new
        self._version += 1
        self._touched[key] = self._version
        log_transition(key, old, new, note, level, self.label)


def provider_breakers(conn: RedisConnection, writes: WriteQueue) -> RedisBreakers:
    """The provider breakers of the fleet: `RedisBreakers` keyed by provider name under
    `PROVIDER_NAMESPACE`, logged as `provider breaker <name>: …`."""
    return RedisBreakers(conn, writes, namespace=PROVIDER_NAMESPACE, label=PROVIDER_LABEL)


def _breaker(
    status: str, failures: int, opened_ms: int, probing: int, now_ms: int, mono: float
) -> brk.BreakerState:
    """A state read from Redis, `opened_at` moved onto this process's monotonic clock."""
    st = BreakerStatus(status)
    if st is BreakerStatus.CLOSED:
        return brk.CLOSED if failures == 0 else brk.BreakerState(failures=failures)
    opened = mono - (now_ms - opened_ms) / 1000
    return brk.BreakerState(st, failures, opened, st is BreakerStatus.HALF_OPEN and bool(probing))


def _from_reply(reply: list[Any], mono: float) -> brk.BreakerState:
    status, failures, opened_ms, probing, now_ms = reply
    return _breaker(status, int(failures), int(opened_ms), int(probing), int(now_ms), mono)


def _same(a: brk.BreakerState, b: brk.BreakerState) -> bool:
    return (a.status, a.failures, a.probing) == (b.status, b.failures, b.probing) and abs(
        a.opened_at - b.opened_at
    ) < 0.05
