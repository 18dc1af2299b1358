"""Reads of the money side: balances, arrears and what an agent sees at a glance."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, DecimalField, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from payments.models import Contract, Installment

ZERO = Decimal("0")
_money = DecimalField(max_digits=14, decimal_places=2)


def provider_today(contract: Contract, now: dt.datetime | None = None) -> dt.date:
    """Today's date in the contract's provider time zone (due dates are local dates)."""
    return contract.provider.today(now)


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


def contract_position(contract: Contract, *, today: dt.date | None = None, installments=None) -> ContractPosition:
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


def schedule_rows(contract: Contract, *, today: dt.date | None = None) -> list[dict]:
    """The schedule as an agent reads it: each installment with paid / due / overdue."""
    today = today or provider_today(contract)
    return [
        {"installment": i, "status": i.status_on(today), "outstanding": i.amount_due - i.amount_paid}
        for i in Installment.objects.filter(contract=contract).order_by("number")
    ]


def provider_overview(actor) -> dict:
    """Headline figures for a provider's home page, in two queries."""
    from portal.permissions import Right, scoped_list

    contracts = scoped_list(Contract.objects.all(), actor, Right.VIEW_FINANCE)
    today = actor.organisation.today()
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


def paid_still_locked(actor, *, now=None) -> QuerySet[Contract]:
    """Contracts whose arrears were cleared but whose phone has not acknowledged the unlock in time.

    "In time" is each provider's ``unlock_alert_minutes``. The most common owner complaint:
    "I paid and my phone is still locked".
    """
    import datetime as _dt

    from django.utils import timezone

    from payments.models import LockPolicy
    from portal.models import Organisation
    from portal.permissions import Right, scoped_list

    now = now or timezone.now()
    contracts = scoped_list(Contract.objects.all(), actor, Right.VIEW_FINANCE)
    provider_ids = contracts.values("provider_id").distinct()
    minutes = dict(
        LockPolicy.objects.filter(provider_id__in=provider_ids).values_list("provider_id", "unlock_alert_minutes")
    )
    late = Q(pk__in=[])
    for provider_id in Organisation.objects.filter(pk__in=provider_ids).values_list("pk", flat=True):
        cutoff = now - _dt.timedelta(minutes=minutes.get(provider_id, 15))
        late |= Q(provider_id=provider_id, arrears_cleared_at__lte=cutoff)
    return (
        contracts.filter(late, lock_state__in=["unlocked", "reminder", "released"])
        .filter(Q(device__reported_state="locked") | ~Q(device__reported_state=F("device__desired_state")))
        .select_related("device", "customer", "provider")
        .order_by("arrears_cleared_at")
    )


# --- payments: the finance queue, suggestions, one payment's story --------------------------------

SUGGESTION_LIMIT = 3
# How far around a payment's date an installment counts as "the one this amount pays".
_AMOUNT_WINDOW = dt.timedelta(days=45)
_REASON_SCORES = {"reference": 60, "reference_prefix": 40, "payer_phone": 50, "amount": 25}
_REASON_LABELS = {
    "reference": "reference names it",
    "reference_prefix": "reference starts like it",
    "payer_phone": "same payer phone",
    "amount": "amount = an installment due",
}


@dataclass(frozen=True)
class Suggestion:
    """A contract an unmatched payment may be for, and why."""

    contract: Contract
    score: int
    reasons: tuple[str, ...]

    @property
    def why(self) -> str:
        return ", ".join(_REASON_LABELS[r] for r in self.reasons)


#: The finance queue's tab of flagged payments (receipts whose channel record differs or never came).
FLAGGED = "flagged"


def _flagged() -> Q:
    from payments.models import PaymentStatus

    # A reversed payment is settled: its flag is history (in the audit trail), not work.
    return ~Q(flag="") & ~Q(status=PaymentStatus.REVERSED)


def payments_for(actor, *, status: str = "") -> QuerySet:
    """The payments an actor may read (403 without VIEW_FINANCE), newest first, ready for a list.

    ``status`` is a payment status, or ``flagged`` for the payments flagged to finance.
    """
    from payments.models import Payment, PaymentStatus
    from portal.permissions import Right, scoped_list

    payments = scoped_list(
        Payment.objects.select_related("contract", "verified_by", "recorded_by", "provider"),
        actor,
        Right.VIEW_FINANCE,
    )
    if status in PaymentStatus.values:
        payments = payments.filter(status=status)
    elif status == FLAGGED:
        payments = payments.filter(_flagged())
    return payments.order_by("-received_at", "-id")


