"""Writes of the ledger: taking payments in from every channel, flagging conflicts and unconfirmed receipts."""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from payments.ledger.confirm import payment_apply, provisional_payment_confirm
from payments.ledger.errors import PaymentConflict
from payments.ledger.matching import payment_find_match
from payments.models import (
    ChannelKind,
    Contract,
    LockPolicy,
    Payment,
    PaymentConfirmation,
    PaymentFlag,
    PaymentSource,
    PaymentStatus,
)
from payments.money import money_from_input
from portal.audit import AuditEntry, audit_record, audit_record_many, snapshot
from portal.four_eyes import four_eyes_refusal
from portal.models import Organisation, User
from portal.types import Actor


def payment_request_fields(**fields: object) -> dict[str, str]:
    """The fields a retry must repeat exactly, as strings (compared to tell a retry from a conflict).

    Stored on the payment as ``request_fields``; a statement's lines build them the same way.
    """
    return {name: "" if value is None else str(value) for name, value in sorted(fields.items())}


def _channels() -> tuple[str, ...]:
    return tuple(ChannelKind.values)


# Read once: the enum's .values builds a new list on every call, and a statement import checks 100,000 lines.
_CHANNELS = _channels()


def check_payment_input(
    *,
    provider: Organisation,
    channel: str,
    external_id: str | None,
    amount: Any,
    currency: str,
    received_at: Any,
    errors: dict[str, list[str]],
) -> tuple[str, Decimal | None]:
    """A payment's channel, transaction id, currency, amount and time checked; each problem goes to ``errors``.

    Returns the transaction id as stored and the amount (``None`` when it has an error). Every
    channel's payments are checked here: one through ``payment_ingest``, a statement's lines in a batch.
    """
    if channel not in _CHANNELS:
        errors["channel"] = [f"One of {', '.join(_CHANNELS)}."]
    external_id = (external_id or "").strip()
    if not external_id:
        errors["external_id"] = ["This field is required: the payment's transaction id makes it count once."]
    elif len(external_id) > 100 or any(unicodedata.category(ch).startswith("C") for ch in external_id):
        errors["external_id"] = ["At most 100 printable characters."]
    if currency != provider.currency:
        errors["currency"] = [
            f"{currency!r} is not this provider's currency ({provider.currency}); payments are never converted."
        ]
    money = money_from_input(amount, "amount", provider.currency, errors)
    if money is not None and money <= 0 and "amount" not in errors:
        errors["amount"] = ["Must be more than zero."]
    if not isinstance(received_at, dt.datetime) or timezone.is_naive(received_at):
        errors["received_at"] = ["A date and time with its time zone, e.g. 2026-11-23T09:15:00+03:00."]
    elif received_at > timezone.now() + dt.timedelta(minutes=10):
        errors["received_at"] = ["Lies in the future."]
    return external_id, money


def payment_ingest(
    *,
    provider: Organisation,
    channel: str,
    external_id: str,
    amount: Any,
    currency: str,
    received_at: dt.datetime,
    reference: str = "",
    payer_phone: str = "",
    payer_name: str = "",
    contract_number: str = "",
    source: str = "api",
    actor: Actor = None,
    ip_address: str | None = None,
    auto_match: bool = True,
    carried_by: User | None = None,
) -> tuple[Payment, bool]:
    """Record a payment exactly once, match it to a contract and allocate it; returns ``(payment, created)``.

    ``auto_match=False`` records it unmatched, for a finance officer to look at (money
    that arrived where it was not expected).

    The same transaction id with the same details returns the existing payment
    (``created`` False); with different details it raises ``PaymentConflict`` naming
    each difference. When the money clears the arrears, the phone's unlock command is
    written in this same transaction and pushed when it commits.

    A payment an agent recorded from a receipt (``source="agent"``, see
    ``payment_record_from_proof``) is provisional. The channel's own record of it (the same
    channel and transaction id from the API, an M-Pesa confirmation or a statement) confirms
    it when amount and currency agree (the agent typed the time and reference from the
    receipt, so those may differ) and it names no other contract: the held part is allocated
    and the lock decided at once, exactly once. One that differs raises ``PaymentConflict``
    and flags the payment to finance; nothing is credited twice. ``carried_by`` is the person
    who brought the record in (a statement's uploader): their own receipts, or those of an
    account linked to theirs, are not confirmed by it (``channel_record_refusal``).
    """

    request = _checked_request(
        provider=provider,
        channel=channel,
        external_id=external_id,
        amount=amount,
        currency=currency,
        received_at=received_at,
        reference=reference,
        contract_number=contract_number,
        payer_phone=payer_phone,
        payer_name=payer_name,
    )
    with transaction.atomic():
        try:
            payment = _payment_create(request, provider=provider, channel=channel, source=source)
        except IntegrityError:
            existing = Payment.objects.select_related("contract").get(
                provider=provider, channel=channel, external_id=request.external_id
            )
            conflict = _payment_again(
                existing,
                request,
                source=source,
                auto_match=auto_match,
                actor=actor,
                ip_address=ip_address,
                carried_by=carried_by,
            )
            if conflict is None:
                existing.refresh_from_db()
                return existing, False
        else:
            _new_payment_match(
                payment=payment, contract=request.contract, auto_match=auto_match, actor=actor, ip_address=ip_address
            )
            return payment, True
    # After this function's transaction, so the flag is kept although the request is refused
    # (a caller's own transaction that rolls back takes it too: _import_line flags again).
    payment_conflict_flag(conflict=conflict, source=source, actor=actor, ip_address=ip_address)
    raise conflict


