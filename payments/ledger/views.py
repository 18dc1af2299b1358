"""Staff pages for payments (list, detail, match, verify, confirm, reverse, proofs) and payment channels."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import Promise
from django.views.decorators.http import require_POST

from payments.contracts.selectors import contract_for_number
from payments.ledger.channels import payment_channel_move, payment_channel_save, payment_channel_set_active
from payments.ledger.confirm import payment_confirm, payment_confirm_refusal, provisional_limit
from payments.ledger.errors import PaymentAlreadyVerified
from payments.ledger.forms import (
    MatchByNumberForm,
    PaymentChannelForm,
    RecordFromProofForm,
    ReverseForm,
    TransactionLookupForm,
    VerifyExistingForm,
)
from payments.ledger.selectors import (
    FLAGGED,
    payment_status_counts,
    payment_story,
    payment_suggestions,
    payments_for,
    payments_suggestions,
    payments_with_transaction_id,
)
from payments.ledger.verify import (
    payment_match_manual,
    payment_record_from_proof,
    payment_reverse,
    payment_verify,
    payment_verify_existing,
)
from payments.models import Contract, Payment, PaymentChannel, PaymentProof, PaymentStatus
from payments.money import format_money
from portal.forms import form_errors_from
from portal.http import client_ip
from portal.models import Organisation, User
from portal.permissions import Right, has_right, require, scoped_get
from portal.uploads import private_file_response


def _payment_for(request: HttpRequest, pk: int, right: Right) -> Payment:
    """One payment in the user's scope: 404 outside it, 403 without ``right``."""

    return scoped_get(
        Payment.objects.select_related("contract", "provider", "verified_by", "recorded_by", "confirmed_by"),
        request.user,
        right,
        pk=pk,
    )


@login_required
def payment_list(request: HttpRequest) -> HttpResponse:
    """The finance queue: the provider's payments by status, unmatched first, newest first, with suggestions.

    Besides the statuses, a "Flagged" tab: payments recorded from receipts whose channel
    record differs, or that no channel confirmed in time.
    """

    status = request.GET.get("status", PaymentStatus.UNMATCHED)
    if status not in PaymentStatus.values and status not in ("all", FLAGGED):
        status = PaymentStatus.UNMATCHED
    user = cast(User, request.user)  # login_required: a signed-in staff user
    page = Paginator(payments_for(user, status="" if status == "all" else status), 25).get_page(request.GET.get("page"))
    counts = payment_status_counts(user)
    tabs: list[tuple[str, str | Promise, int]] = [
        (value, label, counts.get(value, 0)) for value, label in PaymentStatus.choices
    ]
    # Receipts whose channel record differs or never came: finance checks them (not a status: a flag).
    tabs.insert(2, (FLAGGED, "Flagged", counts.get(FLAGGED, 0)))
    tabs.append(("all", "All", sum(n for value, n in counts.items() if value != FLAGGED)))
    suggestions = payments_suggestions(page.object_list)
    rows = [(p, suggestions.get(p.pk, [])) for p in page.object_list]
    return render(
        request,
        "payments/payment_list.html",
        {
            "page": page,
            "rows": rows,
            "status": status,
            "tabs": tabs,
            "can_match": has_right(request.user, Right.RECORD_PAYMENTS),
            "match_form": MatchByNumberForm(),
        },
    )


