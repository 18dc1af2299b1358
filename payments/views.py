"""Staff portal pages for contracts and their schedules."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.shortcuts import render

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
    return render(
        request,
        "payments/contract_detail.html",
        {"contract": contract, "rows": rows, "position": position, "today": today},
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