def payment_status_counts(actor) -> dict[str, int]:
    """How many of the actor's payments are in each status, and how many are flagged (``flagged``), in one query."""
    from payments.models import Payment
    from portal.permissions import Right, scoped_list

    rows = (
        scoped_list(Payment.objects.all(), actor, Right.VIEW_FINANCE)
        .values_list("status")
        .annotate(n=Count("id"), flagged=Count("id", filter=_flagged()))
    )
    counts: dict[str, int] = {FLAGGED: 0}
    for status, n, flagged in rows.values_list("status", "n", "flagged"):
        counts[status] = n
        counts[FLAGGED] += flagged
    return counts


def unmatched_payments_panel(actor) -> dict:
    """The finance officer's home panel: unmatched payments waiting, receipts to confirm, flagged ones (one query)."""
    from payments.models import PaymentStatus

    counts = payment_status_counts(actor)
    return {
        "unmatched": counts.get(PaymentStatus.UNMATCHED, 0),
        "provisional": counts.get(PaymentStatus.PROVISIONAL, 0),
        "flagged": counts[FLAGGED],
    }


def _reference_keys(reference: str) -> tuple[set[str], str]:
    """Candidate contract-number keys in a payer's free text, and the whole text's key (for prefixes)."""
    from payments.models import contract_number_key, reference_number_keys

    whole = contract_number_key(reference or "")
    return reference_number_keys(reference), whole if len(whole) >= 4 and any(ch.isdigit() for ch in whole) else ""


def payments_suggestions(payments) -> dict[int, list[Suggestion]]:
    """Up to three likely contracts for each unmatched payment in ``payments``, in four queries whatever their number.

    Signals, each an indexed lookup: the reference names a contract number (normalised,
    exact key or the key as a prefix), the payer phone is a customer's, the amount equals an
    installment still due near the payment's date. Cancelled and paid-off contracts are left out.
    """
    import phonenumbers

    from payments.models import ContractStatus, PaymentStatus

    unmatched = [p for p in payments if p.status == PaymentStatus.UNMATCHED]
    if not unmatched:
        return {}
    provider_ids = {p.provider_id for p in unmatched}
    live = Contract.objects.filter(provider_id__in=provider_ids, status=ContractStatus.ACTIVE)
    hits: dict[int, dict[int, set[str]]] = {p.pk: {} for p in unmatched}

    def note(payment, contract_id: int, reason: str) -> None:
        hits[payment.pk].setdefault(contract_id, set()).add(reason)

    # 1. References: exact keys (number_key is indexed) and the whole reference as a prefix.
    keys_of = {p.pk: _reference_keys(p.reference) for p in unmatched}
    all_keys = set().union(*(k for k, _w in keys_of.values()))
    prefixes = {w for _k, w in keys_of.values() if w}
    query = Q(number_key__in=all_keys) if all_keys else Q(pk__in=[])
    for prefix in prefixes:
        query |= Q(number_key__startswith=prefix)
    if all_keys or prefixes:
        rows = list(live.filter(query).values_list("pk", "provider_id", "number_key")[:200])
        for payment in unmatched:
            keys, whole = keys_of[payment.pk]
            for pk, provider_id, key in rows:
                if provider_id != payment.provider_id:
                    continue
                if key in keys:
                    note(payment, pk, "reference")
                elif whole and key.startswith(whole):
                    note(payment, pk, "reference_prefix")

    # 2. The payer's phone is a customer's (Customer.phone is indexed, stored E.164).
    phones: dict[int, str] = {}
    for payment in unmatched:
        try:
            number = phonenumbers.parse(payment.payer_phone, payment.provider.country)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            phones[payment.pk] = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if phones:
        rows = list(
            live.filter(customer__phone__in=set(phones.values())).values_list("pk", "provider_id", "customer__phone")[
                :200
            ]
        )
        for payment in unmatched:
            for pk, provider_id, phone in rows:
                if provider_id == payment.provider_id and str(phone) == phones.get(payment.pk):
                    note(payment, pk, "payer_phone")

    # 3. The amount is exactly an installment still due, near the payment's date (due_date is indexed).
    earliest = min(p.received_at for p in unmatched).date() - _AMOUNT_WINDOW
    latest = max(p.received_at for p in unmatched).date() + _AMOUNT_WINDOW
    rows = list(
        Installment.objects.filter(
            contract__in=live,
            due_date__range=(earliest, latest),
            amount_due__in={p.amount for p in unmatched},
            amount_paid=0,
        ).values_list("contract_id", "contract__provider_id", "amount_due", "due_date")[:300]
    )
    for payment in unmatched:
        day = payment.received_at.date()
        fits = {
            contract_id
            for contract_id, provider_id, amount, due in rows
            if provider_id == payment.provider_id and amount == payment.amount and abs(due - day) <= _AMOUNT_WINDOW
        }
        # An amount many contracts share says nothing on its own; it only reinforces another signal.
        for contract_id in fits:
            if len(fits) <= SUGGESTION_LIMIT or contract_id in hits[payment.pk]:
                note(payment, contract_id, "amount")

    # 4. The contracts themselves, for the page.
    ranked: dict[int, list[tuple[int, int, tuple[str, ...]]]] = {}
    wanted: set[int] = set()
    for payment_pk, by_contract in hits.items():
        scored = sorted(
            (
                (
                    sum(_REASON_SCORES[r] for r in reasons),
                    contract_id,
                    tuple(sorted(reasons, key=list(_REASON_SCORES).index)),
                )
                for contract_id, reasons in by_contract.items()
            ),
            key=lambda t: (-t[0], -t[1]),
        )[:SUGGESTION_LIMIT]
        ranked[payment_pk] = scored
        wanted.update(contract_id for _s, contract_id, _r in scored)
    contracts = Contract.objects.select_related("customer").in_bulk(wanted) if wanted else {}
    return {
        payment_pk: [
            Suggestion(contract=contracts[contract_id], score=min(score, 100), reasons=reasons)
            for score, contract_id, reasons in scored
            if contract_id in contracts
        ]
        for payment_pk, scored in ranked.items()
    }


