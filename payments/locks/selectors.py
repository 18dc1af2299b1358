"""Reads of lock state: contracts paid up but still locked."""

from __future__ import annotations

import datetime as _dt

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from payments.models import Contract, LockPolicy
from portal.models import Organisation
from portal.permissions import Right, scoped_list


def paid_still_locked(actor, *, now=None) -> QuerySet[Contract]:
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
        cutoff = now - _dt.timedelta(minutes=minutes.get(provider_id, 15))
        late |= Q(provider_id=provider_id, arrears_cleared_at__lte=cutoff)
    return (
        contracts.filter(late, lock_state__in=["unlocked", "reminder", "released"])
        .filter(Q(device__reported_state="locked") | ~Q(device__reported_state=F("device__desired_state")))
        .select_related("device", "customer", "provider")
        .order_by("arrears_cleared_at")
    )
