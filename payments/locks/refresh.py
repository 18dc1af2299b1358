"""Refreshes: what a screen shows or the offline lease changed, so the phones whose state stays get it again.

A reminder or lock screen names the provider's wording, payment channels, hotlines and
contacts, its service centres and the platform's fallback contacts. When an admin changes
one of them, every phone of that provider (every provider's, for the platform's fallback)
whose contract is in ``reminder`` or ``locked`` gets a refreshed command (kind ``screen``): the
same state and reason, the same lease inputs (taken from the command in force), the next seq,
and a new screen built by ``payments.locks.screen`` (the only screen builder). When the admin
changes the offline policy or the lock hours, every phone in ``unlocked``, ``reminder`` or
``temp_unlocked`` gets its command again with the lease inputs worked out from the new policy
(kind ``lease``): the same state, reason, screen and end. The lock decision is not taken
again: whether a phone is locked stays the sweep's and the payments' business.

Shape of the work, so that it never competes with an unlock:

* the request (``lock_screens_refresh``, ``lock_leases_refresh``, in the caller's transaction)
  writes one audit event (``lock_screen.refresh`` / ``lock_lease.refresh``: who, what changed,
  how many phones), opens (or starts again from the first contract) one ``LockRefresh`` row per
  provider and kind, and, on commit, queues one ``payments.refresh_lock_screens`` task per row
  by its registered name.
* each run of that task handles one batch (``REFRESH_BATCH`` contracts, a fixed number of
  queries), moves the row's cursor (the last contract id) in the same transaction, and queues
  itself for the next one on the usual "celery" queue: unlocks travel on their own queue and
  never wait behind it. A run lost with the broker (the re-queue failed, a worker died) is
  queued again by the periodic pickup (``lock_refreshes_resume``) from the stored cursor.
* portal cannot import payments: the Django admin queues
  ``payments.refresh_lock_screens_after_change`` with the id of its ``organisation.*`` audit
  event, and ``lock_screens_refresh_after_change`` reads from that event what changed.

Idempotent and retry-safe: a device whose command in force already carries the new screen
(or lease inputs) is skipped, so a retried or duplicated batch issues nothing twice, and a
retried after-change task finds its refresh already audited. A device whose command cannot be
issued (``CommandTooLarge``) is left out and recorded (``payments.locks.refusals``); the rest
of its batch is written.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F, Prefetch, QuerySet
from django.utils import timezone

from devices.models import DeviceCommand, LockState
from devices.services.commands import StateChange, device_states_apply, wire_time
from payments.locks.decision import Decision
from payments.locks.refusals import commands_refused_record
from payments.locks.screen import ProviderScreenData, screen_build
from payments.locks.selectors import contract_lease_terms, decide_contract, policy_rules
from payments.models import Contract, Installment, LockRefresh, RefreshKind, Rules
from portal.audit import audit_record
from portal.models import AuditEvent, Organisation, OrganisationKind
from portal.queue import enqueue_each
from portal.types import AuditActor

#: Contracts per task run: one transaction, a fixed number of queries, a few seconds at most.
REFRESH_BATCH = 500
#: The states whose screen the owner is looking at (an unlocked phone shows none).
REFRESH_STATES = (LockState.REMINDER, LockState.LOCKED)
#: The states whose command carries a lease (a locked or released phone has nothing to fall to).
LEASE_STATES = (LockState.UNLOCKED, LockState.REMINDER, LockState.TEMP_UNLOCKED)
STATES_BY_KIND: dict[str, tuple[LockState, ...]] = {RefreshKind.SCREEN: REFRESH_STATES, RefreshKind.LEASE: LEASE_STATES}
#: The batch task (``payments.tasks``, one ``LockRefresh`` row's id), queued by name: services never import tasks.
REFRESH_TASK = "payments.refresh_lock_screens"
#: The audit actions of one request.
REFRESH_ACTION = "lock_screen.refresh"
LEASE_REFRESH_ACTION = "lock_lease.refresh"
#: The actors of the refreshed commands' ``device.state`` events (the request's event names the person).
REFRESH_ACTOR = "lock-screen refresh"
ACTORS_BY_KIND: dict[str, str] = {RefreshKind.SCREEN: REFRESH_ACTOR, RefreshKind.LEASE: "offline-lease refresh"}
#: An open refresh no batch moved for this long lost its task: the periodic pickup queues it again.
RESUME_AFTER = dt.timedelta(minutes=5)
#: Finished refreshes are kept this long (what ran, and when), then deleted by the pickup.
DONE_KEPT = dt.timedelta(days=30)

#: What of an organisation a screen shows, by kind (``screen.py``: title, contacts, fallback,
#: service centres, the emergency numbers of the country, the default language).
SCREEN_FIELDS: dict[str, tuple[str, ...]] = {
    OrganisationKind.PROVIDER: ("name", "country", "languages", "hotline_numbers", "support_email", "website"),
    OrganisationKind.SERVICE_CENTER: ("name", "hotline_numbers", "website", "served_providers"),
    OrganisationKind.PLATFORM: ("name", "hotline_numbers", "support_email", "website"),
}
ORGANISATION_ACTIONS = ("organisation.create", "organisation.update", "organisation.delete")
#: The lease inputs a command carries (``devices.services.commands.StateChange``), as they travel.
LEASE_MEMBERS = (
    "paid_until",
    "offline_lock_days",
    "lease_expiry_state",
    "lease_warning_days",
    "time_zone",
    "lock_window",
)


@dataclass(frozen=True)
class RefreshBatch:
    """What one batch did: commands issued, devices already up to date, where to go on, devices refused."""

    refreshed: int
    unchanged: int
    next_after: int | None
    refused: int = 0
    #: The last contract id this batch looked at (None: none left).
    last: int | None = None


def refreshable_contracts(provider_ids: list[int], kind: str = RefreshKind.SCREEN) -> QuerySet[Contract]:
    """Contracts of these providers whose phone shows a reminder or a lock (``lease``: carries a lease) right now.

    The device must be meant to be in the contract's state (its newest command says so); one
    whose command is still on the way from another change is left to that change.
    """
    return Contract.objects.filter(
        provider_id__in=provider_ids, lock_state__in=STATES_BY_KIND[kind], device__desired_state=F("lock_state")
    )


def lock_screens_refresh(
    *,
    provider_ids: list[int] | None,
    changed: list[str],
    actor: AuditActor,
    ip_address: str | None = None,
    source_event: int | None = None,
) -> int:
    """Refresh the screens of these providers' reminded and locked phones (``None``: every provider's).

    Call it in the transaction of the change: one ``lock_screen.refresh`` event names who,
    what changed and how many phones; the batches are queued once it commits. Returns the
    number of phones.
    """
    with transaction.atomic():
        if provider_ids is None:
            providers = Organisation.objects.filter(kind=OrganisationKind.PROVIDER)
            provider_ids = list(providers.order_by("pk").values_list("pk", flat=True))
        return _refresh_request(
            RefreshKind.SCREEN,
            sorted(set(provider_ids)),
            changed=changed,
            actor=actor,
            ip_address=ip_address,
            source_event=source_event,
        )


def lock_leases_refresh(
    *, provider: Organisation, changed: list[str], actor: AuditActor, ip_address: str | None = None
) -> int:
    """Re-issue the commands of a provider's phones that carry a lease, with the lease inputs of its new policy.

    Call it in the transaction of the policy change: one ``lock_lease.refresh`` event names who,
    what changed and how many phones; the batches are queued once it commits. Returns the
    number of phones.
    """
    with transaction.atomic():
        return _refresh_request(RefreshKind.LEASE, [provider.pk], changed=changed, actor=actor, ip_address=ip_address)


def _refresh_request(
    kind: str,
    provider_ids: list[int],
    *,
    changed: list[str],
    actor: AuditActor,
    ip_address: str | None,
    source_event: int | None = None,
) -> int:
    """Audit one request, open its refreshes and queue them on commit; the number of phones."""
    devices = refreshable_contracts(provider_ids, kind).count()
    after: dict[str, Any] = {"changed": sorted(changed), "providers": provider_ids, "devices": devices}
    if source_event is not None:
        after["source_event"] = source_event
    only = Organisation.objects.filter(pk=provider_ids[0]).first() if len(provider_ids) == 1 else None
    audit_record(
        actor=actor,
        action=REFRESH_ACTION if kind == RefreshKind.SCREEN else LEASE_REFRESH_ACTION,
        organisation=only,
        after=after,
        ip_address=ip_address,
        object_repr=f"{'lock screens' if kind == RefreshKind.SCREEN else 'offline leases'} of {devices} phone(s)",
    )
    if devices:
        ids = _refreshes_open(kind, provider_ids)
        transaction.on_commit(lambda: enqueue_each(REFRESH_TASK, ids, what="lock refresh"))
    return devices


def _refreshes_open(kind: str, provider_ids: list[int]) -> list[int]:
    """Each provider's open refresh of ``kind``, created or started again from the first contract; their ids."""
    now = timezone.now()
    rows = [LockRefresh(provider_id=pk, kind=kind, created_at=now, updated_at=now) for pk in provider_ids]
    LockRefresh.objects.bulk_create(rows, ignore_conflicts=True)  # one open row per provider and kind
    # Race: a batch of a refresh already open, running while this change commits, would leave the phones
    # before its cursor with the old content. Starting the row again from the first contract (this
    # UPDATE waits for the batch in flight, which holds the row) brings every phone the new one.
    open_rows = LockRefresh.objects.filter(provider_id__in=provider_ids, kind=kind, done_at__isnull=True)
    open_rows.update(cursor=0, updated_at=now)
    return list(open_rows.order_by("pk").values_list("pk", flat=True))