def payment_suggestions(payment) -> list[Suggestion]:
    """Up to three likely contracts for one unmatched payment (see ``payments_suggestions``)."""
    return payments_suggestions([payment]).get(payment.pk, [])


def contract_for_number(*, provider_id: int, text: str) -> Contract | None:
    """The provider's contract an officer typed: the exact number, else the one contract with its normalised key."""
    from payments.models import contract_number_key

    text = (text or "").strip()
    if not text:
        return None
    contracts = Contract.objects.filter(provider_id=provider_id)
    exact = contracts.filter(number=text).first()
    if exact is not None:
        return exact
    keyed = list(contracts.filter(number_key=contract_number_key(text))[:2])
    return keyed[0] if len(keyed) == 1 else None


def payment_story(payment) -> dict:
    """One payment's allocations, proofs and audit events, for its page (three queries)."""
    from portal.models import AuditEvent

    return {
        "allocations": list(payment.allocations.select_related("installment").order_by("id")),
        "proofs": list(payment.proofs.select_related("uploaded_by").order_by("-uploaded_at")),
        "events": list(
            AuditEvent.objects.filter(
                object_type="payments.Payment", object_id=str(payment.pk), organisation_id=payment.provider_id
            ).order_by("id")[:100]
        ),
    }


def contract_payments(contract: Contract, *, limit: int = 50) -> list:
    """A contract's payments, newest first, with who verified or recorded them (one query)."""
    return list(contract.payments.select_related("verified_by", "recorded_by").order_by("-received_at", "-id")[:limit])


def payments_with_transaction_id(*, provider_id: int, transaction_id: str) -> list:
    """The provider's payments with this transaction id, as a customer reads it out (case-insensitive form)."""
    raw = (transaction_id or "").strip()
    if not raw:
        return []
    from payments.models import Payment

    variants = {raw, raw.upper()}
    return list(
        Payment.objects.filter(provider_id=provider_id, external_id__in=variants)
        .select_related("contract", "verified_by", "recorded_by")
        .order_by("-received_at")[:5]
    )
