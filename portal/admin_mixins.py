"""Django admin glue: every change made through the admin writes an audit event."""

from __future__ import annotations

from django.contrib import admin
from django.db import transaction

from portal.audit import audit_record, snapshot
from portal.http import client_ip
from portal.models import AuditEvent


class AuditedAdmin(admin.ModelAdmin):
    """Records create, change and delete with the real before and after.

    What enters the trail is the model's ``audit_fields`` (or this admin's ``audit_fields``,
    for a third party's model): an explicit allow-list, so a secret never does.

    The before is read from the database before the form saves anything; the after is
    taken once the many-to-many fields are saved too (``save_related`` runs after
    ``save_model``), so a change of, say, a service centre's served providers shows.
    Django's admin runs both in one transaction, and so does the event.
    """

    #: For a model that cannot declare ``audit_fields`` itself (another app's): the allow-list.
    audit_fields: tuple[str, ...] | None = None

    def _snapshot(self, obj) -> dict:
        return snapshot(obj, self.audit_fields)

    def save_model(self, request, obj, form, change):
        if change and obj.pk:
            form._audit_before = self._snapshot(type(obj)._default_manager.get(pk=obj.pk))
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        with transaction.atomic():
            super().save_related(request, form, formsets, change)
            obj = form.instance
            event = audit_record(
                actor=request.user,
                action=f"{obj._meta.model_name}.{'update' if change else 'create'}",
                obj=obj,
                before=getattr(form, "_audit_before", None),
                after=self._snapshot(obj),
                ip_address=client_ip(request),
            )
            self.audited(event)

    def delete_model(self, request, obj):
        before = self._snapshot(obj)
        with transaction.atomic():
            event = audit_record(
                actor=request.user,
                action=f"{obj._meta.model_name}.delete",
                obj=obj,
                before=before,
                ip_address=client_ip(request),
            )
            super().delete_model(request, obj)
            self.audited(event)

    def audited(self, event: AuditEvent) -> None:
        """Called in the change's transaction once its event is written: what else the change needs (none here)."""

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
