"""What the lock decision reads besides the schedule: the provider's lock policy, overrides, and lock-screen wording."""

from __future__ import annotations

import datetime as dt
import string
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from payments.models.contracts import MONEY, Contract
from portal.models import Organisation, OrganisationKind


@dataclass(frozen=True)
class Rules:
    """The parts of a provider's lock policy the lock decision (``payments.locks.decision``) reads: a plain value."""

    grace_days: int = 3
    reminder_days_before: int = 3
    lock_start_hour: int = 9  # local time, inclusive
    lock_end_hour: int = 17  # local time, exclusive
    lock_weekdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})  # Monday = 0
    offline_lock_days: int | None = None  # None: no offline lease (the default)
    offline_warning_days: int = 3

    def lock_may_start(self, local: dt.datetime) -> bool:
        """A lock may start only in working hours on allowed weekdays: no phone goes dark at midnight."""
        return local.weekday() in self.lock_weekdays and self.lock_start_hour <= local.hour < self.lock_end_hour


#: The offline lease's bounds in days (inclusive): lock after (Knox Guard's 3 to 200), and warn before.
OFFLINE_LOCK_DAYS = (3, 200)
OFFLINE_WARNING_DAYS = (1, 10)


def _default_reminders_before() -> list[int]:
    return [3, 1]


def _default_reminders_after() -> list[int]:
    return [1, 2]


def _default_weekdays() -> list[int]:
    return [0, 1, 2, 3, 4, 5]


def _validate_day_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(d, int) and 0 <= d <= 60 for d in value):
        raise ValidationError(_("A list of whole days between 0 and 60, e.g. [3, 1]."))


def _validate_weekdays(value: object) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(d, int) and 0 <= d <= 6 for d in value):
        raise ValidationError(_("At least one weekday, as numbers 0 (Monday) to 6 (Sunday)."))


class LockPolicy(models.Model):
    """A provider's rules for reminders and locks, edited by its admin.

    The lock decision (``payments.locks.decision``) reads it; every change is audited.
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
        "offline_lock_days",
        "offline_warning_days",
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
    # Payments an agent records from a customer's receipt alone (payments.ledger.verify.payment_record_from_proof).
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
    # The offline lease (docs/lock-pipeline.md, "Offline lease"): a phone that cannot reach finlock
    # (SIM removed, flight mode, a blocked server) must not stay usable for ever. 3 to 200 days, as
    # Knox Guard allows; empty = off, the default, because it locks phones that are merely out of coverage.
    offline_lock_days = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[
            MinValueValidator(
                OFFLINE_LOCK_DAYS[0],
                _("At least %(limit_value)s days: shorter locks phones that are only out of coverage."),
            ),
            MaxValueValidator(OFFLINE_LOCK_DAYS[1], _("At most %(limit_value)s days.")),
        ],
        help_text=_(
            "A phone that has not reached finlock for this many days locks itself (only in the hours a lock may "
            "start, and never before its installments would lock it). Empty: never."
        ),
    )
    offline_warning_days = models.PositiveSmallIntegerField(
        default=3,
        validators=[
            MinValueValidator(OFFLINE_WARNING_DAYS[0], _("At least %(limit_value)s day.")),
            MaxValueValidator(OFFLINE_WARNING_DAYS[1], _("At most %(limit_value)s days.")),
        ],
        help_text=_("Days before such an offline lock that the phone warns its owner to connect."),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "lock policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(lock_start_hour__lt=models.F("lock_end_hour")), name="lock_window_not_empty"
            ),
            models.CheckConstraint(
                condition=Q(offline_lock_days__isnull=True)
                | Q(
                    offline_lock_days__gte=OFFLINE_LOCK_DAYS[0],
                    offline_lock_days__lte=OFFLINE_LOCK_DAYS[1],
                    offline_warning_days__lt=models.F("offline_lock_days"),
                ),
                name="offline_lease_in_range",
            ),
            models.CheckConstraint(
                condition=Q(
                    offline_warning_days__gte=OFFLINE_WARNING_DAYS[0], offline_warning_days__lte=OFFLINE_WARNING_DAYS[1]
                ),
                name="offline_warning_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"Lock policy of {self.provider}"

    def clean(self) -> None:
        start, end = self.lock_start_hour, self.lock_end_hour
        if start is not None and end is not None and start >= end:
            raise ValidationError({"lock_end_hour": _("Must be later than the start hour.")})
        days, warning = self.offline_lock_days, self.offline_warning_days
        if days is not None and warning is not None and warning >= days:
            raise ValidationError(
                {
                    "offline_warning_days": _(
                        "Must be fewer than the %(days)s offline days, or the phone warns at once."
                    )
                    % {"days": days}
                }
            )

    def rules(self) -> Rules:
        """The policy as the pure decision reads it."""
        return Rules(
            grace_days=self.grace_days,
            reminder_days_before=max(self.reminder_days_before, default=0),
            lock_start_hour=self.lock_start_hour,
            lock_end_hour=self.lock_end_hour,
            lock_weekdays=frozenset(self.lock_weekdays),
            offline_lock_days=self.offline_lock_days,
            offline_warning_days=self.offline_warning_days,
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


class RefreshKind(models.TextChoices):
    """What a ``LockRefresh`` re-issues to phones whose state stays."""

    SCREEN = "screen", _("Lock screen")  # the provider's wording, channels or contacts changed
    LEASE = "lease", _("Offline lease")  # the provider's offline policy or lock hours changed


class LockRefresh(models.Model):
    """A re-issue to a provider's phones in progress (``payments.locks.refresh``), with its cursor.

    Each batch moves ``cursor`` (the last contract id handled) in its own transaction, so a run
    lost with a broker or a worker resumes where it stopped (the periodic pickup); ``done_at`` is
    set by the last batch. A provider has at most one open refresh of each kind: a new request
    while one runs starts it again from the first contract.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = ("provider", "kind", "cursor", "done_at", "created_at", "updated_at")

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="lock_refreshes",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    kind = models.CharField(max_length=10, choices=RefreshKind.choices)
    cursor = models.BigIntegerField(default=0, help_text=_("The last contract id handled."))
    done_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, help_text=_("The last batch or (re)start."))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "kind"], condition=Q(done_at__isnull=True), name="one_open_lock_refresh_per_kind"
            )
        ]
        indexes = [models.Index(fields=["updated_at"], condition=Q(done_at__isnull=True), name="open_lock_refreshes")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} refresh of {self.provider_id} after {self.cursor}"
