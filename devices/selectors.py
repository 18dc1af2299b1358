"""Reads of the device registry."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, F, Q, QuerySet

from devices.models import Device, EnrollmentToken, LockState, normalise_imei
from portal.models import AuditEvent, Organisation, OrganisationKind, User
from portal.permissions import Right, scoped_list


def devices_by_imei(qs: QuerySet[Device], raw: str) -> QuerySet[Device]:
    """Devices whose first or second IMEI is ``raw`` (spaces and dashes ignored); none if invalid."""
    try:
        imei = normalise_imei(raw)
    except ValidationError:
        return qs.none()
    return qs.filter(Q(imei=imei) | Q(imei2=imei))


def device_state_overview(actor: User) -> dict[str, Any]:
    """Devices per desired state and how many have not yet acknowledged it (two queries)."""
    devices = scoped_list(Device.objects.all(), actor, Right.VIEW_DEVICES)
    counts = dict(devices.order_by().values_list("desired_state").annotate(n=Count("id")))
    return {
        "state_counts": [(s.value, s.label, counts.get(s.value, 0)) for s in LockState],
        "total": sum(counts.values()),
        "out_of_sync": devices.exclude(reported_state=F("desired_state")).count(),
    }


def enrollment_tokens_of(provider: Organisation) -> QuerySet[EnrollmentToken]:
    """A provider's enrolment tokens for its settings page: not revoked first, newest first."""
    return (
        EnrollmentToken.objects.filter(provider=provider)
        .select_related("created_by")
        .order_by(F("revoked_at").asc(nulls_first=True), "-created_at", "-id")
    )


def device_last_refused_enrolment(device: Device) -> AuditEvent | None:
    """The newest audited refusal to enrol this device (a takeover attempt, or a phone that lost its key), or None."""
    events = AuditEvent.objects.filter(object_type=Device._meta.label, object_id=str(device.pk))
    return events.filter(action="device.enrol_refused").order_by("-id").first()


#: The "not heard from" list's default, in days, until the provider sets an offline warning.
SILENT_DAYS_DEFAULT = 3
#: The longest silence the list asks about: longer than any offline lease (200 days).
SILENT_DAYS_MAX = 365


def devices_not_heard_from(qs: QuerySet[Device], *, days: int, now: dt.datetime) -> QuerySet[Device]:
    """Phones that have not checked in for more than ``days`` days, the longest silent first (one query).

    An enrolled phone that never checked in counts from its enrolment; a phone never enrolled is
    not expected to call, and a released one is done with finlock: both are left out.
    """
    cutoff = now - dt.timedelta(days=days)
    silent = Q(last_checkin_at__lt=cutoff) | Q(last_checkin_at__isnull=True, enrolled_at__lt=cutoff)
    return (
        qs.filter(silent)
        .exclude(desired_state=LockState.RELEASED)
        .order_by(F("last_checkin_at").asc(nulls_first=True), "id")
    )


def silent_days_default(provider: Organisation | None) -> int:
    """The provider's offline warning in days (its lock policy), or ``SILENT_DAYS_DEFAULT`` (one query at most).

    The lock policy is payments' table: read through the relation payments declares on the
    provider (``lock_policy``), so devices imports nothing above it.
    """
    if provider is None or provider.kind != OrganisationKind.PROVIDER:
        return SILENT_DAYS_DEFAULT
    days = (
        Organisation.objects.filter(pk=provider.pk).values_list("lock_policy__offline_warning_days", flat=True).first()
    )
    return days if isinstance(days, int) and days > 0 else SILENT_DAYS_DEFAULT