@login_required
def payment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One payment: what came in, where it went, its proofs and its audit trail, and what can be done."""
    payment = _payment_for(request, pk, Right.VIEW_FINANCE)
    return render(request, "payments/payment_detail.html", _payment_detail_context(request, payment))


def _payment_detail_context(request: HttpRequest, payment: Payment, *, error: str = "") -> dict[str, Any]:
    unmatched = payment.status == PaymentStatus.UNMATCHED
    confirmable = payment.status == PaymentStatus.PROVISIONAL and has_right(request.user, Right.VERIFY_PAYMENTS)
    return {
        "payment": payment,
        **payment_story(payment),
        "suggestions": payment_suggestions(payment) if unmatched else [],
        "match_form": MatchByNumberForm(),
        "can_match": unmatched and has_right(request.user, Right.RECORD_PAYMENTS),
        "can_verify": payment.status == PaymentStatus.MATCHED and has_right(request.user, Right.VERIFY_PAYMENTS),
        "can_confirm": confirmable,
        # Shown before the button: why this person may not confirm (four eyes, or a conflict).
        "confirm_refusal": payment_confirm_refusal(payment, approver=cast(User, request.user)) if confirmable else None,
        "can_reverse": payment.status != PaymentStatus.REVERSED and has_right(request.user, Right.RECORD_PAYMENTS),
        "error": error,
    }


@login_required
@require_POST
def payment_confirm_view(request: HttpRequest, pk: int) -> HttpResponse:
    """A second person confirms a payment recorded from a receipt; the recording agent (and linked accounts) cannot."""

    payment = _payment_for(request, pk, Right.VERIFY_PAYMENTS)
    try:
        confirmed = payment_confirm(payment=payment, actor=cast(User, request.user), ip_address=client_ip(request))
    except PaymentAlreadyVerified as exc:
        messages.info(request, " ".join(exc.messages))
    except PermissionDenied as exc:
        # Four eyes (or the agent who recorded it): nothing changed; the confirmer reads why.
        context = _payment_detail_context(request, payment, error=str(exc))
        return render(request, "payments/payment_detail.html", context, status=403)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        contract = confirmed.contract
        assert contract is not None  # a confirmed receipt is matched
        contract.refresh_from_db(fields=["lock_state"])
        messages.success(
            request,
            f"Payment {confirmed.external_id} confirmed: all of it is credited to {contract.number}; "
            f"the phone is now {contract.get_lock_state_display().lower()}.",
        )
    return redirect("payments:payment", pk=payment.pk)


@login_required
@require_POST
def payment_match(request: HttpRequest, pk: int) -> HttpResponse:
    """Match an unmatched payment to a suggested contract (``contract``) or a typed number (``contract_number``)."""

    payment = _payment_for(request, pk, Right.RECORD_PAYMENTS)
    back = request.POST.get("next") if request.POST.get("next") == "queue" else None
    contract = None
    if request.POST.get("contract", "").isdigit():
        contract = Contract.objects.filter(provider_id=payment.provider_id, pk=int(request.POST["contract"])).first()
    else:
        form = MatchByNumberForm(request.POST)
        if form.is_valid():
            contract = contract_for_number(provider_id=payment.provider_id, text=form.cleaned_data["contract_number"])
    if contract is None:
        messages.error(request, "No contract of this provider has that number. Check it with the payer's reference.")
    else:
        try:
            payment_match_manual(
                payment=payment, contract=contract, actor=cast(User, request.user), ip_address=client_ip(request)
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            contract.refresh_from_db(fields=["lock_state"])
            messages.success(
                request,
                f"Payment {payment.external_id} matched to contract {contract.number}; "
                f"the phone is now {contract.get_lock_state_display().lower()}.",
            )
    return redirect(f"{reverse('payments:payments')}" if back else reverse("payments:payment", args=[payment.pk]))


@login_required
@require_POST
def payment_verify_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Verify a matched payment from its page; a second agent is told who was first."""

    payment = _payment_for(request, pk, Right.VERIFY_PAYMENTS)
    try:
        payment_verify(
            payment=payment,
            actor=cast(User, request.user),
            proof="verified from the payment page",
            ip_address=client_ip(request),
        )
    except PaymentAlreadyVerified as exc:
        messages.info(request, " ".join(exc.messages))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Payment {payment.external_id} verified.")
    return redirect("payments:payment", pk=payment.pk)


@login_required
def payment_reverse_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Reverse a payment: a confirmation page with the reason, then the reversal (audited by the service)."""

    payment = _payment_for(request, pk, Right.RECORD_PAYMENTS)
    if payment.status == PaymentStatus.REVERSED:
        messages.info(request, "This payment is already reversed.")
        return redirect("payments:payment", pk=payment.pk)
    form = ReverseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            payment_reverse(
                payment=payment,
                actor=cast(User, request.user),
                reason=form.cleaned_data["reason"],
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            form.add_error(None, exc.messages)
        else:
            messages.success(request, f"Payment {payment.external_id} reversed; its allocations came off.")
            return redirect("payments:payment", pk=payment.pk)
    return render(request, "payments/payment_reverse.html", {"payment": payment, "form": form})


@login_required
def payment_proof_download(request: HttpRequest, pk: int) -> HttpResponseBase:
    """A stored proof, only for VIEW_FINANCE in the provider's scope; always a download, never rendered inline."""

    proof = scoped_get(
        PaymentProof.objects.select_related("payment"),
        request.user,
        Right.VIEW_FINANCE,
        provider_field="payment__provider",
        pk=pk,
    )
    return private_file_response(
        proof.file, filename_stem=f"proof-{proof.payment.external_id}-{proof.pk}", content_type=proof.content_type
    )


