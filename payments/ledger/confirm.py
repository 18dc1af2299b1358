"""Applying a payment to its contract: allocation to installments, the provisional limit, and confirmation
by a second person or by the channel's own record."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from payments.contracts.services import contract_set_status
from payments.ledger.errors import PaymentAlreadyVerified
from payments.locks.services import contracts_lock_evaluate
from payments.models import (
    Contract,
    ContractStatus,
    Installment,
    LockPolicy,
    Payment,
    PaymentAllocation,
    PaymentConfirmation,
    PaymentFlag,
    PaymentSource,
    PaymentStatus,
)
from portal.audit import audit_record
from portal.four_eyes import four_eyes_check, four_eyes_refusal
from portal.models import User
from portal.permissions import Right, has_right
from portal.types import Actor
from portal.webhooks import webhook_event_emit


def allocation_plan(installments: Iterable[Installment], amount: Decimal) -> list[tuple[Installment | None, Decimal]]:
    """How ``amount`` is allocated: to the open ``installments`` in the order given (oldest first), the rest credit.

    The one rule for one payment (``_allocate``) and a statement's batch
    (``payments.statements.allocation``): each installment takes what it still lacks; money beyond the
    whole schedule is ``(None, rest)``, held as credit, never lost. Pure: the callers write the result.
    """
    plan: list[tuple[Installment | None, Decimal]] = []
    remaining = amount
    for installment in installments:
        if remaining <= 0:
            break
        open_amount = installment.amount_due - installment.amount_paid
        if open_amount <= 0:
            continue
        take = min(remaining, open_amount)
        plan.append((installment, take))
        remaining -= take
    if remaining > 0:
        plan.append((None, remaining))
    return plan


def _allocate(*, payment: Payment, contract: Contract, amount: Decimal) -> list[PaymentAllocation]:
    """Allocate ``amount`` of ``payment`` to the contract's open installments, oldest first; beyond them as credit.

    The caller holds the contract's row lock; the installments are locked here by due date and
    number, the order every writer takes (the sweep too), so two payments never interleave.
    """

    if amount <= 0:
        return []
    installments = list(
        Installment.objects.select_for_update()
        .filter(contract=contract, amount_paid__lt=F("amount_due"))
        .order_by("due_date", "number")
    )
    allocations: list[PaymentAllocation] = []
    for installment, take in allocation_plan(installments, amount):
        if installment is not None:
            Installment.objects.filter(pk=installment.pk).update(amount_paid=F("amount_paid") + take)
        allocations.append(PaymentAllocation(payment=payment, contract=contract, installment=installment, amount=take))
    PaymentAllocation.objects.bulk_create(allocations)
    return allocations


def _allocations_after(allocations: list[PaymentAllocation]) -> list[dict[str, Any]]:
    return [{"installment": a.installment_id, "amount": str(a.amount)} for a in allocations]


def provisional_limit(contract: Contract) -> tuple[Decimal, Decimal]:
    """(what a new receipt may still credit ``contract`` at once, the limit for all its unconfirmed receipts).

    The limit is what is still due on the contract's oldest unpaid installments — as many as
    the provider's ``provisional_installments`` (default one) — counting money from unconfirmed
    receipts as unpaid, capped by ``provisional_max_amount`` when set. What the contract's
    unconfirmed receipts already credited comes off, so recording more receipts (or inventing
    more transaction ids) never credits more. The caller holds the contract's row lock.
    """

    policy = LockPolicy.objects.filter(provider_id=contract.provider_id).first() or LockPolicy()
    pending = dict(
        PaymentAllocation.objects.filter(
            contract=contract,
            payment__status=PaymentStatus.PROVISIONAL,
            installment__isnull=False,
            reversed_at__isnull=True,
        )
        .values("installment_id")
        .annotate(total=Sum("amount"))
        .values_list("installment_id", "total")
    )
    limit, counted = Decimal("0"), 0
    rows = Installment.objects.filter(contract=contract).order_by("due_date", "number")
    for pk, due, paid in rows.values_list("pk", "amount_due", "amount_paid"):
        if counted >= policy.provisional_installments:
            break
        open_amount = due - (paid - pending.get(pk, Decimal("0")))
        if open_amount > 0:
            limit += open_amount
            counted += 1
    if policy.provisional_max_amount is not None:
        limit = min(limit, policy.provisional_max_amount)
    return max(limit - sum(pending.values(), Decimal("0")), Decimal("0")), limit


def _paid_in_full(contract: Contract) -> bool:
    """Every installment paid, none of it with money from a receipt not yet confirmed.

    Paid off means released for good, so a receipt alone may never get a contract there.
    """

    if Installment.objects.filter(contract=contract, amount_paid__lt=F("amount_due")).exists():
        return False
    return not PaymentAllocation.objects.filter(
        contract=contract, payment__status=PaymentStatus.PROVISIONAL, reversed_at__isnull=True
    ).exists()


def _payment_matched_webhook(*, payment: Payment, contract: Contract, rule: str) -> None:
    """Provider webhook, in the caller's transaction: the provider hears of the match exactly when it commits."""

    webhook_event_emit(
        provider=payment.provider_id,
        event="payment.matched",
        payload={
            "payment": payment.pk,
            "external_id": payment.external_id,
            "channel": payment.channel,
            "amount": str(payment.amount),
            "currency": payment.currency,
            "contract": contract.number,
            "rule": rule,
            "received_at": payment.received_at,
        },
    )


