"""The check-in time buffer: check-in times and app versions noted by the fast path
(``devices.checkin_cache``) in Redis, written to the devices every ``CHECKIN_FLUSH_SECONDS``."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import connection, transaction
from django.db.models import Q

from devices import checkin_cache
from devices.checkin_cache import FLUSH_BATCH, FLUSH_LOCK, SEEN, SEEN_FLUSHING
from devices.models import Device

log = logging.getLogger("devices.checkin_cache")

_FLUSH_SQL = """
UPDATE devices_device AS d
   SET last_checkin_at = v.at, app_version = v.app_version
  FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::text[]) AS v(id, at, digest, app_version)
 WHERE d.id = v.id
   AND d.credential_digest = v.digest
   AND (d.last_checkin_at IS NULL OR d.last_checkin_at < v.at)
"""


def checkins_flush() -> int:
    """Write the buffered check-in times and app versions to the devices; returns devices updated.

    Set-based (one UPDATE per 10,000 devices). Only a newer time is written, and only
    while the device still holds the credential that checked in. The buffer is moved
    aside before it is read and deleted only after the database commits, so a crash in
    between loses nothing: the next run writes the set aside first.
    """
    client = checkin_cache.redis_client()
    if client is None:
        return 0
    # Race: two beat ticks (or workers) flushing at once would write the same batch
    # twice and one could delete the other's; the lock lets one flush at a time.
    if not client.set(FLUSH_LOCK, "1", nx=True, ex=120):
        return 0
    try:
        if not client.exists(SEEN_FLUSHING):
            try:
                client.rename(SEEN, SEEN_FLUSHING)
            except Exception:  # nothing buffered (ResponseError: no such key)
                return 0
        entries = client.hgetall(SEEN_FLUSHING)
        rows = []
        for raw_id, raw_value in entries.items():
            try:
                at_ms, digest, app_version = (raw_value if isinstance(raw_value, str) else raw_value.decode()).split(
                    "|", 2
                )
                rows.append((int(raw_id), dt.datetime.fromtimestamp(int(at_ms) / 1000, tz=dt.UTC), digest, app_version))
            except ValueError:
                log.warning("check-in cache: skipping a malformed buffer entry for device %r", raw_id)
        updated = _write_checkins(rows)
        client.delete(SEEN_FLUSHING)
        return updated
    finally:
        client.delete(FLUSH_LOCK)


def _write_checkins(rows) -> int:
    updated = 0
    for start in range(0, len(rows), FLUSH_BATCH):
        batch = rows[start : start + FLUSH_BATCH]
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(_FLUSH_SQL, [list(column) for column in zip(*batch, strict=True)])
                    updated += cursor.rowcount
            else:  # development databases: the same rule, row by row
                for device_id, at, digest, app_version in batch:
                    updated += (
                        Device.objects.filter(pk=device_id, credential_digest=digest)
                        .filter(Q(last_checkin_at__isnull=True) | Q(last_checkin_at__lt=at))
                        .update(last_checkin_at=at, app_version=app_version)
                    )
    return updated
