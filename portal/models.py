"""Tenants, staff, API keys and the audit trail.

``portal`` sits at the bottom of the dependency chain: every other app may
import from it, it imports from none of them.
"""

from __future__ import annotations

import hashlib
import secrets
import zoneinfo

from babel.numbers import get_currency_name
from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def _validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(_("%(value)s is not a known IANA time zone"), params={"value": value})


def _validate_currency(value: str) -> None:
    if len(value) != 3 or not value.isupper() or get_currency_name(value, locale="en") == value:
        raise ValidationError(_("%(value)s is not an ISO 4217 currency code"), params={"value": value})


class OrganisationKind(models.TextChoices):
    PROVIDER = "provider", _("Financing provider")
    SERVICE_CENTER = "service_center", _("Service center")
    PLATFORM = "platform", _("Platform operator")


class Organisation(models.Model):
    """A tenant: a financing provider, an authorised service center, or the platform operator.

    Provider-only fields (currency, time zone, hotlines...) are blank for the
    other kinds. A service center serves a set of providers; its technicians
    can look up those providers' devices (never their owners' finances).
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "kind",
        "name",
        "slug",
        "country",
        "currency",
        "time_zone",
        "languages",
        "hotline_numbers",
        "support_email",
        "website",
        "served_providers",
        "created_at",
    )

    kind = models.CharField(max_length=20, choices=OrganisationKind.choices)
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    country = models.CharField(
        max_length=2,
        blank=True,
        validators=[RegexValidator(r"^[A-Z]{2}$", _("Use a two-letter ISO 3166 country code, e.g. LK."))],
        help_text=_("ISO 3166-1 alpha-2; the default region for local phone numbers."),
    )
    currency = models.CharField(max_length=3, blank=True, validators=[_validate_currency])
    time_zone = models.CharField(max_length=64, default="UTC", validators=[_validate_time_zone])
    languages = models.JSONField(default=list, blank=True, help_text=_("Language codes, default first."))
    hotline_numbers = models.JSONField(default=list, blank=True, help_text=_("E.164 numbers, main first."))
    support_email = models.EmailField(blank=True)
    website = models.URLField(blank=True)
    served_providers = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="service_centers",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
        help_text=_("For a service center: the providers whose devices its technicians may look up."),
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(kind=OrganisationKind.PROVIDER) | (~models.Q(currency="") & ~models.Q(country="")),
                name="provider_has_currency_and_country",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_provider(self) -> bool:
        return self.kind == OrganisationKind.PROVIDER

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone or "UTC")

    def today(self, now=None):
        """The local date in this organisation's time zone (due dates are local dates)."""
        return (now or timezone.now()).astimezone(self.zone).date()

    @property
    def default_language(self) -> str:
        return self.languages[0] if self.languages else "en"

    def clean(self) -> None:
        if self.kind == OrganisationKind.PROVIDER:
            missing = [f for f in ("country", "currency") if not getattr(self, f)]
            if missing:
                raise ValidationError({f: _("A provider needs this.") for f in missing})


class Role(models.TextChoices):
    PROVIDER_ADMIN = "provider_admin", _("Provider admin")
    AGENT = "agent", _("Call-center agent")
    FINANCE = "finance", _("Finance officer")
    TECHNICIAN = "technician", _("Service-center technician")
    OPERATOR = "operator", _("Platform operator")
    AUDITOR = "auditor", _("Auditor (read-only)")


# Which roles an organisation of each kind may give its staff.
ROLES_BY_KIND = {
    OrganisationKind.PROVIDER: {Role.PROVIDER_ADMIN, Role.AGENT, Role.FINANCE, Role.AUDITOR},
    OrganisationKind.SERVICE_CENTER: {Role.TECHNICIAN, Role.AUDITOR},
    OrganisationKind.PLATFORM: {Role.OPERATOR, Role.AUDITOR},
}
# Roles that must use two-factor authentication.
ROLES_REQUIRING_2FA = {Role.PROVIDER_ADMIN, Role.OPERATOR}


class StaffManager(UserManager):
    def create_superuser(self, username, email=None, password=None, **extra):
        """A superuser is a platform operator (created on the platform organisation)."""
        if "organisation" not in extra and "organisation_id" not in extra:
            org, _created = Organisation.objects.get_or_create(
                slug="platform", defaults={"kind": OrganisationKind.PLATFORM, "name": "Platform"}
            )
            extra["organisation"] = org
        extra.setdefault("role", Role.OPERATOR)
        return super().create_superuser(username, email, password, **extra)


