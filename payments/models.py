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
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from phonenumber_field.modelfields import PhoneNumberField

from devices.models import Device, LockState
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


def _default_reminders_before() -> list[int]:
    return [3, 1]


def _default_reminders_after() -> list[int]:
    return [1, 2]


def _default_weekdays() -> list[int]:
    return [0, 1, 2, 3, 4, 5]


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
    import re

    compact = re.sub(r"[^0-9A-Z]", "", (text or "").upper())
    return re.sub(r"\d+", lambda m: m.group(0).lstrip("0") or "0", compact)


def reference_number_keys(reference: str, *, max_words: int = 30) -> set[str]:
    """Every contract-number key a payer's free text may hold: runs of one to three words.

    ``"Rate dlg 100 feb"`` gives {"DLG100", "DLG100FEB", "RATEDLG100", "100", ...}; only keys
    of three or more characters with a digit count (a bare "A1" or a word would match too much).
    """
    import re

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


def _validate_day_list(value) -> None:
    if not isinstance(value, list) or not all(isinstance(d, int) and 0 <= d <= 60 for d in value):
        raise ValidationError(_("A list of whole days between 0 and 60, e.g. [3, 1]."))


def _validate_weekdays(value) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(d, int) and 0 <= d <= 6 for d in value):
        raise ValidationError(_("At least one weekday, as numbers 0 (Monday) to 6 (Sunday)."))


class LockPolicy(models.Model):
    """A provider's rules for reminders and locks, edited by its admin.

    The lock decision (``payments.decision``) reads it; every change is audited.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
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
        "updated_at",
    )

    provider = models.OneToOneField(
        Organisation,
        on_delete=models.CASCADE,
        related_name="lock_policy",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    grace_days = models.PositiveSmallIntegerField(
        default=3, validators=[MaxValueValidator(60)], help_text=_("Days after a due date before a lock.")
    )
    reminder_days_before = models.JSONField(
        default=_default_reminders_before,
        validators=[_validate_day_list],
        help_text=_("Days before a due date on which the owner is reminded, e.g. [3, 1]."),
    )
    reminder_days_after = models.JSONField(
        default=_default_reminders_after,
        validators=[_validate_day_list],
        help_text=_("Days after a due date on which the reminder repeats, e.g. [1, 2]."),
    )
    lock_start_hour = models.PositiveSmallIntegerField(
        default=9, validators=[MaxValueValidator(23)], help_text=_("Local hour from which a lock may start.")
    )
    lock_end_hour = models.PositiveSmallIntegerField(
        default=17, validators=[MaxValueValidator(24)], help_text=_("Local hour from which no lock may start.")
    )
    lock_weekdays = models.JSONField(
        default=_default_weekdays,
        validators=[_validate_weekdays],
        help_text=_("Weekdays on which a lock may start: 0 = Monday … 6 = Sunday."),
    )
    max_temp_unlock_hours = models.PositiveSmallIntegerField(
        default=72, validators=[MinValueValidator(1), MaxValueValidator(24 * 30)]
    )
    unlock_alert_minutes = models.PositiveSmallIntegerField(
        default=15,
        validators=[MinValueValidator(1)],
        help_text=_("Flag a device whose unlock is not acknowledged this long after the arrears were cleared."),
    )
    # Payments an agent records from a customer's receipt alone (payments.services.payment_record_from_proof).
    provisional_installments = models.PositiveSmallIntegerField(
        default=1,
        validators=[MaxValueValidator(12)],
        help_text=_(
            "A payment recorded from a receipt alone credits at once at most what is still due on the contract's "
            "this many oldest unpaid installments, for all its unconfirmed receipts together (0: nothing until "
            "confirmed). The rest is held until a second person or the channel's own record confirms it."
        ),
    )
    provisional_max_amount = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text=_("Optional: never more than this amount (in the provider's currency) at once from receipts alone."),
    )
    provisional_confirm_days = models.PositiveSmallIntegerField(
        default=7,
        validators=[MinValueValidator(1), MaxValueValidator(90)],
        help_text=_(
            "A payment recorded from a receipt that no channel has confirmed after this many days is flagged "
            "to finance."
        ),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "lock policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(lock_start_hour__lt=models.F("lock_end_hour")), name="lock_window_not_empty"
            ),
        ]

    def __str__(self) -> str:
        return f"Lock policy of {self.provider}"

    def clean(self) -> None:
        start, end = self.lock_start_hour, self.lock_end_hour
        if start is not None and end is not None and start >= end:
            raise ValidationError({"lock_end_hour": _("Must be later than the start hour.")})

    def rules(self):
        """The policy as the pure decision reads it."""
        from payments.decision import Rules

        return Rules(
            grace_days=self.grace_days,
            reminder_days_before=max(self.reminder_days_before, default=0),
            lock_start_hour=self.lock_start_hour,
            lock_end_hour=self.lock_end_hour,
            lock_weekdays=frozenset(self.lock_weekdays),
        )


class OverrideKind(models.TextChoices):
    TEMP_UNLOCK = "temp_unlock", _("Temporary unlock")
    DISPUTE_HOLD = "dispute_hold", _("Dispute hold")


class LockOverride(models.Model):
    """An exception to the policy for one contract: a temporary unlock or a dispute hold.

    Created only through services that record who asked and who approved.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = ("contract", "kind", "starts_at", "ends_at", "reason", "created_by", "lifted_at", "created_at")

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="overrides")
    kind = models.CharField(max_length=20, choices=OverrideKind.choices)
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField(null=True, blank=True, help_text=_("Empty: until lifted (dispute hold only)."))
    reason = models.CharField(max_length=300)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    lifted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        indexes = [models.Index(fields=["contract", "kind"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="dispute_hold") | Q(ends_at__isnull=False), name="temp_unlock_has_an_end"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.contract_id}"


# Placeholders a lock-screen template may use; anything else is rejected when saved.
LOCK_SCREEN_PLACEHOLDERS = {
    "provider": _("the provider's name"),
    "amount": _("the amount overdue with its currency, e.g. LKR 12,500.00"),
    "currency": _("the currency code, e.g. LKR"),
    "overdue_since": _("the due date of the oldest unpaid installment"),
    "contract": _("the contract number"),
    "imei": _("the phone's IMEI"),
    "hotline": _("the provider's main hotline number"),
}


def template_placeholders(text: str) -> set[str]:
    """The ``{name}`` placeholders in ``text``; raises ValueError on a malformed brace."""
    import string

    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}


