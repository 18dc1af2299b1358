"""Commands that could not be issued: logged, audited at most once per device per hour, shown to the provider.

A phone whose command cannot be built (``devices.services.commands.CommandTooLarge``: a screen over
the size a phone accepts; any other ``ValueError`` of the command builder) is left out of its batch
by ``device_states_apply(refused=...)``: its contract keeps its state, the rest of the batch is
written. The sweep runs every few minutes and meets the same phone again each time, so the
refusal is audited (``device.command_refused``, with the reason) at most once an hour per phone;
the dead-letters page lists these events next to the commands no channel accepted.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.utils import timezone

from devices.models import Device
from portal.audit import AuditEntry, audit_record_many
from portal.models import AuditEvent
from portal.types import AuditActor

log = logging.getLogger(__name__)

#: The audit action of a command that could not be issued (``after``: the reason).
REFUSED_ACTION = "device.command_refused"
#: At most one such event per device in this time.
REFUSED_AUDIT_EVERY = dt.timedelta(hours=1)


def commands_refused_record(*, refused: dict[int, str], actor: AuditActor = None) -> int:
    """Log every refusal and audit those whose device has none in the last hour; returns the events written.

    Call it in the transaction that left the devices out (nothing to do, no query, when none was).
    """
    if not refused:
        return 0
    for device_id, reason in sorted(refused.items()):
        log.error("lock command refused for device %s (its contract keeps its state): %s", device_id, reason)
    # Race: two sweeps meeting the same phone at once would audit it twice; both hold the phone's
    # contract row lock (taken before the commands are built), so the second reads this check after
    # the first committed its event.
    recent = set(
        AuditEvent.objects.filter(
            action=REFUSED_ACTION,
            object_type=Device._meta.label,
            object_id__in=[str(pk) for pk in refused],
            created_at__gte=timezone.now() - REFUSED_AUDIT_EVERY,
        ).values_list("object_id", flat=True)
    )
    due = sorted(pk for pk in refused if str(pk) not in recent)
    if not due:
        return 0
    devices = Device.objects.select_related("provider").in_bulk(due)
    entries = [
        AuditEntry(action=REFUSED_ACTION, obj=devices[pk], after={"reason": refused[pk][:1000]})
        for pk in due
        if pk in devices
    ]
    audit_record_many(actor=actor, entries=entries)
    return len(entries)
