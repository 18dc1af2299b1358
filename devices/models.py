"""The device registry: phones, their identifiers and lock state.

``devices`` executes lock-state changes and knows nothing of money.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from stdnum import imei as stdnum_imei
from stdnum.exceptions import ValidationError as StdnumError

from devices.protocol import envelope_of
from portal.models import Organisation, OrganisationKind
from portal.outbound import validate_webhook_secret, webhook_secret_generate

if TYPE_CHECKING:  # a type only (django-stubs); not needed at run time
    from django_stubs_ext import StrOrPromise


def max_length(model: type[models.Model], name: str) -> int:
    """The ``max_length`` of a character field of ``model`` (inputs are cut or checked against it)."""
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field) and field.max_length is not None, (
        f"{model.__name__}.{name} has no max_length"
    )
    return int(field.max_length)


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


def _explain_imei(value: str, exc: Exception) -> StrOrPromise:
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

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "uid",
        "imei",
        "imei2",
        "serial_number",
        "maker",
        "model",
        "desired_state",
        "desired_reason",
        "desired_changed_at",
        "reported_state",
        "reported_at",
        "last_checkin_at",
        "command_seq",
        "reported_seq",
        "app_version",
        "enrolled_at",
        "offline_count",
        "offline_sent_at",
        "reenrollment_code_expires_at",
        "created_at",
        "updated_at",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="devices",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    uid = models.UUIDField(
        default=uuid.uuid4, unique=True, editable=False, help_text=_("Public id used on the wire (MQTT topic).")
    )
    imei = models.CharField(_("IMEI"), max_length=15, validators=[validate_imei], db_index=True)
    imei2 = models.CharField(_("second IMEI"), max_length=15, blank=True, validators=[validate_imei], db_index=True)
    serial_number = models.CharField(max_length=64, blank=True)
    maker = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=64, blank=True)
    desired_state = models.CharField(max_length=20, choices=LockState.choices, default=LockState.UNLOCKED)
    desired_reason = models.CharField(max_length=200, blank=True)
    desired_changed_at = models.DateTimeField(null=True, blank=True)
    # When a check-in should be answered a renewed lease (half the offline period before the
    # current command's lease ends); None when the command in force has no lease.
    lease_renew_at = models.DateTimeField(null=True, blank=True)
    # When a check-in last made the sequence jump (devices.services.checkin): at most one a day.
    seq_jumped_at = models.DateTimeField(null=True, blank=True)
    reported_state = models.CharField(max_length=20, choices=LockState.choices, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    last_checkin_at = models.DateTimeField(null=True, blank=True)
    # Commands: the last sequence number issued, and the last one the phone acknowledged.
    command_seq = models.PositiveIntegerField(default=0, editable=False)
    reported_seq = models.PositiveIntegerField(default=0, editable=False)
    app_version = models.CharField(max_length=40, blank=True, editable=False)
    # The phone's credential (only its SHA-256 is kept) and enrolment.
    credential_digest = models.CharField(max_length=64, blank=True, editable=False, db_index=True)
    enrolled_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The phone's own Ed25519 public key (standard base64 of the raw 32 bytes), generated by
    # the phone at its first enrolment: re-enrolling needs a signature with it, or a staff code.
    device_key = models.CharField(max_length=44, blank=True, editable=False)
    # Issue time of the newest enrolment challenge this device signed: an older or the same
    # challenge is refused, so an observed signature cannot be replayed.
    last_challenge_at = models.DateTimeField(null=True, blank=True, editable=False)
    # A one-time re-enrolment code staff issued for a phone that lost its device key (digest only).
    reenrollment_code_digest = models.CharField(max_length=64, blank=True, editable=False)
    reenrollment_code_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    # OpenPAYGO Token: the per-device secret (hex), starting code and the server's token counter.
    offline_secret = models.CharField(max_length=32, blank=True, editable=False)
    offline_starting_code = models.PositiveIntegerField(default=0, editable=False)
    offline_count = models.PositiveIntegerField(default=0, editable=False)
    # When the current secret was handed to the phone; null until then (a first enrolment, or a
    # staff re-key waiting for the phone's next proven enrolment). It is handed out only once.
    offline_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
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
        errors: dict[str, Sequence[StrOrPromise]] = {}
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


class EnrollmentToken(models.Model):
    """A provider-issued secret a phone presents with its IMEI to enrol (only a digest is kept).

    It authorises a device's *first* enrolment on its own; re-enrolling a device that is
    already enrolled also needs the phone's device-key signature or a staff re-enrolment
    code. ``shop`` labels where it is used (recorded with every enrolment it performs);
    ``max_uses`` caps the first enrolments it may perform (``uses``).
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "name",
        "shop",
        "created_at",
        "created_by",
        "expires_at",
        "max_uses",
        "revoked_at",
        "uses",
        "last_used_at",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="enrollment_tokens",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    name = models.CharField(max_length=80)
    shop = models.CharField(
        max_length=80, blank=True, help_text=_("The shop that uses it; recorded with each enrolment.")
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    max_uses = models.PositiveIntegerField(
        null=True, blank=True, help_text=_("Phones it may enrol for the first time (empty: no limit).")
    )
    uses = models.PositiveIntegerField(default=0, editable=False)  # first enrolments performed
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self) -> str:
        return f"{self.name} ({self.provider})"

    def status(self, now=None) -> str:
        """``active``, ``revoked``, ``expired`` or ``used up``, for the portal."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used up"
        return "active"


class DeviceCommand(models.Model):
    """One signed lock-state command for one device: the outbox row delivery works from.

    Written in the same transaction as the change of desired state; ``body`` is the exact
    UTF-8 JSON text whose bytes were signed (protocol version 2, docs/lock-pipeline.md),
    ``signature`` its Ed25519 signature in base64. Never edited after issue except for
    delivery bookkeeping. ``version`` 1 marks a command signed under the retired version 1
    (before this upgrade): it is never served again; a phone checking in is issued its
    state anew.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "device",
        "seq",
        "state",
        "reason",
        "expires_at",
        "key_id",
        "issued_at",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "dead_at",
        "last_error",
        "acknowledged_at",
    )

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    seq = models.PositiveIntegerField()
    state = models.CharField(max_length=20, choices=LockState.choices)
    reason = models.CharField(max_length=300, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # The signed lease's end, and when a check-in renews it (copied to the device).
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_renew_at = models.DateTimeField(null=True, blank=True)
    body = models.TextField()
    version = models.PositiveSmallIntegerField(default=2)
    signature = models.CharField(max_length=100)
    key_id = models.CharField(max_length=40)
    issued_at = models.DateTimeField(default=timezone.now)
    # Delivery bookkeeping (push channels); the pull channel needs none.
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-seq"]
        constraints = [models.UniqueConstraint(fields=["device", "seq"], name="command_seq_unique_per_device")]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="command_pending_idx",
                condition=models.Q(delivered_at__isnull=True, dead_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.device_id}#{self.seq} {self.state}"

    @property
    def payload(self) -> dict[str, Any]:
        """The command, parsed from the signed bytes (for the portal and tests; phones verify first)."""
        return json.loads(self.body)

    @property
    def envelope(self) -> dict[str, Any]:
        """What every channel carries: ``{"v": 2, "payload", "key_id", "signature"}``."""
        return envelope_of(self.body.encode("utf-8"), key_id=self.key_id, signature=self.signature)


class KeyStatement(models.Model):
    """A signed statement of the server keys phones must trust (docs/lock-pipeline.md, "Keys").

    A new one (the next ``seq``, signed by the current key) is written only when the configured
    set adds keys never listed or drops retired ones (``devices.keys.statement_problems``);
    phones replace their trusted set only with a statement signed by a key they already
    trust. ``body`` is the exact signed UTF-8 JSON text.
    """

    seq = models.PositiveIntegerField(unique=True)
    body = models.TextField()
    key_id = models.CharField(max_length=40)
    signature = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"key statement {self.seq}"

    @property
    def keys(self) -> dict[str, str]:
        return dict(json.loads(self.body)["keys"])

    @property
    def envelope(self) -> dict[str, Any]:
        return envelope_of(self.body.encode("utf-8"), key_id=self.key_id, signature=self.signature)


class Channel(models.TextChoices):
    MQTT = "mqtt", _("MQTT")
    WEBHOOK = "webhook", _("Provider gateway webhook")


class DeliveryAttempt(models.Model):
    """One try to push a command on one channel, kept for the portal's delivery history."""

    command = models.ForeignKey(DeviceCommand, on_delete=models.CASCADE, related_name="delivery_attempts")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    at = models.DateTimeField(default=timezone.now)
    ok = models.BooleanField()
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.command} via {self.channel}: {'ok' if self.ok else 'failed'}"


