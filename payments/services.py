"""Writes of the money side: customers and contracts with their schedules."""

from __future__ import annotations

import datetime as dt
import unicodedata
from decimal import Decimal, InvalidOperation

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import F

from devices.models import Device
from payments.models import (
    Contract,
    ContractStatus,
    Customer,
    Frequency,
    Installment,
    Payment,
    PaymentProof,
    PaymentStatus,
    contract_number_key,
    nth_due_date,
    reference_number_keys,
)
from payments.money import has_valid_precision, minor_units, quantum, split_evenly
from portal.audit import AuditEntry, audit_record, audit_record_many, snapshot
from portal.models import Organisation
from portal.uploads import CheckedProof

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
    actor,
    name: str,
    phone: str,
    preferred_language: str = "",
    national_id: str = "",
    ip_address: str | None = None,
) -> Customer:
    """Create a customer; the phone is stored E.164 and the national ID only masked."""
    errors = {}
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


def _as_money(value, field_name: str, currency: str, errors: dict) -> Decimal | None:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        errors[field_name] = ["Enter an amount such as 1500.00."]
        return None
    if not amount.is_finite():
        errors[field_name] = ["Enter a finite amount."]
        return None
    if not has_valid_precision(amount, currency):
        errors[field_name] = [f"{currency} amounts have at most {minor_units(currency)} decimals."]
        return None
    if amount.adjusted() >= 12:
        errors[field_name] = ["This amount is too large."]
        return None
    return amount


