from django.contrib import admin

from payments.models import Contract, Customer, Installment, LockOverride, LockPolicy, LockScreenText, PaymentChannel
from portal.admin_mixins import AuditedAdmin


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

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Contract)
class ContractAdmin(AuditedAdmin):
    list_display = ["number", "provider", "customer", "device", "currency", "financed_amount", "status"]
    list_filter = ["provider", "status", "frequency"]
    search_fields = ["=number", "=device__imei", "=customer__phone", "customer__name"]
    list_select_related = ["provider", "customer", "device"]
    raw_id_fields = ["device", "customer"]
    inlines = [InstallmentInline]
    readonly_fields = ["currency", "financed_amount", "installment_count", "frequency", "first_due_date"]

    def has_add_permission(self, request):
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
    list_display = ["provider", "name", "kind", "account", "reference", "position", "active"]
    list_filter = ["provider", "kind", "active"]


@admin.register(LockOverride)
class LockOverrideAdmin(AuditedAdmin):
    list_display = ["contract", "kind", "starts_at", "ends_at", "lifted_at", "created_by"]
    list_filter = ["kind"]
    search_fields = ["=contract__number"]
    raw_id_fields = ["contract"]

    def has_add_permission(self, request):
        # Overrides are granted through the approval flow (requested by one person, approved by another).
        return False

    def has_change_permission(self, request, obj=None):
        return False
