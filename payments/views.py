"""Staff portal pages for contracts and their schedules."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Q
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from payments.models import Contract, ContractStatus
from payments.selectors import contract_position, contracts_with_totals, schedule_rows
from payments.services import payment_channel_move, payment_channel_save, payment_channel_set_active
from portal.http import client_ip
from portal.permissions import Right, scoped_get, scoped_list


@login_required
def contract_list(request):
    contracts = scoped_list(
        Contract.objects.select_related("device", "customer", "provider"), request.user, Right.VIEW_FINANCE
    )
    q = request.GET.get("q", "").strip()
    status = request.GET.get("status", "")
    device = request.GET.get("device", "")
    if q:
        contracts = contracts.filter(Q(number__iexact=q) | Q(customer__name__icontains=q) | Q(device__imei=q))
    if status in ContractStatus.values:
        contracts = contracts.filter(status=status)
    if device.isdigit():
        contracts = contracts.filter(device_id=int(device))
    contracts = contracts_with_totals(contracts, today=request.user.organisation.today()).order_by("-id")
    page = Paginator(contracts, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "payments/contract_list.html",
        {"page": page, "q": q, "status": status, "statuses": ContractStatus.choices},
    )


@login_required
def contract_detail(request, pk: int):
    contract = scoped_get(
        Contract.objects.select_related("device", "customer", "provider"), request.user, Right.VIEW_FINANCE, pk=pk
    )
    today = contract.provider.today()
    rows = schedule_rows(contract, today=today)
    position = contract_position(contract, today=today, installments=[r["installment"] for r in rows])
    from payments.selectors import contract_payments
    from portal.permissions import has_right

    return render(
        request,
        "payments/contract_detail.html",
        {
            "contract": contract,
            "rows": rows,
            "position": position,
            "today": today,
            "payments": contract_payments(contract),
            "can_verify": has_right(request.user, Right.VERIFY_PAYMENTS),
        },
    )


@login_required
def lock_policy(request):
    """The provider admin edits reminders, grace and the hours in which a lock may start."""
    from django.contrib import messages
    from django.core.exceptions import ValidationError
    from django.shortcuts import redirect

    from payments.forms import LockPolicyForm
    from payments.models import LockPolicy
    from payments.services import LOCK_POLICY_FIELDS, lock_policy_update
    from portal.permissions import Right, require

    require(request.user, Right.MANAGE_SETTINGS)
    provider = request.user.organisation
    current = LockPolicy.objects.filter(provider=provider).first() or LockPolicy(provider=provider)
    initial = {name: getattr(current, name) for name in LOCK_POLICY_FIELDS}
    form = LockPolicyForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            lock_policy_update(
                provider=provider, actor=request.user, ip_address=client_ip(request), **form.cleaned_data
            )
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, errors)
        else:
            messages.success(request, "Lock policy saved. The next sweep applies it.")
            return redirect("locks:policy")
    return render(request, "payments/lock_policy.html", {"form": form, "provider": provider})


@login_required
def paid_still_locked_list(request):
    """Arrears cleared, unlock not acknowledged in time: the list support works first."""
    from payments.selectors import paid_still_locked

    contracts = paid_still_locked(request.user)
    page = Paginator(contracts, 50).get_page(request.GET.get("page"))
    return render(request, "payments/paid_still_locked.html", {"page": page})


# --- lock screen: the text per language, and a live preview drawn by the reference agent ---------

#: Sample values the preview fills in: what a real owner's screen shows, for a contract that does not exist.
PREVIEW_CONTRACT = "CONTRACT-0001"
PREVIEW_IMEI = "356938035643809"
PREVIEW_AMOUNT = "12500"
PREVIEW_OVERDUE_DAYS = 10
#: The states whose screens use the admin's text, as the preview offers them.
PREVIEW_STATES = {"locked": "Locked", "reminder": "Payment reminder"}
#: Session key of unsaved texts being previewed, by language.
_DRAFT_SESSION_KEY = "lock_screen_draft"


def lock_screen_preview_command(*, provider, language: str, state: str = "locked", texts=None, now=None) -> dict:
    """The ``screen`` and ``allowed_numbers`` the next ``state`` command would carry, for sample values.

    Built exactly as the sweep builds a real command (``ProviderScreenData.load`` and
    ``screen_build`` of ``payments.lockscreen``, see ``payments.sweep.apply_decisions``):
    the provider's saved texts, active payment channels in their order, service centres
    and the platform's fallback contacts; only the contract, owner and amounts are samples.
    ``texts`` (unsaved wording for ``language``) replaces the saved one; nothing is written.
    """
    import datetime as dt
    from decimal import Decimal

    from devices.models import Device
    from payments.decision import Decision
    from payments.lockscreen import TEXT_FIELDS, ProviderScreenData, screen_build
    from payments.models import Customer

    data = ProviderScreenData.load(provider)
    if texts is not None:
        data.texts[language] = {name: texts[name] for name in TEXT_FIELDS}
    contract = Contract(provider=provider, number=PREVIEW_CONTRACT, currency=provider.currency or "USD")
    contract.customer = Customer(provider=provider, preferred_language=language)
    contract.device = Device(provider=provider, imei=PREVIEW_IMEI)
    decision = Decision(
        state=state,
        reason="Preview",
        overdue_since=provider.today(now) - dt.timedelta(days=PREVIEW_OVERDUE_DAYS),
        amount_overdue=Decimal(PREVIEW_AMOUNT),
    )
    return {
        "screen": screen_build(data=data, contract=contract, decision=decision),
        "allowed_numbers": data.allowed_numbers(),
    }


def lock_screen_preview_html(*, provider, language: str, state: str = "locked", texts=None) -> str:
    """The 360×800 page the reference phone agent draws for that command (``devices.agent.render``)."""
    from devices.agent.render import ScreenView, render_html

    command = lock_screen_preview_command(provider=provider, language=language, state=state, texts=texts)
    return render_html(
        ScreenView(
            state=state,
            screen=command["screen"],
            allowed_numbers=command["allowed_numbers"],
            imei=PREVIEW_IMEI,
        )
    )


def _lock_screen_language(request, language: str | None) -> tuple[object, str, list[str]]:
    """(provider, language, the provider's languages) for a provider admin; 403 / 404 otherwise."""
    from django.http import Http404

    from portal.permissions import require

    require(request.user, Right.MANAGE_SETTINGS)
    provider = request.user.organisation
    if not provider.is_provider:
        raise Http404("Only a financing provider has a lock screen.")
    languages = list(dict.fromkeys([*provider.languages, "en"]))
    language = language or languages[0]
    if language not in languages:
        raise Http404("Not one of this provider's languages.")
    return provider, language, languages


def _preview_state(value) -> str:
    return value if value in PREVIEW_STATES else "locked"


def _draft_problems(texts: dict) -> dict[str, list[str]]:
    """The placeholder errors the save would report, without saving."""
    from payments.models import validate_lock_screen_text

    problems = {}
    for name in ("title", "body", "reminder_title", "reminder_body"):
        try:
            validate_lock_screen_text(texts[name])
        except ValidationError as exc:
            problems[name] = exc.messages
    return problems


@login_required
def lock_screen_texts(request, language: str | None = None):
    """The provider admin writes what locked phones say, per language, and previews it on a phone.

    POST ``action=preview`` keeps the unsaved text in the session and shows it in the phone
    frame; any other POST saves it (audited by the service). The frame loads
    ``locks:screen_preview``: the reference agent's own rendering of the next command.
    """
    from payments.forms import LockScreenTextForm
    from payments.lockscreen import DEFAULT_TEXTS, TEXT_FIELDS, builtin_texts
    from payments.models import LOCK_SCREEN_PLACEHOLDERS, LockScreenText
    from payments.services import lock_screen_text_save

    provider, language, languages = _lock_screen_language(request, language)
    saved = LockScreenText.objects.filter(provider=provider, language=language).first()
    defaults = builtin_texts(language) or DEFAULT_TEXTS["en"]
    initial = {f: getattr(saved, f) if saved else defaults[f] for f in TEXT_FIELDS}
    form = LockScreenTextForm(request.POST or None, initial=initial)
    state = _preview_state(request.POST.get("preview_state") or request.GET.get("state"))
    drafts = request.session.get(_DRAFT_SESSION_KEY, {})
    draft = None
    if request.method == "POST" and form.is_valid():
        texts = {name: value.strip() for name, value in form.cleaned_data.items()}
        if request.POST.get("action") == "preview":
            for name, errors in _draft_problems(texts).items():
                form.add_error(name, errors)
            if form.is_valid():
                draft = texts
                request.session[_DRAFT_SESSION_KEY] = {**drafts, language: texts}
        else:
            try:
                lock_screen_text_save(
                    provider=provider, language=language, actor=request.user, ip_address=_ip(request), **texts
                )
            except ValidationError as exc:
                for name, errors in exc.message_dict.items():
                    form.add_error(name if name in form.fields else None, errors)
            else:
                if language in drafts:
                    request.session[_DRAFT_SESSION_KEY] = {k: v for k, v in drafts.items() if k != language}
                messages.success(
                    request, f"Lock-screen text ({language}) saved; phones get it with their next command."
                )
                return redirect(f"{reverse('locks:screen_language', args=[language])}?state={state}")
    broken = form.is_bound and not form.is_valid()
    screen = None
    if not broken:
        screen = lock_screen_preview_command(provider=provider, language=language, state=state, texts=draft)["screen"]
    query = urlencode({"state": state, **({"draft": 1} if draft else {})})
    return render(
        request,
        "payments/lock_screen_texts.html",
        {
            "form": form,
            "provider": provider,
            "language": language,
            "languages": languages,
            "saved": saved,
            "placeholders": LOCK_SCREEN_PLACEHOLDERS,
            "screen": screen,
            "draft": draft,
            "state": state,
            "states": PREVIEW_STATES,
            "preview_url": f"{reverse('locks:screen_preview', args=[language])}?{query}",
            "channel_count": provider.payment_channels.filter(active=True).count(),
        },
    )


def _preview_headers(view):
    """Let the portal's own pages frame the preview (and nobody else); the page itself may load nothing."""
    from csp.constants import NONE, SELF
    from csp.decorators import csp_replace
    from django.views.decorators.clickjacking import xframe_options_sameorigin

    policy = {
        "default-src": [NONE],
        "script-src": [NONE],
        "style-src": ["'unsafe-inline'"],  # the agent's page carries its own <style>
        "img-src": [NONE],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [NONE],
        "frame-ancestors": [SELF],
    }
    return xframe_options_sameorigin(csp_replace(policy)(view))


@login_required
@_preview_headers
def lock_screen_preview(request, language: str):
    """The reference agent's 360×800 lock screen for the next command: saved text, or (``draft=1``) the unsaved one."""
    from django.http import HttpResponse

    provider, language, _languages = _lock_screen_language(request, language)
    texts = request.session.get(_DRAFT_SESSION_KEY, {}).get(language) if request.GET.get("draft") else None
    page = lock_screen_preview_html(
        provider=provider, language=language, state=_preview_state(request.GET.get("state")), texts=texts
    )
    response = HttpResponse(page, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


# --- payment channels: how owners pay, listed on every lock screen in the admin's order ----------
def _own_channel(request, pk: int):
    """A payment channel of the admin's own provider: 404 for any other, then 403 without MANAGE_SETTINGS."""
    from django.http import Http404

    from payments.models import PaymentChannel
    from portal.permissions import require

    channel = PaymentChannel.objects.filter(provider_id=request.user.organisation_id, pk=pk).first()
    if channel is None:
        raise Http404("No such payment channel.")
    require(request.user, Right.MANAGE_SETTINGS)
    return channel


def _channel_provider(request):
    from django.http import Http404

    from portal.permissions import require

    require(request.user, Right.MANAGE_SETTINGS)
    if not request.user.organisation.is_provider:
        raise Http404("Only a financing provider has payment channels.")
    return request.user.organisation


@login_required
def payment_channel_list(request):
    """The provider's payment channels in lock-screen order, active and inactive, with their actions."""
    from payments.models import PaymentChannel

    provider = _channel_provider(request)
    channels = PaymentChannel.objects.filter(provider=provider).order_by("position", "id")
    return render(request, "payments/channel_list.html", {"provider": provider, "channels": channels})


@login_required
def payment_channel_new(request):
    """Add a way to pay; it goes last on the lock screen."""
    return _payment_channel_form(request, provider=_channel_provider(request), channel=None)


@login_required
def payment_channel_edit(request, pk: int):
    """Change a way to pay; phones show it with their next command."""
    channel = _own_channel(request, pk)
    return _payment_channel_form(request, provider=channel.provider, channel=channel)


def _payment_channel_form(request, *, provider, channel):
    from payments.forms import PaymentChannelForm

    initial = {name: getattr(channel, name) for name in PaymentChannelForm.base_fields} if channel else None
    form = PaymentChannelForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            saved = payment_channel_save(
                provider=provider, channel=channel, actor=request.user, ip_address=_ip(request), **form.cleaned_data
            )
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, errors)
        else:
            messages.success(request, f"Payment channel “{saved.name}” saved; the next lock screens show it.")
            return redirect("locks:channels")
    return render(request, "payments/channel_form.html", {"provider": provider, "channel": channel, "form": form})


@login_required
@require_POST
def payment_channel_active_view(request, pk: int, active: bool):
    """Deactivate or reactivate a channel."""
    channel = _own_channel(request, pk)
    payment_channel_set_active(channel=channel, active=active, actor=request.user, ip_address=_ip(request))
    shown = "shown again on" if active else "no longer shown on"
    messages.success(request, f"Payment channel “{channel.name}” is {shown} lock screens.")
    return redirect("locks:channels")


@login_required
@require_POST
def payment_channel_move_view(request, pk: int):
    """Move a channel one place up (``direction=up``) or down the lock screen's list."""
    channel = _own_channel(request, pk)
    payment_channel_move(
        channel=channel, up=request.POST.get("direction") == "up", actor=request.user, ip_address=_ip(request)
    )
    return redirect("locks:channels")


# --- payments: the finance queue, one payment, verifying with the customer on the line ----------


def _ip(request) -> str | None:
    return client_ip(request)


def _payment_for(request, pk: int, right: Right):
    """One payment in the user's scope: 404 outside it, 403 without ``right``."""
    from payments.models import Payment

    return scoped_get(
        Payment.objects.select_related("contract", "provider", "verified_by", "recorded_by", "confirmed_by"),
        request.user,
        right,
        pk=pk,
    )


@login_required
def payment_list(request):
    """The finance queue: the provider's payments by status, unmatched first, newest first, with suggestions.

    Besides the statuses, a "Flagged" tab: payments recorded from receipts whose channel
    record differs, or that no channel confirmed in time.
    """
    from payments.forms import MatchByNumberForm
    from payments.models import PaymentStatus
    from payments.selectors import FLAGGED, payment_status_counts, payments_for, payments_suggestions
    from portal.permissions import has_right

    status = request.GET.get("status", PaymentStatus.UNMATCHED)
    if status not in PaymentStatus.values and status not in ("all", FLAGGED):
        status = PaymentStatus.UNMATCHED
    page = Paginator(payments_for(request.user, status="" if status == "all" else status), 25).get_page(
        request.GET.get("page")
    )
    counts = payment_status_counts(request.user)
    tabs = [(value, label, counts.get(value, 0)) for value, label in PaymentStatus.choices]
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
def payment_detail(request, pk: int):
    """One payment: what came in, where it went, its proofs and its audit trail, and what can be done."""
    payment = _payment_for(request, pk, Right.VIEW_FINANCE)
    return render(request, "payments/payment_detail.html", _payment_detail_context(request, payment))


def _payment_detail_context(request, payment, *, error: str = "") -> dict:
    from payments.forms import MatchByNumberForm
    from payments.models import PaymentStatus
    from payments.selectors import payment_story, payment_suggestions
    from portal.permissions import has_right

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
        "confirm_refusal": _confirm_refusal(payment, request.user) if confirmable else None,
        "can_reverse": payment.status != PaymentStatus.REVERSED and has_right(request.user, Right.RECORD_PAYMENTS),
        "error": error,
    }


