"""Reads of contracts: positions (paid, due, overdue), schedules, the provider overview, lookups by number."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from payments.models import Contract, Installment, Payment, contract_number_key
from portal.models import User
from portal.permissions import ApiClient, Right, scoped_list

ZERO = Decimal("0")


_money: DecimalField[Decimal, Decimal] = DecimalField(max_digits=14, decimal_places=2)


def provider_today(contract: Contract, now: dt.datetime | None = None) -> dt.date:
    """Today's date in the contract's provider time zone (due dates are local dates)."""
    today: dt.date = contract.provider.today(now)  # type: ignore[no-untyped-call]  # Organisation.today is unannotated
    return today


@dataclass(frozen=True)
class ContractPosition:
    """Where a contract stands on a given day."""

    currency: str
    financed: Decimal
    paid: Decimal
    balance: Decimal
    arrears: Decimal
    overdue_since: dt.date | None
    next_due_date: dt.date | None
    next_due_amount: Decimal | None


def contract_position(
    contract: Contract, *, today: dt.date | None = None, installments: Iterable[Installment] | None = None
) -> ContractPosition:
    """Balance, arrears (unpaid amounts past their due date) and next due, from the schedule."""
    today = today or provider_today(contract)
    rows = list(installments if installments is not None else contract.installments.all())
    paid = sum((i.amount_paid for i in rows), ZERO)
    overdue = [i for i in rows if i.due_date < today and i.amount_paid < i.amount_due]
    upcoming = [i for i in rows if i.due_date >= today and i.amount_paid < i.amount_due]
    nxt = min(upcoming, key=lambda i: i.due_date) if upcoming else None
    return ContractPosition(
        currency=contract.currency,
        financed=contract.financed_amount,
        paid=paid,
        balance=contract.financed_amount - paid,
        arrears=sum((i.amount_due - i.amount_paid for i in overdue), ZERO),
        overdue_since=min((i.due_date for i in overdue), default=None),
        next_due_date=nxt.due_date if nxt else None,
        next_due_amount=(nxt.amount_due - nxt.amount_paid) if nxt else None,
    )


def contracts_with_totals(qs: QuerySet[Contract], *, today: dt.date) -> QuerySet[Contract]:
    """Annotate ``paid_total`` and ``arrears_total`` in SQL, for lists (one query)."""
    return qs.annotate(
        paid_total=Coalesce(Sum("installments__amount_paid"), Value(ZERO), output_field=_money),
        arrears_total=Coalesce(
            Sum(
                F("installments__amount_due") - F("installments__amount_paid"),
                filter=Q(installments__due_date__lt=today, installments__amount_paid__lt=F("installments__amount_due")),
            ),
            Value(ZERO),
            output_field=_money,
        ),
    )


def schedule_rows(contract: Contract, *, today: dt.date | None = None) -> list[dict[str, Any]]:
    """The schedule as an agent reads it: each installment with paid / due / overdue."""
    today = today or provider_today(contract)
    return [
        {"installment": i, "status": i.status_on(today), "outstanding": i.amount_due - i.amount_paid}
        for i in Installment.objects.filter(contract=contract).order_by("number")
    ]


def provider_overview(actor: User | ApiClient) -> dict[str, Any]:
    """Headline figures for a provider's home page, in two queries."""

    contracts = scoped_list(Contract.objects.all(), actor, Right.VIEW_FINANCE)
    today: dt.date = actor.organisation.today()  # type: ignore[no-untyped-call]  # Organisation.today is unannotated
    by_status = dict(contracts.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    overdue = Installment.objects.filter(
        contract__in=contracts.filter(status="active"), due_date__lt=today, amount_paid__lt=F("amount_due")
    ).aggregate(
        contracts=Count("contract", distinct=True),
        amount=Coalesce(Sum(F("amount_due") - F("amount_paid")), Value(ZERO), output_field=_money),
    )
    return {
        "active": by_status.get("active", 0),
        "paid_off": by_status.get("paid_off", 0),
        "defaulted": by_status.get("defaulted", 0),
        "overdue_contracts": overdue["contracts"],
        "arrears": overdue["amount"],
        "currency": actor.organisation.currency,
    }


def contract_for_number(*, provider_id: int, text: str) -> Contract | None:
    """The provider's contract an officer typed: the exact number, else the one contract with its normalised key."""

    text = (text or "").strip()
    if not text:
        return None
    contracts = Contract.objects.filter(provider_id=provider_id)
    exact = contracts.filter(number=text).first()
    if exact is not None:
        return exact
    keyed = list(contracts.filter(number_key=contract_number_key(text))[:2])
    return keyed[0] if len(keyed) == 1 else None


def contract_payments(contract: Contract, *, limit: int = 50) -> list[Payment]:
    """A contract's payments, newest first, with who verified or recorded them (one query)."""
    return list(contract.payments.select_related("verified_by", "recorded_by").order_by("-received_at", "-id")[:limit])
