"""Reads of the ledger: payment lists and counts, match suggestions, a payment's story."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

import phonenumbers
from django.db.models import Count, Q, QuerySet

from payments.ledger.matching import reference_prefix_key
from payments.models import (
    Contract,
    ContractStatus,
    Installment,
    Payment,
    PaymentAllocation,
    PaymentProof,
    PaymentStatus,
    reference_number_keys,
)
from portal.models import AuditEvent
from portal.permissions import Right, scoped_list
from portal.types import Actor

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

    # A reversed payment is settled: its flag is history (in the audit trail), not work.
    return ~Q(flag="") & ~Q(status=PaymentStatus.REVERSED)


def payments_for(actor: Actor, *, status: str = "") -> QuerySet[Payment]:
    """The payments an actor may read (403 without VIEW_FINANCE), newest first, ready for a list.

    ``status`` is a payment status, or ``flagged`` for the payments flagged to finance.
    """

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


def payment_status_counts(actor: Actor) -> dict[str, int]:
    """How many of the actor's payments are in each status, and how many are flagged (``flagged``), in one query."""

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


def unmatched_payments_panel(actor: Actor) -> dict[str, int]:
    """The finance officer's home panel: unmatched payments waiting, receipts to confirm, flagged ones (one query)."""

    counts = payment_status_counts(actor)
    return {
        "unmatched": counts.get(PaymentStatus.UNMATCHED, 0),
        "provisional": counts.get(PaymentStatus.PROVISIONAL, 0),
        "flagged": counts[FLAGGED],
    }


#: Per unmatched payment: the contracts it may be for, with the reasons each.
_Hits = dict[int, dict[int, set[str]]]


def _note(hits: _Hits, payment: Payment, contract_id: int, reason: str) -> None:
    hits[payment.pk].setdefault(contract_id, set()).add(reason)


def _reference_hits(live: QuerySet[Contract], unmatched: list[Payment], hits: _Hits) -> None:
    """The reference names a contract: exact keys (number_key is indexed) and the whole reference as a prefix."""
    keys_of = {p.pk: (reference_number_keys(p.reference), reference_prefix_key(p.reference)) for p in unmatched}
    all_keys: set[str] = set().union(*(k for k, _w in keys_of.values()))
    prefixes = {w for _k, w in keys_of.values() if w}
    if not all_keys and not prefixes:
        return
    query = Q(number_key__in=all_keys) if all_keys else Q(pk__in=[])
    for prefix in prefixes:
        query |= Q(number_key__startswith=prefix)
    rows = list(live.filter(query).values_list("pk", "provider_id", "number_key")[:200])
    for payment in unmatched:
        keys, whole = keys_of[payment.pk]
        for pk, provider_id, key in rows:
            if provider_id != payment.provider_id:
                continue
            if key in keys:
                _note(hits, payment, pk, "reference")
            elif whole and key.startswith(whole):
                _note(hits, payment, pk, "reference_prefix")


def _phone_hits(live: QuerySet[Contract], unmatched: list[Payment], hits: _Hits) -> None:
    """The payer's phone is a customer's (Customer.phone is indexed, stored E.164)."""
    phones: dict[int, str] = {}
    for payment in unmatched:
        try:
            number = phonenumbers.parse(payment.payer_phone, payment.provider.country)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            phones[payment.pk] = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not phones:
        return
    found = live.filter(customer__phone__in=set(phones.values()))
    rows = list(found.values_list("pk", "provider_id", "customer__phone")[:200])
    for payment in unmatched:
        for pk, provider_id, phone in rows:
            if provider_id == payment.provider_id and str(phone) == phones.get(payment.pk):
                _note(hits, payment, pk, "payer_phone")


def _amount_hits(live: QuerySet[Contract], unmatched: list[Payment], hits: _Hits) -> None:
    """The amount is exactly an installment still due, near the payment's date (due_date is indexed)."""
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
                _note(hits, payment, contract_id, "amount")


def _ranked(hits: _Hits) -> dict[int, list[Suggestion]]:
    """The best few contracts per payment by score, loaded in one query for the page."""
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


def payments_suggestions(payments: Iterable[Payment]) -> dict[int, list[Suggestion]]:
    """Up to three likely contracts for each unmatched payment in ``payments``, in four queries whatever their number.

    Signals, each an indexed lookup: the reference names a contract number (normalised,
    exact key or the key as a prefix), the payer phone is a customer's, the amount equals an
    installment still due near the payment's date. Cancelled and paid-off contracts are left out.
    """
    unmatched = [p for p in payments if p.status == PaymentStatus.UNMATCHED]
    if not unmatched:
        return {}
    provider_ids = {p.provider_id for p in unmatched}
    live = Contract.objects.filter(provider_id__in=provider_ids, status=ContractStatus.ACTIVE)
    hits: _Hits = {p.pk: {} for p in unmatched}
    _reference_hits(live, unmatched, hits)
    _phone_hits(live, unmatched, hits)
    _amount_hits(live, unmatched, hits)
    return _ranked(hits)


def payment_suggestions(payment: Payment) -> list[Suggestion]:
    """Up to three likely contracts for one unmatched payment (see ``payments_suggestions``)."""
    return payments_suggestions([payment]).get(payment.pk, [])


class PaymentStory(TypedDict):
    """What a payment's page shows of its history."""

    allocations: list[PaymentAllocation]
    proofs: list[PaymentProof]
    events: list[AuditEvent]


def payment_story(payment: Payment) -> PaymentStory:
    """One payment's allocations, proofs and audit events, for its page (three queries)."""

    return {
        "allocations": list(payment.allocations.select_related("installment").order_by("id")),
        "proofs": list(payment.proofs.select_related("uploaded_by").order_by("-uploaded_at")),
        "events": list(
            AuditEvent.objects.filter(
                object_type="payments.Payment", object_id=str(payment.pk), organisation_id=payment.provider_id
            ).order_by("id")[:100]
        ),
    }


def payments_with_transaction_id(*, provider_id: int, transaction_id: str) -> list[Payment]:
    """The provider's payments with this transaction id, as a customer reads it out (case-insensitive form)."""
    raw = (transaction_id or "").strip()
    if not raw:
        return []

    variants = {raw, raw.upper()}
    return list(
        Payment.objects.filter(provider_id=provider_id, external_id__in=variants)
        .select_related("contract", "verified_by", "recorded_by")
        .order_by("-received_at")[:5]
    )
