"""Django admin glue: every change made through the admin writes an audit event."""

from __future__ import annotations

from django.contrib import admin
from django.db import transaction

from portal.http import client_ip
from portal.services import audit_record, snapshot


class AuditedAdmin(admin.ModelAdmin):
    """Records create, change and delete with before and after."""

    def save_model(self, request, obj, form, change):
        before = snapshot(type(obj).objects.get(pk=obj.pk)) if change and obj.pk else None
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            action = f"{obj._meta.model_name}.{'update' if change else 'create'}"
            audit_record(
                actor=request.user,
                action=action,
                obj=obj,
                before=before,
                after=snapshot(obj),
                ip_address=client_ip(request),
            )

    def delete_model(self, request, obj):
        before = snapshot(obj)
        with transaction.atomic():
            audit_record(
                actor=request.user,
                action=f"{obj._meta.model_name}.delete",
                obj=obj,
                before=before,
                ip_address=client_ip(request),
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records only services may write (payments, commands, outboxes): the admin shows, never edits.

    Editing them by hand would skip the allocation, signing, auditing or delivery their
    services do.
    """

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
