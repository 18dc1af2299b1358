"""What devices sends to a provider's systems, described for the OpenAPI document.

* ``device.locked`` / ``device.unlocked``: provider events (``devices.services.checkin._emit_lock_webhook``);
* ``gateway.command``: every signed command, POSTed to the provider's device-management
  gateway when it has one (``devices.delivery.webhook_post``).

A test holds every body finlock sends to these descriptions (tests/test_provider_webhooks.py,
tests/test_delivery.py).
"""

from __future__ import annotations

from rest_framework import serializers

from devices.api.payloads import CommandEnvelopeSerializer, nullable_choice_field
from devices.models import LockState
from portal.api.webhook_schema import WebhookEventSerializer, event_name_field, webhook


class DeviceStateDataSerializer(serializers.Serializer):
    imei = serializers.RegexField(r"^[0-9]{15}$", help_text="The phone's IMEI.")
    device = serializers.UUIDField(help_text="The device's public id (the MQTT topic's, and every command's).")
    state = serializers.ChoiceField(choices=LockState.choices, help_text="The state the phone confirmed.")
    previous_state = nullable_choice_field(
        tuple(LockState.values), "The state the phone confirmed before; null if it never confirmed one."
    )
    seq = serializers.IntegerField(min_value=1, help_text="The sequence number of the command the phone applied.")
    at = serializers.DateTimeField(help_text="When finlock received the confirmation (UTC).")


class DeviceLockedSerializer(WebhookEventSerializer):
    """The body of ``device.locked``."""

    event = event_name_field("device.locked")
    data = DeviceStateDataSerializer()  # type: ignore[assignment]  # a field named like Serializer.data


class DeviceUnlockedSerializer(WebhookEventSerializer):
    """The body of ``device.unlocked``."""

    event = event_name_field("device.unlocked")
    data = DeviceStateDataSerializer()  # type: ignore[assignment]  # a field named like Serializer.data


DEVICE_LOCKED = webhook(
    "device.locked",
    body=DeviceLockedSerializer,
    summary="A phone confirmed its lock",
    description="Sent when a phone acknowledges a lock command: what the owner now sees, not what the "
    "server decided. A repeated acknowledgement sends nothing.",
)
DEVICE_UNLOCKED = webhook(
    "device.unlocked",
    body=DeviceUnlockedSerializer,
    summary="A phone confirmed an unlock after a lock",
    description="Sent when a locked phone acknowledges an unlock, a temporary unlock or its release "
    "(`state`). A change between usable states sends nothing.",
)
GATEWAY_COMMAND = webhook(
    "gateway.command",
    body=CommandEnvelopeSerializer,
    summary="A signed lock-state command, to the provider's device gateway",
    description="Only for a provider with a device-management gateway (configured by the operator): every "
    "command for its phones, the same envelope a phone receives over MQTT and at check-in "
    "(docs/lock-pipeline.md: `payload` is base64 of the signed bytes of a `Command`), the whole body "
    "signed with the gateway's secret; `webhook-id` is `cmd_<command id>`. "
    "Only a device's latest command is sent; a phone applies a sequence number once.",
)
