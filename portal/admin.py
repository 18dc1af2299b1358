from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin as BaseTOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.admin_mixins import AuditedAdmin, ReadOnlyAdmin
from portal.audit import audit_record
from portal.http import client_ip
from portal.models import ApiKey, AuditEvent, Organisation, ProviderWebhook, User, WebhookEvent
from portal.queue import enqueue_each

#: payments.locks.refresh's task: refreshes the lock screens an organisation change shows on.
LOCK_SCREEN_REFRESH_TASK = "payments.refresh_lock_screens_after_change"

admin.site.site_header = "finlock administration"
admin.site.site_title = "finlock"


@admin.register(Organisation)
class OrganisationAdmin(AuditedAdmin):
    list_display = ["name", "kind", "slug", "country", "currency", "time_zone"]
    list_filter = ["kind", "country"]
    search_fields = ["name", "slug"]
    filter_horizontal = ["served_providers"]

    def audited(self, event: AuditEvent) -> None:
        """A provider's, service centre's or the platform's contacts show on lock screens: refresh them.

        Queued once the change commits, by the task's registered name (portal imports no
        payments); payments reads from the event what changed and which phones show it.
        """
        if event.before != event.after:
            transaction.on_commit(lambda: enqueue_each(LOCK_SCREEN_REFRESH_TASK, [event.pk], what="audit event"))


@admin.register(User)
class UserAdmin(AuditedAdmin, BaseUserAdmin):
    list_display = ["username", "email", "organisation", "role", "is_active", "last_login"]
    list_filter = ["role", "organisation", "is_active"]
    search_fields = ["username", "email", "first_name", "last_name"]
    fieldsets = (*(BaseUserAdmin.fieldsets or ()), ("Organisation", {"fields": ("organisation", "role")}))
    add_fieldsets = BaseUserAdmin.add_fieldsets + (("Organisation", {"fields": ("organisation", "role", "email")}),)

    def user_change_password(self, request, id, form_url=""):
        """Django's set-password page, audited as ``user.password_change`` (actor: the admin; never the hash).

        Whoever sets another account's password could be holding it: four eyes counts the
        event as a set-up link (``portal.four_eyes``). Django's view saves the password; the
        event is written in the same transaction, only when the stored password changed.
        """
        with transaction.atomic():
            user = self.get_object(request, unquote(id))
            before = user.password if user is not None else None
            response = super().user_change_password(request, id, form_url)
            if user is not None and request.method == "POST":
                user.refresh_from_db(fields=["password"])
                if user.password != before:
                    audit_record(
                        actor=request.user,
                        action="user.password_change",
                        obj=user,
                        after={"usable_password": user.has_usable_password()},
                        ip_address=client_ip(request),
                    )
        return response


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


# django-otp's own admin, made audited: adding, changing or deleting someone's authenticator is a
# credential change. The key never enters the trail, and the admin never shows it (settings:
# OTP_ADMIN_HIDE_SENSITIVE_DATA).
admin.site.unregister(TOTPDevice)


@admin.register(TOTPDevice)
class TOTPDeviceAdmin(AuditedAdmin, BaseTOTPDeviceAdmin):
    audit_fields = ("user", "name", "confirmed", "step", "t0", "digits", "tolerance", "drift", "created_at")


# Django's groups and django-axes' sign-in records, made audited too: a group's permissions are
# rights, and deleting a lock-out record unlocks an account someone was guessing the password of.
def _audited(model, base, fields: tuple[str, ...]) -> None:
    if not admin.site.is_registered(model):
        return  # e.g. AXES_ENABLE_ADMIN off
    admin.site.unregister(model)
    audited = type(f"Audited{base.__name__}", (AuditedAdmin, base), {"audit_fields": fields})
    admin.site.register(model, audited)


_audited(Group, GroupAdmin, ("name", "permissions"))
_audited(
    AccessAttempt,
    AccessAttemptAdmin,
    ("username", "ip_address", "user_agent", "path_info", "attempt_time", "failures_since_start"),
)
_audited(
    AccessLog, AccessLogAdmin, ("username", "ip_address", "user_agent", "path_info", "attempt_time", "logout_time")
)
_audited(
    AccessFailureLog,
    AccessFailureLogAdmin,
    ("username", "ip_address", "user_agent", "path_info", "attempt_time", "locked_out"),
)
