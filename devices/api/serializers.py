from rest_framework import serializers

from devices.models import Device, LockState


class DeviceSerializer(serializers.ModelSerializer):
    # Blank until the device first acknowledges a state. Declared explicitly because a
    # read-only model field loses allow_blank, and the schema then said "one of the
    # lock states" for a device that answers "" (a response/schema mismatch).
    reported_state = serializers.ChoiceField(
        choices=LockState.choices,
        allow_blank=True,
        read_only=True,
        help_text="The state the device last acknowledged; blank until its first acknowledgement.",
    )

    class Meta:
        model = Device
        fields = [
            "imei",
            "imei2",
            "serial_number",
            "maker",
            "model",
            "desired_state",
            "desired_reason",
            "reported_state",
            "reported_at",
            "last_checkin_at",
            "created_at",
        ]
        read_only_fields = fields


class DeviceCreateSerializer(serializers.Serializer):
    """Validation of the shape only; the service checks IMEIs and uniqueness."""

    imei = serializers.CharField(max_length=32, help_text="15 digits with a valid Luhn check digit.")
    imei2 = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    serial_number = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    maker = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    model = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")


class BulkUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV, UTF-8, header: imei[,imei2,serial_number,maker,model]")
    mode = serializers.ChoiceField(
        choices=["all_or_nothing", "valid_rows_only"],
        default="all_or_nothing",
        help_text="all_or_nothing: any bad line rejects the file; valid_rows_only: create the good lines.",
    )


class BulkErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    field = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class BulkReportSerializer(serializers.Serializer):
    mode = serializers.CharField()
    rows = serializers.IntegerField()
    created = serializers.IntegerField()
    rejected = serializers.IntegerField()
    errors = BulkErrorSerializer(many=True)  # type: ignore[assignment]  # a field named like Serializer.errors
