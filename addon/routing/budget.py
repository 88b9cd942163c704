"""Budget accounting: spend per (policy rule, scope key, calendar window), with reservations.

A call first reserves its estimated maximum cost; it is admitted only if spent + everything
already reserved + its own estimate fits the budget, so concurrent calls can never overshoot.
When the call ends the reservation is settled with the real cost (or released unbilled).
Amounts are kept as integers in units of 1e-10 USD (the precision of `addon.routing.cost`), so sums
are exact and the admission check needs no float tolerance.

Pure bookkeeping for one event loop: no I/O, no clock (callers pass `now`, epoch seconds),
no locks. Windows are UTC calendar days, ISO weeks (from Monday) and months.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, ClassVar, Literal

Period = Literal["day", "week", "month"]
Scope = Literal["client", "policy", "profile"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")
SCOPES: tuple[Scope, ...] = ("client", "policy", "profile")
DOWNGRADE = "downgrade:"

_DAY_S = 86_400
_EPOCH = date(1970, 1, 1)
_UNITS = 10_000_000_000  # per USD


def to_units(usd: float) -> int:
    """USD as integer units of 1e-10 USD (rounded to the nearest unit)."""
    return round(usd * _UNITS)


def from_units(units: int) -> float:
    """Integer units of 1e-10 USD back as USD."""
    return units / _UNITS


def checked_amount(usd: float, what: str) -> float:
    """`usd` unchanged if it is a finite amount >= 0; ValueError naming `what` otherwise."""
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{what} must be a finite amount >= 0 USD, got {usd!r}")
    return usd


@dataclass(frozen=True)
class BudgetRule:
    """The `budget:` of one policy; `name` is the policy's name."""

    name: str
    usd: float
    per: Period = "day"
    scope: Scope = "policy"
    on_exceed: str = "block"
    alert_at: float | None = None

    def __post_init__(self) -> None:
        where = f"budget of policy {self.name!r}"
        if not (math.isfinite(self.usd) and self.usd > 0):
            raise ValueError(f"{where}: usd is {self.usd!r}; give a positive amount like 50")
        if self.per not in PERIODS:
            raise ValueError(f"{where}: per is {self.per!r}; use one of {', '.join(PERIODS)}")
        if self.scope not in SCOPES:
            raise ValueError(f"{where}: scope is {self.scope!r}; use one of {', '.join(SCOPES)}")
        if self.on_exceed != "block" and not (
            self.on_exceed.startswith(DOWNGRADE) and len(self.on_exceed) > len(DOWNGRADE)
        ):
            raise ValueError(
                f"{where}: on_exceed is {self.on_exceed!r}; use block or downgrade:<profile>"
            )
        if self.alert_at is not None and not 0 < self.alert_at <= 1:
            raise ValueError(f"{where}: alert_at is {self.alert_at!r}; use a share like 0.8")

    @property
    def downgrade_to(self) -> str | None:
        """The profile to route to once the budget is spent, or None to block."""
        return self.on_exceed.removeprefix(DOWNGRADE) if self.on_exceed != "block" else None


