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
