"""Reads behind the per-provider dashboard: a handful of set-based aggregate queries.

Every function takes one provider (the caller has already decided the actor may see
it) and answers with grouped counts computed by the database, never by looping over
devices, contracts or payments in Python: a provider with a million devices costs the
same number of queries as one with five. Days are the provider's local days.

* :func:`device_states` — devices by desired and reported lock state (1 query);
* :func:`lock_activity` — lock and unlock commands per day (1 query);
* :func:`unlock_latency` — cleared arrears → acknowledged unlock, median and p95
  (1 query; ``percentile_cont`` on PostgreSQL, a Python fallback on SQLite's small data);
* :func:`unmatched_ages` — unmatched payments by age bucket (1 query);
* :func:`case_sla` — support cases against their SLA (``support.selectors.case_sla_summary``, 1 query).

The dashboard sits above the apps it reads (support, payments, devices, portal) and imports
them at module level; nothing imports the dashboard.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from django.db import connection
from django.db.models import Count, IntegerField, Min, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, TruncDate, TruncSecond
from django.utils import timezone
from django.utils.functional import Promise

from devices.models import Device, DeviceCommand, LockState
from payments.models import Contract, Payment, PaymentStatus
from portal.models import Organisation
from support.selectors import case_sla_summary

WINDOW_DAYS = 30
# Section 2: what counts as a lock and as an unlock on the per-day chart. A reminder
# (the phone stays usable) is neither.
LOCK_STATES = (LockState.LOCKED,)
UNLOCK_STATES = (LockState.UNLOCKED, LockState.TEMP_UNLOCKED, LockState.RELEASED)
# Section 3: the states a contract leaves a lock for when its arrears are cleared
# (payments.locks.sweep.apply_decisions): the phone is usable again in each of them.
CLEARED_STATES = (LockState.UNLOCKED, LockState.REMINDER, LockState.RELEASED)
_NO_SEQ = 2**31 - 1  # larger than any command sequence number

#: One row of the latency figures: (local day, or ``None`` for the total; cleared; acknowledged; median; p95).
LatencyRow: TypeAlias = tuple[dt.date | None, int, int, float | None, float | None]

#: A label as the models give it: lazily translated.
Label: TypeAlias = str | Promise

STATE_LABELS: dict[str, Label] = dict(LockState.choices)
STATE_ORDER = [value for value, _label in LockState.choices]


@dataclass(frozen=True)
class Window:
    """The last ``days`` local days of a provider, today included: ``[start, end)`` in UTC."""

    zone_name: str
    days: tuple[dt.date, ...]
    start: dt.datetime
    end: dt.datetime
    now: dt.datetime

    @property
    def first(self) -> dt.date:
        return self.days[0]

    @property
    def last(self) -> dt.date:
        return self.days[-1]


def window_for(provider: Organisation, *, now: dt.datetime | None = None, days: int = WINDOW_DAYS) -> Window:
    now = now or timezone.now()
    zone = provider.zone
    today = now.astimezone(zone).date()
    first = today - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first, dt.time.min, tzinfo=zone).astimezone(dt.UTC)
    end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time.min, tzinfo=zone).astimezone(dt.UTC)
    return Window(
        zone_name=provider.time_zone or "UTC",
        days=tuple(first + dt.timedelta(days=i) for i in range(days)),
        start=start,
        end=end,
        now=now,
    )


# --- 1. devices by state ------------------------------------------------------------------------


@dataclass
class DeviceStates:
    total: int = 0
    out_of_sync: int = 0
    never_reported: int = 0
    # (state, label, count) in LockState order; every state listed, zero or not.
    desired: list[tuple[str, Label, int]] = field(default_factory=list)
    reported: list[tuple[str, Label, int]] = field(default_factory=list)
    # (desired label, reported label, count), largest first: the cross-tab.
    pairs: list[tuple[Label, Label, int]] = field(default_factory=list)


def device_states(provider: Organisation) -> DeviceStates:
    """Devices by desired × reported state, in one grouped query (at most 5 × 6 rows)."""
    rows = list(
        Device.objects.filter(provider=provider)
        .order_by()
        .values_list("desired_state", "reported_state")
        .annotate(n=Count("id"))
    )
    desired: dict[str, int] = {}
    reported: dict[str, int] = {}
    result = DeviceStates()
    for want, got, n in rows:
        result.total += n
        desired[want] = desired.get(want, 0) + n
        reported[got] = reported.get(got, 0) + n
        if got != want:
            result.out_of_sync += n
        if not got:
            result.never_reported += n
    result.desired = [(s, STATE_LABELS[s], desired.get(s, 0)) for s in STATE_ORDER]
    result.reported = [(s, STATE_LABELS[s], reported.get(s, 0)) for s in STATE_ORDER]
    if reported.get(""):
        result.reported.append(("", "Not reported yet", reported[""]))
    result.pairs = sorted(
        ((STATE_LABELS.get(w, w), STATE_LABELS.get(g, "Not reported yet"), n) for w, g, n in rows),
        key=lambda row: (-row[2], row[0], row[1]),
    )
    return result


# --- 2. locks and unlocks per day ---------------------------------------------------------------


@dataclass(frozen=True)
class DayActivity:
    day: dt.date
    locks: int
    unlocks: int


def lock_activity(provider: Organisation, window: Window) -> list[DayActivity]:
    """Lock and unlock commands issued per local day of the window (one grouped query), every day listed."""
    rows = (
        DeviceCommand.objects.filter(
            device__provider=provider,
            issued_at__gte=window.start,
            issued_at__lt=window.end,
            state__in=(*LOCK_STATES, *UNLOCK_STATES),
        )
        .annotate(day=TruncDate("issued_at", tzinfo=provider.zone))
        .order_by()
        .values("day")
        .annotate(
            locks=Count("id", filter=Q(state__in=LOCK_STATES)),
            unlocks=Count("id", filter=Q(state__in=UNLOCK_STATES)),
        )
        .values_list("day", "locks", "unlocks")
    )
    by_day = {day: (locks, unlocks) for day, locks, unlocks in rows}
    return [DayActivity(day, *by_day.get(day, (0, 0))) for day in window.days]


# --- 3. cleared arrears → acknowledged unlock ----------------------------------------------------


@dataclass(frozen=True)
class DayLatency:
    day: dt.date
    cleared: int
    acknowledged: int
    median: float | None  # seconds
    p95: float | None


@dataclass
class UnlockLatency:
    cleared: int = 0
    acknowledged: int = 0
    median: float | None = None  # seconds
    p95: float | None = None
    daily: list[DayLatency] = field(default_factory=list)

    @property
    def pending(self) -> int:
        """Cleared in the window but no unlock acknowledged by the phone yet."""
        return self.cleared - self.acknowledged


def unlock_acknowledgements(
    provider: Organisation, window: Window
) -> QuerySet[Contract, tuple[dt.datetime | None, dt.datetime | None]]:
    """Contracts whose arrears were cleared in the window, with ``ack_at``: when the phone confirmed the unlock.

    The join, per contract, on its device's commands (the (device, seq) index):

    * the *unlock* is the device's first command in a usable state (unlocked, reminder,
      released) issued at or after ``arrears_cleared_at`` truncated to the second: the
      command is written in the clearing's transaction, a moment later, but its
      ``issued_at`` is whole seconds, so it can read a fraction of a second *earlier*
      than the clearing (and the lock it lifts can fall in that same second: the
      sequence number, not the clock, orders them);
    * the episode ends at the device's next lock command after that unlock, if any;
    * ``ack_at`` is the earliest acknowledgement of a usable-state command in the episode:
      a phone that was offline acknowledges only the newest command it receives, so the
      unlock itself may never be acknowledged although the phone is unlocked.

    ``ack_at`` is ``None`` while nothing is acknowledged (or no unlock was issued).
    Three correlated subqueries per contract, all in one statement. This is the portable
    form (SQLite); PostgreSQL runs the same join as LATERAL joins, in
    :func:`_latency_rows_postgresql` (a test holds the two to the same answers).
    """
    commands = DeviceCommand.objects.filter(device_id=OuterRef("device_id"))
    unlock_seq = (
        commands.filter(state__in=CLEARED_STATES, issued_at__gte=OuterRef("cleared_from"))
        .order_by("seq")
        .values("seq")[:1]
    )
    relock_seq = (
        commands.filter(state=LockState.LOCKED, seq__gt=OuterRef("unlock_seq")).order_by("seq").values("seq")[:1]
    )
    ack = (
        commands.filter(
            state__in=CLEARED_STATES,
            acknowledged_at__isnull=False,
            seq__gte=OuterRef("unlock_seq"),
            seq__lt=OuterRef("relock_seq"),
        )
        .order_by("acknowledged_at")
        .values("acknowledged_at")[:1]
    )
    return (
        Contract.objects.filter(
            provider=provider, arrears_cleared_at__gte=window.start, arrears_cleared_at__lt=window.end
        )
        .annotate(cleared_from=TruncSecond("arrears_cleared_at", tzinfo=dt.UTC))
        .annotate(unlock_seq=Subquery(unlock_seq))
        .annotate(relock_seq=Coalesce(Subquery(relock_seq), Value(_NO_SEQ), output_field=IntegerField()))
        .annotate(ack_at=Subquery(ack))
        .order_by()
        .values_list("arrears_cleared_at", "ack_at")
    )


def percentile_cont(sorted_values: list[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the closest ranks."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    if low == high:
        return float(sorted_values[low])
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def unlock_latency(provider: Organisation, window: Window) -> UnlockLatency:
    """Median and 95th percentile of cleared-arrears → acknowledged-unlock delays, overall and per local day."""
    if connection.vendor == "postgresql":
        rows = _latency_rows_postgresql(provider, window)
    else:
        rows = _latency_rows_python(unlock_acknowledgements(provider, window), provider)
    result = UnlockLatency()
    by_day: dict[dt.date, DayLatency] = {}
    for day, cleared, acknowledged, median, p95 in rows:
        if day is None:  # the total
            result.cleared, result.acknowledged, result.median, result.p95 = cleared, acknowledged, median, p95
        else:
            by_day[day] = DayLatency(day, cleared, acknowledged, median, p95)
    result.daily = [by_day.get(day) or DayLatency(day, 0, 0, None, None) for day in window.days]
    return result


def _latency_rows_postgresql(provider: Organisation, window: Window) -> list[LatencyRow]:
    """One statement: the join of :func:`unlock_acknowledgements` as LATERAL joins, then per local day and
    in total (ROLLUP) the counts and ``percentile_cont`` of the delays in seconds.

    The same join as the ORM version, written with LATERAL so each contract's unlock is looked
    up once (the ORM repeats the subquery where it is referenced): about 2.5 times faster,
    1 s for 83,000 clearings in 30 days on a provider with a million devices.
    """
    quote = connection.ops.quote_name
    contracts, commands = quote(Contract._meta.db_table), quote(DeviceCommand._meta.db_table)
    cleared_states = list(map(str, CLEARED_STATES))
    sql = f"""
        WITH pairs AS (
            SELECT c.arrears_cleared_at AS cleared_at, a.ack_at
            FROM {contracts} AS c
            LEFT JOIN LATERAL (
                SELECT dc.seq FROM {commands} AS dc
                WHERE dc.device_id = c.device_id AND dc.state = ANY(%(cleared)s)
                  AND dc.issued_at >= date_trunc('second', c.arrears_cleared_at)
                ORDER BY dc.seq LIMIT 1
            ) AS unlock ON true
            LEFT JOIN LATERAL (
                SELECT dc.seq FROM {commands} AS dc
                WHERE dc.device_id = c.device_id AND dc.state = %(locked)s AND dc.seq > unlock.seq
                ORDER BY dc.seq LIMIT 1
            ) AS relock ON true
            LEFT JOIN LATERAL (
                SELECT min(dc.acknowledged_at) AS ack_at FROM {commands} AS dc
                WHERE dc.device_id = c.device_id AND dc.state = ANY(%(cleared)s)
                  AND dc.seq >= unlock.seq AND dc.seq < coalesce(relock.seq, %(no_seq)s)
            ) AS a ON true
            WHERE c.provider_id = %(provider)s AND c.arrears_cleared_at >= %(start)s AND c.arrears_cleared_at < %(end)s
        )
        SELECT t.day, count(*), count(t.ack_at),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY t.delay),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY t.delay)
        FROM (
            SELECT (p.cleared_at AT TIME ZONE %(zone)s)::date AS day, p.ack_at,
                   CASE WHEN p.ack_at IS NOT NULL  -- greatest() alone would turn a missing ack into 0
                        THEN greatest(extract(epoch FROM p.ack_at - p.cleared_at), 0)::float8
                   END AS delay
            FROM pairs AS p
        ) AS t
        GROUP BY ROLLUP (t.day)
    """  # noqa: S608 - table names from the models; every value is a parameter
    params: dict[str, Any] = {
        "cleared": cleared_states,
        "locked": str(LockState.LOCKED),
        "no_seq": _NO_SEQ,
        "provider": provider.pk,
        "start": window.start,
        "end": window.end,
        "zone": window.zone_name,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows: list[LatencyRow] = cursor.fetchall()
    if not any(row[0] is None for row in rows):  # defensive: ROLLUP gives the total row even for no rows
        rows.append((None, 0, 0, None, None))
    return rows


def _latency_rows_python(
    pairs: Iterable[tuple[dt.datetime | None, dt.datetime | None]], provider: Organisation
) -> list[LatencyRow]:
    """The same answer from the (few) pairs on SQLite, the development database."""
    zone = provider.zone
    delays: dict[dt.date | None, list[float]] = {None: []}
    cleared: dict[dt.date | None, int] = {None: 0}
    for cleared_at, ack_at in pairs:
        if cleared_at is None:  # never: the query's range excludes it (the column is nullable)
            continue
        local_day = cleared_at.astimezone(zone).date()
        cleared[None] += 1
        cleared[local_day] = cleared.get(local_day, 0) + 1
        delays.setdefault(local_day, [])
        if ack_at is not None:
            delay = max((ack_at - cleared_at).total_seconds(), 0.0)
            delays[None].append(delay)
            delays[local_day].append(delay)
    rows: list[LatencyRow] = []
    for day, values in delays.items():
        values.sort()
        rows.append((day, cleared[day], len(values), percentile_cont(values, 0.5), percentile_cont(values, 0.95)))
    return rows


# --- 4. unmatched payments by age ---------------------------------------------------------------

AGE_BUCKETS = (
    ("lt1", "< 1 day"),
    ("d1_3", "1–3 days"),
    ("d3_7", "3–7 days"),
    ("gt7", "> 7 days"),
)


@dataclass
class UnmatchedAges:
    total: int
    buckets: list[tuple[str, str, int]]  # (key, label, count) in AGE_BUCKETS order
    oldest: dt.datetime | None


def unmatched_ages(provider: Organisation, *, now: dt.datetime | None = None) -> UnmatchedAges:
    """Unmatched payments by age since received (one query on the provider/status/received index).

    A bucket includes its lower bound: exactly 1 day old is "1–3 days", exactly 7 days "> 7 days".
    """
    now = now or timezone.now()
    day1, day3, day7 = (now - dt.timedelta(days=n) for n in (1, 3, 7))
    figures = (
        Payment.objects.filter(provider=provider, status=PaymentStatus.UNMATCHED)
        .order_by()
        .aggregate(
            total=Count("id"),
            lt1=Count("id", filter=Q(received_at__gt=day1)),
            d1_3=Count("id", filter=Q(received_at__gt=day3, received_at__lte=day1)),
            d3_7=Count("id", filter=Q(received_at__gt=day7, received_at__lte=day3)),
            gt7=Count("id", filter=Q(received_at__lte=day7)),
            oldest=Min("received_at"),
        )
    )
    return UnmatchedAges(
        total=figures["total"],
        buckets=[(key, label, figures[key]) for key, label in AGE_BUCKETS],
        oldest=figures["oldest"],
    )


# --- 5. support cases against their SLA --------------------------------------------------------


def case_sla(provider: Organisation) -> dict[str, int]:
    """The provider's support cases against their SLA: ``support.selectors.case_sla_summary``."""
    return case_sla_summary(provider)


def case_sla_rows(summary: Mapping[str, int]) -> list[tuple[str, int]]:
    """The summary as (label, value) rows for a table: ``due_within_an_hour`` reads "Due within an hour"."""
    return [(key.replace("_", " ").capitalize(), value) for key, value in summary.items()]


# --- the whole page -----------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``4 min 12 s``, ``2 h 05 min``, ``3 d 4 h``; an em dash when unknown."""
    if seconds is None:
        return "—"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def daily_series(activity: list[DayActivity], latency: UnlockLatency) -> list[dict[str, Any]]:
    """The per-day figures of sections 2 and 3 side by side (the CSV download)."""
    return [
        {
            "day": a.day,
            "locks": a.locks,
            "unlocks": a.unlocks,
            "arrears_cleared": d.cleared,
            "unlocks_acknowledged": d.acknowledged,
            "median_seconds": d.median,
            "p95_seconds": d.p95,
        }
        for a, d in zip(activity, latency.daily, strict=True)
    ]