def _verify_existing(request: HttpRequest, contract: Contract, form: VerifyExistingForm) -> bool:
    """Verify the payment the agent confirmed (of the contract's provider); True when done, else a message says why.

    A provisional one (recorded from a receipt by someone else) is confirmed: four eyes.
    """

    payment = (
        Payment.objects.select_related("contract")
        .filter(provider_id=contract.provider_id, pk=form.cleaned_data["payment"])
        .first()
    )
    if payment is None:
        messages.error(request, "That payment is no longer there; look the transaction id up again.")
        return False
    try:
        payment_verify_existing(
            payment=payment,
            contract=contract,
            actor=cast(User, request.user),
            checked=form.checked,
            ip_address=client_ip(request),
        )
    except PaymentAlreadyVerified as exc:
        messages.info(request, " ".join(exc.messages))
        return False
    except PermissionDenied as exc:  # four eyes: a receipt's recorder cannot confirm it
        messages.error(request, str(exc))
        return False
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return False
    done = "confirmed" if payment.status == PaymentStatus.PROVISIONAL else "verified"
    messages.success(request, f"Payment {payment.external_id} {done} for contract {contract.number}.")
    return True


@login_required
def contract_verify_payment(request: HttpRequest, pk: int) -> HttpResponse:
    """An agent verifies a payment with the customer on the line.

    Step 1 (GET ``transaction_id``): find the provider's payment with the id the customer
    reads out. Found: confirm it (POST ``action=verify``), matched to this contract if it was
    unmatched. Not found: record it from the customer's receipt (POST ``action=record``).
    """

    contract = scoped_get(
        Contract.objects.select_related("provider", "customer"), request.user, Right.VERIFY_PAYMENTS, pk=pk
    )
    provider = contract.provider
    action = request.POST.get("action") if request.method == "POST" else None
    lookup = TransactionLookupForm(request.GET if "transaction_id" in request.GET else None)
    transaction_id = lookup.cleaned_data["transaction_id"].strip() if lookup.is_bound and lookup.is_valid() else ""
    if action == "record":
        transaction_id = request.POST.get("transaction_id", "").strip()
    found = payments_with_transaction_id(provider_id=provider.pk, transaction_id=transaction_id)
    verify_form = VerifyExistingForm(request.POST if action == "verify" else None, request.FILES or None)
    record_form = RecordFromProofForm(
        request.POST if action == "record" else None,
        request.FILES or None,
        # The widget shows an aware value in the active zone (UTC): give it the provider's wall-clock time.
        initial={
            "transaction_id": transaction_id,
            "received_at": timezone.localtime(timezone.now(), provider.zone).replace(tzinfo=None),
        },
    )

    if action == "verify" and verify_form.is_valid():
        done = _verify_existing(request, contract, verify_form)
        if done:
            return redirect("payments:contract", pk=contract.pk)
        query = urlencode({"transaction_id": request.POST.get("transaction_id", "")})
        return redirect(f"{reverse('payments:verify_payment', args=[contract.pk])}?{query}")

    if action == "record":
        with timezone.override(provider.zone):
            valid = record_form.is_valid()
        if valid and (answer := _record_from_proof(request, contract, record_form)):
            return answer

    return render(
        request,
        "payments/verify_payment.html",
        {
            "contract": contract,
            # What a receipt alone may credit now (the provider's limit, less unconfirmed receipts).
            "receipt_allowance": provisional_limit(contract)[0],
            "lookup": lookup if lookup.is_bound else TransactionLookupForm(),
            "transaction_id": transaction_id,
            "searched": bool(transaction_id),
            "found": found,
            "verify_form": verify_form,
            "record_form": record_form,
            "show_record": action == "record" or (transaction_id and not found),
        },
    )


def _record_from_proof(request: HttpRequest, contract: Contract, form: RecordFromProofForm) -> HttpResponse | None:
    """Record the payment the agent typed from the receipt; the redirect when done, else None (the form says why)."""

    data = form.cleaned_data
    checked = form.checked
    assert checked is not None  # the receipt is required: a valid form has checked it
    try:
        recorded = payment_record_from_proof(
            contract=contract,
            actor=cast(User, request.user),  # login_required: a signed-in staff user
            channel=data["channel"],
            amount=data["amount"],
            received_at=data["received_at"],
            transaction_id=data["transaction_id"],
            checked=checked,
            ip_address=client_ip(request),
        )
    except PaymentAlreadyVerified as exc:
        messages.info(request, " ".join(exc.messages))
        return redirect("payments:contract", pk=contract.pk)
    except ValidationError as exc:
        # The service calls the transaction id external_id; the form, transaction_id.
        if hasattr(exc, "error_dict"):
            exc = ValidationError(
                {"transaction_id" if name == "external_id" else name: errors for name, errors in exc.error_dict.items()}
            )
        form_errors_from(form, exc)
        return None
    messages.success(request, _recorded_message(recorded, contract))
    return redirect("payments:contract", pk=contract.pk)


