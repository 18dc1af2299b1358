"""Support cases, proof-of-purchase reviews and unlock requests (the people's side).

``support`` sits on top of ``payments``, ``devices`` and ``portal``: it may import from
all three and nothing imports it. It decides nothing about locks by itself: an
approved unlock goes through the money side's overrides and decision, and the device
side's signed commands.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from devices.models import Device, OfflineCode, OfflineCodeKind
from payments.models import Contract, LockOverride
from portal.models import Organisation, OrganisationKind

# --- hotline cases ----------------------------------------------------------------------------


class CaseCategory(models.TextChoices):
    PAID_BUT_LOCKED = "paid_but_locked", _("Paid but still locked")
    LOCKED_IN_ERROR = "locked_in_error", _("Locked in error")
    PAYMENT_PLAN = "payment_plan", _("Payment plan")
    DISPUTE = "dispute", _("Dispute")
    OTHER = "other", _("Other")


# Hours from opening until a case is overdue. A phone that stays locked after payment is
# the most urgent complaint: the owner has done their part and cannot use their phone.
SLA_HOURS: dict[str, int] = {
    CaseCategory.PAID_BUT_LOCKED: 4,
    CaseCategory.LOCKED_IN_ERROR: 8,
    CaseCategory.PAYMENT_PLAN: 48,
    CaseCategory.DISPUTE: 72,
    CaseCategory.OTHER: 48,
}


def sla_due_at(category: str, opened_at: dt.datetime) -> dt.datetime:
    """When a case of ``category`` opened at ``opened_at`` must be resolved."""
    return opened_at + dt.timedelta(hours=SLA_HOURS[category])


class CaseChannel(models.TextChoices):
    HOTLINE = "hotline", _("Hotline call")
    SERVICE_CENTER = "service_center", _("Service-center visit")
    EMAIL = "email", _("E-mail")
    OTHER = "other", _("Other")


class CaseStatus(models.TextChoices):
    OPEN = "open", _("Open")
    RESOLVED = "resolved", _("Resolved")


class Resolution(models.TextChoices):
    RESOLVED_UNLOCKED = "resolved_unlocked", _("Phone unlocked")
    PAYMENT_FOUND = "payment_found", _("Payment found and credited")
    EXPLAINED = "explained", _("Explained to the caller")
    ESCALATED = "escalated", _("Escalated")
    DUPLICATE = "duplicate", _("Duplicate of another case")
    OTHER = "other", _("Other")


# What the agent checks before saying anything about money: the caller states each item
# and the agent compares it with the record. The record has no date of birth, so the
# second check is the last four characters of the national ID.
IDENTITY_CHECKS: dict[str, str | Promise] = {
    "full_name": _("Full name matches the customer on the contract"),
    "national_id_last4": _("Last four characters of the national ID match"),
    "contract_phone": _("Phone number matches the one on the contract"),
}


class Case(models.Model):
    """A hotline call or service-center visit about one device and/or contract of a provider.

    Financial details (amounts, payments) are shown on the case only once the caller's
    identity is verified (``identity_verified_at``), with which checks passed and by whom.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "device",
        "contract",
        "channel",
        "category",
        "summary",
        "status",
        "opened_by",
        "opened_at",
        "sla_due_at",
        "assigned_to",
        "identity_checks",
        "identity_verified_by",
        "identity_verified_at",
        "resolution",
        "resolution_note",
        "resolved_by",
        "resolved_at",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="cases",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    device = models.ForeignKey(Device, null=True, blank=True, on_delete=models.PROTECT, related_name="cases")
    contract = models.ForeignKey(Contract, null=True, blank=True, on_delete=models.PROTECT, related_name="cases")
    channel = models.CharField(max_length=20, choices=CaseChannel.choices, default=CaseChannel.HOTLINE)
    category = models.CharField(max_length=20, choices=CaseCategory.choices)
    summary = models.CharField(max_length=300, help_text=_("What the caller says, in a sentence."))
    status = models.CharField(max_length=10, choices=CaseStatus.choices, default=CaseStatus.OPEN)
    opened_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    opened_at = models.DateTimeField(default=timezone.now)
    sla_due_at = models.DateTimeField(help_text=_("Computed at opening from the category's SLA."))
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="assigned_cases"
    )
    identity_checks = models.JSONField(default=list, blank=True, help_text=_("Keys of IDENTITY_CHECKS that passed."))
    identity_verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    identity_verified_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=20, choices=Resolution.choices, blank=True)
    resolution_note = models.TextField(max_length=2000, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["sla_due_at", "id"]
        indexes = [
            # The queue: a provider's open cases, most urgent first.
            models.Index(fields=["provider", "status", "sla_due_at"], name="case_queue_idx"),
            models.Index(fields=["assigned_to", "status"], name="case_assignee_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(device__isnull=False) | Q(contract__isnull=False), name="case_has_device_or_contract"
            ),
            models.CheckConstraint(
                condition=Q(status="open", resolution="") | (Q(status="resolved") & ~Q(resolution="")),
                name="case_resolution_iff_resolved",
            ),
        ]

    def __str__(self) -> str:
        return f"Case #{self.pk} ({self.get_category_display()})"

    @property
    def identity_verified(self) -> bool:
        return self.identity_verified_at is not None

    def is_overdue(self, now: dt.datetime | None = None) -> bool:
        return self.status == CaseStatus.OPEN and self.sla_due_at < (now or timezone.now())


class CaseEventKind(models.TextChoices):
    OPENED = "opened", _("Opened")
    NOTE = "note", _("Note")
    ASSIGNED = "assigned", _("Assigned")
    IDENTITY_VERIFIED = "identity_verified", _("Identity verified")
    IDENTITY_FAILED = "identity_failed", _("Identity not verified")
    UNLOCK_REQUESTED = "unlock_requested", _("Unlock requested")
    RESOLVED = "resolved", _("Resolved")


class CaseEvent(models.Model):
    """One entry of a case's timeline: a note or something that happened to the case."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20, choices=CaseEventKind.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    at = models.DateTimeField(default=timezone.now)
    text = models.TextField(max_length=2000, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on case {self.case_id}"


# --- unlock requests --------------------------------------------------------------------------


class UnlockKind(models.TextChoices):
    TEMPORARY = "temporary", _("Temporary unlock")
    RELEASE = "release", _("Permanent release")
    OFFLINE_CODE = "offline_code", _("Offline unlock code")
    REKEY = "rekey", _("New offline-code key")


class UnlockStatus(models.TextChoices):
    PENDING = "pending", _("Waiting for approval")
    APPROVED = "approved", _("Approved")
    REJECTED = "rejected", _("Rejected")


class UnlockRequest(models.Model):
    """A manual unlock asked for by one person and approved or rejected by another of the provider.

    Approval applies the effect in the same transaction: a temporary-unlock override and
    its signed command, a permanent release, an offline code (shown once, never stored
    here), or a new offline-code key for a phone that lost its own (``rekey``: the phone
    receives it at its next proven enrolment, nobody sees it). ``outcome`` says in words
    what the approval did.
    """

    #: What may enter the audit trail (portal.audit.snapshot): an explicit list, never a secret.
    audit_fields = (
        "provider",
        "device",
        "contract",
        "case",
        "kind",
        "hours",
        "offline_kind",
        "days",
        "reason",
        "requested_by",
        "requester_organisation",
        "requested_at",
        "status",
        "decided_by",
        "decided_at",
        "decision_note",
        "outcome",
        "override",
        "offline_code",
    )

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="unlock_requests",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="unlock_requests")
    contract = models.ForeignKey(
        Contract, null=True, blank=True, on_delete=models.PROTECT, related_name="unlock_requests"
    )
    case = models.ForeignKey(Case, null=True, blank=True, on_delete=models.SET_NULL, related_name="unlock_requests")
    kind = models.CharField(max_length=20, choices=UnlockKind.choices)
    hours = models.PositiveSmallIntegerField(null=True, blank=True, help_text=_("Temporary unlock only."))
    offline_kind = models.CharField(
        max_length=20, choices=OfflineCodeKind.choices, blank=True, help_text=_("Offline code only.")
    )
    days = models.PositiveSmallIntegerField(null=True, blank=True, help_text=_("Offline code for N days only."))
    reason = models.CharField(max_length=300)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requester_organisation = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="+",
        help_text=_("The provider itself, or the service center of the technician who asked."),
    )
    requested_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=10, choices=UnlockStatus.choices, default=UnlockStatus.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=300, blank=True)
    outcome = models.CharField(max_length=300, blank=True)
    override = models.ForeignKey(
        LockOverride, null=True, blank=True, on_delete=models.SET_NULL, related_name="unlock_requests"
    )
    offline_code = models.ForeignKey(
        OfflineCode, null=True, blank=True, on_delete=models.SET_NULL, related_name="unlock_requests"
    )

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["provider", "status", "-requested_at"], name="unlock_queue_idx")]
        constraints = [
            models.CheckConstraint(condition=~Q(kind="temporary") | Q(hours__gte=1), name="temporary_unlock_has_hours"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} for the phone {self.device.imei}"

    @property
    def kind_label(self) -> str:
        if self.kind == UnlockKind.TEMPORARY:
            return f"Temporary unlock for {self.hours} h"
        if self.kind == UnlockKind.REKEY:
            return "New offline-code key"
        if self.kind == UnlockKind.OFFLINE_CODE:
            if self.offline_kind == OfflineCodeKind.RELEASE:
                return "Offline code: release for good"
            return f"Offline code: unlocked for {self.days} day{'s' if self.days != 1 else ''}"
        return "Permanent release"


# --- proof-of-purchase reviews ----------------------------------------------------------------


class ReviewStatus(models.TextChoices):
    PENDING = "pending", _("Waiting for review")
    DECIDED = "decided", _("Decided")


class ReviewOutcome(models.TextChoices):
    LOCKED_IN_ERROR = "locked_in_error", _("Locked in error: unlocked")
    NOT_FINANCED = "not_financed", _("Not financed: released")
    REJECTED = "rejected", _("Rejected")


class ProofReview(models.Model):
    """Proof of purchase and ID a service-center technician uploaded for a device, and the provider's decision.

    The technician sees the device, its lock state, the outcome and ``explanation`` (what
    to tell the owner); ``reason`` is the reviewer's internal note, for the provider only.
    """

    provider = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="proof_reviews",
        limit_choices_to={"kind": OrganisationKind.PROVIDER},
    )
    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="proof_reviews")
    service_center = models.ForeignKey(
        Organisation,
        on_delete=models.PROTECT,
        related_name="submitted_proof_reviews",
        limit_choices_to={"kind": OrganisationKind.SERVICE_CENTER},
    )
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    submitted_at = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=500, blank=True, help_text=_("What the owner says, from the technician."))
    status = models.CharField(max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.PENDING)
    outcome = models.CharField(max_length=20, choices=ReviewOutcome.choices, blank=True)
    reason = models.CharField(max_length=300, blank=True, help_text=_("The reviewer's reason (provider only)."))
    explanation = models.CharField(max_length=500, blank=True, help_text=_("What the technician tells the owner."))
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    unlock_request = models.ForeignKey(
        UnlockRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="proof_reviews"
    )

    class Meta:
        ordering = ["-submitted_at", "-id"]
        indexes = [
            models.Index(fields=["provider", "status", "-submitted_at"], name="review_queue_idx"),
            models.Index(fields=["service_center", "-submitted_at"], name="review_center_idx"),
        ]

    def __str__(self) -> str:
        return f"Proof review #{self.pk} for the phone {self.device.imei}"


class ProofFileKind(models.TextChoices):
    RECEIPT = "receipt", _("Receipt")
    ID_DOCUMENT = "id_document", _("ID document")


class ProofFile(models.Model):
    """One uploaded receipt or ID image/PDF, checked by content, stored privately under a name we choose.

    Served only through ``support.views.review_file`` (which checks the viewer may see the
    review), never through a media URL.
    """

    review = models.ForeignKey(ProofReview, on_delete=models.CASCADE, related_name="files")
    kind = models.CharField(max_length=20, choices=ProofFileKind.choices)
    file = models.FileField(upload_to="support-proofs/%Y/%m/")
    content_type = models.CharField(max_length=60)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    uploaded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.pk} of review {self.review_id}"