class User(AbstractUser):
    """A staff member. Belongs to exactly one organisation, with one role in it."""

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "username",
        "first_name",
        "last_name",
        "email",
        "organisation",
        "role",
        "is_active",
        "is_staff",
        "is_superuser",
        "groups",
        "user_permissions",
        "date_joined",
    )

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="staff")
    role = models.CharField(max_length=20, choices=Role.choices)

    objects = StaffManager()  # type: ignore[misc]  # django-stubs declares it a ClassVar on AbstractUser
    REQUIRED_FIELDS = ["email"]

    class Meta:
        ordering = ["username"]

    def clean(self) -> None:
        super().clean()
        if self.organisation_id and self.role:
            allowed = ROLES_BY_KIND[OrganisationKind(self.organisation.kind)]
            if self.role not in allowed:
                raise ValidationError(
                    {
                        "role": _("A %(kind)s cannot have a %(role)s.")
                        % {
                            "kind": self.organisation.get_kind_display().lower(),
                            "role": self.get_role_display().lower(),
                        }
                    }
                )

    @property
    def requires_2fa(self) -> bool:
        return self.role in ROLES_REQUIRING_2FA


class ApiKey(models.Model):
    """A provider's machine credential for the REST API.

    Only a SHA-256 digest of the secret is stored; the full key is shown once,
    when created. Keys look like ``fl_<prefix>_<secret>``; the prefix finds the
    row and is safe to show in lists and logs.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = ("provider", "name", "prefix", "created_at", "created_by", "last_used_at", "revoked_at")

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="api_keys",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=12, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.provider.slug}/{self.name} ({self.prefix}…)"

    @staticmethod
    def digest_of(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """Return (full key, prefix, digest) for a fresh key."""
        prefix = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        full = f"fl_{prefix}_{secret}"
        return full, prefix, ApiKey.digest_of(full)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AuditEvent(models.Model):
    """One append-only entry of the audit trail.

    Each event stores the hash of the previous event (``prev_hash``) and its own
    hash over a canonical form of its fields, so editing or deleting any row
    breaks the chain; ``manage.py audit_verify`` names the first break. The hash
    is an HMAC-SHA256 under the audit key ``key_id`` (``AUDIT_HMAC_KEY``, held by
    finlock's processes, never by the database), so whoever can write the table
    cannot recompute a hash that verifies. Events written before keyed hashing
    have an empty ``key_id`` and a plain SHA-256; they are accepted only up to
    the boundary the chain head records (``AuditChainHead.legacy_until``).
    Rows are never updated or deleted by the application (``save`` refuses an
    update, ``delete`` refuses), and on PostgreSQL triggers refuse UPDATE,
    DELETE and TRUNCATE too.
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=150, help_text=_("Username, api-key:<prefix>, or system"))
    organisation = models.ForeignKey(
        Organisation,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("The tenant the object belongs to, for scoping the trail."),
    )
    action = models.CharField(max_length=40, db_index=True)
    object_type = models.CharField(max_length=60, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    key_id = models.CharField(
        max_length=40,
        blank=True,
        default="",
        help_text=_("The audit key the hash is keyed with; empty for events hashed before keyed hashing (SHA-256)."),
    )

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["object_type", "object_id"]), models.Index(fields=["organisation", "-id"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.object_type}:{self.object_id} by {self.actor_label}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValidationError("Audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError("Audit events are append-only")


class AuditChainHead(models.Model):
    """A single row holding the hash of the newest audit event, signed with the audit key.

    Writers lock it with ``select_for_update`` to serialise appends. ``mac`` signs the
    row's content with the audit key ``key_id``, so a database user cannot move the head,
    raise ``legacy_until`` to pass rewritten events off as unkeyed old ones, or clear
    ``unverified_since``. On PostgreSQL triggers refuse DELETE and TRUNCATE of the row.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_hash = models.CharField(max_length=64)
    last_event_id = models.BigIntegerField(null=True)
    legacy_until = models.BigIntegerField(
        default=0, help_text=_("Events up to this id were hashed before keyed hashing; every later one is keyed.")
    )
    unverified_since = models.BigIntegerField(
        null=True,
        blank=True,
        help_text=_(
            "Set when an append found this row's signature invalid (the row was altered in the database): "
            "the id of the first event written on top of it. Never cleared."
        ),
    )
    key_id = models.CharField(max_length=40, blank=True, default="")
    mac = models.CharField(max_length=64, blank=True, default="")

    def __str__(self) -> str:
        return f"audit head at #{self.last_event_id}"


class WebhookEventName(models.TextChoices):
    """The provider events finlock sends to a provider's systems (``portal.webhooks``)."""

    PAYMENT_MATCHED = "payment.matched", _("Payment matched to a contract")
    DEVICE_LOCKED = "device.locked", _("Phone confirmed the lock")
    DEVICE_UNLOCKED = "device.unlocked", _("Phone confirmed an unlock")


def _validate_webhook_events(value) -> None:
    if not isinstance(value, list) or not value or not set(value) <= set(WebhookEventName.values):
        raise ValidationError(
            _("Choose one or more of: %(names)s."), params={"names": ", ".join(WebhookEventName.values)}
        )


class ProviderWebhook(models.Model):
    """An endpoint of a provider's own systems that receives provider events by signed HTTP POST.

    Every POST is signed the Standard Webhooks way (``portal.outbound``): ``webhook-id``,
    ``webhook-timestamp`` and ``webhook-signature`` over ``"{id}.{timestamp}.{body}"``,
    keyed with the base64-decoded bytes of ``secret`` (``whsec_<base64>``). Unlike an API
    key the secret is stored in clear, because finlock must compute the HMAC with it; it
    is shown to the admin once, at creation or rotation, and kept out of the audit trail.

    Rotation keeps the old secret in ``previous_secret`` until ``previous_secret_until``:
    meanwhile every POST carries a signature with each, so the receiver can switch
    without losing an event. ``secret_legacy`` marks a secret issued before finlock
    followed Standard Webhooks: its key is the UTF-8 bytes of the string the admin was
    shown (the migration kept the key), so a receiver passes that string's bytes to its
    verifier, or rotates. ``events`` lists the ``WebhookEventName`` values this endpoint
    subscribes to.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "url",
        "events",
        "enabled",
        "secret_legacy",
        "previous_secret_until",
        "created_at",
        "created_by",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="webhooks",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    url = models.URLField(max_length=500, help_text=_("HTTPS endpoint that accepts POSTed JSON events."))
    secret = models.CharField(
        max_length=128, editable=False, help_text=_("Standard Webhooks secret (whsec_<base64 of the HMAC key>).")
    )
    previous_secret = models.CharField(
        max_length=128, blank=True, editable=False, help_text=_("The secret before the last rotation.")
    )
    previous_secret_until = models.DateTimeField(
        null=True, blank=True, editable=False, help_text=_("POSTs are also signed with the previous secret until then.")
    )
    secret_legacy = models.BooleanField(
        default=False,
        editable=False,
        help_text=_("The secret predates Standard Webhooks: its key is the UTF-8 bytes of the string shown."),
    )
    events = models.JSONField(default=list, validators=[_validate_webhook_events])
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["provider", "enabled"])]

    def __str__(self) -> str:
        return f"{self.provider.slug} → {self.url}"

    def signing_secrets(self, now) -> list[str]:
        """The secrets to sign with at ``now``: the current one, and the previous while it is honoured."""
        if self.previous_secret and self.previous_secret_until and self.previous_secret_until > now:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def clean(self) -> None:
        errors = {}
        if self.url and not self.url.lower().startswith("https://") and not settings.DEBUG:
            errors["url"] = _("Use an https:// address.")
        if self.provider_id and self.provider.kind != OrganisationKind.PROVIDER:
            errors["provider"] = _("Only a financing provider has webhooks.")
        if errors:
            raise ValidationError(errors)


class WebhookEvent(models.Model):
    """The outbox of provider webhooks: one event for one endpoint, and how its delivery went.

    Written in the same transaction as the change it reports (a matched payment, a phone
    confirming a lock), so an event exists exactly when the change committed; delivered by
    ``portal.webhooks.webhook_event_deliver``. Pending means neither ``delivered_at`` nor
    ``dead_at`` is set; ``next_attempt_at`` is when it is due (set at creation, moved by
    the backoff after a failure).
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "webhook",
        "event",
        "created_at",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "dead_at",
        "last_error",
        "last_status_code",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.CASCADE,
        related_name="webhook_events",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    webhook = models.ForeignKey(ProviderWebhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40, choices=WebhookEventName.choices)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The periodic redelivery reads only pending rows by due time; a partial index
            # stays as small as the backlog, however many events were delivered.
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_event_pending",
                condition=models.Q(delivered_at__isnull=True, dead_at__isnull=True),
            ),
            models.Index(fields=["provider", "-created_at"], name="webhook_event_provider_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.pk} → webhook {self.webhook_id}"

    @property
    def status(self) -> str:
        """One word for the portal: delivered, dead, retrying or pending."""
        if self.delivered_at is not None:
            return "delivered"
        if self.dead_at is not None:
            return "dead"
        return "retrying" if self.attempts else "pending"
