"""Shapes of the device API (docs/lock-pipeline.md, "Device API"); validation of shape only.

Fields a client sends beyond these are ignored, not refused: a newer agent adding a
field must never be locked out of its check-ins by an older server.
"""

from rest_framework import serializers

from devices.protocol import STATES

# Sequence numbers are stored in 32-bit columns, with room for the server to issue more.
MAX_SEQ = 2_000_000_000


class EnrollSerializer(serializers.Serializer):
    imei = serializers.CharField(max_length=32, help_text="The phone's IMEI (first or second), 15 digits.")
    enrollment_token = serializers.CharField(max_length=200, help_text="The provider's enrolment token (fle_…).")
    app_version = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")


class CheckinSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=STATES, help_text="The state the phone is in now.")
    last_seq = serializers.IntegerField(
        min_value=0, max_value=MAX_SEQ, help_text="Sequence number of the last command applied (0: none)."
    )
    app_version = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")


class AckSerializer(serializers.Serializer):
    seq = serializers.IntegerField(min_value=1, max_value=MAX_SEQ, help_text="The command applied.")
    state = serializers.ChoiceField(choices=STATES, help_text="The state the phone is in after applying it.")


class EnvelopeSerializer(serializers.Serializer):
    command = serializers.DictField(help_text="The command (see docs/lock-pipeline.md), signed in canonical form.")
    signature = serializers.CharField(help_text="Base64 of the 64-byte Ed25519 signature.")


class OfflineSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="OpenPAYGO secret key, 32 hex digits.")
    starting_code = serializers.IntegerField()
    count = serializers.IntegerField(help_text="The server's token counter: resume from it after a reset.")


class MqttAccountSerializer(serializers.Serializer):
    username = serializers.CharField(help_text="The device's public id; connect with it as the MQTT client id too.")
    password = serializers.CharField(help_text="Shown at enrolment only; enrolling again replaces it.")


class EnrollAnswerSerializer(serializers.Serializer):
    device = serializers.UUIDField(help_text="The device's public id, used in the MQTT topic and every command.")
    credential = serializers.CharField(help_text="Send as Authorization: Device <credential>; shown once.")
    server_keys = serializers.DictField(child=serializers.CharField(), help_text="key_id → base64 Ed25519 public key.")
    offline = OfflineSerializer()
    mqtt_topic = serializers.CharField(help_text="The only topic this phone may subscribe to; it may publish nothing.")
    mqtt = MqttAccountSerializer(
        allow_null=True,
        help_text="The phone's own MQTT account; null when the broker needs none (development).",
    )
    envelope = EnvelopeSerializer()


class CheckinAnswerSerializer(serializers.Serializer):
    envelope = EnvelopeSerializer()
    server_keys = serializers.DictField(
        child=serializers.CharField(), help_text="Every key id to accept (announced before a key signs)."
    )


class AckAnswerSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
