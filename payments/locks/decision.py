"""The lock decision: what state should a financed phone be in, now?

A pure function of the contract's status and schedule, the provider's lock policy,
the active overrides (temporary unlock, dispute hold), the state the contract is in
and the clock. No database, no side effects: the sweep (set-based SQL in
``payments.locks.sweep``) must agree with it, and property tests hold it to its promises:

* never ``locked`` without a reminder having been due first;
* never a lock *starting* outside the policy's allowed hours and weekdays;
* ``released`` is final;
* clearing the arrears never yields ``locked``.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypedDict

from devices.models import LockState
from payments.models.locks import Rules

FINAL_CONTRACT_STATUSES = frozenset({"paid_off", "cancelled"})


@dataclass(frozen=True)
class Line:
    """One installment as the decision sees it."""

    due_date: dt.date
    amount_due: Decimal
    amount_paid: Decimal

    @property
    def unpaid(self) -> bool:
        return self.amount_paid < self.amount_due


@dataclass(frozen=True)
class Overrides:
    """Overrides active at the moment of the decision (the caller filters by time)."""

    temp_unlock_until: dt.datetime | None = None
    dispute_hold: bool = False


@dataclass(frozen=True)
class Decision:
    state: str
    reason: str
    expires_at: dt.datetime | None = None
    overdue_since: dt.date | None = None
    amount_overdue: Decimal = Decimal("0")


class _Overdue(TypedDict):
    """What a decision about an overdue installment reports with its state."""

    overdue_since: dt.date
    amount_overdue: Decimal


def _d(day: dt.date) -> str:
    return f"{day.day} {day:%b %Y}"


def decide(
    *,
    status: str,
    lines: Iterable[Line],
    rules: Rules,
    overrides: Overrides,
    now: dt.datetime,
    zone: zoneinfo.ZoneInfo,
    current: str,
) -> Decision:
    """The desired lock state of a contract's device at ``now`` (aware), with a reason in plain words.

    ``current`` is the state the contract is in now (``unlocked`` for a new one). Due dates
    are local dates in the provider's ``zone``.
    """
    if current == LockState.RELEASED:
        return Decision(LockState.RELEASED, "Released for good: the contract is settled.")
    if status == "paid_off":
        return Decision(LockState.RELEASED, "Contract paid off: the lock is removed for good.")
    if status == "cancelled":
        return Decision(LockState.RELEASED, "Contract cancelled: the lock is removed for good.")

    local = now.astimezone(zone)
    today = local.date()
    lines = list(lines)
    overdue = [line for line in lines if line.unpaid and line.due_date < today]
    arrears = sum((line.amount_due - line.amount_paid for line in overdue), Decimal("0"))
    oldest = min((line.due_date for line in overdue), default=None)

    if oldest is not None:
        days_late = (today - oldest).days
        if days_late > rules.grace_days:
            late = f"Installment due {_d(oldest)} is {days_late} days overdue (grace {rules.grace_days} days)"
            facts: _Overdue = {"overdue_since": oldest, "amount_overdue": arrears}
            if overrides.dispute_hold:
                return Decision(LockState.REMINDER, f"{late}; no lock while a dispute is on hold.", **facts)
            if overrides.temp_unlock_until is not None and overrides.temp_unlock_until > now:
                return Decision(
                    LockState.TEMP_UNLOCKED,
                    f"{late}; temporarily unlocked until {overrides.temp_unlock_until:%Y-%m-%d %H:%M} UTC.",
                    expires_at=overrides.temp_unlock_until,
                    **facts,
                )
            if current == LockState.LOCKED:
                return Decision(LockState.LOCKED, f"{late}.", **facts)
            if rules.lock_may_start(local):
                return Decision(LockState.LOCKED, f"{late}.", **facts)
            return Decision(LockState.REMINDER, f"{late}; the lock waits for the hours a lock may start.", **facts)
        return Decision(
            LockState.REMINDER,
            f"Installment due {_d(oldest)} is {days_late} day{'s' if days_late != 1 else ''} overdue,"
            f" within the {rules.grace_days}-day grace period.",
            overdue_since=oldest,
            amount_overdue=arrears,
        )

    horizon = today + dt.timedelta(days=rules.reminder_days_before)
    soon = min((line.due_date for line in lines if line.unpaid and line.due_date <= horizon), default=None)
    if soon is not None:
        when = "today" if soon == today else f"on {_d(soon)}"
        return Decision(LockState.REMINDER, f"Installment due {when}.")
    return Decision(LockState.UNLOCKED, "Payments are up to date.")


def lock_eligible_at(
    *, earliest_unpaid_due: dt.date | None, rules: Rules, zone: zoneinfo.ZoneInfo
) -> dt.datetime | None:
    """When the earliest unpaid installment becomes lockable (a command's ``paid_until``), as aware UTC.

    Its due date plus the grace days, at the start of the lock window of the local day after:
    ``decide`` locks once an installment is *more* than ``grace_days`` late, so a phone that
    falls back to its lease never locks before the server itself would. The phone still waits
    for an allowed weekday (``lock_window``). None when nothing is unpaid.
    """
    if earliest_unpaid_due is None:
        return None
    day = earliest_unpaid_due + dt.timedelta(days=rules.grace_days + 1)
    start = dt.datetime.combine(day, dt.time(rules.lock_start_hour), tzinfo=zone)
    return start.astimezone(dt.UTC)


class LeaseTerms(TypedDict):
    """What a ``devices.services.commands.StateChange`` needs for its offline lease (keyword arguments)."""

    paid_until: dt.datetime | None
    offline_lock_days: int | None
    lease_expiry_state: str
    lease_warning_days: int
    time_zone: str
    lock_window: dict[str, int | list[int]]


def lease_terms(
    *, earliest_unpaid_due: dt.date | None, rules: Rules, zone: zoneinfo.ZoneInfo, dispute_hold: bool
) -> LeaseTerms:
    """The lease inputs of a command: the provider's offline policy and when the money allows a lock.

    Under a dispute hold the lease expires into ``reminder``: no lock while a dispute is open,
    not even one the phone takes by itself.
    """
    return {
        "paid_until": lock_eligible_at(earliest_unpaid_due=earliest_unpaid_due, rules=rules, zone=zone),
        "offline_lock_days": rules.offline_lock_days,
        "lease_expiry_state": (LockState.REMINDER if dispute_hold else LockState.LOCKED).value,
        "lease_warning_days": rules.offline_warning_days,
        "time_zone": zone.key,
        "lock_window": {
            "start_hour": rules.lock_start_hour,
            "end_hour": rules.lock_end_hour,
            "weekdays": sorted(rules.lock_weekdays),
        },
    }
