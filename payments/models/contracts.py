"""Customers, contracts and their installment schedules.

Money is always a ``Decimal`` with the contract's currency. ``payments`` decides; ``devices`` executes.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import hmac
import re
from decimal import Decimal
from typing import TypedDict

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from phonenumber_field.modelfields import PhoneNumberField

from devices.models import Device, LockState
from portal.models import Organisation, OrganisationKind


class MoneyDigits(TypedDict):
    max_digits: int
    decimal_places: int


#: Every amount column: up to 999,999,999,999.99 in the contract's currency.
MONEY: MoneyDigits = {"max_digits": 14, "decimal_places": 2}


def mask_national_id(raw: str) -> str:
    """Keep the last four characters; everything before becomes ``•``."""
    cleaned = "".join(raw.split()).upper()
    if len(cleaned) <= 4:
        return "•" * len(cleaned)
    return "•" * (len(cleaned) - 4) + cleaned[-4:]


def national_id_digest(raw: str) -> str:
    """A keyed digest of the normalised ID, to find a customer by ID without storing it."""
    cleaned = "".join(raw.split()).upper()
    return hmac.new(settings.SECRET_KEY.encode(), cleaned.encode(), hashlib.sha256).hexdigest()


class Customer(models.Model):
    """The buyer of a financed phone. The national ID is never stored in clear."""

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = ("provider", "name", "phone", "preferred_language", "national_id_masked", "created_at")

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="customers",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    name = models.CharField(max_length=150)
    phone = PhoneNumberField(help_text=_("Stored in E.164; local numbers use the provider's country."))
    preferred_language = models.CharField(max_length=8, default="en")
    national_id_masked = models.CharField(_("national ID"), max_length=40, blank=True)
    national_id_digest = models.CharField(max_length=64, blank=True, editable=False, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["phone"]), models.Index(fields=["provider", "name"])]

    def __str__(self) -> str:
        return self.name

    def set_national_id(self, raw: str) -> None:
        self.national_id_masked = mask_national_id(raw) if raw else ""
        self.national_id_digest = national_id_digest(raw) if raw else ""


class Frequency(models.TextChoices):
    WEEKLY = "weekly", _("Weekly")
    FORTNIGHTLY = "fortnightly", _("Fortnightly")
    MONTHLY = "monthly", _("Monthly")


def nth_due_date(first: dt.date, frequency: str, n: int) -> dt.date:
    """Due date of installment ``n`` (0-based): monthly keeps the day, clamped to the month's end."""
    if frequency == Frequency.WEEKLY:
        return first + dt.timedelta(weeks=n)
    if frequency == Frequency.FORTNIGHTLY:
        return first + dt.timedelta(weeks=2 * n)
    month_index = first.month - 1 + n
    year, month = first.year + month_index // 12, month_index % 12 + 1
    return dt.date(year, month, min(first.day, calendar.monthrange(year, month)[1]))


def contract_number_key(text: str) -> str:
    """A contract number as payers mistype it, normalised: case, spaces, separators, leading zeros.

    ``DLG-000131``, ``dlg 131`` and ``DLG/131`` all give ``DLG131``.
    """

    compact = re.sub(r"[^0-9A-Z]", "", (text or "").upper())
    return re.sub(r"\d+", lambda m: m.group(0).lstrip("0") or "0", compact)


def reference_number_keys(reference: str, *, max_words: int = 30) -> set[str]:
    """Every contract-number key a payer's free text may hold: runs of one to three words.

    ``"Rate dlg 100 feb"`` gives {"DLG100", "DLG100FEB", "RATEDLG100", "100", ...}; only keys
    of three or more characters with a digit count (a bare "A1" or a word would match too much).
    """

    words = re.findall(r"[0-9A-Za-z]+", reference or "")[:max_words]
    keys = set()
    for size in (1, 2, 3):
        for i in range(len(words) - size + 1):
            key = contract_number_key("".join(words[i : i + size]))
            if len(key) >= 3 and any(ch.isdigit() for ch in key):
                keys.add(key)
    return keys


class ContractStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    PAID_OFF = "paid_off", _("Paid off")
    DEFAULTED = "defaulted", _("Defaulted")
    CANCELLED = "cancelled", _("Cancelled")


class Contract(models.Model):
    """A financing agreement for one device and one customer.

    The schedule (``installments``) always sums exactly to ``financed_amount``.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "number",
        "number_key",
        "device",
        "customer",
        "currency",
        "cash_price",
        "down_payment",
        "financed_amount",
        "installment_count",
        "frequency",
        "first_due_date",
        "status",
        "lock_state",
        "lock_reason",
        "lock_changed_at",
        "arrears_cleared_at",
        "created_at",
        "updated_at",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="contracts",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    number = models.CharField(max_length=40)
    number_key = models.CharField(
        max_length=40, blank=True, db_index=True, editable=False, help_text=_("The number normalised for matching.")
    )
    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="contracts")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="contracts")
    currency = models.CharField(max_length=3)
    cash_price = models.DecimalField(**MONEY, validators=[MinValueValidator(Decimal("0.01"))])
    down_payment = models.DecimalField(**MONEY, default=Decimal("0"), validators=[MinValueValidator(Decimal("0"))])
    financed_amount = models.DecimalField(**MONEY, validators=[MinValueValidator(Decimal("0.01"))])
    installment_count = models.PositiveSmallIntegerField()
    frequency = models.CharField(max_length=12, choices=Frequency.choices)
    first_due_date = models.DateField()
    status = models.CharField(max_length=12, choices=ContractStatus.choices, default=ContractStatus.ACTIVE)
    # The lock decision's latest answer for this contract (payments decides; the device executes).
    lock_state = models.CharField(max_length=20, choices=LockState.choices, default=LockState.UNLOCKED)
    lock_reason = models.CharField(max_length=300, blank=True)
    lock_changed_at = models.DateTimeField(null=True, blank=True)
    arrears_cleared_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When the arrears of a locked contract were last cleared.")
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "number"], name="contract_number_unique_per_provider"),
            models.UniqueConstraint(
                fields=["device"], condition=Q(status="active"), name="one_active_contract_per_device"
            ),
            models.CheckConstraint(
                condition=Q(down_payment__lt=models.F("cash_price")), name="down_payment_below_price"
            ),
            models.CheckConstraint(condition=Q(financed_amount__gt=0), name="financed_amount_positive"),
            models.CheckConstraint(condition=Q(installment_count__gte=1), name="installment_count_positive"),
        ]
        indexes = [models.Index(fields=["status", "provider"])]

    def __str__(self) -> str:
        return self.number


class Installment(models.Model):
    """One due date of a contract's schedule: what is due and what has been paid."""

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="installments")
    number = models.PositiveSmallIntegerField(help_text=_("1-based position in the schedule"))
    due_date = models.DateField()
    amount_due = models.DecimalField(**MONEY)
    amount_paid = models.DecimalField(**MONEY, default=Decimal("0"))

    class Meta:
        ordering = ["contract_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "number"], name="installment_number_unique"),
            models.CheckConstraint(condition=Q(amount_due__gt=0), name="installment_amount_due_positive"),
            models.CheckConstraint(
                condition=Q(amount_paid__gte=0) & Q(amount_paid__lte=models.F("amount_due")),
                name="installment_paid_within_due",
            ),
        ]
        indexes = [models.Index(fields=["due_date"])]

    def __str__(self) -> str:
        return f"{self.contract_id}#{self.number}"

    @property
    def outstanding(self) -> Decimal:
        return self.amount_due - self.amount_paid

    def status_on(self, today: dt.date) -> str:
        """``paid``, ``partial``/``overdue`` or ``due`` as an agent reads the schedule."""
        if self.amount_paid >= self.amount_due:
            return "paid"
        if self.due_date < today:
            return "overdue"
        if self.amount_paid > 0:
            return "partial"
        return "due"