def _recorded_message(payment: Payment, contract: Contract) -> str:
    """What the agent is told after recording a receipt: what was credited now and what waits."""

    credited = format_money(payment.amount - payment.held_amount, payment.currency)
    contract.refresh_from_db(fields=["lock_state"])
    state = contract.get_lock_state_display().lower()
    if not payment.held_amount:
        return (
            f"Payment {payment.external_id} recorded from the receipt: {credited} credited to {contract.number} "
            f"(provisional until the channel's record or a second person confirms it); the phone is now {state}."
        )
    held = format_money(payment.held_amount, payment.currency)
    return (
        f"Payment {payment.external_id} recorded from the receipt: {credited} credited to {contract.number} at once, "
        f"{held} held until a second person or the channel's own record confirms it; the phone is now {state}."
    )


# --- payment channels: how owners pay, listed on every lock screen in the admin's order ----------
def _own_channel(request: HttpRequest, pk: int) -> PaymentChannel:
    """A payment channel of the admin's own provider: 404 for any other, then 403 without MANAGE_SETTINGS."""

    user = cast(User, request.user)  # login_required: a signed-in staff user
    channel = PaymentChannel.objects.filter(provider_id=user.organisation_id, pk=pk).first()
    if channel is None:
        raise Http404("No such payment channel.")
    require(user, Right.MANAGE_SETTINGS)
    return channel


def _channel_provider(request: HttpRequest) -> Organisation:
    user = cast(User, request.user)  # login_required: a signed-in staff user
    require(user, Right.MANAGE_SETTINGS)
    if not user.organisation.is_provider:
        raise Http404("Only a financing provider has payment channels.")
    return user.organisation


@login_required
def payment_channel_list(request: HttpRequest) -> HttpResponse:
    """The provider's payment channels in lock-screen order, active and inactive, with their actions."""

    provider = _channel_provider(request)
    channels = PaymentChannel.objects.filter(provider=provider).order_by("position", "id")
    return render(request, "payments/channel_list.html", {"provider": provider, "channels": channels})


@login_required
def payment_channel_new(request: HttpRequest) -> HttpResponse:
    """Add a way to pay; it goes last on the lock screen."""
    return _payment_channel_form(request, provider=_channel_provider(request), channel=None)


@login_required
def payment_channel_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a way to pay; phones show it with their next command."""
    channel = _own_channel(request, pk)
    return _payment_channel_form(request, provider=channel.provider, channel=channel)


def _payment_channel_form(
    request: HttpRequest, *, provider: Organisation, channel: PaymentChannel | None
) -> HttpResponse:
    initial = {name: getattr(channel, name) for name in PaymentChannelForm.base_fields} if channel else None
    form = PaymentChannelForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            saved = payment_channel_save(
                provider=provider,
                channel=channel,
                actor=cast(User, request.user),
                ip_address=client_ip(request),
                **form.cleaned_data,
            )
        except ValidationError as exc:
            form_errors_from(form, exc)
        else:
            messages.success(request, f"Payment channel “{saved.name}” saved; the next lock screens show it.")
            return redirect("locks:channels")
    return render(request, "payments/channel_form.html", {"provider": provider, "channel": channel, "form": form})


@login_required
@require_POST
def payment_channel_active_view(request: HttpRequest, pk: int, active: bool) -> HttpResponse:
    """Deactivate or reactivate a channel."""
    channel = _own_channel(request, pk)
    payment_channel_set_active(
        channel=channel, active=active, actor=cast(User, request.user), ip_address=client_ip(request)
    )
    shown = "shown again on" if active else "no longer shown on"
    messages.success(request, f"Payment channel “{channel.name}” is {shown} lock screens.")
    return redirect("locks:channels")


@login_required
@require_POST
def payment_channel_move_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Move a channel one place up (``direction=up``) or down the lock screen's list."""
    channel = _own_channel(request, pk)
    payment_channel_move(
        channel=channel,
        up=request.POST.get("direction") == "up",
        actor=cast(User, request.user),
        ip_address=client_ip(request),
    )
    return redirect("locks:channels")
