from django.contrib import admin

from devices.models import Device
from portal.admin_mixins import AuditedAdmin


@admin.register(Device)
class DeviceAdmin(AuditedAdmin):
    list_display = ["imei", "maker", "model", "provider", "desired_state", "reported_state", "last_checkin_at"]
    list_filter = ["provider", "desired_state", "reported_state", "maker"]
    search_fields = ["=imei", "=imei2", "serial_number"]
    readonly_fields = [
        "desired_state",
        "desired_reason",
        "desired_changed_at",
        "reported_state",
        "reported_at",
        "last_checkin_at",
    ]
    list_select_related = ["provider"]