def validate_lock_screen_text(text: str) -> None:
    """Reject unknown or malformed placeholders with a message that lists the allowed ones."""
    allowed = ", ".join("{" + p + "}" for p in LOCK_SCREEN_PLACEHOLDERS)
    try:
        names = template_placeholders(text)
    except ValueError:
        raise ValidationError(
            _("A brace is not closed or not matched; use {{ and }} for a literal brace. Allowed: %(allowed)s"),
            params={"allowed": allowed},
        ) from None
    unknown = sorted(n for n in names if n not in LOCK_SCREEN_PLACEHOLDERS)
    if unknown:
        raise ValidationError(
            _("Unknown placeholder %(names)s. Allowed: %(allowed)s"),
            params={"names": ", ".join("{" + (n or "") + "}" for n in unknown), "allowed": allowed},
        )


class LockScreenText(models.Model):
    """What the phone shows, per provider and language, edited by the provider's admin.

    The phone uses the customer's language, else the provider's default, else English.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "language",
        "title",
        "body",
        "reminder_title",
        "reminder_body",
        "data_kept_notice",
        "factory_reset_warning",
        "offline_unlock_hint",
        "updated_at",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="lock_screen_texts",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    language = models.CharField(max_length=8)
    title = models.CharField(max_length=120, validators=[validate_lock_screen_text])
    body = models.TextField(max_length=1500, validators=[validate_lock_screen_text])
    reminder_title = models.CharField(max_length=120, validators=[validate_lock_screen_text])
    reminder_body = models.TextField(max_length=1500, validators=[validate_lock_screen_text])
    data_kept_notice = models.CharField(max_length=300)
    factory_reset_warning = models.CharField(max_length=300)
    offline_unlock_hint = models.CharField(max_length=300)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "language"], name="one_lock_screen_text_per_language")
        ]

    def __str__(self) -> str:
        return f"{self.provider} ({self.language})"


class ChannelKind(models.TextChoices):
    BANK_TRANSFER = "bank_transfer", _("Bank transfer")
    MOBILE_MONEY = "mobile_money", _("Mobile money")
    CARD = "card", _("Card")
    CASH_AGENT = "cash_agent", _("Cash at agent")


class PaymentChannel(models.Model):
    """A way an owner can pay a provider, shown on the lock screen with the exact account and reference."""

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "kind",
        "name",
        "account",
        "reference",
        "instructions",
        "short_code",
        "position",
        "active",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="payment_channels",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    kind = models.CharField(max_length=20, choices=ChannelKind.choices)
    name = models.CharField(max_length=80, help_text=_("As the owner knows it, e.g. M-PESA Paybill."))
    account = models.CharField(max_length=80, help_text=_("Account, paybill or till number to pay to."))
    reference = models.CharField(
        max_length=120,
        default="{contract}",
        validators=[validate_lock_screen_text],
        help_text=_("What the payer must type as reference; placeholders allowed, e.g. {contract}."),
    )
    instructions = models.CharField(max_length=300, blank=True)
    short_code = models.CharField(
        max_length=12,
        blank=True,
        validators=[RegexValidator(r"^\d{5,7}$", _("An M-Pesa paybill or till number: 5 to 7 digits."))],
        help_text=_(
            "For an M-Pesa paybill or till: its number as Daraja reports it (BusinessShortCode). When set, "
            "M-Pesa callbacks for any other number are refused (validation) or recorded unmatched (confirmation)."
        ),
    )
    position = models.PositiveSmallIntegerField(default=0)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["provider_id", "position", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider})"


class PaymentStatus(models.TextChoices):
    UNMATCHED = "unmatched", _("Unmatched")
    # Recorded by an agent from a customer's receipt alone: credited at once only up to the
    # provider's limit, the rest held until a second person or the channel's record confirms it.
    PROVISIONAL = "provisional", _("Provisional")
    MATCHED = "matched", _("Matched")
    VERIFIED = "verified", _("Verified")
    REVERSED = "reversed", _("Reversed")


class PaymentSource(models.TextChoices):
    API = "api", _("Provider API")
    MPESA = "mpesa", _("M-Pesa callback")
    STATEMENT = "statement", _("Statement import")
    AGENT = "agent", _("Recorded by an agent")


class PaymentConfirmation(models.TextChoices):
    """How a provisional payment (recorded from a receipt alone) was confirmed."""

    PERSON = "person", _("a second person")
    STATEMENT = "statement", _("the bank statement")
    MPESA = "mpesa", _("the M-Pesa confirmation")
    API = "api", _("the provider's system (API)")


class PaymentFlag(models.TextChoices):
    """Why finance must look at a payment recorded from a receipt."""

    CONFLICT = "conflict", _("The channel's record differs")
    UNCONFIRMED = "unconfirmed", _("No channel record in time")


class Payment(models.Model):
    """Money received from an owner, recorded exactly once per provider, channel and transaction id.

    A matched payment is allocated to its contract's installments, oldest first; anything
    beyond the schedule is held as credit. A reversal undoes the allocation.

    A payment an agent records from a customer's receipt alone is ``provisional``: only the
    provider's limit is allocated at once, ``held_amount`` waits (unallocated, so it clears no
    arrears) until a second person or the channel's own record with the same transaction id
    confirms it; one no channel confirms in time, or whose channel record differs, is flagged.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "channel",
        "external_id",
        "amount",
        "currency",
        "reference",
        "payer_phone",
        "payer_name",
        "received_at",
        "source",
        "status",
        "contract",
        "match_rule",
        "match_confidence",
        "verified_by",
        "verified_at",
        "reversed_at",
        "reversal_reason",
        "request_fields",
        "held_amount",
        "recorded_by",
        "confirmed_by",
        "confirmed_at",
        "confirmed_via",
        "flag",
        "flag_reason",
        "flagged_at",
        "created_at",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="payments",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    channel = models.CharField(max_length=20, choices=ChannelKind.choices)
    external_id = models.CharField(_("transaction id"), max_length=100)
    amount = models.DecimalField(**MONEY, validators=[MinValueValidator(Decimal("0.01"))])
    currency = models.CharField(max_length=3)
    reference = models.CharField(max_length=140, blank=True, help_text=_("As the payer typed it."))
    # A phone number in E.164, or as the channel sent it: masked, or hashed (64 hex digits).
    payer_phone = models.CharField(max_length=128, blank=True)
    payer_name = models.CharField(max_length=150, blank=True)
    received_at = models.DateTimeField()
    source = models.CharField(max_length=12, choices=PaymentSource.choices, default=PaymentSource.API)
    status = models.CharField(max_length=12, choices=PaymentStatus.choices, default=PaymentStatus.UNMATCHED)
    contract = models.ForeignKey(Contract, null=True, blank=True, on_delete=models.PROTECT, related_name="payments")
    match_rule = models.CharField(max_length=40, blank=True)
    match_confidence = models.PositiveSmallIntegerField(default=0, help_text=_("0–100"))
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    reversed_at = models.DateTimeField(null=True, blank=True)
    reversal_reason = models.CharField(max_length=300, blank=True)
    # The fields as first received, to tell a retry (same body) from a conflict (different body).
    request_fields = models.JSONField(default=dict, editable=False)
    held_amount = models.DecimalField(
        **MONEY,
        default=Decimal("0"),
        help_text=_("Of a provisional payment: the part not allocated until it is confirmed."),
    )
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("The agent who recorded it from the customer's receipt (the four-eyes requester)."),
    )
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confirmed_at = models.DateTimeField(null=True, blank=True)
    confirmed_via = models.CharField(max_length=12, choices=PaymentConfirmation.choices, blank=True)
    flag = models.CharField(max_length=12, choices=PaymentFlag.choices, blank=True)
    flag_reason = models.CharField(max_length=300, blank=True)
    flagged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "channel", "external_id"], name="payment_once_per_provider_channel_id"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
            # Only a provisional payment holds money back, and never more than it is.
            models.CheckConstraint(
                condition=Q(held_amount=0) | (Q(status="provisional") & Q(held_amount__lte=models.F("amount"))),
                name="payment_held_only_while_provisional",
            ),
            models.CheckConstraint(condition=Q(held_amount__gte=0), name="payment_held_not_negative"),
        ]
        indexes = [
            models.Index(fields=["provider", "status", "-received_at"]),
            # The flagging job reads only the (few) provisional payments.
            models.Index(fields=["created_at"], condition=Q(status="provisional"), name="payment_provisional_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.external_id}"

    @property
    def credited_amount(self) -> Decimal:
        """What is allocated to the contract (all of it, unless part is held awaiting confirmation)."""
        return self.amount - self.held_amount


class PaymentAllocation(models.Model):
    """Part of a payment applied to one installment, or held as credit (no installment)."""

    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="allocations")
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="allocations")
    installment = models.ForeignKey(
        Installment, null=True, blank=True, on_delete=models.PROTECT, related_name="allocations"
    )
    amount = models.DecimalField(**MONEY, validators=[MinValueValidator(Decimal("0.01"))])
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    reversed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="allocation_amount_positive")]

    def __str__(self) -> str:
        target = f"#{self.installment.number}" if self.installment_id else "credit"
        return f"{self.amount} of {self.payment_id} to {target}"


