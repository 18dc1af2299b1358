"""Staff verification of payments: matching by hand, verifying, reversing, and recording from a receipt's proof."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, cast

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from payments.contracts.services import contract_set_status
from payments.ledger.confirm import payment_apply, payment_confirm
from payments.ledger.errors import PaymentAlreadyRecorded, PaymentAlreadyVerified, WrongContract
from payments.ledger.services import payment_ingest
from payments.locks.services import contracts_lock_evaluate
from payments.models import (
    Contract,
    ContractStatus,
    Installment,
    Payment,
    PaymentProof,
    PaymentStatus,
)
from portal.audit import audit_record
from portal.models import User
from portal.types import Actor
from portal.uploads import CheckedProof


def payment_match_manual(
    *, payment: Payment, contract: Contract, actor: Actor, ip_address: str | None = None
) -> Payment:
    """A finance officer matches an unmatched payment to a contract; allocated and decided at once."""

    with transaction.atomic():
        # Race: two officers matching the same payment; the row lock lets the second see it matched.
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        if payment.status != PaymentStatus.UNMATCHED:
            raise ValidationError({"status": [f"This payment is already {payment.get_status_display().lower()}."]})
        if contract.provider_id != payment.provider_id:
            raise ValidationError({"contract": ["Not a contract of this payment's provider."]})
        payment_apply(payment=payment, contract=contract, rule="manual", confidence=100, actor=actor)
        payment.refresh_from_db()
    return payment


def payment_verify(*, payment: Payment, actor: User, proof: str = "", ip_address: str | None = None) -> Payment:
    """A call-center agent confirms a matched payment with the customer's proof; once only.

    Two agents verifying at once: the conditional UPDATE lets exactly one through and
    the other gets ``PaymentAlreadyVerified``. A provisional payment (recorded from a
    receipt) is not verified but confirmed (``payment_confirm``).
    """

    now = timezone.now()
    with transaction.atomic():
        done = Payment.objects.filter(pk=payment.pk, status=PaymentStatus.MATCHED).update(
            status=PaymentStatus.VERIFIED, verified_by=actor, verified_at=now
        )
        if not done:
            current = Payment.objects.get(pk=payment.pk)
            if current.status == PaymentStatus.VERIFIED:
                who = current.verified_by.get_username() if current.verified_by else "someone"
                raise PaymentAlreadyVerified(f"Already verified by {who}; nothing more to do.")
            if current.status == PaymentStatus.PROVISIONAL:
                raise ValidationError(
                    {
                        "status": [
                            "This payment was recorded from a receipt alone: a second person confirms it, "
                            "or the channel's own record with the same transaction id does."
                        ]
                    }
                )
            raise ValidationError(
                {"status": [f"A {current.get_status_display().lower()} payment cannot be verified; match it first."]}
            )
        payment.refresh_from_db()
        audit_record(
            actor=actor,
            action="payment.verify",
            obj=payment,
            after={"proof": proof[:200], "contract": payment.contract_id},
            ip_address=ip_address,
        )
    return payment


def payment_reverse(*, payment: Payment, actor: Actor, reason: str, ip_address: str | None = None) -> Payment:
    """Undo a payment (chargeback, returned transfer): its allocations come off and the lock is decided again.

    A provisional payment's held part is released with it (it was never allocated).
    """

    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ["Say why the payment is reversed."]})
    now = timezone.now()
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        if payment.status == PaymentStatus.REVERSED:
            raise ValidationError({"status": ["This payment is already reversed."]})
        contract = Contract.objects.select_for_update().get(pk=payment.contract_id) if payment.contract_id else None
        allocations = list(payment.allocations.filter(reversed_at__isnull=True).select_related("installment"))
        for allocation in allocations:
            if allocation.installment_id:
                Installment.objects.filter(pk=allocation.installment_id).update(
                    amount_paid=F("amount_paid") - allocation.amount
                )
        payment.allocations.filter(reversed_at__isnull=True).update(reversed_at=now)
        before = {"status": payment.status, "held": str(payment.held_amount)}
        Payment.objects.filter(pk=payment.pk).update(
            status=PaymentStatus.REVERSED, reversed_at=now, reversal_reason=reason[:300], held_amount=Decimal("0")
        )
        audit_record(
            actor=actor,
            action="payment.reverse",
            obj=payment,
            before=before,
            after={
                "status": "reversed",
                "reason": reason,
                "allocations_undone": len(allocations),
                "held_released": str(payment.held_amount),
            },
            ip_address=ip_address,
        )
        if contract is not None:
            if contract.status == ContractStatus.PAID_OFF:
                contract_set_status(contract=contract, status=ContractStatus.ACTIVE, actor=actor)
            contracts_lock_evaluate(contract_ids=[contract.pk], now=now, actor=actor)
        payment.refresh_from_db()
    return payment


def proof_save(
    *,
    payment: Payment,
    checked: CheckedProof,
    actor: User,
    transaction_id: str = "",
    ip_address: str | None = None,
) -> PaymentProof:
    """Store a checked proof privately for ``payment`` under a name we choose; audited as ``payment.proof``.

    Runs in the caller's transaction, as its last write: if saving the row fails, the file is removed.
    """
    proof = PaymentProof(
        payment=payment,
        content_type=checked.content_type,
        size=checked.size,
        sha256=checked.sha256,
        transaction_id=(transaction_id or payment.external_id)[:100],
        uploaded_by=actor,
    )
    upload = cast("File[bytes]", checked.upload)  # portal.uploads.CheckedProof keeps the UploadedFile as an object
    upload.seek(0)
    proof.file.save(f"{checked.sha256[:20]}.{checked.extension}", ContentFile(upload.read()), save=False)
    stored = proof.file.name
    try:
        proof.save()
        audit_record(
            actor=actor,
            action="payment.proof",
            obj=payment,
            after={"proof": proof.pk, "content_type": proof.content_type, "size": proof.size, "sha256": proof.sha256},
            ip_address=ip_address,
        )
    except Exception:
        # No row, no file. Callers save the proof last in their transaction, so this is the only
        # failure after the file is written (short of the commit itself).
        proof.file.storage.delete(stored)
        raise
    return proof


def payment_verify_existing(
    *,
    payment: Payment,
    contract: Contract,
    actor: User,
    checked: CheckedProof | None = None,
    ip_address: str | None = None,
) -> Payment:
    """Verify a payment the customer named: matched to ``contract`` first if it was unmatched.

    A provisional one (another agent recorded it from a receipt) is confirmed instead, by
    ``payment_confirm``: four eyes, so not by the agent who recorded it.

    Raises ``PaymentAlreadyVerified`` (another agent was first), ``WrongContract`` (credited to
    another contract), ``PermissionDenied`` (four eyes) or ``ValidationError`` (e.g. reversed).
    All or nothing.
    """
    with transaction.atomic():
        if payment.status == PaymentStatus.UNMATCHED:
            payment = payment_match_manual(payment=payment, contract=contract, actor=actor, ip_address=ip_address)
        elif payment.contract_id and payment.contract_id != contract.pk and payment.status != PaymentStatus.VERIFIED:
            credited = payment.contract
            assert credited is not None  # its contract_id is set
            raise WrongContract(
                f"Transaction {payment.external_id} is credited to contract {credited.number}, not this one. "
                "A finance officer can reverse it if it was credited wrongly."
            )
        if payment.status == PaymentStatus.PROVISIONAL:
            payment = payment_confirm(payment=payment, actor=actor, ip_address=ip_address)
        else:
            payment = payment_verify(
                payment=payment,
                actor=actor,
                proof=f"transaction id read out: {payment.external_id}",
                ip_address=ip_address,
            )
        if checked is not None:
            proof_save(payment=payment, checked=checked, actor=actor, ip_address=ip_address)
    return payment


def payment_record_from_proof(
    *,
    contract: Contract,
    actor: User,
    channel: str,
    amount: Any,
    received_at: dt.datetime,
    transaction_id: str,
    checked: CheckedProof,
    ip_address: str | None = None,
) -> Payment:
    """Record a payment from the customer's receipt (source ``agent``) for ``contract``; it is provisional.

    An agent's word and a picture are not the money. At once the payment credits the contract
    at most ``provisional_limit`` (by default what is still due on its oldest unpaid
    installment, for all its unconfirmed receipts together), so a phone unlocks only if that
    clears the arrears; the rest is held, unallocated, until a second person confirms it
    (``payment_confirm``, four eyes) or the channel's own record with the same transaction id
    does (``payment_ingest``, ``statement_lines_credit``). The proof is kept.

    All or nothing: a refused amount or date creates no payment and stores no file. The same
    receipt again raises ``PaymentAlreadyRecorded``.
    """
    with transaction.atomic():
        payment, created = payment_ingest(
            provider=contract.provider,
            channel=channel,
            external_id=transaction_id,
            amount=amount,
            currency=contract.currency,
            received_at=received_at,
            reference=contract.number,
            contract_number=contract.number,
            source="agent",
            actor=actor,
            ip_address=ip_address,
        )
        if payment.contract_id != contract.pk:
            raise WrongContract(f"Transaction {payment.external_id} is already credited to another contract.")
        if not created:
            if payment.status == PaymentStatus.PROVISIONAL:
                who = payment.recorded_by.get_username() if payment.recorded_by else "someone"
                raise PaymentAlreadyRecorded(
                    f"Already recorded by {who} from a receipt; it waits for a second person or the channel "
                    "to confirm it."
                )
            payment = payment_verify(
                payment=payment, actor=actor, proof=f"receipt {checked.sha256[:12]}", ip_address=ip_address
            )
        proof_save(payment=payment, checked=checked, actor=actor, transaction_id=transaction_id, ip_address=ip_address)
    return payment
