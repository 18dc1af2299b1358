"""Pruning old command rows: a million phones must not keep every command they were ever sent.

A command row is the signed text a phone was sent (2-7 KB, the lock screen is most of it)
and the outbox row its delivery worked from. Once the phone has acknowledged a newer
command, an older one will never be sent, served or retried again (check-in answers the
newest, delivery closes a superseded one), so after ``COMMAND_RETENTION_DAYS`` it goes, with
its delivery attempts. Nothing is lost for auditors: every change of state was recorded in
the audit trail when it was issued (``device.state``, before and after, with the seq) and
every acknowledgement that changed the state (``device.ack``).
"""

from __future__ import annotations

import datetime as dt
import time

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from devices.models import DeliveryAttempt, DeviceCommand
from portal.audit import audit_record
from portal.types import AuditActor

#: Commands deleted per transaction: short row locks, and a bounded IN list on every backend.
PRUNE_BATCH = 5000
#: How long one run keeps taking batches (well under the task's soft time limit); the next run continues.
PRUNE_BUDGET_SECONDS = 600.0


def commands_prune(
    *,
    actor: AuditActor = None,
    now: dt.datetime | None = None,
    batch: int = PRUNE_BATCH,
    budget_seconds: float = PRUNE_BUDGET_SECONDS,
) -> int:
    """Delete the commands no phone will ever need again, and their delivery attempts; return how many.

    A command goes when it was issued more than ``COMMAND_RETENTION_DAYS`` ago **and** its
    device has acknowledged a newer one (``seq < Device.reported_seq``). So a device's newest
    command is never deleted (``reported_seq`` never passes ``command_seq``, the newest seq),
    nor one still on its way (not yet superseded by an acknowledged one), and a device whose
    phone never acknowledged anything keeps all of its commands. Set-based, in batches of
    ``batch`` rows per transaction until none is left or ``budget_seconds`` have passed (the
    daily run continues where this one stopped). One audit event per run
    (``device.commands_prune``) with the counts.
    """
    now = now or timezone.now()
    days = settings.COMMAND_RETENTION_DAYS
    older_than = now - dt.timedelta(days=days)
    prunable = DeviceCommand.objects.filter(issued_at__lt=older_than, seq__lt=F("device__reported_seq"))
    deadline = time.monotonic() + budget_seconds
    commands = attempts = 0
    complete = False
    while time.monotonic() < deadline:
        pruned = _prune_batch(prunable, batch)
        commands += pruned[0]
        attempts += pruned[1]
        if pruned[0] < batch:
            complete = True
            break
    audit_record(  # atomic on its own: each batch above is already committed
        actor=actor,
        action="device.commands_prune",
        after={
            "commands": commands,
            "delivery_attempts": attempts,
            "retention_days": days,
            "issued_before": older_than,
            "complete": complete,
        },
        object_repr="device commands",
    )
    return commands


def _prune_batch(prunable: QuerySet[DeviceCommand], batch: int) -> tuple[int, int]:
    """One transaction: lock up to ``batch`` prunable commands, delete their attempts, then them."""
    with transaction.atomic():
        # Race: a delivery worker pushing one of these commands right now (it holds the row,
        # portal.outbox claim) would insert a delivery attempt for a row deleted under it. The
        # rows are locked first, SKIP LOCKED passes over the one a worker holds (the next run
        # takes it), and a worker arriving later finds the row gone ("missing"). OF self: the
        # devices joined in for reported_seq are not locked, so check-ins never wait on a prune.
        # Once chosen, a row stays prunable: issued_at never changes and reported_seq only grows.
        ids = list(
            prunable.select_for_update(skip_locked=True, of=("self",))
            .order_by("pk")
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return 0, 0
        attempts = DeliveryAttempt.objects.filter(command_id__in=ids).delete()[0]
        # DELETE ... WHERE id IN (...): QuerySet.delete() would load every command (and its
        # body) into memory to cascade in Python; the cascade is the statement just above.
        commands = DeviceCommand.objects.filter(pk__in=ids)._raw_delete(DeviceCommand.objects.db)
    return commands, attempts