def _screen_changes(event: AuditEvent) -> tuple[list[str], list[int] | None] | None:
    """(what changed, the providers concerned or None for all) of an ``organisation.*`` event.

    None when no screen shows what changed.
    """
    before, after = event.before or {}, event.after or {}
    kind = after.get("kind") or before.get("kind")
    fields = SCREEN_FIELDS.get(kind or "", ())
    changed = [name for name in fields if before.get(name) != after.get(name)]
    if not changed:
        return None
    if kind == OrganisationKind.PLATFORM:
        return changed, None
    if kind == OrganisationKind.SERVICE_CENTER:
        # A centre dropped from a provider's list must disappear from its screens too.
        served = set(before.get("served_providers") or []) | set(after.get("served_providers") or [])
        return (changed, sorted(served)) if served else None
    return changed, [int(event.object_id)]


def lock_screens_refresh_after_change(*, event_id: int) -> int | None:
    """Refresh the screens an organisation change shows on (its ``organisation.*`` audit event, by id).

    For the Django admin, which queues this by task name (portal imports no payments). The
    actor of the refresh is the event's. Returns the number of phones, or None when the change
    shows on no screen or was handled already.
    """
    with transaction.atomic():
        # Race: the same event's task run twice at once (a redelivered message) would audit two
        # refreshes; the event's row lock serialises them and the second finds the first's record.
        event = AuditEvent.objects.select_for_update().filter(pk=event_id, action__in=ORGANISATION_ACTIONS).first()
        if event is None or AuditEvent.objects.filter(action=REFRESH_ACTION, after__source_event=event_id).exists():
            return None
        what = _screen_changes(event)
        if what is None:
            return None
        changed, provider_ids = what
        actor: AuditActor = event.actor if event.actor is not None else event.actor_label
        return lock_screens_refresh(
            provider_ids=provider_ids, changed=changed, actor=actor, ip_address=event.ip_address, source_event=event_id
        )


