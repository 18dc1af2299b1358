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
                provider=provider, actor=request.user, ip_address=request.META.get("REMOTE_ADDR"), **form.cleaned_data
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


def _sample_values(provider) -> dict[str, str]:
    """Placeholder values for the preview: what a real owner's screen would show."""
    from decimal import Decimal

    from payments.money import format_money

    return {
        "provider": provider.name,
        "amount": format_money(Decimal("12500"), provider.currency or "USD"),
        "currency": provider.currency,
        "overdue_since": "1 Nov 2026",
        "contract": "CONTRACT-0001",
        "imei": "356938035643809",
        "hotline": (provider.hotline_numbers or [""])[0],
    }


@login_required
def lock_screen_texts(request, language: str | None = None):
    """The provider admin writes what locked phones say, per language, with placeholders."""
    from django.contrib import messages
    from django.core.exceptions import ValidationError
    from django.http import Http404
    from django.shortcuts import redirect

    from payments.forms import LockScreenTextForm
    from payments.lockscreen import DEFAULT_TEXTS, TEXT_FIELDS
    from payments.models import LOCK_SCREEN_PLACEHOLDERS, LockScreenText
    from payments.services import lock_screen_text_save
    from portal.permissions import Right, require

    require(request.user, Right.MANAGE_SETTINGS)
    provider = request.user.organisation
    languages = list(dict.fromkeys([*provider.languages, "en"]))
    language = language or languages[0]
    if language not in languages:
        raise Http404("Not one of this provider's languages.")
    saved = LockScreenText.objects.filter(provider=provider, language=language).first()
    defaults = DEFAULT_TEXTS.get(language, DEFAULT_TEXTS["en"])
    initial = {f: getattr(saved, f) if saved else defaults[f] for f in TEXT_FIELDS}
    form = LockScreenTextForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            lock_screen_text_save(
                provider=provider,
                language=language,
                actor=request.user,
                ip_address=request.META.get("REMOTE_ADDR"),
                **form.cleaned_data,
            )
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, errors)
        else:
            messages.success(request, f"Lock-screen text ({language}) saved; phones get it with their next command.")
            return redirect("locks:screen_language", language=language)
    shown = form.data if form.is_bound else initial
    values = _sample_values(provider)
    try:
        preview = {f: str(shown.get(f, "")).format_map(values) for f in ("title", "body")}
    except (KeyError, ValueError, IndexError):
        preview = None  # the form shows the error; no preview of a broken text
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
            "preview": preview,
            "shown": shown,
        },
    )


# --- payments: the finance queue, one payment, verifying with the customer on the line ----------


def _ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _payment_for(request, pk: int, right: Right):
    """One payment in the user's scope: 404 outside it, 403 without ``right``."""
    from payments.models import Payment

    return scoped_get(Payment.objects.select_related("contract", "provider", "verified_by"), request.user, right, pk=pk)


@login_required
def payment_list(request):
    """The finance queue: the provider's payments by status, unmatched first, newest first, with suggestions."""
    from payments.forms import MatchByNumberForm
    from payments.models import PaymentStatus
    from payments.selectors import payment_status_counts, payments_for, payments_suggestions
    from portal.permissions import has_right

    status = request.GET.get("status", PaymentStatus.UNMATCHED)
    if status not in PaymentStatus.values and status != "all":
        status = PaymentStatus.UNMATCHED
    page = Paginator(payments_for(request.user, status="" if status == "all" else status), 25).get_page(
        request.GET.get("page")
    )
    counts = payment_status_counts(request.user)
    tabs = [(value, label, counts.get(value, 0)) for value, label in PaymentStatus.choices]
    tabs.append(("all", "All", sum(counts.values())))
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
    from payments.forms import MatchByNumberForm
    from payments.models import PaymentStatus
    from payments.selectors import payment_story, payment_suggestions
    from portal.permissions import has_right

    payment = _payment_for(request, pk, Right.VIEW_FINANCE)
    unmatched = payment.status == PaymentStatus.UNMATCHED
    return render(
        request,
        "payments/payment_detail.html",
        {
            "payment": payment,
            **payment_story(payment),
            "suggestions": payment_suggestions(payment) if unmatched else [],
            "match_form": MatchByNumberForm(),
            "can_match": unmatched and has_right(request.user, Right.RECORD_PAYMENTS),
            "can_verify": payment.status == PaymentStatus.MATCHED and has_right(request.user, Right.VERIFY_PAYMENTS),
            "can_reverse": payment.status != PaymentStatus.REVERSED and has_right(request.user, Right.RECORD_PAYMENTS),
        },
    )


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
    from django.http import FileResponse, Http404

    from payments.models import PaymentProof
    from payments.uploads import ACCEPTED

    proof = scoped_get(
        PaymentProof.objects.select_related("payment"),
        request.user,
        Right.VIEW_FINANCE,
        provider_field="payment__provider",
        pk=pk,
    )
    try:
        handle = proof.file.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("The proof file is missing.") from None
    extension = ACCEPTED.get(proof.content_type, "bin")
    response = FileResponse(
        handle,
        as_attachment=True,
        filename=f"proof-{proof.payment.external_id}-{proof.pk}.{extension}",
        content_type=proof.content_type if proof.content_type in ACCEPTED else "application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, no-store"
    return response


def _verify_existing(request, contract, form) -> bool:
    """Verify the payment the agent confirmed (of the contract's provider); True when done, else a message says why."""
    from payments.models import Payment
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
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return False
    messages.success(request, f"Payment {payment.external_id} verified for contract {contract.number}.")
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
        initial={"transaction_id": transaction_id, "received_at": timezone.localtime(timezone.now(), provider.zone)},
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
                payment_record_from_proof(
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
                messages.success(
                    request, f"Payment {data['transaction_id']} recorded, verified and credited to {contract.number}."
                )
                return redirect("payments:contract", pk=contract.pk)

    return render(
        request,
        "payments/verify_payment.html",
        {
            "contract": contract,
            "lookup": lookup if lookup.is_bound else TransactionLookupForm(),
            "transaction_id": transaction_id,
            "searched": bool(transaction_id),
            "found": found,
            "verify_form": verify_form,
            "record_form": record_form,
            "show_record": action == "record" or (transaction_id and not found),
        },
    )


@login_required
def statement_list(request):
    """Finance officers upload statements and follow their imports."""
    from django.contrib import messages
    from django.core.exceptions import ValidationError
    from django.db import transaction
    from django.shortcuts import redirect

    from payments.forms import StatementUploadForm
    from payments.imports import statement_import_create
    from payments.models import StatementImport
    from payments.tasks import import_statement
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
                ip_address=request.META.get("REMOTE_ADDR"),
            )
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                form.add_error(name if name in form.fields else None, errors)
        else:
            transaction.on_commit(lambda: import_statement.delay(record.pk))
            messages.success(request, f"{record.filename} is being imported.")
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
