"""M-Pesa paybill payments from Safaricom's Daraja C2B v1 callbacks.

Daraja calls two URLs per paybill payment: *validation* before the money moves (we may
refuse an account number nobody can match, so the payer retypes it) and *confirmation*
after it moved (we must record it, matched or not: received money is never dropped).
This module turns Daraja's JSON into our terms with pure functions and records a
confirmation through ``payment_ingest``, so exactly-once, matching, allocation and the
immediate unlock are the same as for every other payment source.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from zoneinfo import ZoneInfo

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from payments.contracts.services import parse_phone
from payments.ledger.errors import PaymentConflict
from payments.ledger.matching import payment_find_match
from payments.ledger.services import payment_ingest
from payments.models import ChannelKind, Payment, PaymentChannel, PaymentSource
from payments.money import has_valid_precision, minor_units, quantize
from portal.models import Organisation
from portal.types import Actor

log = logging.getLogger(__name__)

# Daraja states TransTime in East Africa Time, whatever the provider's own time zone.
DARAJA_TIME_ZONE = ZoneInfo("Africa/Nairobi")
# M-Pesa (Kenya) moves shillings only; payments are never converted.
MPESA_CURRENCY = "KES"
# MSISDNs are Kenyan numbers, usually without "+" (254708374149).
MSISDN_REGION = "KE"

_TRANS_TIME = re.compile(r"\d{14}")


class ValidationResult(StrEnum):
    """Daraja's C2B validation result codes (what the payer's phone is told)."""

    ACCEPTED = "0"
    INVALID_MSISDN = "C2B00011"
    INVALID_ACCOUNT = "C2B00012"
    INVALID_AMOUNT = "C2B00013"
    OTHER_ERROR = "C2B00016"


# Our service's argument names → the Daraja fields they came from, so an error names
# what the caller sent.
DARAJA_FIELDS = {
    "external_id": "TransID",
    "amount": "TransAmount",
    "received_at": "TransTime",
    "reference": "BillRefNumber",
    # A receipt an agent recorded for one contract, whose M-Pesa record names another.
    "contract_number": "BillRefNumber",
    "payer_phone": "MSISDN",
    "currency": NON_FIELD_ERRORS,
    "channel": NON_FIELD_ERRORS,
}


@dataclass(frozen=True)
class C2BTransaction:
    """One Daraja C2B callback body, every field as Daraja sent it (text, untrimmed meaning kept)."""

    trans_id: str = ""
    trans_time: str = ""
    trans_amount: str = ""
    bill_ref_number: str = ""
    msisdn: str = ""
    first_name: str = ""
    middle_name: str = ""
    last_name: str = ""
    business_short_code: str = ""
    transaction_type: str = ""


def parse_trans_time(text: str) -> dt.datetime:
    """``"20170727104247"`` (EAT) → an aware UTC datetime; ``ValueError`` for anything else.

    The exact 14-digit form is required first because ``strptime`` alone also takes
    unpadded fields ("2017727104247") and would guess a different moment.
    """
    text = (text or "").strip()
    if not _TRANS_TIME.fullmatch(text):
        raise ValueError("Expected YYYYMMDDHHMMSS in East Africa Time, e.g. 20170727104247.")
    try:
        local = dt.datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError:
        raise ValueError(f"{text} is not a real date and time.") from None
    return local.replace(tzinfo=DARAJA_TIME_ZONE).astimezone(dt.UTC)


def parse_amount(text: object) -> Decimal:
    """Daraja's TransAmount (``"10.00"``) → a positive KES ``Decimal`` with two places; ``ValueError`` otherwise.

    Quantised so that ``"10"`` and ``"10.00"`` are the same amount when a retry is
    compared with the first delivery.
    """
    if isinstance(text, bool | float):  # a float has already lost the exact amount
        raise ValueError('Send the amount as a string such as "10.00".')
    try:
        amount = Decimal(str(text).strip())
    except (InvalidOperation, ValueError):
        raise ValueError('Not an amount; expected e.g. "10.00".') from None
    if not amount.is_finite():
        raise ValueError("Not a finite amount.")
    if amount <= 0:
        raise ValueError("The amount must be more than zero.")
    if amount.adjusted() >= 12:
        raise ValueError("This amount is too large.")
    if not has_valid_precision(amount, MPESA_CURRENCY):
        raise ValueError(f"{MPESA_CURRENCY} amounts have at most {minor_units(MPESA_CURRENCY)} decimals.")
    return quantize(amount, MPESA_CURRENCY)


def is_masked(msisdn: str) -> bool:
    """Newer Daraja versions hide part of the payer's number (``"2547 ***** 149"``)."""
    return "*" in (msisdn or "")


def payer_phone(msisdn: str) -> str:
    """The payer's number in E.164 when Daraja sent a real one; otherwise as typed.

    A masked number (or a hashed one, as some Daraja versions send) is kept as typed for
    the finance queue, never "repaired" into a number that could match the wrong customer.
    """
    msisdn = (msisdn or "").strip()
    if not msisdn or is_masked(msisdn):
        return msisdn
    try:
        return parse_phone(msisdn, region=MSISDN_REGION)
    except ValidationError:
        return msisdn