def _confirm_refusal(payment, user) -> str | None:
    from payments.models import PaymentFlag
    from portal.four_eyes import four_eyes_refusal

    if payment.flag == PaymentFlag.CONFLICT:
        return f"{payment.flag_reason} A finance officer reverses it and records what the channel says."
    return four_eyes_refusal(requester=payment.recorded_by, approver=user)


@login_required
@require_POST
def payment_confirm_view(request, pk: int):
    """A second person confirms a payment recorded from a receipt; the recording agent (and linked accounts) cannot."""
    from django.core.exceptions import PermissionDenied

    from payments.services import PaymentAlreadyVerified, payment_confirm

    payment = _payment_for(request, pk, Right.VERIFY_PAYMENTS)
    try:
        confirmed = payment_confirm(payment=payment, actor=request.user, ip_address=client_ip(request))
    except PaymentAlreadyVerified as exc:
        messages.info(request, " ".join(exc.messages))
    except PermissionDenied as exc:
        # Four eyes (or the agent who recorded it): nothing changed; the confirmer reads why.
        context = _payment_detail_context(request, payment, error=str(exc))
        return render(request, "payments/payment_detail.html", context, status=403)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        confirmed.contract.refresh_from_db(fields=["lock_state"])
        messages.success(
            request,
            f"Payment {confirmed.external_id} confirmed: all of it is credited to {confirmed.contract.number}; "
            f"the phone is now {confirmed.contract.get_lock_state_display().lower()}.",
        )
    return redirect("payments:payment", pk=payment.pk)


@login_required
@require_POST
def payment_match(request, pk: int):
    """Match an unmatched payment to a suggested contract (``contract``) or a typed number (``contract_number``)."""
    from payments.forms import MatchByNumberForm
    from payments.selectors import contract_for_number
    from payments.services import payment_match_manual

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
            payment_match_manual(payment=payment, contract=contract, actor=request.user, ip_address=_ip(request))
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
def payment_verify_view(request, pk: int):
    """Verify a matched payment from its page; a second agent is told who was first."""
    from payments.services import PaymentAlreadyVerified, payment_verify

    payment = _payment_for(request, pk, Right.VERIFY_PAYMENTS)
    try:
        payment_verify(
            payment=payment, actor=request.user, proof="verified from the payment page", ip_address=_ip(request)
        )
    except PaymentAlreadyVerified as exc:
        messages.info(request, " ".join(exc.messages))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Payment {payment.external_id} verified.")
    return redirect("payments:payment", pk=payment.pk)


@login_required
def payment_reverse_view(request, pk: int):
    """Reverse a payment: a confirmation page with the reason, then the reversal (audited by the service)."""
    from payments.forms import ReverseForm
    from payments.models import PaymentStatus
    from payments.services import payment_reverse

    payment = _payment_for(request, pk, Right.RECORD_PAYMENTS)
    if payment.status == PaymentStatus.REVERSED:
        messages.info(request, "This payment is already reversed.")
        return redirect("payments:payment", pk=payment.pk)
    form = ReverseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            payment_reverse(
                payment=payment, actor=request.user, reason=form.cleaned_data["reason"], ip_address=_ip(request)
            )
        except ValidationError as exc:
            form.add_error(None, exc.messages)
        else:
            messages.success(request, f"Payment {payment.external_id} reversed; its allocations came off.")
            return redirect("payments:payment", pk=payment.pk)
    return render(request, "payments/payment_reverse.html", {"payment": payment, "form": form})


@login_required
def payment_proof_download(request, pk: int):
    """A stored proof, only for VIEW_FINANCE in the provider's scope; always a download, never rendered inline."""
    from payments.models import PaymentProof
    from portal.uploads import private_file_response

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


def _verify_existing(request, contract, form) -> bool:
    """Verify the payment the agent confirmed (of the contract's provider); True when done, else a message says why.

    A provisional one (recorded from a receipt by someone else) is confirmed: four eyes.
    """
    from django.core.exceptions import PermissionDenied

    from payments.models import Payment, PaymentStatus
    from payments.services import PaymentAlreadyVerified, payment_verify_existing

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
            payment=payment, contract=contract, actor=request.user, checked=form.checked, ip_address=_ip(request)
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
def contract_verify_payment(request, pk: int):
    """An agent verifies a payment with the customer on the line.

    Step 1 (GET ``transaction_id``): find the provider's payment with the id the customer
    reads out. Found: confirm it (POST ``action=verify``), matched to this contract if it was
    unmatched. Not found: record it from the customer's receipt (POST ``action=record``).
    """
    from django.utils import timezone

    from payments.forms import RecordFromProofForm, TransactionLookupForm, VerifyExistingForm
    from payments.selectors import payments_with_transaction_id
    from payments.services import PaymentAlreadyVerified, payment_record_from_proof

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
        if valid:
            data = record_form.cleaned_data
            try:
                recorded = payment_record_from_proof(
                    contract=contract,
                    actor=request.user,
                    channel=data["channel"],
                    amount=data["amount"],
                    received_at=data["received_at"],
                    transaction_id=data["transaction_id"],
                    checked=record_form.checked,
                    ip_address=_ip(request),
                )
            except PaymentAlreadyVerified as exc:
                messages.info(request, " ".join(exc.messages))
                return redirect("payments:contract", pk=contract.pk)
            except ValidationError as exc:
                for name, errors in exc.message_dict.items() if hasattr(exc, "error_dict") else [(None, exc.messages)]:
                    field = {"external_id": "transaction_id"}.get(name, name)
                    record_form.add_error(field if field in record_form.fields else None, errors)
            else:
                messages.success(request, _recorded_message(recorded, contract))
                return redirect("payments:contract", pk=contract.pk)

    from payments.services import provisional_limit

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


def _recorded_message(payment, contract) -> str:
    """What the agent is told after recording a receipt: what was credited now and what waits."""
    from payments.money import format_money

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


@login_required
def statement_list(request):
    """Finance officers upload statements and follow their imports."""
    from django.contrib import messages
    from django.core.exceptions import ValidationError
    from django.db import transaction
    from django.shortcuts import redirect

    from payments.forms import StatementUploadForm
    from payments.imports import statement_import_create, statement_imports_enqueue
    from payments.models import StatementImport
    from portal.permissions import Right, require

    require(request.user, Right.IMPORT_STATEMENTS)
    provider = request.user.organisation
    form = StatementUploadForm(request.POST or None, request.FILES or None, provider=provider)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            record = statement_import_create(
                provider=provider,
                filename=upload.name,
                raw=upload.read(),
                actor=request.user,
                format=form.cleaned_data["format"] or None,
                csv_mapping=form.cleaned_data["csv_mapping"],
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, errors)
        else:
            # Never fails the upload: with the broker down the import waits, stored, for the
            # periodic re-queue; without a broker it runs here and ends done or failed.
            transaction.on_commit(lambda: statement_imports_enqueue([record.pk]))
            messages.success(request, f"{record.filename} is stored and queued for import.")
            return redirect("payments:statement", pk=record.pk)
    imports = StatementImport.objects.filter(provider=provider).select_related("created_by")[:50]
    return render(request, "payments/statement_list.html", {"form": form, "imports": imports})


@login_required
def statement_detail(request, pk: int):
    """One import: progress while it runs, then its summary and every line with what became of it."""
    from payments.models import StatementImport
    from portal.permissions import Right, scoped_get

    record = scoped_get(StatementImport.objects.all(), request.user, Right.IMPORT_STATEMENTS, pk=pk)
    lines = record.lines.select_related("payment", "payment__contract").order_by("line_no")
    page = Paginator(lines, 100).get_page(request.GET.get("page"))
    return render(request, "payments/statement_detail.html", {"record": record, "page": page})


# --- CSV column mappings: finance officers describe their banks' CSV exports --------------------

_SEPARATOR_NAMES = {"\t": "tab", " ": "space", ";": "semicolon ;", ",": "comma ,", "|": "pipe |"}
_PREVIEW_ROWS = 10


@login_required
def csv_mapping_list(request):
    """The provider's saved CSV mappings, and the sample banks a new one can start from."""
    from payments.models import CsvColumnMapping
    from payments.statements.csv_format import KNOWN_MAPPINGS
    from portal.permissions import require

    require(request.user, Right.IMPORT_STATEMENTS)
    mappings = CsvColumnMapping.objects.filter(provider=request.user.organisation).order_by("name")
    rows = [
        {
            "record": record,
            "separator": _SEPARATOR_NAMES.get(record.mapping.get("delimiter"), record.mapping.get("delimiter", "—")),
            "decimal_comma": record.mapping.get("decimal_comma", True),
            "date_format": record.mapping.get("date_format", ""),
            "encoding": record.mapping.get("encoding", ""),
        }
        for record in mappings
    ]
    return render(request, "payments/csv_mapping_list.html", {"rows": rows, "known": list(KNOWN_MAPPINGS)})


