"""Times on the wire: ISO 8601 in UTC (``2026-11-23T09:00:04Z``)."""

from __future__ import annotations

import datetime as dt
import zoneinfo


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


def local_time(value: dt.datetime, zone: dt.tzinfo) -> str:
    """For a lease warning: the moment in the owner's zone, with its UTC offset said out loud."""
    local = value.astimezone(zone)
    offset = local.strftime("%z") or "+0000"
    return local.strftime("%Y-%m-%d %H:%M") + f" (UTC{offset[:3]}:{offset[3:]})"


def zone_named(name: str | None) -> dt.tzinfo:
    """An IANA zone by name; UTC for a name this phone does not know (the moment stays right)."""
    try:
        return zoneinfo.ZoneInfo(name) if name else dt.UTC
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC
