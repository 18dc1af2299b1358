from django.contrib import admin
from django.http import HttpRequest

from payments.models import (
    Contract,
    CsvColumnMapping,
    Customer,
    Installment,
    LockOverride,
    LockPolicy,
    LockRefresh,
    LockScreenText,
    Payment,
    PaymentAllocation,
    PaymentChannel,
    PaymentProof,
    StatementImport,
    StatementLine,
)
from portal.admin_mixins import AuditedAdmin, ReadOnlyAdmin


@admin.register(Customer)
class CustomerAdmin(AuditedAdmin):
    list_display = ["name", "phone", "provider", "preferred_language", "national_id_masked"]
    list_filter = ["provider", "preferred_language"]
    search_fields = ["name", "=phone"]
    readonly_fields = ["national_id_masked"]
    exclude = ["national_id_digest"]


class InstallmentInline(admin.TabularInline):
    model = Installment
    extra = 0
    readonly_fields = ["number", "due_date", "amount_due", "amount_paid"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Contract | None = None) -> bool:
        return False


@admin.register(Contract)
class ContractAdmin(AuditedAdmin):
    list_display = ["number", "provider", "customer", "device", "currency", "financed_amount", "status"]
    list_filter = ["provider", "status", "frequency"]
    search_fields = ["=number", "=device__imei", "=customer__phone", "customer__name"]
    list_select_related = ["provider", "customer", "device"]
    raw_id_fields = ["customer"]
    inlines = [InstallmentInline]
    # The lock state changes only through the lock API (payments.locks.services), which writes the signed
    # command with it; the number and device are the contract's identity; the status through contract_set_status.
    readonly_fields = [
        "number",
        "device",
        "status",
        "currency",
        "financed_amount",
        "installment_count",
        "frequency",
        "first_due_date",
        "lock_state",
        "lock_reason",
        "lock_changed_at",
        "arrears_cleared_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Contracts are created through the API or services so the schedule is generated with them.
        return False


@admin.register(LockPolicy)
class LockPolicyAdmin(AuditedAdmin):
    list_display = ["provider", "grace_days", "lock_start_hour", "lock_end_hour", "max_temp_unlock_hours"]
    search_fields = ["provider__name"]


@admin.register(LockScreenText)
class LockScreenTextAdmin(AuditedAdmin):
    list_display = ["provider", "language", "title", "updated_at"]
    list_filter = ["provider", "language"]


@admin.register(PaymentChannel)
class PaymentChannelAdmin(AuditedAdmin):
    list_display = ["provider", "name", "kind", "account", "short_code", "reference", "position", "active"]
    list_filter = ["provider", "kind", "active"]


@admin.register(LockOverride)
class LockOverrideAdmin(AuditedAdmin):
    list_display = ["contract", "kind", "starts_at", "ends_at", "lifted_at", "created_by"]
    list_filter = ["kind"]
    search_fields = ["=contract__number"]
    raw_id_fields = ["contract"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Overrides are granted through the approval flow (requested by one person, approved by another).
        return False

    def has_change_permission(self, request: HttpRequest, obj: LockOverride | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LockOverride | None = None) -> bool:
        # Removing a hold or an unlock would change a lock without a decision or a command.
        return False


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "external_id",
        "provider",
        "channel",
        "amount",
        "held_amount",
        "currency",
        "status",
        "flag",
        "contract",
        "received_at",
    ]
    list_filter = ["provider", "status", "flag", "channel", "source"]
    search_fields = ["=external_id", "=contract__number", "=payer_phone"]
    list_select_related = ["provider", "contract"]


@admin.register(PaymentAllocation)
class PaymentAllocationAdmin(ReadOnlyAdmin):
    list_display = ["payment", "contract", "installment", "amount", "reversed_at"]
    search_fields = ["=contract__number", "=payment__external_id"]


@admin.register(PaymentProof)
class PaymentProofAdmin(ReadOnlyAdmin):
    list_display = ["payment", "content_type", "size", "uploaded_by", "uploaded_at"]
    exclude = ["file"]  # served only through the portal's checked download


@admin.register(StatementImport)
class StatementImportAdmin(ReadOnlyAdmin):
    list_display = ["filename", "provider", "format", "status", "processed_lines", "total_lines", "created_at"]
    list_filter = ["provider", "status", "format"]


@admin.register(StatementLine)
class StatementLineAdmin(ReadOnlyAdmin):
    list_display = ["statement_import", "line_no", "direction", "amount", "currency", "reference", "payment"]
    list_filter = ["direction", "is_return"]
    search_fields = ["=end_to_end_id", "=bank_reference"]


@admin.register(CsvColumnMapping)
class CsvColumnMappingAdmin(AuditedAdmin):
    list_display = ["name", "provider", "updated_at"]
    list_filter = ["provider"]


@admin.register(Installment)
class InstallmentAdmin(ReadOnlyAdmin):
    list_display = ["contract", "number", "due_date", "amount_due", "amount_paid"]
    search_fields = ["=contract__number"]


@admin.register(LockRefresh)
class LockRefreshAdmin(ReadOnlyAdmin):
    """Lock-screen and lease refreshes in progress or done (written by payments.locks.refresh only)."""

    list_display = ["provider", "kind", "cursor", "done_at", "updated_at"]
    list_filter = ["kind", "provider"]