_PAYER_PHONE_LENGTH: int | None = Payment._meta.get_field("payer_phone").max_length


@dataclass(frozen=True)
class _Request:
    """A payment request once checked: what is stored, and the fields a retry must repeat."""

    external_id: str
    amount: Decimal
    currency: str
    received_at: dt.datetime
    reference: str
    payer_phone: str  # as stored (cut to the column)
    raw_payer_phone: str  # as sent (the matching rules read it)
    payer_name: str
    contract: Contract | None
    fields: dict[str, str]


def _checked_request(
    *,
    provider: Organisation,
    channel: str,
    external_id: str,
    amount: Any,
    currency: str,
    received_at: dt.datetime,
    reference: str,
    contract_number: str,
    payer_phone: str,
    payer_name: str,
) -> _Request:
    """The request as it is stored (transaction id, amount, reference, named contract), or ``ValidationError``."""
    errors: dict[str, list[str]] = {}
    external_id, money = check_payment_input(
        provider=provider,
        channel=channel,
        external_id=external_id,
        amount=amount,
        currency=currency,
        received_at=received_at,
        errors=errors,
    )
    reference = (reference or "").strip()[:140]
    contract = None
    if contract_number and not errors:
        contract = Contract.objects.filter(provider=provider, number=contract_number.strip()).first()
        if contract is None:
            errors["contract_number"] = ["No contract of this provider has this number."]
    # The amount is None only when it has an error.
    if errors or money is None:
        raise ValidationError(errors)
    fields = payment_request_fields(
        channel=channel,
        amount=money,
        currency=currency,
        received_at=received_at.astimezone(dt.UTC).isoformat(),
        reference=reference,
        payer_phone=payer_phone,
        contract_number=contract_number or "",
    )
    return _Request(
        external_id=external_id,
        amount=money,
        currency=currency,
        received_at=received_at,
        reference=reference,
        payer_phone=(payer_phone or "")[:_PAYER_PHONE_LENGTH],
        raw_payer_phone=payer_phone,
        payer_name=(payer_name or "")[:150],
        contract=contract,
        fields=fields,
    )


def _payment_create(request: _Request, *, provider: Organisation, channel: str, source: str) -> Payment:
    """Insert the payment; ``IntegrityError`` when its transaction id is already there."""
    # Race: the same transaction delivered twice at once (a retried callback, two
    # workers). The unique constraint lets exactly one insert win; the loser lands
    # in the caller after the winner commits and compares instead of crediting again.
    with transaction.atomic():
        return Payment.objects.create(
            provider=provider,
            channel=channel,
            external_id=request.external_id,
            amount=request.amount,
            currency=request.currency,
            reference=request.reference,
            payer_phone=request.payer_phone,
            payer_name=request.payer_name,
            received_at=request.received_at,
            source=source,
            request_fields=request.fields,
        )


