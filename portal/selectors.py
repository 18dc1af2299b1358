"""Reads of the ``portal`` app."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from portal.models import AuditEvent, Organisation, OrganisationKind
from portal.permissions import Right, require


def audit_events_for(actor) -> QuerySet[AuditEvent]:
    """The audit trail an actor may read: its own organisation's events and those of the providers it sees."""
    require(actor, Right.VIEW_AUDIT)
    events = AuditEvent.objects.order_by("-id")
    if actor.organisation.kind == OrganisationKind.PLATFORM:
        return events
    # A service center's auditor reads its own trail only: provider events carry finances.
    return events.filter(organisation_id=actor.organisation_id)


def organisations_overview() -> QuerySet[Organisation]:
    """Every organisation with its staff count, for the platform operator."""
    return Organisation.objects.annotate(staff_count=Count("staff")).order_by("kind", "name")