class PaymentProof(models.Model):
    """A receipt or screenshot a customer gave an agent for a payment; stored privately, checked by content."""

    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="proofs")
    file = models.FileField(upload_to="payment-proofs/%Y/%m/")
    content_type = models.CharField(max_length=60)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    transaction_id = models.CharField(max_length=100, blank=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    uploaded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-uploaded_at"]

    def __str__(self) -> str:
        return f"proof {self.pk} of payment {self.payment_id}"


class ImportStatus(models.TextChoices):
    PENDING = "pending", _("Waiting")
    RUNNING = "running", _("Importing")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class StatementImport(models.Model):
    """One uploaded bank statement or mobile-money report and what importing it did."""

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="statement_imports",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    filename = models.CharField(max_length=200)
    file = models.FileField(upload_to="statements/%Y/%m/", blank=True)
    sha256 = models.CharField(max_length=64)
    format = models.CharField(max_length=20, blank=True)
    csv_mapping = models.CharField(max_length=60, blank=True, help_text=_("Name of the saved CSV column mapping."))
    status = models.CharField(max_length=10, choices=ImportStatus.choices, default=ImportStatus.PENDING)
    total_lines = models.PositiveIntegerField(default=0)
    processed_lines = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # Uploaded through the API: with which key (its creator answers for what it uploads).
    api_key = models.ForeignKey("portal.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Queueing and claiming (payments/imports.py): when a task for it last reached the broker
    # (None: never, so the periodic job queues it), when a run last claimed it, and how many
    # runs have claimed it (a run the worker lost is retried a bounded number of times).
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The periodic re-queue looks for waiting and running imports only.
            models.Index(
                fields=["status", "started_at"],
                name="statement_import_unfinished",
                condition=models.Q(status__in=["pending", "running"]),
            )
        ]

    def __str__(self) -> str:
        return f"{self.filename} ({self.get_status_display()})"

    @property
    def carried_by(self):
        """The person who brought this statement in: the uploader, or the creator of the API key used."""
        if self.created_by_id is not None:
            return self.created_by
        return self.api_key.created_by if self.api_key_id is not None else None

    @property
    def progress_percent(self) -> int:
        return int(100 * self.processed_lines / self.total_lines) if self.total_lines else 0


class StatementLine(models.Model):
    """One entry of an imported statement, kept once per provider (its fingerprint) whatever the re-imports."""

    statement_import = models.ForeignKey(StatementImport, on_delete=models.CASCADE, related_name="lines")
    provider = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="+")
    fingerprint = models.CharField(max_length=64)
    line_no = models.PositiveIntegerField()
    booking_date = models.DateField(null=True, blank=True)
    value_date = models.DateField(null=True, blank=True)
    amount = models.DecimalField(**MONEY)
    currency = models.CharField(max_length=3)
    direction = models.CharField(max_length=6)  # credit | debit
    is_return = models.BooleanField(default=False)
    reference = models.CharField(max_length=500, blank=True)
    end_to_end_id = models.CharField(max_length=100, blank=True)
    creditor_reference = models.CharField(max_length=100, blank=True)
    bank_reference = models.CharField(max_length=100, blank=True)
    counterparty_name = models.CharField(max_length=200, blank=True)
    counterparty_account = models.CharField(max_length=100, blank=True)
    payment = models.OneToOneField(
        Payment, null=True, blank=True, on_delete=models.SET_NULL, related_name="statement_line"
    )
    note = models.CharField(max_length=300, blank=True, help_text=_("Why the line was not credited, if it was not."))

    class Meta:
        ordering = ["statement_import_id", "line_no"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "fingerprint"], name="statement_line_once_per_provider")
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.amount} {self.currency} line {self.line_no}"


class CsvColumnMapping(models.Model):
    """How to read one source's CSV export (separator, decimal comma, columns...), saved per provider."""

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = ("provider", "name", "mapping", "updated_at")

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="csv_mappings",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    name = models.CharField(max_length=60)
    mapping = models.JSONField(help_text=_("Fields of payments.statements.csv_format.CsvMapping."))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "name"], name="csv_mapping_name_unique")]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider})"
