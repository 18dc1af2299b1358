"""Bank and mobile-money statements: an upload, its lines, and the CSV column mappings that read them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from payments.models.contracts import MONEY
from payments.models.ledger import Payment
from portal.models import Organisation, OrganisationKind, User


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
    # Queueing and claiming (payments/statements/imports.py): when a task for it last reached the broker
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
    def carried_by(self) -> User | None:
        """The person who brought this statement in: the uploader, or the creator of the API key used."""
        if self.created_by_id is not None:
            return self.created_by
        api_key = self.api_key  # no query when there is none
        return api_key.created_by if api_key is not None else None

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
