"""Lock-screen refresh: what a screen shows changed, so the phones showing it get it again.

A reminder or lock screen names the provider's wording, payment channels, hotlines and
contacts, its service centres and the platform's fallback contacts. When an admin changes
one of them, every phone of that provider (every provider's, for the platform's fallback)
whose contract is in ``reminder`` or ``locked`` gets a refreshed command: the same state and
reason, the same lease inputs (taken from the command in force: the lease policy a phone was
given is not re-decided here), the next seq, and a new screen built by
``payments.locks.screen`` (the only screen builder). The lock decision is not taken again:
whether a phone is locked stays the sweep's and the payments' business.

Shape of the work, so that it never competes with an unlock:

* ``lock_screens_refresh`` (the request, in the caller's transaction) writes one audit event
  ``lock_screen.refresh`` (who, what changed, how many phones) and, on commit, queues one
  ``payments.refresh_lock_screens`` task per provider by its registered name.
* each run of that task handles one batch (``REFRESH_BATCH`` contracts, a fixed number of
  queries) and queues itself for the next one (cursor: the last contract id), on the usual
  "celery" queue: unlocks travel on their own queue and never wait behind it.
* portal cannot import payments: the Django admin queues
  ``payments.refresh_lock_screens_after_change`` with the id of its ``organisation.*`` audit
  event, and ``lock_screens_refresh_after_change`` reads from that event what changed.

Idempotent and retry-safe: a device whose command in force already carries the new screen
(and allowed numbers) is skipped, so a retried or duplicated batch issues nothing twice, and
a retried after-change task finds its refresh already audited.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F, Prefetch, QuerySet
from django.utils import timezone

from devices.models import DeviceCommand, LockState
from devices.services.commands import StateChange, device_states_apply
from payments.locks.decision import Decision
from payments.locks.screen import ProviderScreenData, screen_build
from payments.locks.selectors import decide_contract, policy_rules
from payments.models import Contract, Installment
from portal.audit import audit_record
from portal.models import AuditEvent, Organisation, OrganisationKind
from portal.queue import enqueue_each
from portal.types import AuditActor

#: Contracts per task run: one transaction, a fixed number of queries, a few seconds at most.
REFRESH_BATCH = 500
#: The states whose screen the owner is looking at (an unlocked phone shows none).
REFRESH_STATES = (LockState.REMINDER, LockState.LOCKED)
#: The batch task (``payments.tasks``), queued by name: services never import tasks.
REFRESH_TASK = "payments.refresh_lock_screens"
#: The audit action of one refresh request.
REFRESH_ACTION = "lock_screen.refresh"
#: The actor of the refreshed commands' ``device.state`` events (the request's event names the person).
REFRESH_ACTOR = "lock-screen refresh"

#: What of an organisation a screen shows, by kind (``screen.py``: title, contacts, fallback,
#: service centres, the emergency numbers of the country, the default language).
SCREEN_FIELDS: dict[str, tuple[str, ...]] = {
    OrganisationKind.PROVIDER: ("name", "country", "languages", "hotline_numbers", "support_email", "website"),
    OrganisationKind.SERVICE_CENTER: ("name", "hotline_numbers", "website", "served_providers"),
    OrganisationKind.PLATFORM: ("name", "hotline_numbers", "support_email", "website"),
}
ORGANISATION_ACTIONS = ("organisation.create", "organisation.update", "organisation.delete")


@dataclass(frozen=True)
class RefreshBatch:
    """What one batch did: commands issued, devices already showing the new screen, where to go on."""

    refreshed: int
    unchanged: int
    next_after: int | None


def refreshable_contracts(provider_ids: list[int]) -> QuerySet[Contract]:
    """Contracts of these providers whose phone shows a reminder or a lock right now.

    The device must be meant to be in the contract's state (its newest command says so); one
    whose command is still on the way from another change is left to that change.
    """
    return Contract.objects.filter(
        provider_id__in=provider_ids, lock_state__in=REFRESH_STATES, device__desired_state=F("lock_state")
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
        provider_ids = sorted(set(provider_ids))
        devices = refreshable_contracts(provider_ids).count()
        after: dict[str, Any] = {"changed": sorted(changed), "providers": provider_ids, "devices": devices}
        if source_event is not None:
            after["source_event"] = source_event
        only = Organisation.objects.filter(pk=provider_ids[0]).first() if len(provider_ids) == 1 else None
        audit_record(
            actor=actor,
            action=REFRESH_ACTION,
            organisation=only,
            after=after,
            ip_address=ip_address,
            object_repr=f"lock screens of {devices} phone(s)",
        )
        if devices:
            ids = list(provider_ids)
            transaction.on_commit(lambda: enqueue_each(REFRESH_TASK, ids, what="provider"))
    return devices


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


def lock_screens_refresh_batch(
    *, provider_id: int, after_id: int = 0, batch_size: int = REFRESH_BATCH, now: dt.datetime | None = None
) -> RefreshBatch:
    """Refresh the next ``batch_size`` reminded or locked contracts of a provider after contract ``after_id``.

    One transaction and a fixed number of queries whatever the batch size. ``next_after`` is
    the cursor for the next run, None when this was the last batch.
    """
    now = now or timezone.now()
    with transaction.atomic():
        ids = list(
            refreshable_contracts([provider_id])
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
            refreshable_contracts([provider_id])
            .select_for_update(of=("self",))
            .filter(pk__in=ids)
            .select_related("provider", "customer", "device")
            .prefetch_related(Prefetch("installments", queryset=Installment.objects.order_by("number")), "overrides")
            .order_by("pk")
        )
        changes: list[StateChange] = []
        if contracts:
            provider = contracts[0].provider
            data, rules = ProviderScreenData.load(provider), policy_rules(provider)
            payloads = _payloads_in_force([contract.device_id for contract in contracts])
            for contract in contracts:
                payload = payloads.get(contract.device_id)
                if payload is None:
                    continue  # never commanded: its first command (at check-in) is built fresh anyway
                facts = decide_contract(contract, rules=rules, now=now)
                change = _refreshed(contract, payload, data, facts)
                if change is not None:
                    changes.append(change)
        if changes:
            device_states_apply(changes=changes, actor=REFRESH_ACTOR)
    next_after = ids[-1] if len(ids) == batch_size else None
    return RefreshBatch(len(changes), len(ids) - len(changes), next_after)