def contract_create(
    *,
    provider: Organisation,
    actor,
    number: str,
    device: Device,
    customer: Customer,
    cash_price,
    down_payment="0",
    financed_amount=None,
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
    (interest and fees), never lower.
    """
    currency = provider.currency
    errors: dict[str, list[str]] = {}
    number = (number or "").strip()
    if not number:
        errors["number"] = ["This field is required."]
    elif len(number) > 40:
        errors["number"] = ["At most 40 characters."]
    elif any(unicodedata.category(ch).startswith("C") for ch in number):
        # A tab, newline or invisible format character makes a number nobody can
        # type back into a search box or a URL.
        errors["number"] = ["Letters, digits, spaces and punctuation only (no control characters)."]
    if device.provider_id != provider.pk:
        errors["device"] = ["No such device for this provider."]
    if customer.provider_id != provider.pk:
        errors["customer"] = ["No such customer for this provider."]
    price = _as_money(cash_price, "cash_price", currency, errors)
    down = _as_money(down_payment, "down_payment", currency, errors)
    financed = None
    if financed_amount not in (None, ""):
        financed = _as_money(financed_amount, "financed_amount", currency, errors)
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
    if not errors and Contract.objects.filter(provider=provider, number=number).exists():
        errors["number"] = ["A contract with this number already exists for this provider."]
    if not errors and Contract.objects.filter(device=device, status=ContractStatus.ACTIVE).exists():
        errors["device"] = ["This device already has an active contract."]
    if errors:
        raise ValidationError(errors)

    try:
        with transaction.atomic():
            contract = Contract.objects.create(
                provider=provider,
                number=number,
                number_key=contract_number_key(number),
                device=device,
                customer=customer,
                currency=currency,
                cash_price=price,
                down_payment=down,
                financed_amount=financed,
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


def contract_set_status(*, contract: Contract, status: str, actor, ip_address: str | None = None) -> Contract:
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


# --- lock policy and the lock decision ----------------------------------------------------------

LOCK_POLICY_FIELDS = (
    "grace_days",
    "reminder_days_before",
    "reminder_days_after",
    "lock_start_hour",
    "lock_end_hour",
    "lock_weekdays",
    "max_temp_unlock_hours",
    "unlock_alert_minutes",
    "provisional_installments",
    "provisional_max_amount",
    "provisional_confirm_days",
)


def lock_policy_update(*, provider: Organisation, actor, ip_address: str | None = None, **changes):
    """Create or change a provider's lock policy; every field validated, the change audited.

    Raises ``ValidationError`` (per field) and changes nothing on bad input.
    """
    from payments.models import LockPolicy

    unknown = sorted(set(changes) - set(LOCK_POLICY_FIELDS))
    if unknown:
        raise ValidationError({name: ["Not a lock policy setting."] for name in unknown})
    with transaction.atomic():
        policy, _created = LockPolicy.objects.select_for_update().get_or_create(provider=provider)
        before = snapshot(policy, LOCK_POLICY_FIELDS)
        for name, value in changes.items():
            setattr(policy, name, value)
        policy.full_clean()
        policy.save()
        audit_record(
            actor=actor,
            action="lock_policy.change",
            obj=policy,
            before=before,
            after=snapshot(policy, LOCK_POLICY_FIELDS),
            ip_address=ip_address,
        )
    return policy


def contract_lock_evaluate(*, contract: Contract, actor=None, now: dt.datetime | None = None) -> str:
    """Decide one contract's lock state now and, if it changed, write it with its signed command.

    Used wherever money or overrides change (a verified payment, an approved unlock) so the
    phone follows at once instead of waiting for the sweep. Returns the state after the call.
    """
    from django.utils import timezone

    from payments.sweep import apply_decisions

    apply_decisions([contract.pk], now=now or timezone.now(), actor=actor)
    contract.refresh_from_db(fields=["lock_state", "lock_reason", "lock_changed_at", "arrears_cleared_at"])
    return contract.lock_state


def lock_sweep(*, now: dt.datetime | None = None, batch_size: int = 1000):
    """Evaluate every live contract of every provider and record only changes (the periodic job)."""
    from payments.sweep import run_sweep

    return run_sweep(now=now, batch_size=batch_size)


LOCK_SCREEN_TEXT_FIELDS = (
    "title",
    "body",
    "reminder_title",
    "reminder_body",
    "data_kept_notice",
    "factory_reset_warning",
    "offline_unlock_hint",
)


def lock_screen_text_save(*, provider: Organisation, language: str, actor, ip_address: str | None = None, **fields):
    """Create or change a provider's lock-screen wording for one language; validated, audited.

    A text with an unknown placeholder is refused with the list of allowed ones; nothing changes.
    The next command for each of the provider's phones carries the new wording.
    """
    from payments.models import LockScreenText

    unknown = sorted(set(fields) - set(LOCK_SCREEN_TEXT_FIELDS))
    if unknown:
        raise ValidationError({name: ["Not a lock-screen text."] for name in unknown})
    if language not in {"en", *provider.languages}:
        raise ValidationError({"language": [f"{language!r} is not one of this provider's languages."]})
    with transaction.atomic():
        text = LockScreenText.objects.select_for_update().filter(provider=provider, language=language).first()
        before = snapshot(text, LOCK_SCREEN_TEXT_FIELDS) if text else None
        text = text or LockScreenText(provider=provider, language=language)
        for name, value in fields.items():
            setattr(text, name, (value or "").strip())
        text.full_clean()
        text.save()
        audit_record(
            actor=actor,
            action="lock_screen_text.change",
            obj=text,
            before=before,
            after=snapshot(text, LOCK_SCREEN_TEXT_FIELDS),
            ip_address=ip_address,
        )
    return text


# --- payments: exactly-once ingestion, matching, allocation, verification, reversal -------------


class PaymentConflict(ValidationError):
    """The transaction id is known with different details: a conflict, never a second payment."""

    def __init__(self, payment, differences: dict[str, tuple[str, str]]):
        self.payment = payment
        self.differences = differences
        super().__init__(
            {
                name: [f"This transaction id was recorded with {old!r}; this request says {new!r}."]
                for name, (old, new) in differences.items()
            }
        )


class PaymentAlreadyVerified(ValidationError):
    """Another agent verified the payment first."""


def _payment_request_fields(**fields) -> dict[str, str]:
    """The fields a retry must repeat exactly, as strings (compared to tell a retry from a conflict)."""
    return {name: "" if value is None else str(value) for name, value in sorted(fields.items())}


def _channels() -> tuple[str, ...]:
    from payments.models import ChannelKind

    return tuple(ChannelKind.values)


# Read once: the enum's .values builds a new list on every call, and a statement import checks 100,000 lines.
_CHANNELS = _channels()


def _check_payment_input(*, provider, channel, external_id, amount, currency, received_at, errors: dict):
    from django.utils import timezone

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
    money = _as_money(amount, "amount", provider.currency, errors)
    if money is not None and money <= 0 and "amount" not in errors:
        errors["amount"] = ["Must be more than zero."]
    if not isinstance(received_at, dt.datetime) or timezone.is_naive(received_at):
        errors["received_at"] = ["A date and time with its time zone, e.g. 2026-11-23T09:15:00+03:00."]
    elif received_at > timezone.now() + dt.timedelta(minutes=10):
        errors["received_at"] = ["Lies in the future."]
    return external_id, money


class PaymentAlreadyRecorded(PaymentAlreadyVerified):
    """The receipt was recorded before (the same form sent twice): it waits for its confirmation."""


def payment_ingest(
    *,
    provider: Organisation,
    channel: str,
    external_id: str,
    amount,
    currency: str,
    received_at: dt.datetime,
    reference: str = "",
    payer_phone: str = "",
    payer_name: str = "",
    contract_number: str = "",
    source: str = "api",
    actor=None,
    ip_address: str | None = None,
    auto_match: bool = True,
    carried_by=None,
):
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
    from payments.models import Payment, PaymentSource

    errors: dict[str, list[str]] = {}
    external_id, money = _check_payment_input(
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
    if errors:
        raise ValidationError(errors)
    fields = _payment_request_fields(
        channel=channel,
        amount=money,
        currency=currency,
        received_at=received_at.astimezone(dt.UTC).isoformat(),
        reference=reference,
        payer_phone=payer_phone,
        contract_number=contract_number or "",
    )
    with transaction.atomic():
        try:
            # Race: the same transaction delivered twice at once (a retried callback, two
            # workers). The unique constraint lets exactly one insert win; the loser lands
            # here after the winner commits and compares instead of crediting again.
            with transaction.atomic():
                payment = Payment.objects.create(
                    provider=provider,
                    channel=channel,
                    external_id=external_id,
                    amount=money,
                    currency=currency,
                    reference=reference,
                    payer_phone=(payer_phone or "")[: Payment._meta.get_field("payer_phone").max_length],
                    payer_name=(payer_name or "")[:150],
                    received_at=received_at,
                    source=source,
                    request_fields=fields,
                )
        except IntegrityError:
            existing = Payment.objects.select_related("contract").get(
                provider=provider, channel=channel, external_id=external_id
            )
            if existing.source == PaymentSource.AGENT and source != PaymentSource.AGENT:
                conflict = _channel_record_arrived(
                    payment=existing,
                    source=source,
                    amount=money,
                    currency=currency,
                    contract=contract,
                    reference=reference,
                    payer_phone=payer_phone,
                    auto_match=auto_match,
                    actor=actor,
                    ip_address=ip_address,
                    carried_by=carried_by,
                )
            else:
                differences = {
                    name: (existing.request_fields.get(name, ""), value)
                    for name, value in fields.items()
                    if existing.request_fields.get(name, "") != value
                }
                conflict = PaymentConflict(existing, differences) if differences else None
            if conflict is None:
                existing.refresh_from_db()
                return existing, False
        else:
            audit_record(
                actor=actor, action="payment.create", obj=payment, after=snapshot(payment), ip_address=ip_address
            )
            if contract is not None:
                _payment_apply(payment=payment, contract=contract, rule="contract_number", confidence=100, actor=actor)
            elif auto_match:
                match = payment_find_match(payment)
                if match is not None:
                    _payment_apply(payment=payment, contract=match[0], rule=match[1], confidence=match[2], actor=actor)
            payment.refresh_from_db()
            return payment, True
    # After this function's transaction, so the flag is kept although the request is refused
    # (a caller's own transaction that rolls back takes it too: _import_line flags again).
    payment_conflict_flag(conflict=conflict, source=source, actor=actor, ip_address=ip_address)
    raise conflict


def payment_find_match(payment) -> tuple[Contract, str, int] | None:
    """The contract a payment is for, by the first rule that gives exactly one answer.

    Reference = contract number (exact, then normalised), an IMEI in the reference, or the
    payer's phone = the customer of exactly one live contract. Returns (contract, rule,
    confidence 0–100), or None when nothing or more than one contract fits.
    """
    import re

    live = Contract.objects.filter(provider_id=payment.provider_id).exclude(status=ContractStatus.CANCELLED)
    reference = payment.reference.strip()
    if reference:
        exact = list(live.filter(number=reference)[:2])
        if len(exact) == 1:
            return exact[0], "reference_exact", 100
        whole = contract_number_key(reference)
        keys = reference_number_keys(reference) | ({whole} if len(whole) >= 3 else set())
        if keys:
            # One indexed query for every way the payer may have written the number inside
            # the reference ("Rate bp 7", "contract DLG-000131 thanks").
            keyed = list(live.filter(number_key__in=keys).values_list("pk", flat=True).distinct()[:2])
            if len(keyed) == 1:
                return live.get(pk=keyed[0]), "reference_normalised", 90
        for imei in re.findall(r"\b\d{15}\b", reference):
            by_imei = list(live.filter(status=ContractStatus.ACTIVE, device__imei=imei)[:2])
            if len(by_imei) == 1:
                return by_imei[0], "imei", 90
    if payment.payer_phone:
        try:
            phone = parse_phone(payment.payer_phone, region=payment.provider.country)
        except ValidationError:
            return None
        by_phone = list(live.filter(status=ContractStatus.ACTIVE, customer__phone=phone)[:2])
        if len(by_phone) == 1:
            return by_phone[0], "payer_phone", 70
    return None


def _channel_record_arrived(
    *,
    payment,
    source: str,
    amount: Decimal,
    currency: str,
    contract: Contract | None,
    reference: str,
    payer_phone: str,
    auto_match: bool,
    actor,
    ip_address: str | None,
    carried_by=None,
) -> PaymentConflict | None:
    """The channel's own record of a payment an agent recorded from a receipt: confirm it, or say how it differs.

    Compared on amount and currency (the channel is part of the key). A record that names or
    matches another contract differs too: confirming it would credit one owner with another's
    money. Returns None when it is the same payment, confirmed now if it was provisional.
    """
    from payments.models import Payment, PaymentFlag, PaymentStatus

    differences: dict[str, tuple[str, str]] = {}
    if amount != payment.amount:
        differences["amount"] = (str(payment.amount), str(amount))
    if currency != payment.currency:
        differences["currency"] = (payment.currency, currency)
    if not differences and payment.contract_id:
        named = contract
        if named is None and auto_match:
            found = payment_find_match(Payment(provider=payment.provider, reference=reference, payer_phone=payer_phone))
            named = found[0] if found else None
        if named is not None and named.pk != payment.contract_id:
            differences["contract_number"] = (payment.contract.number, named.number)
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
            _payment_confirm(payment=payment, via=source, actor=actor, ip_address=ip_address)
        # Otherwise the receipt stays provisional: a second person confirms it on the payments queue.
    return None


def channel_record_refusal(*, recorded_by, carried_by) -> str | None:
    """Why a channel record a *person* brought in may not confirm a receipt; None if it may.

    A statement is the channel's own record only when it is independent of the receipt: the
    officer who recorded a receipt and then uploads a statement (or a file they made) holding
    the same transaction id would confirm their own entry. So a statement uploaded by the
    recorder, or by an account four eyes links to theirs, confirms nothing (uploaded with an
    API key, it is carried by the key's creator). Records no person carries — a payment the
    provider's systems post, an M-Pesa callback, a file imported from the server's shell —
    confirm.
    """
    from portal.four_eyes import four_eyes_refusal
    from portal.models import User

    if not isinstance(carried_by, User) or not isinstance(recorded_by, User):
        return None
    return four_eyes_refusal(requester=recorded_by, approver=carried_by)


def _said_by(source: str) -> str:
    """``The M-Pesa confirmation``: the channel record a source stands for, as a sentence starts."""
    from payments.models import PaymentConfirmation

    label = str(PaymentConfirmation(source).label)
    return label[0].upper() + label[1:]


def _allocate(*, payment, contract: Contract, amount: Decimal) -> list:
    """Allocate ``amount`` of ``payment`` to the contract's open installments, oldest first; beyond them as credit.

    The caller holds the contract's row lock; the installments are locked here by due date and
    number, the order every writer takes (the sweep too), so two payments never interleave.
    """
    from payments.models import PaymentAllocation

    if amount <= 0:
        return []
    installments = list(
        Installment.objects.select_for_update()
        .filter(contract=contract, amount_paid__lt=F("amount_due"))
        .order_by("due_date", "number")
    )
    remaining = amount
    allocations = []
    for installment in installments:
        if remaining <= 0:
            break
        take = min(remaining, installment.amount_due - installment.amount_paid)
        Installment.objects.filter(pk=installment.pk).update(amount_paid=F("amount_paid") + take)
        allocations.append(PaymentAllocation(payment=payment, contract=contract, installment=installment, amount=take))
        remaining -= take
    if remaining > 0:
        # Beyond the whole schedule: held as credit, never lost.
        allocations.append(PaymentAllocation(payment=payment, contract=contract, installment=None, amount=remaining))
    PaymentAllocation.objects.bulk_create(allocations)
    return allocations


def _allocations_after(allocations) -> list[dict]:
    return [{"installment": a.installment_id, "amount": str(a.amount)} for a in allocations]


def provisional_limit(contract: Contract) -> tuple[Decimal, Decimal]:
    """(what a new receipt may still credit ``contract`` at once, the limit for all its unconfirmed receipts).

    The limit is what is still due on the contract's oldest unpaid installments — as many as
    the provider's ``provisional_installments`` (default one) — counting money from unconfirmed
    receipts as unpaid, capped by ``provisional_max_amount`` when set. What the contract's
    unconfirmed receipts already credited comes off, so recording more receipts (or inventing
    more transaction ids) never credits more. The caller holds the contract's row lock.
    """
    from django.db.models import Sum

    from payments.models import LockPolicy, PaymentAllocation, PaymentStatus

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
    from payments.models import PaymentAllocation, PaymentStatus

    if Installment.objects.filter(contract=contract, amount_paid__lt=F("amount_due")).exists():
        return False
    return not PaymentAllocation.objects.filter(
        contract=contract, payment__status=PaymentStatus.PROVISIONAL, reversed_at__isnull=True
    ).exists()


def _payment_matched_webhook(*, payment, contract: Contract, rule: str) -> None:
    """Provider webhook, in the caller's transaction: the provider hears of the match exactly when it commits."""
    from portal.webhooks import webhook_event_emit

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


def _payment_apply(*, payment, contract: Contract, rule: str, confidence: int, actor=None) -> None:
    """Match and allocate in the caller's transaction, then decide the lock at once.

    A payment recorded from a receipt (source ``agent``) becomes provisional: only
    ``provisional_limit`` is allocated, the rest is held, and the provider hears of it
    (webhook ``payment.matched``) when it is confirmed.
    """
    from django.utils import timezone

    from payments.models import Payment, PaymentSource, PaymentStatus
    from payments.sweep import apply_decisions
    from portal.models import User

    if payment.currency != contract.currency:
        raise ValidationError({"currency": [f"The contract is in {contract.currency}; payments are never converted."]})
    now = timezone.now()
    # Lock order: contract, then its installments by number (the sweep takes the contract
    # first too), so a payment and the sweep or a second payment never interleave.
    contract = Contract.objects.select_for_update().get(pk=contract.pk)
    provisional = payment.source == PaymentSource.AGENT
    credit, limit = payment.amount, None
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
    apply_decisions([contract.pk], now=now, actor=actor)


def _payment_confirm(*, payment, via: str, actor, ip_address: str | None = None) -> bool:
    """Allocate a provisional payment's held part and mark it verified, in the caller's transaction; decide the lock.

    ``via`` is ``person`` (``payment_confirm``) or the source of the channel record that
    matched it. Returns False, changing nothing, when it is no longer provisional or its
    channel record conflicts (finance resolves that by reversing it).
    """
    from django.utils import timezone

    from payments.models import Payment, PaymentConfirmation, PaymentFlag, PaymentStatus
    from payments.sweep import apply_decisions

    now = timezone.now()
    # Race: a second person confirming while the channel's record arrives, or two channel records
    # at once. Lock order payment, contract, installments (as a reversal): one confirms, the
    # other finds it verified.
    locked = Payment.objects.select_for_update().get(pk=payment.pk)
    if locked.status != PaymentStatus.PROVISIONAL or locked.flag == PaymentFlag.CONFLICT:
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
    apply_decisions([contract.pk], now=now, actor=actor)
    return True


def _check_confirmable(payment) -> None:
    """Raise why ``payment`` cannot be confirmed (already confirmed, not provisional, in conflict)."""
    from payments.models import PaymentFlag, PaymentStatus

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


def payment_confirm(*, payment, actor, ip_address: str | None = None):
    """A second person confirms a payment an agent recorded from a receipt: its held part is allocated at once.

    Four eyes: refused with the reason (``PermissionDenied``) for the agent who recorded it and
    for any account linked to theirs (``portal.four_eyes``). ``PaymentAlreadyVerified`` when
    someone or the channel confirmed it first; ``ValidationError`` when it is not provisional or
    its channel record conflicts. Audited as ``payment.confirm`` with the requester's id.
    """
    from django.core.exceptions import PermissionDenied

    from payments.models import Payment, PaymentConfirmation
    from portal.four_eyes import four_eyes_check
    from portal.permissions import Right, has_right

    if not has_right(actor, Right.VERIFY_PAYMENTS):
        raise PermissionDenied("Your role does not allow confirming payments (verify_payments).")
    related = ("recorded_by", "confirmed_by", "verified_by")
    current = Payment.objects.select_related(*related).get(pk=payment.pk)
    _check_confirmable(current)
    # Two accounts of one person are not two people (set up by one another, or by one person).
    four_eyes_check(requester=current.recorded_by, approver=actor)
    with transaction.atomic():
        if not _payment_confirm(payment=current, via=PaymentConfirmation.PERSON, actor=actor, ip_address=ip_address):
            _check_confirmable(Payment.objects.select_related(*related).get(pk=payment.pk))
    return Payment.objects.select_related("contract", *related).get(pk=payment.pk)


def payment_flag(*, payment, flag: str, reason: str, actor=None, ip_address: str | None = None) -> bool:
    """Flag a payment to finance (its channel record differs, or none came in time); audited. True if it changed.

    The same flag with the same reason again changes nothing; a reversed payment is settled and not flagged.
    """
    from django.utils import timezone

    from payments.models import Payment, PaymentStatus

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


def payment_conflict_flag(*, conflict: PaymentConflict, source: str, actor=None, ip_address: str | None = None):
    """Flag to finance a payment recorded from a receipt when its channel's own record differs."""
    from payments.models import PaymentFlag, PaymentSource

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
    from django.utils import timezone

    from payments.models import LockPolicy, Payment, PaymentFlag, PaymentStatus

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


def payment_match_manual(*, payment, contract: Contract, actor, ip_address: str | None = None):
    """A finance officer matches an unmatched payment to a contract; allocated and decided at once."""
    from payments.models import Payment, PaymentStatus

    with transaction.atomic():
        # Race: two officers matching the same payment; the row lock lets the second see it matched.
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        if payment.status != PaymentStatus.UNMATCHED:
            raise ValidationError({"status": [f"This payment is already {payment.get_status_display().lower()}."]})
        if contract.provider_id != payment.provider_id:
            raise ValidationError({"contract": ["Not a contract of this payment's provider."]})
        _payment_apply(payment=payment, contract=contract, rule="manual", confidence=100, actor=actor)
        payment.refresh_from_db()
    return payment


def payment_verify(*, payment, actor, proof: str = "", ip_address: str | None = None):
    """A call-center agent confirms a matched payment with the customer's proof; once only.

    Two agents verifying at once: the conditional UPDATE lets exactly one through and
    the other gets ``PaymentAlreadyVerified``. A provisional payment (recorded from a
    receipt) is not verified but confirmed (``payment_confirm``).
    """
    from django.utils import timezone

    from payments.models import Payment, PaymentStatus

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


def payment_reverse(*, payment, actor, reason: str, ip_address: str | None = None):
    """Undo a payment (chargeback, returned transfer): its allocations come off and the lock is decided again.

    A provisional payment's held part is released with it (it was never allocated).
    """
    from django.utils import timezone

    from payments.models import Payment, PaymentStatus
    from payments.sweep import apply_decisions

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
            apply_decisions([contract.pk], now=now, actor=actor)
        payment.refresh_from_db()
    return payment


# --- payment proofs and verification with the customer on the line -----------------------------


def proof_save(*, payment: Payment, checked: CheckedProof, actor, transaction_id: str = "", ip_address=None):
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
    checked.upload.seek(0)
    proof.file.save(f"{checked.sha256[:20]}.{checked.extension}", ContentFile(checked.upload.read()), save=False)
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


# --- verification with the customer on the line --------------------------------------------------


class WrongContract(ValidationError):
    """The transaction exists but is credited to another contract."""


def payment_verify_existing(*, payment: Payment, contract, actor, checked: CheckedProof | None = None, ip_address=None):
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
            raise WrongContract(
                f"Transaction {payment.external_id} is credited to contract {payment.contract.number}, not this one. "
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
    *, contract, actor, channel: str, amount, received_at, transaction_id: str, checked: CheckedProof, ip_address=None
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


# --- CSV column mappings: how a finance officer's bank exports its CSV --------------------------

# Longest run of lines before the header, and widest wrapped purpose text, we accept: far
# above any real export; a larger number is a typo that would make every file "too short".
CSV_MAPPING_MAX_PREAMBLE_ROWS = 1000
CSV_MAPPING_MAX_WRAP_WIDTH = 1000
_CSV_PROBE_DATE = dt.date(2024, 12, 31)  # day > 12, so a format that swaps day and month shows


def csv_mapping_problems(mapping) -> dict[str, list[str]]:
    """Why ``mapping`` (a ``CsvMapping``) could not read a bank file, per field; empty when usable.

    Keys are the ``CsvMapping`` field names (``__all__`` for what concerns no one field), so a
    form with the same field names shows each reason beside the field it is about. The
    dataclass's own ``check()`` runs last, so nothing it refuses can be saved.
    """
    import codecs

    from django.core.exceptions import NON_FIELD_ERRORS

    from payments.models import CsvColumnMapping
    from payments.statements.types import StatementError, check_currency
    from portal.patterns import compile_pattern, pattern_problem

    errors: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    name_length = CsvColumnMapping._meta.get_field("name").max_length
    if not (mapping.name or "").strip():
        add("name", "Give the mapping a name, e.g. the bank's; officers choose it by this name when importing.")
    elif len(mapping.name) > name_length:
        add("name", f"The name has {len(mapping.name)} characters; at most {name_length} fit.")
    if mapping.date_column is None:
        add("date_column", "Give the column that holds the booking date.")

    if not isinstance(mapping.delimiter, str) or len(mapping.delimiter) != 1:
        add(
            "delimiter",
            f"The separator must be exactly one character; {mapping.delimiter!r} is "
            f"{len(mapping.delimiter or '')}. Type \\t for a tab.",
        )
    elif mapping.delimiter in '"\r\n':
        add("delimiter", f"{mapping.delimiter!r} cannot separate columns: it is the quote character or a line break.")

    try:
        codecs.lookup(mapping.encoding)
        b"a".decode(mapping.encoding, errors="replace")  # LookupError for byte-to-byte codecs such as base64
    except (LookupError, TypeError):
        add(
            "encoding",
            f"{mapping.encoding!r} is not a text encoding Python knows; "
            "common ones are utf-8, iso-8859-1 (Latin-1), cp1252 (Windows) and utf-16.",
        )

    date_format = mapping.date_format or ""
    if "%" not in date_format:
        add("date_format", f"{date_format!r} has no date directive; write it like %d.%m.%Y or %Y-%m-%d.")
    else:
        try:
            written = _CSV_PROBE_DATE.strftime(date_format)
            read_back = dt.datetime.strptime(written, date_format).date()
        except ValueError as exc:
            add("date_format", f"{date_format!r} is not a date format Python can read ({exc}).")
        else:
            if read_back != _CSV_PROBE_DATE:
                add(
                    "date_format",
                    f"{date_format!r} does not pin down a day: 31 Dec 2024 is written {written!r} and read back "
                    f"as {read_back:%d %b %Y}. It needs the day, the month and the year (%d, %m, %Y).",
                )

    for field, limit in (
        ("preamble_rows", CSV_MAPPING_MAX_PREAMBLE_ROWS),
        ("wrapped_purpose_width", CSV_MAPPING_MAX_WRAP_WIDTH),
    ):
        value = getattr(mapping, field)
        if not isinstance(value, int) or isinstance(value, bool):
            add(field, "Give a whole number.")
        elif value < 0:
            add(field, f"This cannot be negative (it is {value}); 0 means none.")
        elif value > limit:
            add(field, f"{value} is more than the {limit} any bank's export needs; is it a typo?")

    # Direction: exactly one of a signed amount, debit + credit columns, or amount + mark column.
    # Each mistake named on the field to change; check() below backs this up.
    amount, debit, credit = mapping.amount_column, mapping.debit_column, mapping.credit_column
    direction = mapping.direction_column
    if debit is not None and credit is None:
        add("credit_column", "Debit and credit columns come in pairs: give the credit column too.")
    elif credit is not None and debit is None:
        add("debit_column", "Debit and credit columns come in pairs: give the debit column too.")
    elif debit is not None and amount is not None:
        add("amount_column", "Leave the amount column empty when the file has debit and credit columns.")
    elif amount is None and debit is None:
        add("amount_column", "Give the amount column, or the debit and credit columns.")
    if direction is not None:
        if amount is None:
            add("direction_column", "A debit/credit mark column goes with an amount column; give that too.")
        if not mapping.debit_marks:
            add("debit_marks", "Give the marks that mean a debit (e.g. S, D) when there is a mark column.")
        if not mapping.credit_marks:
            add("credit_marks", "Give the marks that mean a credit (e.g. H, C) when there is a mark column.")
    for field in ("debit_marks", "credit_marks"):
        lower = [mark for mark in getattr(mapping, field) if mark != mark.upper()]
        if lower:
            # The parser compares the cell in capitals with the marks as saved.
            add(field, f"Write marks in capitals ({', '.join(lower)}): the file's marks are compared in capitals.")
    both = sorted(set(mapping.debit_marks) & set(mapping.credit_marks))
    if both:
        add("credit_marks", f"{', '.join(both)} cannot mean both a debit and a credit.")

    if mapping.default_currency:
        if reason := check_currency(mapping.default_currency):
            add("default_currency", reason[0].upper() + reason[1:] + ".")
    elif not mapping.currency_column:
        add("default_currency", "Give the currency column, or the currency all of this file's amounts are in.")

    if (mapping.opening_balance_label or mapping.closing_balance_label) and mapping.balance_label_column is None:
        add("balance_label_column", "Give the column that holds the balance labels, or leave the labels empty.")

    # User-supplied patterns: checked and later run by one helper (portal.patterns, RE2), so a
    # pattern that could stall a worker, or that RE2 cannot run, is refused here with the reason.
    for field, needs_group in (
        ("end_to_end_pattern", True),
        ("counterparty_account_pattern", True),
        ("return_pattern", False),
    ):
        pattern = getattr(mapping, field)
        if pattern is None:
            continue
        if problem := pattern_problem(pattern):
            add(field, problem)
            continue
        if needs_group and compile_pattern(pattern).groups < 1:
            add(field, r"Put parentheses around the part to keep, e.g. EREF:\s*(\S+).")
    if not mapping.return_pattern:
        add("return_pattern", "Give the posting texts of returns (the default covers German banks).")
    elif "return_pattern" not in errors and compile_pattern(mapping.return_pattern, ignore_case=True).search(""):
        # An empty posting text would match: every line would be taken for a return, never credited.
        add("return_pattern", "This matches an empty posting text, so every line would count as a return.")

    if not errors:
        try:
            mapping.check()
        except StatementError as exc:
            add(NON_FIELD_ERRORS, str(exc))
    return errors


def _csv_mapping_in_use(provider: Organisation, name: str) -> bool:
    """An import still to read its file with this mapping (it looks the mapping up by name)."""
    from payments.models import ImportStatus, StatementImport

    return StatementImport.objects.filter(
        provider=provider, csv_mapping=name, status__in=[ImportStatus.PENDING, ImportStatus.RUNNING]
    ).exists()


def csv_mapping_save(*, provider: Organisation, name: str, mapping, actor, instance=None, ip_address=None):
    """Create (``instance`` None) or change a provider's saved CSV column mapping; validated, audited.

    ``mapping`` is a ``CsvMapping`` or a dict of its fields; its name is set to ``name``.
    Raises ``ValidationError`` per field (the ``CsvMapping`` field names, ``name`` for a name
    the provider already uses) and changes nothing on bad input. A mapping that a waiting or
    running import will look up by name keeps its name until that import has finished.
    """
    from dataclasses import asdict, fields, replace

    from payments.models import CsvColumnMapping
    from payments.statements.csv_format import CsvMapping

    name = (name or "").strip()
    if isinstance(mapping, dict):
        unknown = sorted(set(mapping) - {item.name for item in fields(CsvMapping)})
        if unknown:
            raise ValidationError({"mapping": [f"Not CSV mapping settings: {', '.join(unknown)}."]})
        try:
            mapping = CsvMapping(**{**mapping, "name": name})
        except TypeError as exc:  # a required setting (the date column) is missing
            raise ValidationError({"mapping": [str(exc)]}) from None
    else:
        mapping = replace(mapping, name=name)
    if problems := csv_mapping_problems(mapping):
        raise ValidationError(problems)
    if instance is not None and instance.provider_id != provider.pk:
        raise ValueError("csv_mapping_save: the mapping belongs to another provider")
    # Stored as JSON; lists are what comes back, so store lists (CsvMapping(**saved) turns them back).
    stored = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(mapping).items()}
    taken = ValidationError({"name": [f"This provider already has a CSV mapping called {name!r}."]})

    with transaction.atomic():
        if instance is None:
            record, before = CsvColumnMapping(provider=provider), None
        else:
            record = CsvColumnMapping.objects.select_for_update().get(pk=instance.pk)
            before = snapshot(record, ("name", "mapping"))
            if record.name != name and _csv_mapping_in_use(provider, record.name):
                raise ValidationError(
                    {"name": ["An import waiting or running reads this mapping by its name; rename it afterwards."]}
                )
        clash = CsvColumnMapping.objects.filter(provider=provider, name=name)
        if record.pk is not None:
            clash = clash.exclude(pk=record.pk)
        if clash.exists():
            raise taken
        record.name, record.mapping = name, stored
        try:
            with transaction.atomic():
                record.save()
        except IntegrityError:
            # Race: another officer saved the same name between the check and the save.
            raise taken from None
        audit_record(
            actor=actor,
            action="csv_mapping.save",
            obj=record,
            before=before,
            after=snapshot(record, ("name", "mapping")),
            ip_address=ip_address,
        )
    return record


def csv_mapping_delete(*, mapping, actor, ip_address=None) -> None:
    """Delete a saved CSV column mapping, audited with what it was.

    Raises ``ValidationError`` while an import waiting or running still has to read its file
    with the mapping. Finished imports keep the name they were read with.
    """
    from payments.models import CsvColumnMapping

    with transaction.atomic():
        record = CsvColumnMapping.objects.select_for_update().select_related("provider").get(pk=mapping.pk)
        if _csv_mapping_in_use(record.provider, record.name):
            raise ValidationError(
                "An import waiting or running reads its file with this mapping; delete it afterwards."
            )
        # Recorded before the row goes, while the event can still name its id and provider.
        audit_record(
            actor=actor,
            action="csv_mapping.delete",
            obj=record,
            before=snapshot(record, ("name", "mapping")),
            after=None,
            ip_address=ip_address,
        )
        record.delete()


# --- payment channels: how owners pay, listed on every lock screen in the admin's order ----------

PAYMENT_CHANNEL_FIELDS = ("kind", "name", "account", "reference", "instructions", "short_code", "position", "active")


def payment_channel_save(*, provider, actor, channel=None, ip_address: str | None = None, **fields):
    """Create a payment channel of ``provider`` (last in the order) or change ``channel``; audited.

    Validated like the model (placeholders in the reference, a 5-7 digit short code); a
    short code belongs to a mobile-money channel only. Refused changes change nothing.
    Active channels appear on the next lock command of every phone of the provider.
    """
    from django.db import transaction
    from django.db.models import Max

    from payments.models import ChannelKind, PaymentChannel
    from portal.audit import audit_record, snapshot

    unknown = sorted(set(fields) - {"kind", "name", "account", "reference", "instructions", "short_code"})
    if unknown:
        raise ValidationError({name: ["Not a payment channel field."] for name in unknown})
    with transaction.atomic():
        if channel is None:
            last = PaymentChannel.objects.filter(provider=provider).aggregate(last=Max("position"))["last"]
            channel = PaymentChannel(provider=provider, position=0 if last is None else last + 1)
            before = None
        else:
            channel = PaymentChannel.objects.select_for_update().get(pk=channel.pk, provider=provider)
            before = snapshot(channel, PAYMENT_CHANNEL_FIELDS)
        for name, value in fields.items():
            setattr(channel, name, (value or "").strip())
        if channel.short_code and channel.kind != ChannelKind.MOBILE_MONEY:
            raise ValidationError({"short_code": ["Only a mobile-money (M-Pesa) channel has a short code."]})
        channel.full_clean()
        channel.save()
        audit_record(
            actor=actor,
            action="payment_channel.create" if before is None else "payment_channel.change",
            obj=channel,
            before=before,
            after=snapshot(channel, PAYMENT_CHANNEL_FIELDS),
            ip_address=ip_address,
        )
    return channel


def payment_channel_set_active(*, channel, active: bool, actor, ip_address: str | None = None):
    """Deactivate a channel (gone from the next lock screens, kept for the record) or reactivate it; audited."""
    from django.db import transaction

    from payments.models import PaymentChannel
    from portal.audit import audit_record

    with transaction.atomic():
        channel = PaymentChannel.objects.select_for_update().get(pk=channel.pk)
        if channel.active != active:
            channel.active = active
            channel.save(update_fields=["active"])
            audit_record(
                actor=actor,
                action="payment_channel.activate" if active else "payment_channel.deactivate",
                obj=channel,
                before={"active": not active},
                after={"active": active},
                ip_address=ip_address,
            )
    return channel


def payment_channel_move(*, channel, up: bool, actor, ip_address: str | None = None) -> bool:
    """Move a channel one place up or down the provider's order (positions renumbered 0..n-1); audited.

    Returns False when it is already first (or last). The provider's channels are locked
    while renumbering, so two admins reordering at once cannot interleave.
    """
    from django.db import transaction

    from payments.models import PaymentChannel
    from portal.audit import audit_record

    with transaction.atomic():
        rows = list(
            PaymentChannel.objects.select_for_update()
            .filter(provider_id=channel.provider_id)
            .order_by("position", "id")
        )
        ids = [row.pk for row in rows]
        at = ids.index(channel.pk)
        to = at - 1 if up else at + 1
        if not 0 <= to < len(ids):
            return False
        order = list(ids)
        order[at], order[to] = order[to], order[at]
        by_id = {row.pk: row for row in rows}
        for position, pk in enumerate(order):
            by_id[pk].position = position
        PaymentChannel.objects.bulk_update(rows, ["position"])
        audit_record(
            actor=actor,
            action="payment_channel.reorder",
            obj=by_id[channel.pk],
            before={"order": ids},
            after={"order": order},
            ip_address=ip_address,
        )
    return True
