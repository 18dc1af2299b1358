"""Staff portal pages of the people's side: the case queue, proof reviews and unlock requests.

Thin: scope and rights through ``portal.permissions`` (another provider's object is 404),
reads through ``support.selectors``, every write through ``support.services``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from devices.models import Device
from devices.selectors import devices_by_imei
from payments.locks.selectors import max_temp_unlock_hours
from payments.models import Contract, contract_number_key
from portal.forms import form_errors_from
from portal.four_eyes import four_eyes_refusal
from portal.http import client_ip
from portal.models import Organisation
from portal.permissions import Right, has_right, require, scope, scoped_get
from portal.uploads import private_file_response
from support import selectors
from support.forms import (
    AssignForm,
    CaseOpenForm,
    IdentityForm,
    NoteForm,
    ProofReviewForm,
    ResolveForm,
    ReviewDecideForm,
    UnlockDecisionForm,
    UnlockRequestForm,
)
from support.models import (
    IDENTITY_CHECKS,
    SLA_HOURS,
    CaseCategory,
    CaseStatus,
    ReviewStatus,
    UnlockKind,
    UnlockStatus,
)
from support.services.cases import (
    assignable_staff,
    case_open,
    case_verify_identity,
)
from support.services.cases import (
    case_assign as case_assign_service,
)
from support.services.cases import (
    case_note as case_note_service,
)
from support.services.cases import (
    case_resolve as case_resolve_service,
)
from support.services.common import device_latest_contract
from support.services.reviews import proof_review_decide, proof_review_submit
from support.services.unlocks import (
    UnlockAlreadyDecided,
    unlock_request_approve,
    unlock_request_create,
    unlock_request_reject,
)

PAGE_SIZE = 50


def _find_device(user, raw_imei: str) -> Device | None:
    """The one phone with this IMEI in the user's scope (rights are checked by the caller)."""
    devices = devices_by_imei(scope(Device.objects.select_related("provider"), user), raw_imei)
    found = list(devices[:2])
    if len(found) == 1:
        return found[0]
    return None


def _device_from_query(request, right: Right) -> Device | None:
    device_id = request.GET.get("device", "")
    if device_id.isdigit():
        return scoped_get(Device.objects.select_related("provider"), request.user, right, pk=int(device_id))
    return None


# --- cases ------------------------------------------------------------------------------------


@login_required
def case_list(request):
    """The provider's queue: open cases, most urgent first, overdue ones flagged."""
    view = request.GET.get("view", "")
    category = request.GET.get("category", "")
    status = request.GET.get("status", CaseStatus.OPEN)
    if status not in CaseStatus.values:
        status = CaseStatus.OPEN
    cases = selectors.case_queue(
        request.user, status=status, mine=view == "mine", unassigned=view == "unassigned", category=category
    )
    page = Paginator(cases, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "support/case_list.html",
        {
            "page": page,
            "view": view,
            "category": category,
            "status": status,
            "categories": CaseCategory.choices,
            "statuses": CaseStatus.choices,
            "org": request.user.organisation,
        },
    )


def _contract_by_number(form: CaseOpenForm, provider: Organisation, typed: str) -> Contract | None:
    """The provider's contract with the number as typed; else ``None``, with the reason on the form."""
    mine = Contract.objects.filter(provider=provider).select_related("device")
    # The exact number first; the forgiving form ("dlg 131") only when it names one
    # contract: DLG-01 and DLG-1 normalise alike, and a case on the wrong contract
    # would show (and unlock) another customer's phone.
    contract = mine.filter(number__iexact=typed).first()
    if contract is None:
        candidates = list(mine.filter(number_key=contract_number_key(typed))[:2])
        if len(candidates) == 1:
            contract = candidates[0]
        elif candidates:
            form.add_error(
                "contract_number",
                "Several contracts match this number as typed; enter it exactly as printed on the contract.",
            )
    if contract is None and "contract_number" not in form.errors:
        form.add_error("contract_number", "No contract of yours has this number.")
    return contract


