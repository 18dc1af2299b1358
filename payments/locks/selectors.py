"""Reads of lock state: the decision for one contract now (without writing it), the policy as the decision
reads it, and contracts paid up but still locked."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from payments.locks.decision import Decision, LeaseTerms, Line, Overrides, decide, lease_terms
from payments.models import Contract, LockPolicy, OverrideKind, Rules
from portal.models import Organisation
from portal.permissions import Right, scoped_list
from portal.types import Actor


def paid_still_locked(actor: Actor, *, now: dt.datetime | None = None) -> QuerySet[Contract]:
    """Contracts whose arrears were cleared but whose phone has not acknowledged the unlock in time.

    "In time" is each provider's ``unlock_alert_minutes``. The most common owner complaint:
    "I paid and my phone is still locked".
    """
    now = now or timezone.now()
    contracts = scoped_list(Contract.objects.all(), actor, Right.VIEW_FINANCE)
    provider_ids = contracts.values("provider_id").distinct()
    minutes = dict(
        LockPolicy.objects.filter(provider_id__in=provider_ids).values_list("provider_id", "unlock_alert_minutes")
    )
    late = Q(pk__in=[])
    for provider_id in Organisation.objects.filter(pk__in=provider_ids).values_list("pk", flat=True):
        cutoff = now - dt.timedelta(minutes=minutes.get(provider_id, 15))
        late |= Q(provider_id=provider_id, arrears_cleared_at__lte=cutoff)
    return (
        contracts.filter(late, lock_state__in=["unlocked", "reminder", "released"])
        .filter(Q(device__reported_state="locked") | ~Q(device__reported_state=F("device__desired_state")))
        .select_related("device", "customer", "provider")
        .order_by("arrears_cleared_at")
    )


def policy_rules(provider: Organisation) -> Rules:
    """The provider's policy as the decision reads it (defaults until the admin saves one)."""
    try:
        return provider.lock_policy.rules()
    except LockPolicy.DoesNotExist:
        return LockPolicy(provider=provider).rules()


def decide_contract(contract: Contract, *, rules: Rules, now: dt.datetime) -> Decision:
    """The pure decision for a loaded contract (installments and overrides prefetched)."""
    lines = [Line(i.due_date, i.amount_due, i.amount_paid) for i in contract.installments.all()]
    live = [o for o in contract.overrides.all() if o.lifted_at is None and o.starts_at <= now]
    live = [o for o in live if o.ends_at is None or o.ends_at > now]
    # A temporary unlock always has its end (a database constraint); the test says so to the type checker.
    temp = [o.ends_at for o in live if o.kind == OverrideKind.TEMP_UNLOCK and o.ends_at is not None]
    overrides = Overrides(
        temp_unlock_until=max(temp) if temp else None,
        dispute_hold=any(o.kind == OverrideKind.DISPUTE_HOLD for o in live),
    )
    return decide(
        status=contract.status,
        lines=lines,
        rules=rules,
        overrides=overrides,
        now=now,
        zone=contract.provider.zone,
        current=contract.lock_state,
    )


def contract_lease_terms(contract: Contract, *, rules: Rules, now: dt.datetime) -> LeaseTerms:
    """The lease inputs of a loaded contract's command (installments and overrides prefetched: no query)."""
    unpaid = [line.due_date for line in contract.installments.all() if line.amount_paid < line.amount_due]
    on_hold = any(
        o.kind == OverrideKind.DISPUTE_HOLD
        and o.lifted_at is None
        and o.starts_at <= now
        and (o.ends_at is None or o.ends_at > now)
        for o in contract.overrides.all()
    )
    return lease_terms(
        earliest_unpaid_due=min(unpaid, default=None), rules=rules, zone=contract.provider.zone, dispute_hold=on_hold
    )


def temp_unlock_hours_checked(provider: Organisation, hours: object) -> int:
    """``hours`` of a temporary unlock once within the provider's policy (1 to ``max_temp_unlock_hours``).

    The one check, for a request when it is made and for the lock API when it is granted;
    ``ValidationError`` on ``hours`` otherwise.
    """
    cap = max_temp_unlock_hours(provider)
    if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= cap:
        raise ValidationError({"hours": [f"A whole number of hours from 1 to {cap} (the provider's lock policy)."]})
    return hours


def max_temp_unlock_hours(provider: Organisation) -> int:
    """The provider's longest temporary unlock (the policy default until the admin saves one)."""
    hours = LockPolicy.objects.filter(provider=provider).values_list("max_temp_unlock_hours", flat=True).first()
    if hours is not None:
        return hours
    default: int = LockPolicy._meta.get_field("max_temp_unlock_hours").default
    return default
