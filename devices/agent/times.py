"""Times on the wire: ISO 8601 in UTC (``2026-11-23T09:00:04Z``)."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_time(value: object) -> dt.datetime | None:
    """An ISO 8601 time as an aware UTC datetime, or None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        # The protocol speaks UTC; a naive time can only mean UTC.
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_time(value: dt.datetime) -> str:
    """For the screen: minutes are enough, and the zone is said out loud."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