def _payment_again(
    existing: Payment,
    request: _Request,
    *,
    source: str,
    auto_match: bool,
    actor: Actor,
    ip_address: str | None,
    carried_by: User | None,
) -> PaymentConflict | None:
    """A transaction id already recorded: the channel's own record of a receipt, a retry, or a conflict.

    None when it is the same payment (a receipt's channel record may confirm it here).
    """
    if existing.source == PaymentSource.AGENT and source != PaymentSource.AGENT:
        return _channel_record_arrived(
            payment=existing,
            source=source,
            amount=request.amount,
            currency=request.currency,
            contract=request.contract,
            reference=request.reference,
            payer_phone=request.raw_payer_phone,
            auto_match=auto_match,
            actor=actor,
            ip_address=ip_address,
            carried_by=carried_by,
        )
    return _differences(existing, request.fields)


def _differences(existing: Payment, fields: dict[str, str]) -> PaymentConflict | None:
    """The same transaction id again: nothing when every detail agrees, else a conflict naming each difference."""
    differences = {
        name: (existing.request_fields.get(name, ""), value)
        for name, value in fields.items()
        if existing.request_fields.get(name, "") != value
    }
    return PaymentConflict(existing, differences) if differences else None


def _new_payment_match(
    *, payment: Payment, contract: Contract | None, auto_match: bool, actor: Actor, ip_address: str | None
) -> None:
    """Audit a new payment, then apply it to the contract it names or the one the matching rules find."""
    audit_record(actor=actor, action="payment.create", obj=payment, after=snapshot(payment), ip_address=ip_address)
    if contract is not None:
        payment_apply(payment=payment, contract=contract, rule="contract_number", confidence=100, actor=actor)
    elif auto_match:
        match = payment_find_match(payment)
        if match is not None:
            payment_apply(payment=payment, contract=match[0], rule=match[1], confidence=match[2], actor=actor)
    payment.refresh_from_db()


def _channel_record_arrived(
    *,
    payment: Payment,
    source: str,
    amount: Decimal,
    currency: str,
    contract: Contract | None,
    reference: str,
    payer_phone: str,
    auto_match: bool,
    actor: Actor,
    ip_address: str | None,
    carried_by: User | None = None,
) -> PaymentConflict | None:
    """The channel's own record of a payment an agent recorded from a receipt: confirm it, or say how it differs.

    Compared on amount and currency (the channel is part of the key). A record that names or
    matches another contract differs too: confirming it would credit one owner with another's
    money. Returns None when it is the same payment, confirmed now if it was provisional.
    """

    differences: dict[str, tuple[str, str]] = {}
    if amount != payment.amount:
        differences["amount"] = (str(payment.amount), str(amount))
    if currency != payment.currency:
        differences["currency"] = (payment.currency, currency)
    matched = payment.contract  # loaded with the payment
    if not differences and matched is not None:
        named = contract
        if named is None and auto_match:
            found = payment_find_match(Payment(provider=payment.provider, reference=reference, payer_phone=payer_phone))
            named = found[0] if found else None
        if named is not None and named.pk != matched.pk:
            differences["contract_number"] = (matched.number, named.number)
    if differences:
        return PaymentConflict(payment, differences)
    if payment.status == PaymentStatus.PROVISIONAL:
        if not auto_match:
            # Money paid to a number the provider did not list confirms nothing of its own.
            payment_flag(
                payment=payment,
                flag=PaymentFlag.CONFLICT,
                reason=f"{_said_by(source)} reports this transaction paid to a number this provider did not list; "
                "it does not confirm the receipt.",
                actor=actor,
                ip_address=ip_address,
            )
        elif channel_record_refusal(recorded_by=payment.recorded_by, carried_by=carried_by) is None:
            provisional_payment_confirm(payment=payment, via=source, actor=actor, ip_address=ip_address)
        # Otherwise the receipt stays provisional: a second person confirms it on the payments queue.
    return None


def channel_record_refusal(*, recorded_by: User | None, carried_by: User | None) -> str | None:
    """Why a channel record a *person* brought in may not confirm a receipt; None if it may.

    A statement is the channel's own record only when it is independent of the receipt: the
    officer who recorded a receipt and then uploads a statement (or a file they made) holding
    the same transaction id would confirm their own entry. So a statement uploaded by the
    recorder, or by an account four eyes links to theirs, confirms nothing (uploaded with an
    API key, it is carried by the key's creator). Records no person carries — a payment the
    provider's systems post, an M-Pesa callback, a file imported from the server's shell —
    confirm.
    """

    if not isinstance(carried_by, User) or not isinstance(recorded_by, User):
        return None
    return four_eyes_refusal(requester=recorded_by, approver=carried_by)


