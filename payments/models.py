"""Customers, contracts and installment schedules: the money side.

``payments`` decides; ``devices`` executes. Money is always a ``Decimal`` with
the contract's currency.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import hmac
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from phonenumber_field.modelfields import PhoneNumberField

from devices.models import Device
from portal.models import Organisation, OrganisationKind

MONEY = {"max_digits": 14, "decimal_places": 2}


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


class ContractStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    PAID_OFF = "paid_off", _("Paid off")
    DEFAULTED = "defaulted", _("Defaulted")
    CANCELLED = "cancelled", _("Cancelled")


class Contract(models.Model):
    """A financing agreement for one device and one customer.

    The schedule (``installments``) always sums exactly to ``financed_amount``.
    """

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="contracts",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    number = models.CharField(max_length=40)
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