@login_required
def csv_mapping_new(request):
    """A new mapping, blank or (``?from=<sample bank>``) a copy of a built-in one to adapt."""
    from dataclasses import asdict

    from payments.forms import CsvMappingForm
    from payments.statements.csv_format import KNOWN_MAPPINGS
    from portal.permissions import require

    require(request.user, Right.IMPORT_STATEMENTS)
    start = KNOWN_MAPPINGS.get(request.GET.get("from", ""))
    initial = CsvMappingForm.initial_for({**asdict(start), "name": ""} if start else {})
    return _csv_mapping_form(request, provider=request.user.organisation, record=None, initial=initial)


@login_required
def csv_mapping_edit(request, pk: int):
    """Change a saved mapping; a sample file previews it without saving anything."""
    from payments.forms import CsvMappingForm
    from payments.models import CsvColumnMapping

    record = scoped_get(
        CsvColumnMapping.objects.select_related("provider"), request.user, Right.IMPORT_STATEMENTS, pk=pk
    )
    initial = CsvMappingForm.initial_for({**record.mapping, "name": record.name})
    return _csv_mapping_form(request, provider=record.provider, record=record, initial=initial)


def _csv_mapping_form(request, *, provider, record, initial):
    """The new and edit pages: "preview" parses the sample with the form's mapping, "save" stores it."""
    from payments.forms import CsvMappingForm
    from payments.services import csv_mapping_save

    form = CsvMappingForm(request.POST or None, request.FILES or None, initial=initial)
    preview = None
    if request.method == "POST" and form.is_valid():
        if request.POST.get("action") == "preview":
            sample = form.cleaned_data["sample"]
            if sample:
                preview = _csv_preview(form.mapping, sample)
            else:
                form.add_error("sample", "Choose a sample file to preview the mapping with.")
        else:
            try:
                saved = csv_mapping_save(
                    provider=provider,
                    name=form.cleaned_data["name"],
                    mapping=form.mapping,
                    actor=request.user,
                    instance=record,
                    ip_address=_ip(request),
                )
            except ValidationError as exc:
                for name, errors in exc.message_dict.items():
                    form.add_error(name if name in form.fields else None, errors)
            else:
                messages.success(request, f"CSV mapping “{saved.name}” saved.")
                return redirect("payments:csv_mappings")
    return render(request, "payments/csv_mapping_form.html", {"form": form, "record": record, "preview": preview})


def _csv_preview(mapping, upload) -> dict:
    """The sample read by the importer's own parser: the first entries in file order, or why it can't be read."""
    from payments.statements.detect import parse_statement
    from payments.statements.types import StatementError

    try:
        parsed = parse_statement(upload.read(), upload.name, format="csv", csv_mapping=mapping)
    except StatementError as exc:
        return {"filename": upload.name, "error": str(exc)}
    # Lines and unreadable entries interleaved by line number, as the officer sees them in the file.
    entries = sorted([*parsed.lines, *parsed.errors], key=lambda entry: entry.line_no)[:_PREVIEW_ROWS]
    return {
        "filename": upload.name,
        "entries": [{"line": entry, "error": getattr(entry, "reason", None)} for entry in entries],
        "line_count": len(parsed.lines),
        "error_count": len(parsed.errors),
    }


@login_required
def csv_mapping_delete(request, pk: int):
    """Confirm, then delete a saved mapping (POST only); imports already read with it keep their results."""
    from payments.models import CsvColumnMapping, StatementImport
    from payments.services import csv_mapping_delete as delete_mapping

    record = scoped_get(
        CsvColumnMapping.objects.select_related("provider"), request.user, Right.IMPORT_STATEMENTS, pk=pk
    )
    if request.method == "POST":
        try:
            delete_mapping(mapping=record, actor=request.user, ip_address=_ip(request))
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"CSV mapping “{record.name}” deleted.")
            return redirect("payments:csv_mappings")
    used = StatementImport.objects.filter(provider=record.provider, csv_mapping=record.name).count()
    return render(request, "payments/csv_mapping_confirm_delete.html", {"record": record, "used": used})
