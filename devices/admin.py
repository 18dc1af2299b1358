from django.contrib import admin

from devices.models import (
    DeliveryAttempt,
    Device,
    DeviceCommand,
    DeviceGateway,
    EnrollmentToken,
    KeyStatement,
    MqttAccount,
    OfflineCode,
)
from portal.admin_mixins import AuditedAdmin, ReadOnlyAdmin


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


@admin.register(DeviceCommand)
class DeviceCommandAdmin(ReadOnlyAdmin):
    list_display = ["device", "seq", "state", "issued_at", "delivered_at", "acknowledged_at", "dead_at", "attempts"]
    list_filter = ["state"]
    search_fields = ["=device__imei"]
    list_select_related = ["device"]


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    list_display = ["command", "channel", "at", "ok", "error"]
    list_filter = ["channel", "ok"]


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(ReadOnlyAdmin):
    list_display = ["name", "shop", "provider", "created_at", "expires_at", "revoked_at", "uses", "max_uses"]
    list_filter = ["provider"]
    exclude = ["digest"]


@admin.register(OfflineCode)
class OfflineCodeAdmin(ReadOnlyAdmin):
    list_display = ["device", "kind", "days", "count", "requested_by", "approved_by", "issued_at"]
    search_fields = ["=device__imei"]
    exclude = ["token"]


@admin.register(DeviceGateway)
class DeviceGatewayAdmin(AuditedAdmin):
    list_display = ["provider", "url", "enabled"]


@admin.register(MqttAccount)
class MqttAccountAdmin(ReadOnlyAdmin):
    """Whether each phone's broker account has its current password (written by devices/mqtt_accounts.py)."""

    list_display = ["device", "in_sync", "exists", "synced_at", "attempted_at", "last_error"]
    list_filter = ["exists"]
    search_fields = ["=device__imei"]
    list_select_related = ["device"]
    # The digest of the device credential the broker's password belongs to: not for display.
    exclude = ["synced_digest"]

    @admin.display(boolean=True, description="password in sync")
    def in_sync(self, obj: MqttAccount) -> bool:
        return obj.synced_digest == obj.device.credential_digest


@admin.register(KeyStatement)
class KeyStatementAdmin(ReadOnlyAdmin):
    """The signed key statements phones trust (written by devices/keys.py when the configured keys change)."""

    list_display = ["seq", "key_id", "created_at"]