def payment_apply(*, payment: Payment, contract: Contract, rule: str, confidence: int, actor: Actor = None) -> None:
    """Match and allocate in the caller's transaction, then decide the lock at once.

    How every matched payment reaches its contract: one the matching rules found or a channel named
    (``payment_ingest``) and one a finance officer matched by hand (``payment_match_manual``).

    A payment recorded from a receipt (source ``agent``) becomes provisional: only
    ``provisional_limit`` is allocated, the rest is held, and the provider hears of it
    (webhook ``payment.matched``) when it is confirmed.
    """

    if payment.currency != contract.currency:
        raise ValidationError({"currency": [f"The contract is in {contract.currency}; payments are never converted."]})
    now = timezone.now()
    # Lock order: contract, then its installments by number (the sweep takes the contract
    # first too), so a payment and the sweep or a second payment never interleave.
    contract = Contract.objects.select_for_update().get(pk=contract.pk)
    provisional = payment.source == PaymentSource.AGENT
    credit: Decimal = payment.amount
    limit: Decimal | None = None
    if provisional:
        # Race: two agents recording receipts for one contract at once would each see the whole
        # allowance; under the contract's row lock the second sees what the first credited.
        allowance, limit = provisional_limit(contract)
        credit = min(payment.amount, allowance)
    allocations = _allocate(payment=payment, contract=contract, amount=credit)
    held = payment.amount - credit
    Payment.objects.filter(pk=payment.pk).update(
        contract=contract,
        status=PaymentStatus.PROVISIONAL if provisional else PaymentStatus.MATCHED,
        match_rule=rule,
        match_confidence=confidence,
        held_amount=held,
        recorded_by=actor if provisional and isinstance(actor, User) else None,
    )
    after = {
        "contract": contract.number,
        "rule": rule,
        "confidence": confidence,
        "allocations": _allocations_after(allocations),
    }
    if provisional:
        after |= {"provisional": True, "credited": str(credit), "held": str(held), "limit": str(limit)}
    audit_record(actor=actor, action="payment.match", obj=payment, after=after)
    if not provisional:
        _payment_matched_webhook(payment=payment, contract=contract, rule=rule)
    if contract.status == ContractStatus.ACTIVE and _paid_in_full(contract):
        contract_set_status(contract=contract, status=ContractStatus.PAID_OFF, actor=actor)
    # Unlock at once: the decision and the signed command are written in this transaction.
    contracts_lock_evaluate(contract_ids=[contract.pk], now=now, actor=actor)


