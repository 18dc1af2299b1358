"""Reads of the people's side: the case queue, a case with its money once the caller is verified,
proof reviews and unlock requests as each kind of user may see them.

A service-center technician sees the reviews and requests of their own service center for
the providers it serves, never another center's, and never amounts or the owner's identity.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import BooleanField, Count, ExpressionWrapper, F, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from devices.models import Device
from payments.contracts.selectors import contract_payments, contract_position
from portal.models import Organisation, OrganisationKind, User
from portal.permissions import Right, has_right, require, scope, scoped_get
from support.models import Case, CaseCategory, CaseEvent, CaseStatus, ProofFile, ProofReview, UnlockRequest

# --- cases ------------------------------------------------------------------------------------


def case_queue(
    actor: User,
    *,
    now: dt.datetime | None = None,
    status: str = CaseStatus.OPEN,
    mine: bool = False,
    unassigned: bool = False,
    category: str = "",
) -> QuerySet[Case]:
    """The provider's cases, most urgent first, with ``overdue`` annotated (one query per page)."""
    now = now or timezone.now()
    require(actor, Right.MANAGE_CASES)
    cases: QuerySet[Case] = scope(Case.objects.select_related("device", "contract", "assigned_to", "opened_by"), actor)
    if status in CaseStatus.values:
        cases = cases.filter(status=status)
    if mine:
        cases = cases.filter(assigned_to=actor)
    elif unassigned:
        cases = cases.filter(assigned_to__isnull=True)
    if category in CaseCategory.values:
        cases = cases.filter(category=category)
    overdue = ExpressionWrapper(Q(status=CaseStatus.OPEN, sla_due_at__lt=now), output_field=BooleanField())
    order = ("sla_due_at", "id") if status == CaseStatus.OPEN else ("-opened_at", "-id")
    return cases.annotate(overdue=overdue).order_by(*order)


def case_for(actor: User, pk: int) -> Case:
    """One case of the actor's provider: 404 for anyone else's, 403 without the right to work cases."""
    return scoped_get(
        Case.objects.select_related(
            "provider",
            "device",
            "contract__customer",
            "assigned_to",
            "opened_by",
            "identity_verified_by",
            "resolved_by",
        ),
        actor,
        Right.MANAGE_CASES,
        pk=pk,
    )


def case_timeline(case: Case) -> list[CaseEvent]:
    return list(case.events.select_related("actor").order_by("at", "id"))


def case_money(case: Case) -> dict[str, Any] | None:
    """The contract's position and payments, only once the caller's identity is verified; else ``None``."""
    if not case.identity_verified or case.contract is None:
        return None
    contract = case.contract
    today = case.provider.today()  # type: ignore[no-untyped-call]  # portal.models.Organisation.today is unannotated
    installments = list(contract.installments.order_by("number"))
    return {
        "contract": contract,
        "position": contract_position(contract, today=today, installments=installments),
        "payments": contract_payments(contract, limit=10),
    }


# --- proof reviews ----------------------------------------------------------------------------


def _is_service_center(actor: User) -> bool:
    return actor.organisation.kind == OrganisationKind.SERVICE_CENTER


def _reviews_in_reach(actor: User) -> QuerySet[ProofReview]:
    """Reviews the actor could see at all: the provider's, or (a service center) its own for served providers."""
    reviews: QuerySet[ProofReview] = scope(ProofReview.objects.all(), actor)
    if _is_service_center(actor):
        reviews = reviews.filter(service_center_id=actor.organisation_id)
    return reviews


def can_review(actor: User) -> bool:
    return has_right(actor, Right.APPROVE_UNLOCK) and not _is_service_center(actor)


def _require_review_right(actor: User) -> None:
    if not (can_review(actor) or has_right(actor, Right.UPLOAD_PROOF)):
        raise PermissionDenied("Your role does not allow this (upload_proof or approve_unlock).")