def _payloads_in_force(device_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each device's newest command, parsed (one query)."""
    rows = DeviceCommand.objects.filter(device_id__in=device_ids, seq=F("device__command_seq"))
    return {command.device_id: command.payload for command in rows.only("device_id", "body")}


def _wire_time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _refreshed(
    contract: Contract, payload: dict[str, Any], data: ProviderScreenData, facts: Decision
) -> StateChange | None:
    """The refreshed command's change, or None when the command in force shows this screen already."""
    shown = payload.get("screen") or {}
    decision = Decision(
        contract.lock_state,
        payload.get("reason") or contract.lock_reason,
        overdue_since=facts.overdue_since,
        amount_overdue=facts.amount_overdue,
    )
    screen = screen_build(data=data, contract=contract, decision=decision, language=shown.get("language"))
    allowed = data.allowed_numbers()
    if payload.get("state") == contract.lock_state and shown == screen and payload.get("allowed_numbers") == allowed:
        return None
    return StateChange(
        device_id=contract.device_id,
        state=contract.lock_state,
        reason=decision.reason,
        screen=screen,
        allowed_numbers=allowed,
        # The lease as the command in force has it: a refresh changes what the screen says, not the lease policy.
        paid_until=_wire_time(payload.get("paid_until")),
        offline_lock_days=payload.get("offline_lock_days"),
        lease_expiry_state=payload.get("lease_expiry_state") or "locked",
        lease_warning_days=int(payload.get("lease_warning_days") or 0),
        time_zone=payload.get("time_zone") or contract.provider.time_zone or "UTC",
        lock_window=payload.get("lock_window"),
    )


def _lease_refreshed(contract: Contract, payload: dict[str, Any], rules: Rules, now: dt.datetime) -> StateChange | None:
    """The command in force again with the new policy's lease inputs, or None when it carries them already.

    A temporary unlock whose end has passed is left to the sweep (it decides what comes next).
    """
    terms = contract_lease_terms(contract, rules=rules, now=now)
    paid_until = terms["paid_until"]
    wanted = {
        **terms,
        "paid_until": wire_time(paid_until) if paid_until else None,
        # A command carries the state its lease ends in only when it has a lease.
        "lease_expiry_state": terms["lease_expiry_state"] if terms["offline_lock_days"] else None,
    }
    if payload.get("state") == contract.lock_state and all(payload.get(k) == wanted[k] for k in LEASE_MEMBERS):
        return None
    expires_at = _wire_time(payload.get("expires_at")) if contract.lock_state == LockState.TEMP_UNLOCKED else None
    if contract.lock_state == LockState.TEMP_UNLOCKED and (expires_at is None or expires_at <= now):
        return None
    return StateChange(
        device_id=contract.device_id,
        state=contract.lock_state,
        reason=payload.get("reason") or contract.lock_reason,
        screen=payload.get("screen") or {},
        allowed_numbers=payload.get("allowed_numbers") or [],
        expires_at=expires_at,
        **terms,
    )


def lock_screens_refresh_batch(
    *, provider_id: int, after_id: int = 0, batch_size: int = REFRESH_BATCH, now: dt.datetime | None = None
) -> RefreshBatch:
    """Refresh the next ``batch_size`` reminded or locked contracts of a provider after contract ``after_id``.

    One transaction and a fixed number of queries whatever the batch size. ``next_after`` is
    the cursor for the next run, None when this was the last batch.
    """
    return _refresh_batch(RefreshKind.SCREEN, provider_id, after_id=after_id, batch_size=batch_size, now=now)


def lock_leases_refresh_batch(
    *, provider_id: int, after_id: int = 0, batch_size: int = REFRESH_BATCH, now: dt.datetime | None = None
) -> RefreshBatch:
    """``lock_screens_refresh_batch`` for the leases: the next phones carrying a lease get the policy's new one."""
    return _refresh_batch(RefreshKind.LEASE, provider_id, after_id=after_id, batch_size=batch_size, now=now)


def _refresh_batch(
    kind: str, provider_id: int, *, after_id: int, batch_size: int, now: dt.datetime | None
) -> RefreshBatch:
    now = now or timezone.now()
    with transaction.atomic():
        ids = list(
            refreshable_contracts([provider_id], kind)
            .filter(pk__gt=after_id)
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            return RefreshBatch(0, 0, None)
        # Race: a payment unlocking one of these phones while this batch builds its command would be
        # overtaken by a refreshed lock with a higher seq, and the phone would lock again. The
        # contracts are locked in id order (the sweep's order; devices follow inside
        # device_states_apply) and their state is read again under the lock: a payment committed
        # first is seen here (the contract is skipped), one committed later comes after the refresh.
        contracts = list(
            refreshable_contracts([provider_id], kind)
            .select_for_update(of=("self",))
            .filter(pk__in=ids)
            .select_related("provider", "customer", "device")
            .prefetch_related(Prefetch("installments", queryset=Installment.objects.order_by("number")), "overrides")
            .order_by("pk")
        )
        changes = _batch_changes(kind, contracts, now=now)
        refused: dict[int, str] = {}
        if changes:
            device_states_apply(changes=changes, actor=ACTORS_BY_KIND[kind], refused=refused)
            commands_refused_record(refused=refused, actor=ACTORS_BY_KIND[kind])
    next_after = ids[-1] if len(ids) == batch_size else None
    return RefreshBatch(len(changes) - len(refused), len(ids) - len(changes), next_after, len(refused), ids[-1])


def _batch_changes(kind: str, contracts: list[Contract], *, now: dt.datetime) -> list[StateChange]:
    """The commands a batch issues: one per phone whose command in force is out of date."""
    if not contracts:
        return []
    provider = contracts[0].provider
    data, rules = ProviderScreenData.load(provider), policy_rules(provider)
    payloads = _payloads_in_force([contract.device_id for contract in contracts])
    changes: list[StateChange] = []
    for contract in contracts:
        payload = payloads.get(contract.device_id)
        if payload is None:
            continue  # never commanded: its first command (at check-in) is built fresh anyway
        if kind == RefreshKind.LEASE:
            change = _lease_refreshed(contract, payload, rules, now)
        else:
            change = _refreshed(contract, payload, data, decide_contract(contract, rules=rules, now=now))
        if change is not None:
            changes.append(change)
    return changes


def lock_refresh_batch(
    *, refresh_id: int, batch_size: int = REFRESH_BATCH, now: dt.datetime | None = None
) -> RefreshBatch:
    """The next batch of an open ``LockRefresh``, its cursor moved in the same transaction (the task's one call).

    ``next_after`` None: the refresh is done (or was already, or never existed).
    """
    with transaction.atomic():
        # Race: two runs of one refresh at once (a redelivered task, or the pickup re-queueing one that
        # was only slow) would handle the same contracts and move the cursor back; the row lock
        # serialises them, and each starts from the cursor the other left.
        refresh = LockRefresh.objects.select_for_update().filter(pk=refresh_id, done_at__isnull=True).first()
        if refresh is None:
            return RefreshBatch(0, 0, None)
        batch = _refresh_batch(
            refresh.kind, refresh.provider_id, after_id=refresh.cursor, batch_size=batch_size, now=now
        )
        moved = timezone.now()
        LockRefresh.objects.filter(pk=refresh.pk).update(
            cursor=batch.last if batch.last is not None else refresh.cursor,
            done_at=moved if batch.next_after is None else None,
            updated_at=moved,
        )
    return batch


def lock_refreshes_resume(*, now: dt.datetime | None = None) -> list[int]:
    """Queue again every open refresh no batch moved for ``RESUME_AFTER`` (the periodic pickup); their ids.

    Its task was lost: the broker was down when a batch queued the next one, or a worker died
    with it. The run resumes from the stored cursor. Finished refreshes older than ``DONE_KEPT``
    are deleted.
    """
    now = now or timezone.now()
    with transaction.atomic():
        LockRefresh.objects.filter(done_at__lt=now - DONE_KEPT).delete()
        stale = LockRefresh.objects.filter(done_at__isnull=True, updated_at__lt=now - RESUME_AFTER)
        ids = list(stale.order_by("pk").values_list("pk", flat=True)[:1000])
        if ids:
            # The next tick leaves them alone while the queued run works (it moves updated_at too).
            LockRefresh.objects.filter(pk__in=ids).update(updated_at=now)
            transaction.on_commit(lambda: enqueue_each(REFRESH_TASK, ids, what="lock refresh"))
    return ids