def provisional_payment_confirm(*, payment: Payment, via: str, actor: Actor, ip_address: str | None = None) -> bool:
    """Allocate a provisional payment's held part and mark it verified, in the caller's transaction; decide the lock.

    ``via`` is ``person`` (``payment_confirm``) or the source of the channel record that
    matched it (``payment_ingest``). Returns False, changing nothing, when it is no longer provisional or its
    channel record conflicts (finance resolves that by reversing it).
    """

    now = timezone.now()
    # Race: a second person confirming while the channel's record arrives, or two channel records
    # at once. Lock order payment, contract, installments (as a reversal): one confirms, the
    # other finds it verified.
    locked = Payment.objects.select_for_update().get(pk=payment.pk)
    # A provisional payment always has its contract (payment_apply made it provisional).
    if locked.status != PaymentStatus.PROVISIONAL or locked.flag == PaymentFlag.CONFLICT or locked.contract_id is None:
        return False
    contract = Contract.objects.select_for_update().get(pk=locked.contract_id)
    held = locked.held_amount
    allocations = _allocate(payment=locked, contract=contract, amount=held)
    person = via == PaymentConfirmation.PERSON
    # A late confirmation answers the "not confirmed in time" flag.
    resolved = locked.flag == PaymentFlag.UNCONFIRMED
    Payment.objects.filter(pk=locked.pk).update(
        status=PaymentStatus.VERIFIED,
        held_amount=Decimal("0"),
        confirmed_via=via,
        confirmed_at=now,
        confirmed_by=actor if person else None,
        verified_by=actor if person else locked.recorded_by,
        verified_at=now,
        **({"flag": "", "flag_reason": "", "flagged_at": None} if resolved else {}),
    )
    audit_record(
        actor=actor,
        action="payment.confirm" if person else "payment.channel_confirm",
        obj=locked,
        before={"status": PaymentStatus.PROVISIONAL, "held": str(held), "flag": locked.flag},
        after={
            "status": PaymentStatus.VERIFIED,
            "via": via,
            # The four-eyes requester, the agent who recorded the receipt, as every approval names it
            # (portal.selectors.APPROVAL_REQUESTER_KEY): the auditor's same-browser list reads it.
            "requested_by_id": locked.recorded_by_id,
            "requested_by": locked.recorded_by.get_username() if locked.recorded_by else None,
            "contract": contract.number,
            "allocations": _allocations_after(allocations),
            "flag": "" if resolved else locked.flag,
        },
        ip_address=ip_address,
    )
    _payment_matched_webhook(payment=locked, contract=contract, rule=locked.match_rule)
    if contract.status == ContractStatus.ACTIVE and _paid_in_full(contract):
        contract_set_status(contract=contract, status=ContractStatus.PAID_OFF, actor=actor)
    contracts_lock_evaluate(contract_ids=[contract.pk], now=now, actor=actor)
    return True


def _check_confirmable(payment: Payment) -> None:
    """Raise why ``payment`` cannot be confirmed (already confirmed, not provisional, in conflict)."""

    if payment.status == PaymentStatus.VERIFIED:
        if payment.confirmed_by is not None:
            who = payment.confirmed_by.get_username()
        elif payment.confirmed_via:
            who = payment.get_confirmed_via_display()
        else:
            who = payment.verified_by.get_username() if payment.verified_by else "someone"
        raise PaymentAlreadyVerified(f"Already confirmed by {who}; nothing more to do.")
    if payment.status != PaymentStatus.PROVISIONAL:
        raise ValidationError({"status": [f"A {payment.get_status_display().lower()} payment has nothing to confirm."]})
    if payment.flag == PaymentFlag.CONFLICT:
        raise ValidationError(
            {
                "status": [
                    f"{payment.flag_reason} It cannot be confirmed: a finance officer reverses it and records "
                    "what the channel says."
                ]
            }
        )


def payment_confirm_refusal(payment: Payment, *, approver: User) -> str | None:
    """Why ``approver`` may not confirm this provisional payment (its channel record conflicts, or four eyes);
    None if they may. Shown before the button; ``payment_confirm`` refuses the same."""

    if payment.flag == PaymentFlag.CONFLICT:
        return f"{payment.flag_reason} A finance officer reverses it and records what the channel says."
    return four_eyes_refusal(requester=payment.recorded_by, approver=approver)


def payment_confirm(*, payment: Payment, actor: Actor, ip_address: str | None = None) -> Payment:
    """A second person confirms a payment an agent recorded from a receipt: its held part is allocated at once.

    Four eyes: refused with the reason (``PermissionDenied``) for the agent who recorded it and
    for any account linked to theirs (``portal.four_eyes``). ``PaymentAlreadyVerified`` when
    someone or the channel confirmed it first; ``ValidationError`` when it is not provisional or
    its channel record conflicts. Audited as ``payment.confirm`` with the requester's id.
    """

    if not has_right(actor, Right.VERIFY_PAYMENTS):
        raise PermissionDenied("Your role does not allow confirming payments (verify_payments).")
    related = ("recorded_by", "confirmed_by", "verified_by")
    current = Payment.objects.select_related(*related).get(pk=payment.pk)
    _check_confirmable(current)
    # Two accounts of one person are not two people (set up by one another, or by one person).
    four_eyes_check(requester=current.recorded_by, approver=actor)
    with transaction.atomic():
        if not provisional_payment_confirm(
            payment=current, via=PaymentConfirmation.PERSON, actor=actor, ip_address=ip_address
        ):
            _check_confirmable(Payment.objects.select_related(*related).get(pk=payment.pk))
    return Payment.objects.select_related("contract", *related).get(pk=payment.pk)