@login_required
def case_new(request):
    """Open a case from a call; ``?device=<id>`` or ``?contract=<id>`` prefill the phone or contract."""
    require(request.user, Right.MANAGE_CASES)
    provider = request.user.organisation
    initial = {}
    prefilled_device = _device_from_query(request, Right.MANAGE_CASES)
    if prefilled_device is not None:
        initial["imei"] = prefilled_device.imei
    contract_id = request.GET.get("contract", "")
    if contract_id.isdigit():
        prefilled = scoped_get(Contract.objects.all(), request.user, Right.MANAGE_CASES, pk=int(contract_id))
        initial["contract_number"] = prefilled.number
    if "category" in request.GET and request.GET["category"] in CaseCategory.values:
        initial["category"] = request.GET["category"]
    form = CaseOpenForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        device: Device | None = None
        contract: Contract | None = None
        if data["imei"].strip():
            device = _find_device(request.user, data["imei"])
            if device is None or device.provider_id != provider.pk:
                form.add_error("imei", "No phone of yours has this IMEI. Check the digits with the caller.")
        if data["contract_number"].strip():
            contract = _contract_by_number(form, provider, data["contract_number"].strip())
        if not form.errors:
            try:
                case = case_open(
                    provider=provider,
                    category=data["category"],
                    channel=data["channel"],
                    summary=data["summary"],
                    device=device,
                    contract=contract,
                    opened_by=request.user,
                    ip_address=client_ip(request),
                )
            except ValidationError as exc:
                form_errors_from(form, exc)
            else:
                messages.success(request, f"Case #{case.pk} opened; due by the SLA time shown below.")
                return redirect("support:case", pk=case.pk)
    return render(
        request,
        "support/case_form.html",
        {"form": form, "device": prefilled_device, "sla_hours": SLA_HOURS, "categories": CaseCategory.choices},
    )


def _case_context(request, case, **forms) -> dict:
    money = selectors.case_money(case)
    return {
        "case": case,
        "org": case.provider,
        "overdue": case.is_overdue(),
        "events": selectors.case_timeline(case),
        "money": money,
        "customer": case.contract.customer if case.contract_id and case.identity_verified else None,
        "identity_checks": [(key, label, key in case.identity_checks) for key, label in IDENTITY_CHECKS.items()],
        "reference": case.contract.customer if case.contract_id else None,
        "note_form": forms.get("note_form") or NoteForm(),
        "assign_form": forms.get("assign_form")
        or AssignForm(staff=assignable_staff(case.provider), initial={"assignee": case.assigned_to_id}),
        "identity_form": forms.get("identity_form") or IdentityForm(),
        "resolve_form": forms.get("resolve_form") or ResolveForm(),
        "unlock_requests": list(case.unlock_requests.select_related("requested_by").order_by("-requested_at")),
        "can_request_unlock": has_right(request.user, Right.REQUEST_UNLOCK),
    }


@login_required
def case_detail(request, pk: int):
    case = selectors.case_for(request.user, pk)
    return render(request, "support/case_detail.html", _case_context(request, case))


