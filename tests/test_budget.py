"""Budget accounting: calendar windows, reservations, the 429 text, alerts, concurrency."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from addon.routing.budget import (
    Alert,
    BudgetBook,
    BudgetRule,
    Exceeded,
    Period,
    Reservation,
    scope_key,
    window,
)


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


DAY = ts("2024-05-14")  # a Tuesday
TEAM = BudgetRule("team-a", 50, "day", "client", "block", 0.8)


def reserve(book: BudgetBook, rule: BudgetRule, amount: float, now: float) -> Reservation:
    r = book.reserve(rule, "10.0.0.5", amount, now)
    assert isinstance(r, Reservation), r
    return r


def refuse(book: BudgetBook, rule: BudgetRule, amount: float, now: float) -> Exceeded:
    r = book.reserve(rule, "10.0.0.5", amount, now)
    assert isinstance(r, Exceeded), r
    return r


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("per", "now", "start", "end"),
    [
        ("day", "2024-05-14T13:37:00", "2024-05-14", "2024-05-15"),
        ("day", "2024-05-14T00:00:00", "2024-05-14", "2024-05-15"),
        ("day", "2024-05-14T23:59:59.999", "2024-05-14", "2024-05-15"),
        ("day", "2024-02-28T12:00:00", "2024-02-28", "2024-02-29"),  # leap day follows
        ("day", "2024-02-29T12:00:00", "2024-02-29", "2024-03-01"),
        ("day", "2024-12-31T23:00:00", "2024-12-31", "2025-01-01"),
        ("day", "1969-12-31T12:00:00", "1969-12-31", "1970-01-01"),  # negative epoch
        ("week", "2024-05-14T13:37:00", "2024-05-13", "2024-05-20"),  # Tuesday
        ("week", "2024-05-13T00:00:00", "2024-05-13", "2024-05-20"),  # Monday midnight
        ("week", "2024-05-19T23:59:59", "2024-05-13", "2024-05-20"),  # Sunday night
        ("week", "2025-01-01T08:00:00", "2024-12-30", "2025-01-06"),  # across the new year
        ("week", "1970-01-01T00:00:00", "1969-12-29", "1970-01-05"),  # the epoch, a Thursday
        ("week", "2024-02-29T00:00:00", "2024-02-26", "2024-03-04"),
        ("month", "2024-05-14T13:37:00", "2024-05-01", "2024-06-01"),
        ("month", "2024-05-01T00:00:00", "2024-05-01", "2024-06-01"),
        ("month", "2024-01-31T23:59:59", "2024-01-01", "2024-02-01"),
        ("month", "2024-12-31T23:59:59", "2024-12-01", "2025-01-01"),  # year rollover
        ("month", "2025-01-01T00:00:00", "2025-01-01", "2025-02-01"),
        ("month", "2024-02-29T23:59:59", "2024-02-01", "2024-03-01"),  # leap: 29 days
        ("month", "2023-02-15T00:00:00", "2023-02-01", "2023-03-01"),  # 28 days
        ("month", "2000-02-29T10:00:00", "2000-02-01", "2000-03-01"),  # leap (÷400)
        ("month", "2100-02-28T10:00:00", "2100-02-01", "2100-03-01"),  # not leap (÷100)
    ],
)
def test_window(per: Period, now: str, start: str, end: str) -> None:
    assert window(per, ts(now)) == (ts(start), ts(end))


def test_window_just_before_midnight_is_the_old_day() -> None:
    assert window("day", ts("2024-05-15") - 1e-6) == (DAY, ts("2024-05-15"))


def test_window_lengths_in_a_leap_year() -> None:
    lengths = [window("month", ts(f"2024-{m:02d}-10")) for m in range(1, 13)]
    days = [(end - start) / 86400 for start, end in lengths]
    assert days == [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"usd": 0}, "usd is 0; give a positive amount like 50"),
        ({"usd": float("nan")}, "usd is nan"),
        ({"per": "year"}, "per is 'year'; use one of day, week, month"),
        ({"scope": "user"}, "scope is 'user'; use one of client, policy, profile"),
        ({"on_exceed": "downgrade:"}, "on_exceed is 'downgrade:'; use block or downgrade:"),
        ({"on_exceed": "drop"}, "on_exceed is 'drop'"),
        ({"alert_at": 0}, "alert_at is 0; use a share like 0.8"),
        ({"alert_at": 1.5}, "alert_at is 1.5"),
    ],
)
def test_rule_rejects(kwargs: dict[str, object], error: str) -> None:
    args: dict[str, object] = {"name": "team-a", "usd": 50} | kwargs
    with pytest.raises(ValueError, match=f"^budget of policy 'team-a': {error}"):
        BudgetRule(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("on_exceed", "target"),
    [("block", None), ("downgrade:cheap", "cheap"), ("downgrade:a:b", "a:b")],
)
def test_downgrade_to(on_exceed: str, target: str | None) -> None:
    assert BudgetRule("p", 1, on_exceed=on_exceed).downgrade_to == target


@pytest.mark.parametrize(
    ("scope", "key"), [("client", "10.0.0.5"), ("policy", "team-a"), ("profile", "balanced")]
)
def test_scope_key(scope: str, key: str) -> None:
    rule = BudgetRule("team-a", 1, scope=scope)  # type: ignore[arg-type]
    assert scope_key(rule, "10.0.0.5", "team-a", "balanced") == key


# --------------------------------------------------------------------------- reserve & settle


def test_reserve_settle_release() -> None:
    book = BudgetBook()
    now = DAY + 3600
    a = reserve(book, TEAM, 0.5, now)
    b = reserve(book, TEAM, 0.25, now)
    assert a.id != b.id and a.window_start == DAY and a.amount == 0.5
    assert (book.spent(TEAM, "10.0.0.5", now), book.reserved(TEAM, "10.0.0.5", now)) == (0, 0.75)
    assert book.settle(a, 0.125, now + 1) == []
    book.release(b)
    assert (book.spent(TEAM, "10.0.0.5", now), book.reserved(TEAM, "10.0.0.5", now)) == (0.125, 0)
    assert book.spent(TEAM, "10.0.0.6", now) == 0, "scope keys are counted apart"


def test_closing_twice_is_ignored() -> None:
    book = BudgetBook()
    r = reserve(book, TEAM, 1, DAY)
    book.settle(r, 0.5, DAY)
    assert book.settle(r, 0.5, DAY) == []
    book.release(r)
    assert (book.spent(TEAM, "10.0.0.5", DAY), book.reserved(TEAM, "10.0.0.5", DAY)) == (0.5, 0)


def test_unpriced_settle_charges_the_reservation() -> None:
    book = BudgetBook()
    book.settle(reserve(book, TEAM, 0.03, DAY), None, DAY + 5)
    assert book.spent(TEAM, "10.0.0.5", DAY) == 0.03


def test_exact_fit_is_admitted_and_released_room_is_reusable() -> None:
    rule = BudgetRule("tiny", 0.3)
    book = BudgetBook()
    held = [reserve(book, rule, 0.1, DAY) for _ in range(3)]  # 0.1 * 3 > 0.3 as floats
    refuse(book, rule, 1e-9, DAY)
    book.release(held[0])
    reserve(book, rule, 0.1, DAY)


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_bad_amounts(bad: float) -> None:
    book = BudgetBook()
    with pytest.raises(ValueError, match="a reservation must be a finite amount >= 0 USD"):
        book.reserve(TEAM, "k", bad, DAY)
    r = reserve(book, TEAM, 1, DAY)
    with pytest.raises(ValueError, match="a cost must be a finite amount >= 0 USD"):
        book.settle(r, bad, DAY)
    assert book.reserved(TEAM, "10.0.0.5", DAY) == 1, "a refused settle keeps the hold"


# --------------------------------------------------------------------------- exceeded


def test_exceeded_message_and_retry_after() -> None:
    book = BudgetBook()
    book.seed(TEAM, "10.0.0.5", DAY, 49.99)
    reserve(book, TEAM, 0.005, DAY)
    e = refuse(book, TEAM, 0.006, DAY + 20 * 3600 + 48 * 60)
    assert e.message == (
        "budget 'team-a' exceeded: $49.990000 spent + $0.005000 in flight + $0.006000 "
        "for this call > $50.00 per day for client 10.0.0.5; resets in 3h 12m"
    )
    assert (e.code, e.retry_after_s, e.limit, e.rule, e.scope_key) == (
        "budget_exceeded",
        3 * 3600 + 12 * 60,
        50,
        TEAM,
        "10.0.0.5",
    )


def test_exceeded_when_one_call_is_bigger_than_the_budget() -> None:
    e = refuse(BudgetBook(), BudgetRule("p", 0.5, "week"), 0.75, DAY)
    assert e.message == (
        "budget 'p' exceeded: this call may cost up to $0.750000, more than the whole "
        "$0.50 per week for policy 10.0.0.5; lower max_tokens or raise the budget"
    )


@pytest.mark.parametrize(
    ("per", "left_s", "retry", "text"),
    [
        ("day", 0.2, 1, "1s"),
        ("day", 59.5, 60, "1m 0s"),
        ("day", 61, 61, "1m 1s"),
        ("day", 3599, 3599, "59m 59s"),
        ("day", 86399.25, 86400, "1d 0h"),
        ("month", 30 * 86400 + 5 * 3600 + 7, 30 * 86400 + 5 * 3600 + 7, "30d 5h"),
    ],
)
def test_retry_after(per: Period, left_s: float, retry: int, text: str) -> None:
    rule = BudgetRule("p", 1, per)
    end = window(per, DAY)[1]
    book = BudgetBook()
    book.seed(rule, "10.0.0.5", window(per, DAY)[0], 1)
    e = refuse(book, rule, 0.01, end - left_s)
    assert e.retry_after_s == retry
    assert e.message.endswith(f"; resets in {text}")


# --------------------------------------------------------------------------- alerts


def test_alert_once_per_window() -> None:
    rule = BudgetRule("p", 10, "day", "policy", "block", 0.8)
    book = BudgetBook()

    def spend(usd: float, now: float) -> list[Alert]:
        return book.settle(reserve(book, rule, usd, now), usd, now)

    assert spend(7, DAY) == []
    [alert] = spend(1.5, DAY + 60)
    assert alert == Alert("p", "10.0.0.5", DAY, 8.5, 10, 0.8)
    assert (
        alert.message == "budget 'p' for 10.0.0.5 reached 85% ($8.500000 of $10.00; alert at 80%)"
    )
    assert spend(0.5, DAY + 120) == []
    assert book.snapshot(DAY + 130)[0]["alerted"] is True
    assert spend(8, DAY + 86400) != [], "a new window alerts again"
    assert spend(1, DAY + 86400) == []


def test_no_alert_without_alert_at() -> None:
    rule = BudgetRule("p", 1)
    book = BudgetBook()
    assert book.settle(reserve(book, rule, 1, DAY), 1, DAY) == []


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("seed", range(5))
def test_concurrent_calls_never_overshoot(seed: int) -> None:
    rng = random.Random(seed)
    rule = BudgetRule("p", 1.0, "day", "policy", "block", 0.5)
    book = BudgetBook()
    now = DAY
    open_: list[Reservation] = []
    charged: list[float] = []
    admitted = refused = alerts = 0
    for _ in range(200):
        while open_ and rng.random() < 0.5:  # some in-flight calls finish, in random order
            r = open_.pop(rng.randrange(len(open_)))
            roll = rng.random()
            if roll < 0.15:
                book.release(r)
                continue
            cost = None if roll < 0.3 else round(r.amount * rng.random(), 10)
            charged.append(r.amount if cost is None else cost)
            alerts += len(book.settle(r, cost, now))
        now += rng.random()
        estimate = round(rng.uniform(0.01, 0.08), 6)
        before = book.spent(rule, "k", now) + book.reserved(rule, "k", now)
        got = book.reserve(rule, "k", estimate, now)
        if isinstance(got, Reservation):
            admitted += 1
            assert before + estimate <= rule.usd + 1e-12
            open_.append(got)
        else:
            refused += 1
            assert before + estimate > rule.usd
        assert book.spent(rule, "k", now) + book.reserved(rule, "k", now) <= rule.usd + 1e-12
    for r in open_:
        charged.append(r.amount)
        alerts += len(book.settle(r, r.amount, now))
    assert admitted > 20 and refused > 20, "the budget was actually contended"
    assert sum(charged) <= rule.usd + 1e-12
    assert book.spent(rule, "k", now) == pytest.approx(sum(charged))
    assert book.reserved(rule, "k", now) == 0
    assert alerts == 1


# --------------------------------------------------------------------------- windows roll over


def test_settle_after_rollover_charges_the_reserved_window() -> None:
    book = BudgetBook()
    late = DAY + 86400 - 30
    r = reserve(book, TEAM, 2, late)
    book.settle(r, 1.5, late + 60)
    assert book.spent(TEAM, "10.0.0.5", late) == 1.5
    assert book.spent(TEAM, "10.0.0.5", late + 60) == 0
    reserve(book, TEAM, 50, late + 60)  # the new day has its whole budget
    assert book.spent(TEAM, "10.0.0.5", late) == 0, "the ended window was dropped"
    assert len(book) == 1


def test_old_windows_are_dropped() -> None:
    book = BudgetBook()
    for d in range(30):
        for client in ("a", "b"):
            r = book.reserve(TEAM, client, 1, DAY + d * 86400)
            assert isinstance(r, Reservation)
            book.settle(r, 1, DAY + d * 86400)
    assert len(book) == 2


def test_ended_window_with_open_reservation_is_kept_until_closed() -> None:
    book = BudgetBook()
    r = reserve(book, TEAM, 1, DAY)
    book.reserve(TEAM, "other", 1, DAY + 86400)
    assert len(book) == 2
    book.release(r)
    book.reserve(TEAM, "other", 1, DAY + 86401)
    assert len(book) == 1


# --------------------------------------------------------------------------- seed & snapshot


def test_seed_survives_restart_and_does_not_realert() -> None:
    book = BudgetBook()
    book.seed(TEAM, "10.0.0.5", DAY, 30)
    book.seed(TEAM, "10.0.0.5", DAY, 15)  # adds: one call per ledger row works
    assert book.spent(TEAM, "10.0.0.5", DAY + 10) == 45
    refuse(book, TEAM, 6, DAY + 10)
    assert book.settle(reserve(book, TEAM, 4, DAY + 10), 4, DAY + 11) == []


def test_seed_needs_a_window_start() -> None:
    with pytest.raises(ValueError, match=r"is not the start of a week window; pass window\('week'"):
        BudgetBook().seed(BudgetRule("p", 1, "week"), "k", DAY, 1)


def test_snapshot() -> None:
    book = BudgetBook()
    book.settle(reserve(book, TEAM, 20, DAY), 10, DAY)
    reserve(book, TEAM, 5, DAY)
    monthly = BudgetRule("m", 100, "month", "profile")
    book.seed(monthly, "cheap", ts("2024-05-01"), 1)
    book.seed(monthly, "cheap", ts("2024-04-01"), 99)  # an ended window: not shown
    assert book.snapshot(DAY + 5) == [
        {
            "rule": "m",
            "scope": "cheap",
            "scope_kind": "profile",
            "per": "month",
            "window_start": ts("2024-05-01"),
            "window_end": ts("2024-06-01"),
            "spent": 1,
            "reserved": 0,
            "limit": 100,
            "share": 0.01,
            "alert_at": None,
            "alerted": False,
        },
        {
            "rule": "team-a",
            "scope": "10.0.0.5",
            "scope_kind": "client",
            "per": "day",
            "window_start": DAY,
            "window_end": DAY + 86400,
            "spent": 10,
            "reserved": 5,
            "limit": 50,
            "share": 0.3,
            "alert_at": 0.8,
            "alerted": False,
        },
    ]


def test_changed_rule_applies_to_the_running_window() -> None:
    book = BudgetBook()
    book.settle(reserve(book, TEAM, 50, DAY), 50, DAY)
    refuse(book, TEAM, 1, DAY)
    raised = BudgetRule("team-a", 60, "day", "client", "block", 0.8)
    reserve(book, raised, 10, DAY)
    assert book.snapshot(DAY)[0]["limit"] == 60
