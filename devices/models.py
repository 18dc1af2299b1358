"""The device registry: phones, their identifiers and lock state.

``devices`` executes lock-state changes and knows nothing of money.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from stdnum import imei as stdnum_imei
from stdnum.exceptions import ValidationError as StdnumError

from portal.models import Organisation, OrganisationKind


def normalise_imei(value: str) -> str:
    """Validate an IMEI (15 digits with a Luhn check digit) and return its digits.

    Spaces, dashes and slashes as printed on boxes are accepted and removed.
    """
    try:
        digits = stdnum_imei.validate(str(value))
    except StdnumError as exc:
        raise ValidationError(_explain_imei(str(value), exc)) from None
    if len(digits) != 15:
        raise ValidationError(_("An IMEI has 15 digits (this has %(n)s).") % {"n": len(digits)})
    return digits


def _explain_imei(value: str, exc: Exception) -> str:
    compact = stdnum_imei.compact(value) if value else ""
    if not compact.isdigit():
        return _("An IMEI contains digits only.")
    if len(compact) != 15:
        return _("An IMEI has 15 digits (this has %(n)s).") % {"n": len(compact)}
    return _("The IMEI check digit is wrong (Luhn check failed); check for a typo.")


def validate_imei(value: str) -> None:
    normalise_imei(value)


class LockState(models.TextChoices):
    UNLOCKED = "unlocked", _("Unlocked")
    REMINDER = "reminder", _("Reminder")
    LOCKED = "locked", _("Locked")
    TEMP_UNLOCKED = "temp_unlocked", _("Temporarily unlocked")
    RELEASED = "released", _("Released")


class Device(models.Model):
    """A financed phone, owned by one provider's registry.

    ``desired_state`` is what the server wants; ``reported_state`` is what the
    device last acknowledged. They differ while a command is on its way.
    """

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="devices",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    imei = models.CharField(_("IMEI"), max_length=15, validators=[validate_imei], db_index=True)
    imei2 = models.CharField(_("second IMEI"), max_length=15, blank=True, validators=[validate_imei], db_index=True)
    serial_number = models.CharField(max_length=64, blank=True)
    maker = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=64, blank=True)
    desired_state = models.CharField(max_length=20, choices=LockState.choices, default=LockState.UNLOCKED)
    desired_reason = models.CharField(max_length=200, blank=True)
    desired_changed_at = models.DateTimeField(null=True, blank=True)
    reported_state = models.CharField(max_length=20, choices=LockState.choices, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    last_checkin_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "imei"], name="device_imei_unique_per_provider"),
        ]

    def __str__(self) -> str:
        label = " ".join(p for p in (self.maker, self.model) if p)
        return f"{label} {self.imei}".strip()

    def clean(self) -> None:
        errors = {}
        for field in ("imei", "imei2"):
            value = getattr(self, field)
            if value:
                try:
                    setattr(self, field, normalise_imei(value))
                except ValidationError as exc:
                    errors[field] = exc.messages
        if self.imei and self.imei2 and self.imei == self.imei2:
            errors["imei2"] = [_("The second IMEI must differ from the first.")]
        if errors:
            raise ValidationError(errors)

    @property
    def in_sync(self) -> bool:
        return self.reported_state == self.desired_state
