"""Reads of the ``portal`` app."""

from __future__ import annotations

from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    Count,
    Exists,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.http import Http404

from portal.four_eyes import lookback
from portal.models import AuditEvent, Organisation, OrganisationKind, User
from portal.permissions import Right, require

#: Audit actions by which a second person approved what a first one asked for. Each such event has
#: the approver as its actor and the requester's user id in ``after[APPROVAL_REQUESTER_KEY]`` (its
#: username in ``after["requested_by"]``). Add an approval here, with what it is in the auditor's
#: words, when you add one to finlock.
APPROVAL_LABELS: dict[str, str] = {
    "unlock_request.approve": "Unlock request approved",
    "device.offline_code": "Offline code issued",
    "payment.confirm": "Payment from a receipt confirmed",
}
APPROVAL_ACTIONS: tuple[str, ...] = tuple(APPROVAL_LABELS)
APPROVAL_REQUESTER_KEY = "requested_by_id"

#: Object types of the money side (contracts, customers, payments, statements): never shown to a
#: service centre, whose staff never see money or identity.
_MONEY_OBJECT_TYPES = "payments."


def audit_events_for(actor: User) -> QuerySet[AuditEvent]:
    """The audit trail an actor may read.

    * platform staff: every event;
    * a provider's staff: the events of that provider (its objects, its staff);
    * a service centre's staff: its own organisation's actions only — events about the centre
      and its staff, and what its own staff did (sign-ins, unlock requests, proofs submitted) —
      never an event about the money side (a contract, a customer, a payment), whoever did it.
    """
    require(actor, Right.VIEW_AUDIT)
    events = AuditEvent.objects.order_by("-id")
    org = actor.organisation
    if org.kind == OrganisationKind.PLATFORM:
        return events
    if org.kind == OrganisationKind.SERVICE_CENTER:
        return events.filter(Q(organisation_id=org.pk) | Q(actor__organisation_id=org.pk)).exclude(
            object_type__startswith=_MONEY_OBJECT_TYPES
        )
    return events.filter(organisation_id=org.pk)


def audit_provider_for(actor: User, slug: str) -> Organisation | None:
    """The provider whose trail ``actor`` narrows to with ``?provider=<slug>``: 404 outside its audit scope."""
    require(actor, Right.VIEW_AUDIT)
    slug = (slug or "").strip()
    if not slug:
        return None
    provider = Organisation.objects.filter(kind=OrganisationKind.PROVIDER, slug=slug).first()
    if provider is None or not (
        actor.organisation.kind == OrganisationKind.PLATFORM or provider.pk == actor.organisation_id
    ):
        raise Http404("No such provider.")
    return provider


def same_browser_approvals(actor: User, *, provider: Organisation | None = None) -> QuerySet[AuditEvent]:
    """Approvals whose requester and approver both signed in from one browser shortly before.

    An approval event (``APPROVAL_ACTIONS``) is listed when, within the four-eyes look-back
    period before it, the requester and the approver each have a ``login`` event carrying the
    same browser digest (``portal.browsers``). Not a refusal — a call centre's agents may share
    a computer — but a lead for the auditor. Each row is annotated with ``requester_id``,
    ``requester_name``, ``browser`` (the digest) and the two sign-in times
    (``requester_login_at``, ``approver_login_at``): one query, whatever the number of rows.

    Scoped like the audit trail (``audit_events_for``); ``provider`` narrows it further.
    (Sign-ins carry a browser digest since finlock recorded one; earlier approvals cannot be listed.)
    """
    events = audit_events_for(actor)
    if provider is not None:
        events = events.filter(organisation_id=provider.pk)
    # The digest as plain text, so comparing two of them is a plain string comparison on every database.
    logins = AuditEvent.objects.filter(action="login").annotate(
        browser=Cast(KT("after__browser"), CharField(max_length=64))
    )
    approvals = events.filter(action__in=APPROVAL_ACTIONS).annotate(
        requester_id=Cast(KT(f"after__{APPROVAL_REQUESTER_KEY}"), BigIntegerField()),
        window_start=F("created_at") - lookback(),
    )
    in_window = {"created_at__lte": OuterRef("created_at"), "created_at__gte": OuterRef("window_start")}
    # The requester's newest sign-in of the period from a browser the approver also signed in from.
    shared = (
        logins.filter(actor_id=OuterRef("requester_id"), browser__isnull=False, **in_window)
        .filter(
            Exists(
                logins.filter(
                    actor_id=OuterRef(OuterRef("actor_id")),
                    browser=OuterRef("browser"),
                    created_at__lte=OuterRef(OuterRef("created_at")),
                    created_at__gte=OuterRef(OuterRef("window_start")),
                )
            )
        )
        .order_by("-created_at", "-id")
    )
    listed = approvals.annotate(
        browser=Subquery(shared.values("browser")[:1]),
        requester_login_at=Subquery(shared.values("created_at")[:1]),
    ).filter(browser__isnull=False)
    approver_login = logins.filter(actor_id=OuterRef("actor_id"), browser=OuterRef("browser"), **in_window).order_by(
        "-created_at", "-id"
    )
    return (
        listed.annotate(
            approval=Case(
                *(When(action=action, then=Value(label)) for action, label in APPROVAL_LABELS.items()),
                default=F("action"),
                output_field=CharField(),
            ),
            approver_login_at=Subquery(approver_login.values("created_at")[:1]),
            requester_name=Coalesce(
                Subquery(User.objects.filter(pk=OuterRef("requester_id")).values("username")[:1]),
                KT("after__requested_by"),
                output_field=CharField(),
            ),
        )
        .select_related("organisation")
        .order_by("-id")
    )


def organisations_overview() -> QuerySet[Organisation]:
    """Every organisation with its staff count, for the platform operator."""
    return Organisation.objects.annotate(staff_count=Count("staff")).order_by("kind", "name")
