from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from portal.admin_mixins import AuditedAdmin, ReadOnlyAdmin
from portal.models import ApiKey, AuditEvent, Organisation, ProviderWebhook, User, WebhookEvent

admin.site.site_header = "finlock administration"
admin.site.site_title = "finlock"


@admin.register(Organisation)
class OrganisationAdmin(AuditedAdmin):
    list_display = ["name", "kind", "slug", "country", "currency", "time_zone"]
    list_filter = ["kind", "country"]
    search_fields = ["name", "slug"]
    filter_horizontal = ["served_providers"]


@admin.register(User)
class UserAdmin(AuditedAdmin, BaseUserAdmin):
    list_display = ["username", "email", "organisation", "role", "is_active", "last_login"]
    list_filter = ["role", "organisation", "is_active"]
    search_fields = ["username", "email", "first_name", "last_name"]
    fieldsets = BaseUserAdmin.fieldsets + (("Organisation", {"fields": ("organisation", "role")}),)
    add_fieldsets = BaseUserAdmin.add_fieldsets + (("Organisation", {"fields": ("organisation", "role", "email")}),)


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    list_display = ["provider", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["provider"]
    search_fields = ["prefix", "name"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        # A key's secret must be shown once to its creator: use create_api_key or the settings page.
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "actor_label", "action", "object_type", "object_id", "organisation"]
    list_filter = ["action", "organisation"]
    search_fields = ["actor_label", "object_id", "object_repr", "action"]
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ProviderWebhook)
class ProviderWebhookAdmin(AuditedAdmin):
    list_display = ["provider", "url", "events", "enabled", "created_at"]
    list_filter = ["provider", "enabled"]
    exclude = ["secret"]  # shown once when created in the portal

    def has_add_permission(self, request):
        # Created on the portal's Webhooks page, which generates the secret and shows it once.
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["event", "provider", "created_at", "attempts", "delivered_at", "dead_at", "last_status_code"]
    list_filter = ["event", "provider"]