@login_required
@require_POST
def case_note(request, pk: int):
    case = selectors.case_for(request.user, pk)
    form = NoteForm(request.POST)
    if form.is_valid():
        try:
            case_note_service(
                case=case, actor=request.user, text=form.cleaned_data["text"], ip_address=client_ip(request)
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            return redirect("support:case", pk=case.pk)
    return render(request, "support/case_detail.html", _case_context(request, case, note_form=form), status=400)


@login_required
@require_POST
def case_assign(request, pk: int):
    case = selectors.case_for(request.user, pk)
    staff = assignable_staff(case.provider)
    data = request.POST.copy()
    if data.get("take") == "1":
        data["assignee"] = str(request.user.pk)
    form = AssignForm(data, staff=staff)
    if form.is_valid():
        try:
            case_assign_service(
                case=case, assignee=form.cleaned_data["assignee"], actor=request.user, ip_address=client_ip(request)
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            return redirect("support:case", pk=case.pk)
    return render(request, "support/case_detail.html", _case_context(request, case, assign_form=form), status=400)


@login_required
@require_POST
def case_verify(request, pk: int):
    case = selectors.case_for(request.user, pk)
    form = IdentityForm(request.POST)
    if form.is_valid():
        try:
            verified = case_verify_identity(
                case=case, actor=request.user, checks=form.cleaned_data["checks"], ip_address=client_ip(request)
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            if verified:
                messages.success(request, "Caller verified: the contract's money is shown below.")
            else:
                messages.error(
                    request,
                    "Not verified: every check must pass. Do not discuss amounts or payments with this caller.",
                )
            return redirect("support:case", pk=case.pk)
    return render(request, "support/case_detail.html", _case_context(request, case, identity_form=form), status=400)


@login_required
@require_POST
def case_resolve(request, pk: int):
    case = selectors.case_for(request.user, pk)
    form = ResolveForm(request.POST)
    if form.is_valid():
        try:
            case_resolve_service(
                case=case,
                actor=request.user,
                resolution=form.cleaned_data["resolution"],
                note=form.cleaned_data["note"],
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            messages.info(request, " ".join(exc.messages))
        else:
            messages.success(request, f"Case #{case.pk} resolved.")
        return redirect("support:case", pk=case.pk)
    return render(request, "support/case_detail.html", _case_context(request, case, resolve_form=form), status=400)


# --- unlock requests --------------------------------------------------------------------------


@login_required
def unlock_list(request):
    """Approvers: the provider's requests waiting for a second person. Requesters: what they asked for."""
    status = request.GET.get("status", UnlockStatus.PENDING)
    if status not in (*UnlockStatus.values, "all"):
        status = UnlockStatus.PENDING
    requests = selectors.unlock_requests_for(request.user, status="" if status == "all" else status)
    page = Paginator(requests, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "support/unlock_list.html",
        {
            "page": page,
            "status": status,
            "statuses": [*UnlockStatus.choices, ("all", "All")],
            "can_approve": has_right(request.user, Right.APPROVE_UNLOCK),
            "can_request": has_right(request.user, Right.REQUEST_UNLOCK),
            "me": request.user,
        },
    )


@login_required
def unlock_new(request):
    """Ask for an unlock of a phone (``?device=<id>`` prefills it; ``?case=<id>`` links the case)."""
    require(request.user, Right.REQUEST_UNLOCK)
    device = _device_from_query(request, Right.REQUEST_UNLOCK)
    case = None
    case_id = request.GET.get("case", "")
    if case_id.isdigit() and has_right(request.user, Right.MANAGE_CASES):
        case = selectors.case_for(request.user, int(case_id))
        device = case.device or device  # a case's unlock is for the case's phone, whatever ?device= says
    max_hours = max_temp_unlock_hours(device.provider) if device else None
    initial = {"imei": device.imei if device else ""}
    if request.GET.get("kind") in UnlockKind.values:  # a link for one kind ("Ask for a new offline-code key")
        initial["kind"] = request.GET["kind"]
    form = UnlockRequestForm(request.POST or None, max_hours=max_hours, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if device is None:
            device = _find_device(request.user, data["imei"])
            if device is None:
                form.add_error("imei", "No phone you can see has this IMEI. Check the digits (dial *#06#).")
        if device is not None and not form.errors:
            try:
                unlock = unlock_request_create(
                    device=device,
                    kind=data["kind"],
                    requested_by=request.user,
                    reason=data["reason"],
                    hours=data.get("hours"),
                    offline_kind=data.get("offline_kind") or "",
                    days=data.get("days"),
                    case=case,
                    ip_address=client_ip(request),
                )
            except ValidationError as exc:
                form_errors_from(form, exc)
            else:
                messages.success(request, f"Request #{unlock.pk} sent: another person of the provider must approve it.")
                return redirect("support:unlock", pk=unlock.pk)
    return render(request, "support/unlock_form.html", {"form": form, "device": device, "case": case})


def _unlock_context(request, unlock, **extra) -> dict:
    user = request.user
    can_decide = (
        has_right(user, Right.APPROVE_UNLOCK)
        and user.organisation_id == unlock.provider_id
        and unlock.status == UnlockStatus.PENDING
    )
    own_request = unlock.requested_by_id == user.pk
    return {
        "unlock": unlock,
        "org": unlock.provider,
        "can_decide": can_decide,
        "own_request": own_request,
        # Why four eyes would refuse this approver, shown instead of the Approve button.
        "four_eyes_refusal": four_eyes_refusal(requester=unlock.requested_by, approver=user)
        if can_decide and not own_request
        else None,
        "show_finance": has_right(user, Right.VIEW_FINANCE),
        "form": extra.pop("form", None) or UnlockDecisionForm(),
        **extra,
    }


@login_required
def unlock_detail(request, pk: int):
    unlock = selectors.unlock_request_for(request.user, pk)
    return render(request, "support/unlock_detail.html", _unlock_context(request, unlock))


def _decide_unlock(request, pk: int, approve: bool):
    unlock = selectors.unlock_request_for(request.user, pk)
    require(request.user, Right.APPROVE_UNLOCK)
    form = UnlockDecisionForm(request.POST)
    form.is_valid()
    note = form.cleaned_data.get("note", "")
    try:
        if approve:
            result = unlock_request_approve(
                unlock_request=unlock, approver=request.user, note=note, ip_address=client_ip(request)
            )
        else:
            unlock_request_reject(
                unlock_request=unlock, approver=request.user, note=note, ip_address=client_ip(request)
            )
    except UnlockAlreadyDecided as exc:
        messages.info(request, " ".join(exc.messages))
        return redirect("support:unlock", pk=unlock.pk)
    except PermissionDenied as exc:
        # Four eyes (or the requester themself): nothing changed; the approver reads why.
        form.add_error(None, str(exc))
        return render(request, "support/unlock_detail.html", _unlock_context(request, unlock, form=form), status=403)
    except ValidationError as exc:
        form_errors_from(form, exc)
        return render(request, "support/unlock_detail.html", _unlock_context(request, unlock, form=form), status=400)
    if approve and result.offline_token:
        # Shown in this response only: never stored in the session, never rendered again.
        unlock = selectors.unlock_request_for(request.user, pk)
        response = render(
            request, "support/unlock_detail.html", _unlock_context(request, unlock, offline_token=result.offline_token)
        )
        response["Cache-Control"] = "no-store"
        return response
    messages.success(request, f"Request #{unlock.pk} {'approved' if approve else 'rejected'}.")
    return redirect("support:unlock", pk=unlock.pk)


@login_required
@require_POST
def unlock_approve(request, pk: int):
    return _decide_unlock(request, pk, approve=True)


@login_required
@require_POST
def unlock_reject(request, pk: int):
    return _decide_unlock(request, pk, approve=False)


# --- proof-of-purchase reviews ----------------------------------------------------------------


@login_required
def review_list(request):
    status = request.GET.get("status", "")
    if status not in ReviewStatus.values:
        status = ""
    reviews = selectors.reviews_for(request.user, status=status)
    page = Paginator(reviews, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "support/review_list.html",
        {
            "page": page,
            "status": status,
            "statuses": ReviewStatus.choices,
            "can_upload": has_right(request.user, Right.UPLOAD_PROOF),
            "can_review": selectors.can_review(request.user),
        },
    )


@login_required
def review_new(request):
    """A technician uploads proof of purchase and ID for a phone (``?device=<id>`` prefills it)."""
    require(request.user, Right.UPLOAD_PROOF)
    device = _device_from_query(request, Right.UPLOAD_PROOF)
    form = ProofReviewForm(request.POST or None, request.FILES or None, initial={"imei": device.imei if device else ""})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if device is None:
            device = _find_device(request.user, data["imei"])
            if device is None:
                form.add_error("imei", "No phone of the providers you serve has this IMEI. Check the digits (*#06#).")
        if device is not None and not form.errors:
            try:
                review = proof_review_submit(
                    device=device,
                    submitted_by=request.user,
                    receipts=data["receipts"],
                    id_documents=data["id_documents"],
                    note=data["note"],
                    ip_address=client_ip(request),
                )
            except ValidationError as exc:
                form_errors_from(form, exc)
            else:
                messages.success(request, f"Sent for review to {device.provider.name}. You will see the outcome here.")
                return redirect("support:review", pk=review.pk)
    status = 400 if form.errors else 200
    ctx = {"form": form, "device": device, "max_bytes": settings.PROOF_MAX_BYTES}
    return render(request, "support/review_form.html", ctx, status=status)


def _review_context(request, review, form=None) -> dict:
    can_decide = selectors.can_review(request.user) and review.status == ReviewStatus.PENDING
    # Granting an unlock approves the technician's request: four eyes applies (rejecting does not).
    refusal = four_eyes_refusal(requester=review.submitted_by, approver=request.user) if can_decide else None
    show_finance = has_right(request.user, Right.VIEW_FINANCE)
    contract = device_latest_contract(review.device) if show_finance else None
    return {
        "review": review,
        "org": review.provider,
        "device": review.device,
        "files": list(review.files.order_by("kind", "id")),
        "show_finance": show_finance,
        "contract": contract,
        "customer": contract.customer if contract else None,
        "can_decide": can_decide,
        "four_eyes_refusal": refusal,
        "max_hours": max_temp_unlock_hours(review.provider) if can_decide else None,
        "form": form or (ReviewDecideForm() if can_decide else None),
    }


@login_required
def review_detail(request, pk: int):
    review = selectors.review_for(request.user, pk)
    return render(request, "support/review_detail.html", _review_context(request, review))


@login_required
@require_POST
def review_decide(request, pk: int):
    review = selectors.review_for(request.user, pk)
    if not selectors.can_review(request.user):
        raise PermissionDenied("Your role does not allow this (approve_unlock).")
    form = ReviewDecideForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            proof_review_decide(
                review=review,
                reviewer=request.user,
                outcome=data["outcome"],
                reason=data["reason"],
                explanation=data["explanation"],
                unlock_kind=data.get("unlock_kind") or "temporary",
                hours=data.get("hours"),
                ip_address=client_ip(request),
            )
        except PermissionDenied as exc:
            # Four eyes refused the unlock this decision would grant: nothing changed.
            form.add_error(None, str(exc))
            return render(
                request, "support/review_detail.html", _review_context(request, review, form=form), status=403
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            messages.success(request, f"Review #{review.pk} decided.")
            return redirect("support:review", pk=review.pk)
    return render(request, "support/review_detail.html", _review_context(request, review, form=form), status=400)


@login_required
def review_file(request, pk: int):
    """A stored proof file, for the uploading service center and the provider's reviewers; always a download."""
    proof = selectors.review_file_for(request.user, pk)
    return private_file_response(
        proof.file, filename_stem=f"review-{proof.review_id}-{proof.kind}-{proof.pk}", content_type=proof.content_type
    )
