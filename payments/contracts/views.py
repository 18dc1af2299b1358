"""Staff pages for contracts and their schedules."""

from __future__ import annotations

import datetime as dt
from typing import cast

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from payments.contracts.selectors import contract_payments, contract_position, contracts_with_totals, schedule_rows
from payments.models import Contract, ContractStatus
from portal.models import User
from portal.permissions import Right, has_right, scoped_get, scoped_list


@login_required
def contract_list(request: HttpRequest) -> HttpResponse:
    user = cast(User, request.user)  # login_required: a signed-in staff user
    contracts = scoped_list(Contract.objects.select_related("device", "customer", "provider"), user, Right.VIEW_FINANCE)
    q = request.GET.get("q", "").strip()
    status = request.GET.get("status", "")
    device = request.GET.get("device", "")
    if q:
        contracts = contracts.filter(Q(number__iexact=q) | Q(customer__name__icontains=q) | Q(device__imei=q))
    if status in ContractStatus.values:
        contracts = contracts.filter(status=status)
    if device.isdigit():
        contracts = contracts.filter(device_id=int(device))
    today: dt.date = user.organisation.today()
    contracts = contracts_with_totals(contracts, today=today).order_by("-id")
    page = Paginator(contracts, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "payments/contract_list.html",
        {"page": page, "q": q, "status": status, "statuses": ContractStatus.choices},
    )


@login_required
def contract_detail(request: HttpRequest, pk: int) -> HttpResponse:
    contract = scoped_get(
        Contract.objects.select_related("device", "customer", "provider"), request.user, Right.VIEW_FINANCE, pk=pk
    )
    today: dt.date = contract.provider.today()
    rows = schedule_rows(contract, today=today)
    position = contract_position(contract, today=today, installments=[r["installment"] for r in rows])

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
