"""The ledger: payment channels, payments, their allocation to installments, and proofs."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from payments.models.contracts import MONEY, Contract, Installment
from payments.models.locks import validate_lock_screen_text
from portal.models import Organisation, OrganisationKind


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
        installment = self.installment  # no query when there is none (credit)
        target = f"#{installment.number}" if installment is not None else "credit"
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
