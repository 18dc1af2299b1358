"""The lock decision keeps its promises to phone owners, whatever the schedule, policy and clock."""

import datetime as dt
import zoneinfo
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from payments.locks.decision import Line, Overrides, decide
from payments.models import Rules

COLOMBO = zoneinfo.ZoneInfo("Asia/Colombo")
NAIROBI = zoneinfo.ZoneInfo("Africa/Nairobi")
STATES = ["unlocked", "reminder", "locked", "temp_unlocked", "released"]
START = dt.date(2026, 1, 1)


@st.composite
def rules(draw):
    start = draw(st.integers(0, 22))
    return Rules(
        grace_days=draw(st.integers(0, 10)),
        reminder_days_before=draw(st.integers(0, 7)),
        lock_start_hour=start,
        lock_end_hour=draw(st.integers(start + 1, 24)),
        lock_weekdays=frozenset(draw(st.sets(st.integers(0, 6), min_size=1))),
    )


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 8))
    step = draw(st.sampled_from([7, 14, 30]))
    first = START + dt.timedelta(days=draw(st.integers(0, 60)))
    lines = []
    for i in range(n):
        due = Decimal(draw(st.integers(100, 5000)))
        paid = draw(st.sampled_from([Decimal(0), due, (due / 2).quantize(Decimal("0.01"))]))
        lines.append(Line(first + dt.timedelta(days=step * i), due, paid))
    return lines


moments = st.datetimes(
    min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2026, 12, 31), timezones=st.just(dt.UTC)
)
overrides = st.builds(
    Overrides,
    temp_unlock_until=st.one_of(st.none(), moments),
    dispute_hold=st.booleans(),
)
zones = st.sampled_from([COLOMBO, NAIROBI])
statuses = st.sampled_from(["active", "active", "active", "defaulted", "paid_off", "cancelled"])


@settings(max_examples=400)
@given(statuses, schedules(), rules(), overrides, moments, zones, st.sampled_from(STATES))
def test_a_phone_is_never_locked_without_a_reminder_having_been_due_first(
    status, lines, rules, overrides, now, zone, current
):
    decision = decide(status=status, lines=lines, rules=rules, overrides=overrides, now=now, zone=zone, current=current)
    if decision.state != "locked":
        return
    # On the morning of the oldest overdue due date, the same owner was already being reminded.
    due_morning = dt.datetime.combine(decision.overdue_since, dt.time(8), tzinfo=zone)
    earlier = decide(
        status=status, lines=lines, rules=rules, overrides=Overrides(), now=due_morning, zone=zone, current="unlocked"
    )
    assert earlier.state == "reminder", earlier


@settings(max_examples=400)
@given(statuses, schedules(), rules(), overrides, moments, zones, st.sampled_from(STATES))
def test_a_lock_never_starts_outside_the_allowed_hours_and_weekdays(
    status, lines, rules, overrides, now, zone, current
):
    decision = decide(status=status, lines=lines, rules=rules, overrides=overrides, now=now, zone=zone, current=current)
    if decision.state == "locked" and current != "locked":
        assert rules.lock_may_start(now.astimezone(zone))


@settings(max_examples=300)
@given(statuses, schedules(), rules(), overrides, moments, zones)
def test_released_is_final(status, lines, rules, overrides, now, zone):
    decision = decide(
        status=status, lines=lines, rules=rules, overrides=overrides, now=now, zone=zone, current="released"
    )
    assert decision.state == "released"


@settings(max_examples=400)
@given(
    st.sampled_from(["active", "defaulted"]), schedules(), rules(), overrides, moments, zones, st.sampled_from(STATES)
)
def test_clearing_the_arrears_never_yields_locked(status, lines, rules, overrides, now, zone, current):
    today = now.astimezone(zone).date()
    cleared = [Line(x.due_date, x.amount_due, x.amount_due if x.due_date < today else x.amount_paid) for x in lines]
    decision = decide(
        status=status, lines=cleared, rules=rules, overrides=overrides, now=now, zone=zone, current=current
    )
    assert decision.state != "locked"
    if current != "released":
        assert decision.state in {"unlocked", "reminder"}


def _case(days_late, *, hour=10, weekday_ok=True, current="unlocked", **kw):
    due = dt.date(2026, 11, 2)  # a Monday
    now_local = dt.datetime.combine(due + dt.timedelta(days=days_late), dt.time(hour), tzinfo=COLOMBO)
    rules = Rules(grace_days=3, reminder_days_before=3, lock_weekdays=frozenset(range(7) if weekday_ok else []))
    lines = [Line(due, Decimal("2500.00"), Decimal("0")), Line(due + dt.timedelta(30), Decimal("2500.00"), Decimal(0))]
    return decide(
        status=kw.get("status", "active"),
        lines=lines,
        rules=rules,
        overrides=kw.get("overrides", Overrides()),
        now=now_local.astimezone(dt.UTC),
        zone=COLOMBO,
        current=current,
    )


def test_the_owner_is_reminded_before_and_within_grace_then_locked_in_office_hours():
    assert _case(-5).state == "unlocked"
    assert _case(-3).state == "reminder" and "due on 2 Nov 2026" in _case(-3).reason
    assert _case(2).state == "reminder" and "within the 3-day grace" in _case(2).reason
    locked = _case(4)
    assert locked.state == "locked"
    assert locked.amount_overdue == Decimal("2500.00") and locked.overdue_since == dt.date(2026, 11, 2)
    assert "4 days overdue (grace 3 days)" in locked.reason


def test_a_lock_waits_for_the_morning_but_an_existing_lock_stays_at_night():
    assert _case(4, hour=23).state == "reminder"
    assert _case(4, hour=23, current="locked").state == "locked"


def test_a_temporary_unlock_lifts_the_lock_until_it_expires():
    until = dt.datetime(2026, 11, 7, 12, tzinfo=dt.UTC)
    decision = _case(4, current="locked", overrides=Overrides(temp_unlock_until=until))
    assert decision.state == "temp_unlocked" and decision.expires_at == until


def test_a_dispute_hold_keeps_the_phone_usable():
    assert _case(10, overrides=Overrides(dispute_hold=True)).state == "reminder"


def test_a_paid_off_contract_is_released_for_good():
    assert _case(10, status="paid_off").state == "released"
    assert _case(10, current="released").state == "released"