def window(per: Period, now: float) -> tuple[float, float]:
    """[start, end) in epoch seconds of the UTC calendar window containing `now`."""
    day = int(now // _DAY_S)  # POSIX days are exactly 86400 s: integer arithmetic, no rounding
    if per == "day":
        start, end = day, day + 1
    elif per == "week":
        start = day - (day + 3) % 7  # 1970-01-01 was a Thursday; weeks start on Monday
        end = start + 7
    elif per == "month":
        first = (_EPOCH + timedelta(days=day)).replace(day=1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        start, end = (first - _EPOCH).days, (following - _EPOCH).days
    else:
        raise ValueError(f"period {per!r} is not one of {', '.join(PERIODS)}")
    return float(start * _DAY_S), float(end * _DAY_S)


def scope_key(rule: BudgetRule, client: str, policy: str, profile: str) -> str:
    """Which value of the request the rule's budget is counted per."""
    return {"client": client, "policy": policy, "profile": profile}[rule.scope]


def _limit_text(usd: float) -> str:
    return f"${usd:.2f}" if round(usd, 2) == usd else f"${usd:.6f}"


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, _DAY_S)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Reservation:
    """An admitted call's hold on its budget window: `amount` USD (its estimated maximum)
    in [`window_start`, `window_end`), epoch seconds, until settled or released."""

    id: int
    rule: str
    scope_key: str
    window_start: float
    window_end: float
    amount: float


@dataclass(frozen=True)
class Exceeded:
    """A call the budget cannot admit: spent + in flight + this call > the limit."""

    code: ClassVar[str] = "budget_exceeded"

    rule: BudgetRule
    scope_key: str
    spent: float
    reserved: float  # other calls in flight
    requested: float  # this call's estimated maximum
    limit: float
    retry_after_s: int  # until the window resets

    @property
    def message(self) -> str:
        """The refusal the client sees: the amounts, the limit, and when it resets (or that
        this call alone is over the whole limit)."""
        r = self.rule
        head = f"budget {r.name!r} exceeded: "
        where = f"{_limit_text(self.limit)} per {r.per} for {r.scope} {self.scope_key}"
        if self.requested > self.limit:
            return (
                f"{head}this call may cost up to ${self.requested:.6f}, more than the whole "
                f"{where}; lower max_tokens or raise the budget"
            )
        return (
            f"{head}${self.spent:.6f} spent + ${self.reserved:.6f} in flight + "
            f"${self.requested:.6f} for this call > {where}; "
            f"resets in {_duration(self.retry_after_s)}"
        )


@dataclass(frozen=True)
class Alert:
    """Spend in one window reached `threshold` (a share of `limit`) for the first time."""

    rule: str
    scope_key: str
    window_start: float
    spent: float
    limit: float
    threshold: float

    @property
    def message(self) -> str:
        """The log line: the share spent, the amounts, and the alert threshold."""
        return (
            f"budget {self.rule!r} for {self.scope_key} reached {self.spent / self.limit:.0%} "
            f"(${self.spent:.6f} of {_limit_text(self.limit)}; alert at {self.threshold:.0%})"
        )


@dataclass
class _Account:
    spent: int = 0
    holds: dict[int, int] = field(default_factory=dict)  # reservation id -> units
    alerted: bool = False


_Key = tuple[str, str, float, float]  # rule name, scope key, window start, window end


def snapshot_row(
    rule: BudgetRule, scope: str, start: float, end: float, spent: int, held: int, alerted: bool
) -> dict[str, Any]:
    """One budget window as /status and the metrics show it (amounts in units); `share`
    counts in-flight reservations as spent. Shared by the in-process and the Redis store."""
    return {
        "rule": rule.name,
        "scope": scope,
        "scope_kind": rule.scope,
        "per": rule.per,
        "window_start": start,
        "window_end": end,
        "spent": from_units(spent),
        "reserved": from_units(held),
        "limit": rule.usd,
        "share": (spent + held) / to_units(rule.usd),
        "alert_at": rule.alert_at,
        "alerted": alerted,
    }


class BudgetBook:
    """In-memory spend and reservations per (rule, scope key, window).

    Windows that have ended are dropped lazily once none of their reservations is open.
    A reservation is closed once: a second settle or release of it is ignored.
    """

    def __init__(self) -> None:
        self._accounts: dict[_Key, _Account] = {}
        self._rules: dict[str, BudgetRule] = {}  # latest rule seen per name
        self._ids = itertools.count(1)
        self._prune_at = math.inf  # no ended window can exist before this time

    def __len__(self) -> int:
        return len(self._accounts)

    def reserve(
        self, rule: BudgetRule, scope_key: str, amount_usd: float, now: float
    ) -> Reservation | Exceeded:
        """Hold `amount_usd` (the call's estimated maximum) if it fits the budget."""
        amount = checked_amount(amount_usd, "a reservation")
        self._prune(now)
        self._rules[rule.name] = rule
        start, end = window(rule.per, now)
        key = (rule.name, scope_key, start, end)
        acct = self._accounts.get(key) or _Account()
        reserved = sum(acct.holds.values())
        if acct.spent + reserved + to_units(amount) > to_units(rule.usd):
            retry = max(1, math.ceil(end - now))
            return Exceeded(
                rule,
                scope_key,
                from_units(acct.spent),
                from_units(reserved),
                amount,
                rule.usd,
                retry,
            )
        self._open(key, acct)
        rid = next(self._ids)
        acct.holds[rid] = to_units(amount)
        return Reservation(rid, rule.name, scope_key, start, end, amount)

    def settle(self, reservation: Reservation, actual_usd: float | None, now: float) -> list[Alert]:
        """Close `reservation`, charging `actual_usd` to the window it was reserved in.

        `actual_usd` None means the call could not be priced: the reserved amount is charged
        instead, conservatively. Returns the alert crossed for the first time in that window.
        """
        actual = None if actual_usd is None else to_units(checked_amount(actual_usd, "a cost"))
        self._prune(now)
        key, acct = self._held(reservation)
        if acct is None:
            return []
        held = acct.holds.pop(reservation.id)
        acct.spent += held if actual is None else actual
        self._closed(key, acct)
        rule = self._rules[reservation.rule]
        if acct.alerted or rule.alert_at is None or acct.spent < rule.alert_at * to_units(rule.usd):
            return []
        acct.alerted = True
        r = reservation
        return [
            Alert(
                r.rule, r.scope_key, r.window_start, from_units(acct.spent), rule.usd, rule.alert_at
            )
        ]

    def release(self, reservation: Reservation) -> None:
        """Close `reservation` without charging: the call failed before anything was billed."""
        key, acct = self._held(reservation)
        if acct is not None:
            del acct.holds[reservation.id]
            self._closed(key, acct)

    def seed(self, rule: BudgetRule, scope_key: str, window_start: float, spent: float) -> None:
        """Add `spent` USD already charged in a window (read from the ledger at startup), so a
        restart does not reset a budget. A threshold the seeded spend already passed was
        alerted before the restart and is not alerted again."""
        start, end = window(rule.per, window_start)
        if start != window_start:
            raise ValueError(
                f"{window_start!r} is not the start of a {rule.per} window; "
                f"pass window({rule.per!r}, t)[0]"
            )
        self._rules[rule.name] = rule
        key = (rule.name, scope_key, start, end)
        acct = self._accounts.get(key) or _Account()
        acct.spent += to_units(checked_amount(spent, "seeded spend"))
        if rule.alert_at is not None and acct.spent >= rule.alert_at * to_units(rule.usd):
            acct.alerted = True
        self._open(key, acct)

    def spent(self, rule: BudgetRule, scope_key: str, now: float) -> float:
        """USD charged so far in the window containing `now`."""
        acct = self._accounts.get((rule.name, scope_key, *window(rule.per, now)))
        return from_units(acct.spent) if acct else 0.0

    def reserved(self, rule: BudgetRule, scope_key: str, now: float) -> float:
        """USD held by open reservations in the window containing `now`."""
        acct = self._accounts.get((rule.name, scope_key, *window(rule.per, now)))
        return from_units(sum(acct.holds.values())) if acct else 0.0

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Current windows as plain dicts for /status and metrics; `share` counts in-flight
        reservations as spent."""
        self._prune(now)
        rows = []
        for (name, key, start, end), acct in sorted(self._accounts.items(), key=lambda kv: kv[0]):
            rule = self._rules[name]
            if (start, end) != window(rule.per, now):
                continue
            held = sum(acct.holds.values())
            rows.append(snapshot_row(rule, key, start, end, acct.spent, held, acct.alerted))
        return rows

    # ----------------------------------------------------------------------- internals

    def _held(self, r: Reservation) -> tuple[_Key, _Account | None]:
        key = (r.rule, r.scope_key, r.window_start, r.window_end)
        acct = self._accounts.get(key)
        return key, acct if acct is not None and r.id in acct.holds else None

    def _open(self, key: _Key, acct: _Account) -> None:
        self._accounts[key] = acct
        self._prune_at = min(self._prune_at, key[3])

    def _closed(self, key: _Key, acct: _Account) -> None:
        if not acct.holds:  # an ended window becomes droppable once its last hold closes
            self._prune_at = min(self._prune_at, key[3])

    def _prune(self, now: float) -> None:
        if now < self._prune_at:
            return
        for key in [k for k, a in self._accounts.items() if k[3] <= now and not a.holds]:
            del self._accounts[key]
        live = {name for name, *_ in self._accounts}
        self._rules = {n: r for n, r in self._rules.items() if n in live}
        self._prune_at = min((k[3] for k in self._accounts if k[3] > now), default=math.inf)
