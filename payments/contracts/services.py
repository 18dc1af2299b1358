"""Writes of contracts: customers, contracts and their installment schedules (atomic, audited)."""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import phonenumbers
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from devices.models import Device
from payments.models import (
    Contract,
    ContractStatus,
    Customer,
    Frequency,
    Installment,
    contract_number_key,
    nth_due_date,
)
from payments.money import money_from_input, quantum, split_evenly
from portal.audit import AuditEntry, audit_record, audit_record_many, snapshot
from portal.models import Organisation
from portal.types import Actor

# Longest schedule we accept: ten years of weekly installments.
MAX_INSTALLMENTS = 520


EARLIEST_DUE = dt.date(2000, 1, 1)


LATEST_DUE = dt.date(2100, 12, 31)


def parse_phone(raw: str, *, region: str) -> str:
    """Parse a phone number in any common local or international form → E.164.

    Local numbers use ``region`` (the provider's country) as default region.
    """
    try:
        number = phonenumbers.parse(str(raw), region)
    except phonenumbers.NumberParseException:
        raise ValidationError(f"{raw!r} is not a phone number.") from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(f"{raw!r} is not a valid phone number for {region} or in international form.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def customer_create(
    *,
    provider: Organisation,
    actor: Actor,
    name: str,
    phone: str,
    preferred_language: str = "",
    national_id: str = "",
    ip_address: str | None = None,
) -> Customer:
    """Create a customer; the phone is stored E.164 and the national ID only masked."""
    errors: dict[str, list[str]] = {}
    name = (name or "").strip()
    if not name:
        errors["name"] = ["This field is required."]
    try:
        e164 = parse_phone(phone, region=provider.country)
    except ValidationError as exc:
        errors["phone"] = exc.messages
    language = (preferred_language or provider.default_language).strip().lower()
    allowed = list(dict.fromkeys([*provider.languages, "en"]))  # English always; each code once
    if language not in allowed:
        errors["preferred_language"] = [f"{language!r} is not one of this provider's languages ({', '.join(allowed)})."]
    if errors:
        raise ValidationError(errors)
    customer = Customer(provider=provider, name=name, phone=e164, preferred_language=language)
    customer.set_national_id(national_id.strip())
    with transaction.atomic():
        customer.save()
        audit_record(
            actor=actor, action="customer.create", obj=customer, after=snapshot(customer), ip_address=ip_address
        )
    return customer


@dataclass(frozen=True)
class _Amounts:
    """A contract's money as checked: each ``None`` when its field has an error."""

    price: Decimal | None
    down: Decimal | None
    financed: Decimal | None


def _number_problem(number: str) -> str | None:
    if not number:
        return "This field is required."
    if len(number) > 40:
        return "At most 40 characters."
    if any(unicodedata.category(ch).startswith("C") for ch in number):
        # A tab, newline or invisible format character makes a number nobody can
        # type back into a search box or a URL.
        return "Letters, digits, spaces and punctuation only (no control characters)."
    return None


def _contract_amounts(
    *, cash_price: Any, down_payment: Any, financed_amount: Any, currency: str, errors: dict[str, list[str]]
) -> _Amounts:
    """The cash price, down payment and financed amount, checked against each other; problems go to ``errors``."""
    price = money_from_input(cash_price, "cash_price", currency, errors)
    down = money_from_input(down_payment, "down_payment", currency, errors)
    financed = None
    if financed_amount not in (None, ""):
        financed = money_from_input(financed_amount, "financed_amount", currency, errors)
    if price is not None and price <= 0:
        errors["cash_price"] = ["The cash price must be greater than zero."]
    if down is not None and down < 0:
        errors["down_payment"] = ["The down payment cannot be negative."]
    if price is not None and down is not None and price > 0 and down >= price:
        errors["down_payment"] = ["The down payment must be less than the cash price."]
    if price is not None and down is not None and "cash_price" not in errors and "down_payment" not in errors:
        if financed is None and "financed_amount" not in errors:
            financed = price - down
        elif financed is not None and financed < price - down:
            errors["financed_amount"] = [
                f"The financed amount cannot be less than cash price minus down payment ({price - down})."
            ]
    return _Amounts(price=price, down=down, financed=financed)


def _schedule_problems(
    *,
    installment_count: Any,
    financed: Decimal | None,
    frequency: str,
    first_due_date: Any,
    currency: str,
    errors: dict[str, list[str]],
) -> None:
    if not isinstance(installment_count, int) or not 1 <= installment_count <= MAX_INSTALLMENTS:
        errors["installment_count"] = [f"Between 1 and {MAX_INSTALLMENTS} installments."]
    elif financed is not None and "financed_amount" not in errors:
        # Every installment must be at least one minor unit: split_evenly would put
        # 0.00 on all but the last, and the database refuses a zero amount due
        # (that IntegrityError used to surface as a misleading "number exists").
        smallest = quantum(currency) * installment_count
        if financed < smallest:
            errors["financed_amount"] = [
                f"{financed} {currency} is too small to split into {installment_count} installments "
                f"(at least {smallest} {currency}); use fewer installments."
            ]
    if frequency not in Frequency.values:
        errors["frequency"] = [f"One of {', '.join(Frequency.values)}."]
    if not isinstance(first_due_date, dt.date) or not EARLIEST_DUE <= first_due_date <= LATEST_DUE:
        errors["first_due_date"] = [f"A date between {EARLIEST_DUE} and {LATEST_DUE}."]