def _said_by(source: str) -> str:
    """``The M-Pesa confirmation``: the channel record a source stands for, as a sentence starts."""

    label = str(PaymentConfirmation(source).label)
    return label[0].upper() + label[1:]


def payment_flag(
    *, payment: Payment, flag: str, reason: str, actor: Actor = None, ip_address: str | None = None
) -> bool:
    """Flag a payment to finance (its channel record differs, or none came in time); audited. True if it changed.

    The same flag with the same reason again changes nothing; a reversed payment is settled and not flagged.
    """

    reason = reason[:300]
    with transaction.atomic():
        current = Payment.objects.select_for_update().get(pk=payment.pk)
        if current.status == PaymentStatus.REVERSED or (current.flag, current.flag_reason) == (flag, reason):
            return False
        Payment.objects.filter(pk=current.pk).update(flag=flag, flag_reason=reason, flagged_at=timezone.now())
        audit_record(
            actor=actor,
            action="payment.flag",
            obj=current,
            before={"flag": current.flag, "reason": current.flag_reason},
            after={"flag": flag, "reason": reason},
            ip_address=ip_address,
        )
    return True


def conflict_reason(*, source: str, differences: dict[str, tuple[str, str]]) -> str:
    """``The bank statement says amount 40000.00 (the receipt said 50000.00).``"""
    said = "; ".join(
        f"{name.replace('_', ' ')} {new} (the receipt said {old})" for name, (old, new) in differences.items()
    )
    return f"{_said_by(source)} says {said}; nothing was credited twice."[:300]


def payment_conflict_flag(
    *, conflict: PaymentConflict, source: str, actor: Actor = None, ip_address: str | None = None
) -> None:
    """Flag to finance a payment recorded from a receipt when its channel's own record differs."""

    if conflict.payment.source != PaymentSource.AGENT or source == PaymentSource.AGENT:
        return
    payment_flag(
        payment=conflict.payment,
        flag=PaymentFlag.CONFLICT,
        reason=conflict_reason(source=source, differences=conflict.differences),
        actor=actor,
        ip_address=ip_address,
    )


def payments_flag_unconfirmed(*, now: dt.datetime | None = None) -> int:
    """Flag to finance each provisional payment no channel confirmed within ``provisional_confirm_days``.

    The periodic job: set-based (per provider with such payments, one locking SELECT, one
    UPDATE and one batch of audit events), idempotent (a flagged payment is not flagged again).
    Returns how many it flagged.
    """

    now = now or timezone.now()
    default_days = LockPolicy._meta.get_field("provisional_confirm_days").default
    waiting = Payment.objects.filter(status=PaymentStatus.PROVISIONAL, flag="")
    provider_ids = sorted(set(waiting.values_list("provider_id", flat=True)))
    days_of = dict(
        LockPolicy.objects.filter(provider_id__in=provider_ids).values_list("provider_id", "provisional_confirm_days")
    )
    flagged = 0
    for provider_id in provider_ids:
        days = days_of.get(provider_id, default_days)
        reason = (
            f"Recorded from a receipt and not confirmed by any channel within {days} days: "
            "check it against the bank and mobile-money records."
        )
        with transaction.atomic():
            # Race: two runs at once (a slow run overlapping the next tick). Each takes the rows it
            # can lock and skips the other's; flag="" keeps a payment from being flagged twice.
            rows = list(
                waiting.filter(provider_id=provider_id, created_at__lte=now - dt.timedelta(days=days))
                .select_for_update(skip_locked=True)
                .only("pk", "provider_id", "channel", "external_id")
                .order_by("pk")
            )
            if not rows:
                continue
            Payment.objects.filter(pk__in=[p.pk for p in rows], flag="").update(
                flag=PaymentFlag.UNCONFIRMED, flag_reason=reason, flagged_at=now
            )
            audit_record_many(
                actor=None,
                entries=[
                    AuditEntry(
                        action="payment.flag",
                        obj=payment,
                        before={"flag": "", "reason": ""},
                        after={"flag": PaymentFlag.UNCONFIRMED, "reason": reason},
                    )
                    for payment in rows
                ],
            )
            flagged += len(rows)
    return flagged
