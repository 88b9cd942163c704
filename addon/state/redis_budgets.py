"""Budget accounts shared by the fleet through Redis (`memory.Budgets`).

The admission check (`reserve`) runs in Redis at once, so replicas together never
overshoot a budget; settles, releases and charges are queued (`redis_writes`). The local
mirror of the accounts, refreshed at each sync, answers `snapshot`. Keys:

    bud:<rule>:<scope>:<window start>
                    HASH name, scope, start, end, spent, held (units of 1e-10 USD),
                    alerted, seeded; expires a day after the window ends
      …:h / …:m     ZSET hold id -> expiry (ms) / HASH hold id -> units
    budgets         ZSET account key -> window end (s), for the snapshot
    budget-rules    HASH rule name -> the BudgetRule as JSON
    budget-ids      counter for reservation ids

(<rule> and <scope> are percent-encoded.)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from redis.exceptions import RedisError

from addon.routing.budget import (
    Alert,
    BudgetRule,
    Exceeded,
    Reservation,
    checked_amount,
    from_units,
    snapshot_row,
    to_units,
    window,
)
from addon.state.redis_connection import DOWN, Call, RedisConnection, ms
from addon.state.redis_writes import WriteQueue

log = logging.getLogger("orchestrator")

RECENTLY_CLOSED = 65_536  # reservation ids remembered to ignore a second settle
_DAY_S = 86_400

_Key = tuple[str, str, float, float]  # rule name, scope key, window start, window end


@dataclass
class _Account:
    spent: int = 0  # units of 1e-10 USD
    held: int = 0
    alerted: bool = False


class RedisBudgets:
    """`memory.Budgets` with one account per (rule, scope key, window) in Redis: the
    admission check runs in Redis, so replicas together never overshoot a budget.

    A reservation is closed once: a second settle or release of it here is ignored, as in
    BudgetBook. Holds expire after `hold_ttl_s` (a replica that died holding them)."""

    def __init__(self, conn: RedisConnection, writes: WriteQueue, hold_ttl_s: float) -> None:
        self.on_alert: Callable[[Alert], None] = lambda a: None
        self.hold_ttl_s = hold_ttl_s
        self._conn = conn
        self._writes = writes
        self._rules: dict[str, BudgetRule] = {}  # latest seen here, per name
        self._fleet_rules: dict[str, BudgetRule] = {}  # as stored by any replica
        self._json: dict[str, tuple[BudgetRule, str]] = {}
        self._parsed: dict[str, BudgetRule | None] = {}
        self._accounts: dict[_Key, _Account] = {}  # mirror for snapshot()
        self._closed: dict[int, None] = {}  # recently settled or released ids, oldest first

    async def reserve(
        self, rule: BudgetRule, scope_key: str, amount_usd: float, now: float
    ) -> Reservation | Exceeded:
        """Hold `amount_usd` in the fleet's account if spent + held + it fits the rule;
        raises StateUnavailable while Redis cannot be asked."""
        amount = checked_amount(amount_usd, "a reservation")
        self._rules[rule.name] = rule
        start, end = window(rule.per, now)
        conn = self._conn
        if not conn.connected:
            raise conn.unavailable(rule)
        keys, args = self._account(rule.name, scope_key, start, end)
        extra = [to_units(amount), to_units(rule.usd), ms(self.hold_ttl_s)]
        try:
            reply = await conn.eval("bud_reserve", keys, ["0", "0", *args, *extra])
        except (RedisError, OSError) as e:
            if isinstance(e, DOWN):
                conn.down(e)
            raise conn.unavailable(rule, e) from e
        rid, spent, held, alerted = (int(x) for x in reply)
        self._accounts[(rule.name, scope_key, start, end)] = _Account(spent, held, bool(alerted))
        if not rid:
            retry = max(1, math.ceil(end - now))
            return Exceeded(
                rule, scope_key, from_units(spent), from_units(held), amount, rule.usd, retry
            )
        return Reservation(rid, rule.name, scope_key, start, end, amount)

    def settle(self, reservation: Reservation, actual_usd: float | None, now: float) -> None:
        """Close the hold, charging `actual_usd` (None, or not an amount: the held
        amount); queued. An alert the charge crosses goes to `on_alert` once applied."""
        r = reservation
        if not self._close(r):
            return
        held = charge = to_units(r.amount)
        if actual_usd is not None:
            if math.isfinite(actual_usd) and actual_usd >= 0:
                charge = to_units(actual_usd)
            else:
                log.error("budget %r: cost %r is not an amount; charging the reserved "
                          "$%.6f instead", r.rule, actual_usd, r.amount)  # fmt: skip
        rule = self._rules.get(r.rule)
        acct = self._accounts.setdefault((r.rule, r.scope_key, r.window_start, r.window_end),
                                         _Account())  # fmt: skip
        acct.held = max(0, acct.held - held)
        acct.spent += charge
        keys, args = self._account(r.rule, r.scope_key, r.window_start, r.window_end)
        self._writes.enqueue("bud_settle", keys, [*args, r.id, charge, self._threshold(rule)],
                             lambda reply: self._settled(r, rule, reply))  # fmt: skip

    def release(self, reservation: Reservation) -> None:
        """Give the hold back without charging (the call never ran); queued."""
        r = reservation
        if not self._close(r):
            return
        acct = self._accounts.get((r.rule, r.scope_key, r.window_start, r.window_end))
        if acct is not None:
            acct.held = max(0, acct.held - to_units(r.amount))
        keys, args = self._account(r.rule, r.scope_key, r.window_start, r.window_end)
        self._writes.enqueue("bud_release", keys, [*args, r.id], lambda reply: None)

    def charge(self, rule: BudgetRule, scope_key: str, usd: float, now: float) -> None:
        """Spend `usd` without a reservation (a call downgraded after the budget ran out);
        queued. Nothing happens for zero or less; infinity or NaN is logged and ignored."""
        if not (math.isfinite(usd) and usd > 0):
            if usd > 0 or math.isnan(usd):
                log.error("budget %r: cannot charge %r", rule.name, usd)
            return
        self._rules[rule.name] = rule
        start, end = window(rule.per, now)
        units = to_units(usd)
        acct = self._accounts.setdefault((rule.name, scope_key, start, end), _Account())
        acct.spent += units
        if rule.alert_at is not None and acct.spent >= rule.alert_at * to_units(rule.usd):
            acct.alerted = True
        keys, args = self._account(rule.name, scope_key, start, end)
        self._writes.enqueue(
            "bud_charge", keys, [*args, units, self._threshold(rule)], lambda reply: None
        )

    async def seed(
        self, rule: BudgetRule, scope_key: str, window_start: float, spent: float
    ) -> None:
        """Count the ledger's spend unless a replica has already opened this account in
        Redis. While Redis is unreachable the seed is queued and tried when it is back."""
        start, end = window(rule.per, window_start)
        if start != window_start:
            raise ValueError(
                f"{window_start!r} is not the start of a {rule.per} window; "
                f"pass window({rule.per!r}, t)[0]"
            )
        units = to_units(checked_amount(spent, "seeded spend"))
        self._rules[rule.name] = rule
        key = (rule.name, scope_key, start, end)
        keys, args = self._account(rule.name, scope_key, start, end)
        extra = [units, self._threshold(rule)]
        conn = self._conn
        if conn.connected:
            try:
                reply = await conn.eval("bud_seed", keys, ["0", "0", *args, *extra])
            except DOWN as e:
                conn.down(e)
            except RedisError as e:
                log.warning("budget %r: seeding in Redis failed: %s", rule.name, e)
            else:
                self._seeded(key, units, rule, reply)
                return
        log.warning("budget %r: Redis at %s unreachable; the ledger's spend for %s is counted "
                    "when it is back", rule.name, conn.where, scope_key)  # fmt: skip
        self._writes.enqueue("bud_seed", keys, [*args, *extra],
                             lambda r: self._seeded(key, units, rule, r))  # fmt: skip

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """The current window of every account this replica or the fleet knows a rule
        for, shaped like `BudgetBook.snapshot` (as of the last sync or local change)."""
        rows = []
        for (name, key, start, end), acct in sorted(self._accounts.items(), key=lambda kv: kv[0]):
            rule = self._rules.get(name) or self._fleet_rules.get(name)
            if rule is None or (start, end) != window(rule.per, now):
                continue
            rows.append(snapshot_row(rule, key, start, end, acct.spent, acct.held, acct.alerted))
        return rows

    # ----------------------------------------------------------------------- sync

    def refresh_call(self) -> Call:
        """The script call that reads every open account and stored rule, for `refresh`."""
        return ("bud_refresh", [self._conn.key("budgets"), self._conn.key("budget-rules")], [])

    def refresh(self, reply: list[Any]) -> None:
        """Replace the mirror with the fleet's accounts and rules (the reply to
        `refresh_call`)."""
        rows, rules = reply
        fleet = {}
        for name, raw in _pairs(rules):
            if (rule := self._parse_rule(raw)) is not None:
                fleet[name] = rule
        self._fleet_rules = fleet
        self._accounts = {
            (rows[i], rows[i + 1], float(rows[i + 2]), float(rows[i + 3])): _Account(
                int(rows[i + 4] or 0), int(rows[i + 5] or 0), rows[i + 6] == "1"
            )
            for i in range(0, len(rows), 7)
        }

    # ----------------------------------------------------------------------- internals

    def _account(
        self, name: str, scope_key: str, start: float, end: float
    ) -> tuple[list[str], list[Any]]:
        conn = self._conn
        base = conn.key("bud:", quote(name, safe=""), ":", quote(scope_key, safe=""), ":",
                        str(int(start)))  # fmt: skip
        keys = [conn.key("applied:", conn.token), base, base + ":h", base + ":m",
                conn.key("budgets"), conn.key("budget-rules"), conn.key("budget-ids")]  # fmt: skip
        rule = self._rules.get(name)
        args = [name, scope_key, int(start), int(end), int(end) + _DAY_S, self._rule_json(rule)]
        return keys, args

    def _close(self, r: Reservation) -> bool:
        """False when `r` was settled or released here already (the second one is ignored)."""
        if r.id in self._closed:
            return False
        self._closed[r.id] = None
        if len(self._closed) > RECENTLY_CLOSED:
            del self._closed[next(iter(self._closed))]
        return True

    def _rule_json(self, rule: BudgetRule | None) -> str:
        if rule is None:
            return ""
        cached = self._json.get(rule.name)
        if cached is None or cached[0] != rule:
            cached = (rule, json.dumps(asdict(rule), sort_keys=True, separators=(",", ":")))
            self._json[rule.name] = cached
        return cached[1]

    @staticmethod
    def _threshold(rule: BudgetRule | None) -> str:
        if rule is None or rule.alert_at is None:
            return ""
        return repr(rule.alert_at * to_units(rule.usd))  # BudgetBook's comparison, in Lua

    def _settled(self, r: Reservation, rule: BudgetRule | None, reply: Any) -> None:
        if reply is None or rule is None or rule.alert_at is None:
            return
        _, alert, spent = (int(x) for x in reply)
        if not alert:
            return
        acct = self._accounts.get((r.rule, r.scope_key, r.window_start, r.window_end))
        if acct is not None:
            acct.alerted = True
        try:
            self.on_alert(
                Alert(
                    r.rule, r.scope_key, r.window_start, from_units(spent), rule.usd, rule.alert_at
                )
            )
        except Exception:
            log.exception("budget %r: the alert handler failed", r.rule)

    def _seeded(self, key: _Key, units: int, rule: BudgetRule, reply: Any) -> None:
        if reply is not None and int(reply):
            alerted = rule.alert_at is not None and units >= rule.alert_at * to_units(rule.usd)
            self._accounts[key] = _Account(units, 0, alerted)

    def _parse_rule(self, raw: str) -> BudgetRule | None:
        if raw not in self._parsed:
            try:
                self._parsed[raw] = BudgetRule(**json.loads(raw))
            except (TypeError, ValueError):
                self._parsed[raw] = None
        return self._parsed[raw]


def _pairs(flat: list[Any]) -> Iterable[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)
