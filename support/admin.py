"""The support records in the Django admin: shown, never edited.

Cases, reviews and unlock requests change only through ``support.services``, which check
four eyes, apply the unlock and audit every step; an admin edit would skip all of that.
"""

from django.contrib import admin

from portal.admin_mixins import ReadOnlyAdmin
from support.models import Case, CaseEvent, ProofFile, ProofReview, UnlockRequest


class CaseEventInline(admin.TabularInline):
    model = CaseEvent
    extra = 0
    can_delete = False
    fields = readonly_fields = ("at", "kind", "actor", "text")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Case)
class CaseAdmin(ReadOnlyAdmin):
    list_display = ["id", "provider", "category", "status", "assigned_to", "opened_at", "sla_due_at", "resolution"]
    list_filter = ["provider", "status", "category", "channel"]
    search_fields = ["=id", "=device__imei", "=contract__number"]
    list_select_related = ["provider", "assigned_to"]
    raw_id_fields = ["device", "contract"]
    inlines = [CaseEventInline]


@admin.register(UnlockRequest)
class UnlockRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "provider", "device", "kind", "status", "requested_by", "decided_by", "requested_at"]
    list_filter = ["provider", "kind", "status"]
    search_fields = ["=id", "=device__imei", "=contract__number"]
    list_select_related = ["provider", "device", "requested_by", "decided_by"]
    raw_id_fields = ["device", "contract", "case", "override", "offline_code"]


class ProofFileInline(admin.TabularInline):
    model = ProofFile
    extra = 0
    can_delete = False
    # The file itself is served only through the portal's checked download.
    fields = readonly_fields = ("kind", "content_type", "size", "sha256", "uploaded_by", "uploaded_at")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ProofReview)
class ProofReviewAdmin(ReadOnlyAdmin):
    list_display = ["id", "provider", "device", "service_center", "status", "outcome", "submitted_at", "decided_by"]
    list_filter = ["provider", "status", "outcome"]
    search_fields = ["=id", "=device__imei"]
    list_select_related = ["provider", "device", "service_center", "decided_by"]
    raw_id_fields = ["device", "unlock_request"]
    inlines = [ProofFileInline]


@admin.register(CaseEvent)
class CaseEventAdmin(ReadOnlyAdmin):
    list_display = ["case", "kind", "actor", "at"]
    list_filter = ["kind"]
    search_fields = ["=case__id"]
    list_select_related = ["case", "actor"]


@admin.register(ProofFile)
class ProofFileAdmin(ReadOnlyAdmin):
    list_display = ["review", "kind", "content_type", "size", "uploaded_by", "uploaded_at"]
    list_filter = ["kind", "content_type"]
    list_select_related = ["review", "uploaded_by"]
    exclude = ["file"]  # served only through the portal's checked download
