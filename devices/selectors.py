"""Reads of the device registry."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, F, Q, QuerySet

from devices.models import Device, EnrollmentToken, LockState, normalise_imei
from portal.models import AuditEvent, Organisation, User
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