def contract_create(
    *,
    provider: Organisation,
    actor: Actor,
    number: str,
    device: Device,
    customer: Customer,
    cash_price: Any,
    down_payment: Any = "0",
    financed_amount: Any = None,
    installment_count: int,
    frequency: str,
    first_due_date: dt.date,
    ip_address: str | None = None,
) -> Contract:
    """Create an active contract and its installment schedule in one transaction.

    The currency is the provider's. The schedule splits the financed amount
    evenly in the currency's minor unit with the rounding remainder on the last
    installment, so it always sums exactly to the financed amount. The financed
    amount defaults to cash price minus down payment and may be higher
    (interest and fees), never lower. Every problem is named per field at once; nothing is saved.
    """
    number = (number or "").strip()
    amounts = _contract_checked(
        provider=provider,
        number=number,
        device=device,
        customer=customer,
        cash_price=cash_price,
        down_payment=down_payment,
        financed_amount=financed_amount,
        installment_count=installment_count,
        frequency=frequency,
        first_due_date=first_due_date,
    )
    try:
        with transaction.atomic():
            contract = Contract.objects.create(
                provider=provider,
                number=number,
                number_key=contract_number_key(number),
                device=device,
                customer=customer,
                currency=provider.currency,
                cash_price=amounts.price,
                down_payment=amounts.down,
                financed_amount=amounts.financed,
                installment_count=installment_count,
                frequency=frequency,
                first_due_date=first_due_date,
            )
            Installment.objects.bulk_create(build_schedule(contract))
            audit_record_many(
                actor=actor,
                ip_address=ip_address,
                entries=[AuditEntry(action="contract.create", obj=contract, after=snapshot(contract))],
            )
    except IntegrityError:
        # Race: a concurrent request created the same number or an active
        # contract for the same device; the database constraints decide.
        raise ValidationError(
            {"number": ["A contract with this number, or an active contract for this device, already exists."]}
        ) from None
    return contract


@dataclass(frozen=True)
class _CheckedAmounts:
    """A new contract's money once every field passed."""

    price: Decimal
    down: Decimal
    financed: Decimal


def _contract_checked(
    *,
    provider: Organisation,
    number: str,
    device: Device,
    customer: Customer,
    cash_price: Any,
    down_payment: Any,
    financed_amount: Any,
    installment_count: int,
    frequency: str,
    first_due_date: dt.date,
) -> _CheckedAmounts:
    """A new contract's request checked, every problem per field at once (``ValidationError``); its amounts."""
    currency = provider.currency
    errors: dict[str, list[str]] = {}
    if problem := _number_problem(number):
        errors["number"] = [problem]
    if device.provider_id != provider.pk:
        errors["device"] = ["No such device for this provider."]
    if customer.provider_id != provider.pk:
        errors["customer"] = ["No such customer for this provider."]
    amounts = _contract_amounts(
        cash_price=cash_price,
        down_payment=down_payment,
        financed_amount=financed_amount,
        currency=currency,
        errors=errors,
    )
    _schedule_problems(
        installment_count=installment_count,
        financed=amounts.financed,
        frequency=frequency,
        first_due_date=first_due_date,
        currency=currency,
        errors=errors,
    )
    if not errors and Contract.objects.filter(provider=provider, number=number).exists():
        errors["number"] = ["A contract with this number already exists for this provider."]
    if not errors and Contract.objects.filter(device=device, status=ContractStatus.ACTIVE).exists():
        errors["device"] = ["This device already has an active contract."]
    price, down, financed = amounts.price, amounts.down, amounts.financed
    # An amount is None only when its field has an error, so with no errors all three are there.
    if errors or price is None or down is None or financed is None:
        raise ValidationError(errors)
    return _CheckedAmounts(price=price, down=down, financed=financed)


def build_schedule(contract: Contract) -> list[Installment]:
    """The installments of ``contract`` (unsaved), summing exactly to the financed amount."""
    amounts = split_evenly(contract.financed_amount, contract.installment_count, contract.currency)
    return [
        Installment(
            contract=contract,
            number=i + 1,
            due_date=nth_due_date(contract.first_due_date, contract.frequency, i),
            amount_due=amount,
        )
        for i, amount in enumerate(amounts)
    ]


def contract_set_status(*, contract: Contract, status: str, actor: Actor, ip_address: str | None = None) -> Contract:
    """Change a contract's status (e.g. cancelled, defaulted); audited."""
    if status not in ContractStatus.values:
        raise ValidationError({"status": [f"One of {', '.join(ContractStatus.values)}."]})
    with transaction.atomic():
        before = {"status": contract.status}
        # Conditional UPDATE: a concurrent change of status is not overwritten blindly.
        changed = Contract.objects.filter(pk=contract.pk, status=contract.status).update(status=status)
        if not changed:
            raise ValidationError({"status": ["The contract changed meanwhile; reload and try again."]})
        contract.status = status
        audit_record(
            actor=actor,
            action="contract.status",
            obj=contract,
            before=before,
            after={"status": status},
            ip_address=ip_address,
        )
    return contract
