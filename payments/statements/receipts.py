"""A statement's lines as the channel's own record of receipts agents recorded by hand.

A line holding the transaction id of such a receipt is compared as ``payment_ingest``
compares a channel's record of it; it then confirms the receipt (when it was provisional
and the statement is independent of whoever recorded it), or the receipt is flagged to
finance as a conflict. Used by ``payments.statements.reconcile`` for a whole batch at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypedDict

from django.db.models import F

from payments.ledger.matching import contracts_match_many
from payments.ledger.services import channel_record_refusal, conflict_reason
from payments.models import (
    Contract,
    Payment,
    PaymentConfirmation,
    PaymentFlag,
    PaymentSource,
    PaymentStatus,
    StatementImport,
)
from payments.statements.entries import Credit, Differences, Outcome
from portal.audit import AuditEntry, audit_record_many
from portal.models import Organisation, User
from portal.types import Actor


@dataclass
class ReceiptRecords:
    """What a batch's lines say of receipts: the ones they confirm, and the ones whose record differs."""

    confirming: list[Payment] = field(default_factory=list)  # provisional payments these lines confirm
    confirming_line: dict[int, str] = field(default_factory=dict)  # payment id -> its line's fingerprint
    conflicting: dict[int, tuple[Payment, Differences]] = field(default_factory=dict)  # flagged to finance


class HeldReceipt(TypedDict):
    """A receipt's payment as locked for confirming (``lock_receipts``)."""

    pk: int
    status: str
    flag: str
    held_amount: Decimal
    contract_id: int
    recorded_by_id: int
    recorded_by__username: str
    match_rule: str
    external_id: str
    amount: Decimal
    currency: str
    received_at: dt.datetime


def receipt_contracts(provider: Organisation, credits: list[Credit]) -> dict[int, tuple[int, str] | None]:
    """The contract each credit's reference names (id, number), for credits of payments recorded from receipts.

    ``id(credit)`` → (contract id, number) or None; no query when there are none.
    """
    if not credits:
        return {}
    found = contracts_match_many(provider=provider, references=[c.reference for c in credits])
    numbers = dict(Contract.objects.filter(pk__in={m[0] for m in found if m}).values_list("pk", "number"))
    return {id(c): (m[0], numbers[m[0]]) if m else None for c, m in zip(credits, found, strict=True)}


def receipt_differences(credit: Credit, receipt: Payment, named: tuple[int, str] | None) -> Differences:
    """How a line differs from the receipt with its transaction id: ``payment_ingest``'s rules for a
    channel's record of a receipt (``_channel_record_arrived``): amount, currency, and no other contract named.
    """
    differences: Differences = {}
    if credit.amount != receipt.amount:
        differences["amount"] = (str(receipt.amount), str(credit.amount))
    if credit.line.currency != receipt.currency:
        differences["currency"] = (receipt.currency, credit.line.currency)
    if not differences and receipt.contract is not None and named and named[0] != receipt.contract_id:
        differences["contract_number"] = (receipt.contract.number, named[1])
    return differences


def lock_receipts(confirming: list[Payment], conflicting: dict[int, tuple[Payment, Differences]]) -> list[HeldReceipt]:
    """Lock, in id order, the receipts' payments this batch confirms or flags; the ones still to confirm.

    Re-read under the lock: one a person confirmed, or finance reversed, meanwhile is left as
    it is; one flagged for a conflict is never confirmed (finance resolves it).
    """
    ids = {p.pk for p in confirming} | set(conflicting)
    if not ids:
        return []
    rows = list(
        Payment.objects.select_for_update(of=("self",))  # the payments only, not the recorders' accounts
        .filter(pk__in=ids)
        .order_by("pk")
        .values(
            "pk",
            "status",
            "flag",
            "held_amount",
            "contract_id",
            "recorded_by_id",
            "recorded_by__username",
            "match_rule",
            "external_id",
            "amount",
            "currency",
            "received_at",
        )
    )
    wanted = {p.pk for p in confirming}
    return [
        row
        for row in rows
        if row["pk"] in wanted and row["status"] == PaymentStatus.PROVISIONAL and row["flag"] != PaymentFlag.CONFLICT
    ]


