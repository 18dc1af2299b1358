"""Shapes of the device API (docs/lock-pipeline.md, "Device API"); validation of shape only.

Fields a client sends beyond these are ignored, not refused: a newer agent adding a
field must never be locked out of its check-ins by an older server.
"""

from rest_framework import serializers

from devices.api.payloads import CommandEnvelopeSerializer, KeyStatementEnvelopeSerializer
from devices.keys import CHAIN_LENGTH
from devices.protocol import MAX_SEQ, STATES

# Sequence numbers are stored in 32-bit columns, with room for the server to issue more.


class EnrollSerializer(serializers.Serializer):
    imei = serializers.CharField(max_length=32, help_text="The phone's IMEI (first or second), 15 digits.")
    enrollment_token = serializers.CharField(max_length=200, help_text="The provider's enrolment token (fle_…).")
    app_version = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    device_key = serializers.CharField(
        max_length=44,
        help_text="The phone's own Ed25519 public key: standard base64 (with padding) of the raw 32 bytes. "
        "Generated at its first enrolment and kept in reset-protected storage.",
    )
    challenge = serializers.CharField(max_length=100, help_text="A challenge from enroll/challenge, as received.")
    signature = serializers.CharField(
        max_length=88,
        help_text="Standard base64 of the 64-byte Ed25519 signature, by the device key, of "
        '"finlock-enroll-v1\\n<challenge>\\n<imei digits>\\n<device_key>" (ASCII).',
    )
    reenrollment_code = serializers.CharField(
        max_length=40,
        required=False,
        allow_blank=True,
        default="",
        help_text="A one-time code the provider's staff issued for this phone, when it lost its device key: "
        "the device_key sent with it replaces the registered one.",
    )


class ChallengeAnswerSerializer(serializers.Serializer):
    challenge = serializers.CharField(help_text="Sign it at once (see enroll); accepted once per device.")
    expires_in = serializers.IntegerField(help_text="Seconds during which enroll accepts it.")


class CheckinSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=STATES, help_text="The state the phone is in now.")
    last_seq = serializers.IntegerField(
        min_value=0, max_value=MAX_SEQ, help_text="Sequence number of the last command applied (0: none)."
    )
    app_version = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")


class AckSerializer(serializers.Serializer):
    seq = serializers.IntegerField(min_value=1, max_value=MAX_SEQ, help_text="The command applied.")
    state = serializers.ChoiceField(choices=STATES, help_text="The state the phone is in after applying it.")


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
    key_statements = KeyStatementEnvelopeSerializer(
        many=True,
        help_text=f"The newest signed key statements (at most {CHAIN_LENGTH}), oldest first: the server keys a "
        "phone trusts. A new phone takes the oldest that verifies with one of its own keys (or, with keys pinned "
        "in the app, the first that verifies with a pinned key), then applies the rest in order.",
    )
    offline = OfflineSerializer(
        allow_null=True,
        help_text="Only on the enrolment that hands the device's offline-code secret out, which happens once "
        "(the first enrolment, or the first after a staff re-key); null on every other. Keep it in "
        "reset-protected storage.",
    )
    mqtt_topic = serializers.CharField(help_text="The only topic this phone may subscribe to; it may publish nothing.")
    mqtt = MqttAccountSerializer(
        allow_null=True,
        help_text="The phone's own MQTT account; null when the broker needs none (development).",
    )
    envelope = CommandEnvelopeSerializer(help_text="The device's current signed command.")


class CheckinAnswerSerializer(serializers.Serializer):
    envelope = CommandEnvelopeSerializer(
        help_text="The device's current signed command (a renewed lease when the check-in renewed it)."
    )
    key_statements = KeyStatementEnvelopeSerializer(
        many=True,
        help_text=f"The newest signed key statements (at most {CHAIN_LENGTH}), oldest first. A phone applies "
        "them in order: one whose seq is not above the one it holds is stale and skipped; a newer one replaces "
        "its trusted keys if a key it already trusts signed it (a key is announced before it signs).",
    )


class AckAnswerSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