def reviews_for(actor: User, *, status: str = "") -> QuerySet[ProofReview]:
    """The review list: pending first, newest first; 403 for anyone who neither uploads nor reviews."""
    _require_review_right(actor)
    reviews = _reviews_in_reach(actor).select_related("device", "service_center", "submitted_by", "decided_by")
    if status:
        reviews = reviews.filter(status=status)
    return reviews.order_by("-status", "-submitted_at", "-id")


def review_for(actor: User, pk: int) -> ProofReview:
    """One review: 404 outside the actor's reach (another provider, another service center), then 403."""
    review = (
        _reviews_in_reach(actor)
        .select_related("provider", "device", "service_center", "submitted_by", "decided_by", "unlock_request")
        .filter(pk=pk)
        .first()
    )
    if review is None:
        raise Http404("No such object.")
    _require_review_right(actor)
    return review


def review_file_for(actor: User, pk: int) -> ProofFile:
    """A stored proof file, for whoever may see its review."""
    file = ProofFile.objects.filter(pk=pk, review__in=_reviews_in_reach(actor)).select_related("review").first()
    if file is None:
        raise Http404("No such object.")
    _require_review_right(actor)
    return file


# --- unlock requests --------------------------------------------------------------------------


def _unlocks_in_reach(actor: User) -> QuerySet[UnlockRequest]:
    requests: QuerySet[UnlockRequest] = scope(UnlockRequest.objects.all(), actor)
    if _is_service_center(actor):
        requests = requests.filter(requester_organisation_id=actor.organisation_id)
    return requests


def _require_unlock_right(actor: User) -> None:
    if not (has_right(actor, Right.REQUEST_UNLOCK) or has_right(actor, Right.APPROVE_UNLOCK)):
        raise PermissionDenied("Your role does not allow this (request_unlock or approve_unlock).")


def unlock_requests_for(actor: User, *, status: str = "") -> QuerySet[UnlockRequest]:
    """Requests the actor may follow (approvers: the provider's; technicians: their center's), newest first."""
    _require_unlock_right(actor)
    requests = _unlocks_in_reach(actor).select_related("device", "requested_by", "decided_by")
    if status:
        requests = requests.filter(status=status)
    return requests.order_by("-requested_at", "-id")


def unlock_request_for(actor: User, pk: int) -> UnlockRequest:
    request = (
        _unlocks_in_reach(actor)
        .select_related("provider", "device", "contract", "case", "requested_by", "decided_by")
        .filter(pk=pk)
        .first()
    )
    if request is None:
        raise Http404("No such object.")
    _require_unlock_right(actor)
    return request


def case_sla_summary(provider: Organisation) -> dict[str, int]:
    """Cases against their SLA for the provider's dashboard, in one aggregate query.

    Open now, of which overdue and due within the hour; over the last 30 days, resolved
    within and after their SLA.
    """
    now = timezone.now()
    month_ago = now - dt.timedelta(days=30)
    is_open = Q(status=CaseStatus.OPEN)
    resolved = Q(status=CaseStatus.RESOLVED, resolved_at__gte=month_ago)
    return Case.objects.filter(provider=provider).aggregate(
        open=Count("pk", filter=is_open),
        overdue=Count("pk", filter=is_open & Q(sla_due_at__lt=now)),
        due_within_an_hour=Count(
            "pk", filter=is_open & Q(sla_due_at__gte=now, sla_due_at__lt=now + dt.timedelta(hours=1))
        ),
        resolved_in_time_30_days=Count("pk", filter=resolved & Q(resolved_at__lte=F("sla_due_at"))),
        resolved_late_30_days=Count("pk", filter=resolved & Q(resolved_at__gt=F("sla_due_at"))),
    )


def open_cases_for_device(device: Device) -> list[Case]:
    """The device's open cases, newest first (the agent console lists them)."""
    cases = Case.objects.filter(device=device, status=CaseStatus.OPEN).select_related("assigned_to")
    return list(cases.order_by("-opened_at")[:20])