class DeviceGateway(models.Model):
    """A provider's device-management gateway that receives every command by HTTP webhook.

    Each POST is signed the Standard Webhooks way (``portal.outbound``) with ``secret``,
    ``whsec_<base64 of the HMAC key>``; ``webhook-id`` is ``cmd_<command id>``. A new
    gateway gets a generated secret (the operator hands it to the provider).
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = ("provider", "url", "enabled")

    provider = models.OneToOneField(
        Organisation,
        on_delete=models.CASCADE,
        related_name="device_gateway",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    url = models.URLField(help_text=_("HTTPS endpoint that accepts POSTed command envelopes."))
    secret = models.CharField(
        max_length=200,
        default=webhook_secret_generate,
        validators=[validate_webhook_secret],
        help_text=_(
            "Standard Webhooks secret: whsec_ and the base64 of 24 to 64 random bytes (a fresh one is filled in). "
            "The gateway verifies webhook-signature with it."
        ),
    )
    enabled = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"Gateway of {self.provider}"


class OfflineCodeKind(models.TextChoices):
    UNLOCK_DAYS = "unlock_days", _("Unlocked for N days")
    RELEASE = "release", _("Released for good")


class OfflineCode(models.Model):
    """An OpenPAYGO Token issued for a phone that cannot reach the server: who asked, who approved, why."""

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = ("device", "kind", "days", "count", "reason", "requested_by", "approved_by", "issued_at")

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="offline_codes")
    kind = models.CharField(max_length=20, choices=OfflineCodeKind.choices)
    days = models.PositiveSmallIntegerField(null=True, blank=True)
    token = models.CharField(max_length=20)
    count = models.PositiveIntegerField()
    reason = models.CharField(max_length=300)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    issued_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for {self.device_id}"


class MqttAccount(models.Model):
    """A phone's account on the MQTT broker, and whether the broker has its current password.

    Created when an enrolment hands the phone an MQTT credential (``devices/mqtt_accounts.py``).
    No password is stored: it is derived from the device's credential digest, so
    ``synced_digest`` (the digest whose password the broker was last given) is all it
    takes to know whether the broker is behind the enrolment, and to retry.
    """

    device = models.OneToOneField(Device, on_delete=models.CASCADE, primary_key=True, related_name="mqtt_account")
    synced_digest = models.CharField(max_length=64, blank=True, editable=False)
    # The broker confirmed the account (client and role) exists: a re-enrolment only changes its password.
    exists = models.BooleanField(default=False, editable=False)
    synced_at = models.DateTimeField(null=True, blank=True, editable=False)
    attempted_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.CharField(max_length=500, blank=True, editable=False)

    class Meta:
        verbose_name = _("MQTT account")

    def __str__(self) -> str:
        return f"MQTT account of {self.device_id}"