def independent_of_uploader(
    held: list[HeldReceipt], *, record: StatementImport, stored: dict[str, Outcome], confirming_line: dict[int, str]
) -> tuple[list[HeldReceipt], int]:
    """The receipts this statement may confirm (not its uploader's own, nor those of an account linked
    to them), and how many it may not.

    The others stay provisional (a second person confirms them); their lines say why.
    """

    carrier = record.carried_by if held else None
    if carrier is None:
        return held, 0
    # One four-eyes check per person who recorded receipts here, not per receipt.
    recorders = User.objects.in_bulk({row["recorded_by_id"] for row in held})
    refused_by = {pk: channel_record_refusal(recorded_by=user, carried_by=carrier) for pk, user in recorders.items()}
    kept = []
    for row in held:
        if refused_by.get(row["recorded_by_id"]) is None:
            kept.append(row)
            continue
        # Not linked to the payment: the bank's own statement, uploaded by someone independent,
        # must still be able to link and confirm it later.
        stored[confirming_line[row["pk"]]] = (receipt_not_confirmed_note(row["pk"]), None)
    return kept, len(held) - len(kept)


def receipt_not_confirmed_note(payment_id: int) -> str:
    """A statement line's note when it holds a receipt's transaction but may not confirm it (both import paths).

    Neutral on purpose: every finance officer reads it; who set up whom is the auditor's business.
    """
    return (
        f"Not credited: payment #{payment_id}, a receipt recorded by this statement's uploader or by an account "
        "linked to theirs (four eyes). A second person confirms it on the payment's page."
    )


def receipts_confirm(held: list[HeldReceipt], *, now: dt.datetime) -> None:
    """Confirm the held receipts in one UPDATE: verified, nothing held any more, any flag answered."""
    if held:
        # Under the row locks of lock_receipts: these are still provisional and not in conflict.
        Payment.objects.filter(pk__in=[row["pk"] for row in held]).update(
            status=PaymentStatus.VERIFIED,
            held_amount=Decimal("0"),
            confirmed_via=PaymentConfirmation.STATEMENT,
            confirmed_at=now,
            confirmed_by=None,
            verified_by=F("recorded_by"),
            verified_at=now,
            flag="",  # a conflict was excluded; a "not confirmed in time" flag is answered
            flag_reason="",
            flagged_at=None,
        )


def flag_conflicts(
    provider: Organisation, conflicting: dict[int, tuple[Payment, Differences]], *, now: dt.datetime, actor: Actor
) -> None:
    """Flag to finance, in one UPDATE, each receipt whose bank record differs; one ``payment.flag`` event each.

    The rows are locked (``lock_receipts``); ``payment_flag``'s rules: a reversed payment is
    not flagged, the same flag and reason again change nothing.
    """
    if not conflicting:
        return
    current = {
        p.pk: p for p in Payment.objects.filter(pk__in=list(conflicting)).only("pk", "status", "flag", "flag_reason")
    }
    changes = []
    for pk, (payment, differences) in sorted(conflicting.items()):
        text = conflict_reason(source=PaymentSource.STATEMENT, differences=differences)[:300]
        row = current[pk]
        if row.status == PaymentStatus.REVERSED or (row.flag, row.flag_reason) == (PaymentFlag.CONFLICT, text):
            continue
        changes.append((row, payment, text))
    if not changes:
        return
    before = {row.pk: {"flag": row.flag, "reason": row.flag_reason} for row, _p, _t in changes}
    for row, _payment, text in changes:
        row.flag, row.flag_reason, row.flagged_at = PaymentFlag.CONFLICT, text, now
    Payment.objects.bulk_update([row for row, _p, _t in changes], ["flag", "flag_reason", "flagged_at"])
    audit_record_many(
        actor=actor,
        entries=[
            AuditEntry(
                action="payment.flag",
                organisation=provider,
                object_type=Payment._meta.label,
                object_id=str(row.pk),
                object_repr=str(payment),
                before=before[row.pk],
                after={"flag": PaymentFlag.CONFLICT, "reason": text},
            )
            for row, payment, text in changes
        ],
    )
