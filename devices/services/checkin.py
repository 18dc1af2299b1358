"""Check-in and acknowledgement: what a phone reports it applied, and the answer it gets."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from devices.checkin_flush import checkins_flush
from devices.models import (
    Device,
    DeviceCommand,
    LockState,
)
from devices.protocol import MAX_SEQ, STATES
from devices.services.commands import device_current_envelope, latest_command, reissue_current_state
from portal.audit import audit_record
from portal.webhooks import webhook_event_emit

log = logging.getLogger(__name__)

#: The most a check-in may move a device's sequence forward, and how often (a server restored
#: from a backup has lost at most the commands issued since; see device_checkin).
MAX_SEQ_JUMP = 10_000
SEQ_JUMP_EVERY = dt.timedelta(days=1)


def _device_report(*, device_id: int, seq: int, state: str, via: str, now: dt.datetime) -> bool:
    """Move the reported state to what the phone applied at ``seq``, only forward; True if it moved."""
    # Race: a phone's acks and check-ins arrive out of order or at once. The row lock
    # orders them (and gives a true "before" for the audit); the conditional UPDATE
    # lets only a newer seq move the reported state, so a late older report never
    # overwrites a newer one.
    device = Device.objects.select_for_update().get(pk=device_id)
    if seq <= device.reported_seq or seq > device.command_seq:
        return False
    moved = Device.objects.filter(pk=device_id, reported_seq__lt=seq).update(
        reported_state=state, reported_seq=seq, reported_at=now
    )
    if not moved:
        return False
    DeviceCommand.objects.filter(device_id=device_id, seq=seq, acknowledged_at__isnull=True).update(acknowledged_at=now)
    if device.reported_state != state:
        # Only real changes are audited: a phone re-acknowledging the same state
        # every few minutes would flood the trail.
        audit_record(
            actor=f"device {device.uid}",
            action="device.ack",
            obj=device,
            before={"state": device.reported_state, "seq": device.reported_seq},
            after={"state": state, "seq": seq, "via": via},
        )
        _emit_lock_webhook(device=device, state=state, seq=seq, now=now)
    return True


#: Confirmed states in which the phone is usable again after a lock.
_UNLOCKED_STATES = {LockState.UNLOCKED, LockState.TEMP_UNLOCKED, LockState.RELEASED}


def _emit_lock_webhook(*, device: Device, state: str, seq: int, now: dt.datetime) -> None:
    """Tell the provider's systems that the phone *confirmed* a lock, or an unlock after a lock.

    Keyed on the reported (acknowledged) state, not the desired one: what a provider acts
    on is what the phone shows. ``device`` holds the state before this report. A change
    between usable states (reminder to unlocked, a first report after enrolment) is no
    unlock and sends nothing.
    """
    if state == LockState.LOCKED:
        event = "device.locked"
    elif state in _UNLOCKED_STATES and device.reported_state == LockState.LOCKED:
        event = "device.unlocked"
    else:
        return
    webhook_event_emit(
        provider=device.provider_id,
        event=event,
        payload={
            "imei": device.imei,
            "device": str(device.uid),
            "state": state,
            "previous_state": device.reported_state or None,
            "seq": seq,
            "at": now,
        },
    )


def device_checkin(*, device: Device, state: str, last_seq: int, app_version: str = "") -> dict[str, Any]:
    """A phone checking in: note it, record what it applied, and answer its current signed envelope.

    ``last_seq`` above anything the server issued means the server lost commands it
    had sent (a database restored from a backup): the phone would ignore every new
    command with a lower seq, so the sequence jumps past it and the current state is
    issued again. The jump stops short of ``MAX_SEQ``: the command it issues must be one the
    phone can still acknowledge and report (a phone reporting ``MAX_SEQ`` itself is answered
    its current command and needs a staff re-key; no server ever issued seq ``MAX_SEQ``
    without the phone applying it).
    """
    if state not in STATES:
        raise ValidationError({"state": [f"One of {', '.join(STATES)}."]})
    now = timezone.now()
    app_version = (app_version or "")[: Device._meta.get_field("app_version").max_length]
    renew = device.lease_renew_at is not None and device.lease_renew_at <= now
    if renew:
        # Check-in always renews the lease: the same state again, with a lease counted from now.
        with transaction.atomic():
            locked = Device.objects.select_for_update().get(pk=device.pk)
            # Race: two check-ins at once would both renew; the locked re-read lets one.
            if locked.lease_renew_at is not None and locked.lease_renew_at <= now:
                reissue_current_state(locked, latest=latest_command(device.pk), actor=f"device {device.uid}")
    if last_seq <= device.reported_seq and last_seq <= device.command_seq:
        # The usual check-in: the phone reports nothing newer than the server knows. Both
        # counters only ever grow, so a ``device`` read moments ago can only understate them
        # and skipping the locked path is safe. Two queries, no transaction: this is the
        # call every phone makes every few minutes.
        Device.objects.filter(pk=device.pk).update(last_checkin_at=now, app_version=app_version)
        return device_current_envelope(device)
    with transaction.atomic():
        Device.objects.filter(pk=device.pk).update(last_checkin_at=now, app_version=app_version)
        # Race: two check-ins both seeing the old command_seq would both jump; the
        # condition lets only the first move it.
        # Abuse: whoever holds a phone's credential could report ever higher seqs to exhaust the
        # sequence (then no lock could be issued) or to mint fresh commands; a restored backup
        # loses far fewer than MAX_SEQ_JUMP commands and happens far less than daily.
        jumped = last_seq < MAX_SEQ - MAX_SEQ_JUMP and Device.objects.filter(
            Q(seq_jumped_at__isnull=True) | Q(seq_jumped_at__lte=now - SEQ_JUMP_EVERY),
            pk=device.pk,
            command_seq__lt=last_seq,
            command_seq__gte=last_seq - MAX_SEQ_JUMP,
        ).update(command_seq=last_seq, seq_jumped_at=now)
        if jumped:
            log.warning(
                "Device %s reported seq %s beyond the last issued; issuing its state again", device.uid, last_seq
            )
            locked = Device.objects.select_for_update().get(pk=device.pk)
            reissue_current_state(locked, latest=latest_command(device.pk), actor=f"device {device.uid}")
        _device_report(device_id=device.pk, seq=last_seq, state=state, via="checkin", now=now)
        return device_current_envelope(device)


def device_checkins_flush() -> int:
    """Write the check-in times buffered by the cached check-in path to the devices (set-based).

    Runs every ``CHECKIN_FLUSH_SECONDS`` from beat; returns the number of devices updated.
    Without Redis there is no buffer and nothing to do.
    """
    return checkins_flush()


def device_ack(*, device: Device, seq: int, state: str) -> bool:
    """A phone acknowledging command ``seq`` in ``state``; True if the reported state moved forward.

    An older or repeated acknowledgement is accepted and ignored; a seq that was never
    issued to this device is refused.
    """
    if state not in STATES:
        raise ValidationError({"state": [f"One of {', '.join(STATES)}."]})
    if not DeviceCommand.objects.filter(device_id=device.pk, seq=seq).exists():
        raise ValidationError({"seq": ["No command with this sequence number was issued to this device."]})
    with transaction.atomic():
        return _device_report(device_id=device.pk, seq=seq, state=state, via="ack", now=timezone.now())