def payer_name(first: str, middle: str, last: str) -> str:
    """The payer's names joined, blanks skipped (Daraja often sends an empty LastName)."""
    return " ".join(part.strip() for part in (first, middle, last) if part and part.strip())


def short_code_unknown(*, provider: Organisation, short_code: str) -> str | None:
    """Why a callback's BusinessShortCode is not the provider's, or None.

    Only checked when the provider entered its paybill or till numbers on its M-Pesa
    payment channels (``PaymentChannel.short_code``): a callback for another number means
    a callback URL (and its key) registered for the wrong paybill, and crediting its money
    to this provider's contracts could credit the wrong owner.
    """

    known = set(
        PaymentChannel.objects.filter(provider=provider, active=True)
        .exclude(short_code="")
        .values_list("short_code", flat=True)
    )
    short_code = (short_code or "").strip()
    if not known or short_code in known:
        return None
    return (
        f"BusinessShortCode {short_code or '(none)'} is not one of this provider's M-Pesa numbers "
        f"({', '.join(sorted(known))}); check which paybill this callback URL is registered for."
    )


def validation_decision(*, provider: Organisation, transaction: C2BTransaction) -> ValidationResult:
    """Should Daraja let this payment through? Decided before any money moves.

    Accept only what the confirmation can record and match by its account number
    (BillRefNumber): a refusal tells the payer at once to retype it, instead of the money
    landing in the finance queue. The payer's phone is deliberately not considered: the
    account number is what the payer typed and can correct.
    """
    if provider.currency != MPESA_CURRENCY:
        return ValidationResult.OTHER_ERROR
    if short_code_unknown(provider=provider, short_code=transaction.business_short_code):
        return ValidationResult.OTHER_ERROR
    try:
        parse_amount(transaction.trans_amount)
    except ValueError:
        return ValidationResult.INVALID_AMOUNT
    reference = transaction.bill_ref_number.strip()
    if not reference:
        return ValidationResult.INVALID_ACCOUNT
    # A transient payment: the same matching rules the confirmation will apply, phone left out.
    probe = Payment(provider=provider, reference=reference[:140], payer_phone="")
    if payment_find_match(probe) is None:
        return ValidationResult.INVALID_ACCOUNT
    return ValidationResult.ACCEPTED


def mpesa_confirmation_ingest(
    *, provider: Organisation, transaction: C2BTransaction, actor: Actor = None, ip_address: str | None = None
) -> tuple[Payment, bool]:
    """Record a Daraja C2B confirmation exactly once; returns ``(payment, created)``.

    TransID is the transaction id: Daraja's retry of the same confirmation returns the
    recorded payment and credits nothing more. A payment whose account number matches
    nothing is still recorded, unmatched, for the finance queue. Raises ``PaymentConflict``
    when the TransID is known with other details, and ``ValidationError`` named by Daraja
    field when the body cannot be money (and then records nothing).
    """
    if provider.currency != MPESA_CURRENCY:
        raise ValidationError(
            {
                NON_FIELD_ERRORS: [
                    f"M-Pesa pays {MPESA_CURRENCY}; this provider's currency is {provider.currency} and "
                    "payments are never converted. Nothing was recorded."
                ]
            }
        )
    errors: dict[str, list[str]] = {}
    amount = received_at = None
    try:
        amount = parse_amount(transaction.trans_amount)
    except ValueError as exc:
        errors["TransAmount"] = [str(exc)]
    try:
        received_at = parse_trans_time(transaction.trans_time)
    except ValueError as exc:
        errors["TransTime"] = [str(exc)]
    if errors or amount is None or received_at is None:  # each is None only with its error
        raise ValidationError(errors)
    # Money that moved to a number this provider did not list is recorded (it moved), but
    # never matched to a contract by itself: a finance officer decides.
    unknown_number = short_code_unknown(provider=provider, short_code=transaction.business_short_code)
    if unknown_number:
        log.warning("M-Pesa confirmation %r for %s: %s", transaction.trans_id, provider.slug, unknown_number)
    try:
        return payment_ingest(
            provider=provider,
            channel=ChannelKind.MOBILE_MONEY,
            external_id=transaction.trans_id,
            amount=amount,
            currency=MPESA_CURRENCY,
            received_at=received_at,
            reference=transaction.bill_ref_number,
            payer_phone=payer_phone(transaction.msisdn),
            payer_name=payer_name(transaction.first_name, transaction.middle_name, transaction.last_name),
            source=PaymentSource.MPESA,
            actor=actor,
            ip_address=ip_address,
            auto_match=not unknown_number,
        )
    except PaymentConflict:
        raise
    except ValidationError as exc:
        raise ValidationError(_daraja_named(exc)) from None


def _daraja_named(exc: ValidationError) -> dict[str, list[str]]:
    """A service error keyed by the Daraja fields the caller sent."""
    if not hasattr(exc, "error_dict"):
        return {NON_FIELD_ERRORS: exc.messages}
    named: dict[str, list[str]] = {}
    for field, messages in exc.message_dict.items():
        named.setdefault(DARAJA_FIELDS.get(field, field), []).extend(messages)
    return named
