"""The signed payloads (docs/lock-pipeline.md): the one description of a Command and a KeyStatement.

``devices.services.commands._issue`` and ``devices.keys`` build the bytes that are signed;
these serializers are what both OpenAPI documents say those bytes hold (the device
document through the envelopes of ``device_serializers``, the provider document through
the ``gateway.command`` webhook). tests/test_api_schema.py issues real commands and key
statements and holds their payloads to the published schema: exactly its members, with its
types. A member added to the payload without being added here fails that test.

Only a description: the server never validates its own payloads with these, and a phone
ignores members it does not know (forward compatible).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.protocol import (
    KIND_COMMAND,
    KIND_KEY_STATEMENT,
    LEASE_EXPIRY_STATES,
    MAX_ENVELOPE_BYTES,
    MAX_SEQ,
    PROTOCOL_VERSION,
    STATES,
)

#: Every time on the wire: UTC, to the second, with a ``Z`` (``devices.services.commands.wire_time``).
WIRE_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
#: Standard base64 (``+/``, ``=`` padding) of a raw 32-byte Ed25519 public key: 44 characters.
PUBLIC_KEY_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
#: Standard base64 of a 64-byte Ed25519 signature: 88 characters.
SIGNATURE_PATTERN = r"^[A-Za-z0-9+/]{85}[AQgw]==$"
#: Standard base64 with padding, any length (a payload).
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

ENCODINGS = (
    "Encodings: base64 is the standard alphabet (`+/`) with `=` padding (RFC 4648 section 4) "
    "everywhere, and a phone refuses any other form (URL-safe, unpadded, whitespace); a public key is "
    "the raw 32-byte Ed25519 key (44 base64 characters), a signature the 64-byte Ed25519 signature "
    "(88 characters); times are `YYYY-MM-DDTHH:MM:SSZ` (UTC, to the second)."
)


@extend_schema_field({"type": "string", "format": "date-time", "pattern": WIRE_TIME_PATTERN})
class WireTimeField(serializers.CharField):
    """A time as every payload carries it: ``YYYY-MM-DDTHH:MM:SSZ``."""


@extend_schema_field({"type": "string", "pattern": PUBLIC_KEY_PATTERN})
class PublicKeyField(serializers.CharField):
    """Standard base64 of a raw 32-byte Ed25519 public key."""


def const_field(value: str, help_text: str) -> serializers.CharField:
    """A member that always holds ``value`` (a JSON Schema ``const``; a generated client types it as a literal)."""

    @extend_schema_field({"type": "string", "const": value})
    class Const(serializers.CharField):
        pass

    return Const(help_text=help_text)


def nullable_choice_field(choices: tuple[str, ...], help_text: str) -> serializers.ChoiceField:
    """A choice or null, described as ``oneOf: [enum, null]``.

    DRF's own description (``type: [string, null]`` with ``null`` among the enum values) makes a
    generated client declare the same enum three times (openapi-python-client 0.29).
    """

    @extend_schema_field({"oneOf": [{"type": "string", "enum": list(choices)}]})
    class NullableChoice(serializers.ChoiceField):
        pass

    return NullableChoice(choices=choices, allow_null=True, help_text=help_text)


class LockWindowSerializer(serializers.Serializer):
    start_hour = serializers.IntegerField(min_value=0, max_value=23, help_text="First local hour (inclusive).")
    end_hour = serializers.IntegerField(min_value=1, max_value=24, help_text="Last local hour (exclusive).")
    weekdays = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=6),
        help_text="Local weekdays on which a lock may start; Monday is 0.",
    )


class CommandSerializer(serializers.Serializer):
    """A lock-state command (kind `command`), as signed. Every member is always present."""

    kind = const_field(KIND_COMMAND, "Always `command`: a phone refuses a command channel's payload of another kind.")
    device = serializers.UUIDField(help_text="The device's public id: a phone refuses a command for another device.")
    imeis = serializers.ListField(
        child=serializers.RegexField(r"^[0-9]{15}$"),
        min_length=1,
        help_text="Every IMEI of the phone (15 digits); a phone refuses a command naming none of its own.",
    )
    seq = serializers.IntegerField(
        min_value=1, max_value=MAX_SEQ, help_text="Per device, rising; a phone applies each once and acks it."
    )
    state = serializers.ChoiceField(choices=STATES, help_text="The state the phone is to be in.")
    reason = serializers.CharField(allow_blank=True, help_text="Why, in plain words.")
    issued_at = WireTimeField(help_text="When the server issued it; the anchor of the phone's trusted time.")
    expires_at = WireTimeField(allow_null=True, help_text="When a temporary unlock ends; null for any other state.")
    lease_until = WireTimeField(
        allow_null=True,
        help_text="When a phone that has not heard from the server moves to `lease_expiry_state`; null: never "
        "(no offline policy, or a locked or released phone).",
    )
    lease_expiry_state = nullable_choice_field(
        LEASE_EXPIRY_STATES, "The state a lease ends in; null exactly when `lease_until` is null."
    )
    lease_warning_days = serializers.IntegerField(
        min_value=0, help_text="Days before `lease_until` from which the phone warns its owner."
    )
    paid_until = WireTimeField(
        allow_null=True,
        help_text="Informational: when the earliest unpaid installment becomes lockable; null if nothing is unpaid.",
    )
    offline_lock_days = serializers.IntegerField(
        min_value=1,
        max_value=365,
        allow_null=True,
        help_text="Informational: the provider's offline policy in days; null: no lease.",
    )
    time_zone = serializers.CharField(help_text='The owner\'s IANA time zone, e.g. "Asia/Colombo".')
    lock_window = LockWindowSerializer(
        allow_null=True,
        help_text="Local hours in `time_zone` during which a lock may start; null: any time.",
    )
    screen = serializers.DictField(help_text="What the lock screen shows (docs/lock-pipeline.md, lock-screen content).")
    allowed_numbers = serializers.ListField(
        child=serializers.CharField(), help_text="Numbers the phone may call while locked."
    )


class KeyStatementSerializer(serializers.Serializer):
    """The server keys a phone trusts (kind `key_statement`), as signed."""

    kind = const_field(KIND_KEY_STATEMENT, "Always `key_statement`.")
    seq = serializers.IntegerField(
        min_value=1, help_text="Rising; a phone takes a statement only with a higher seq than the one it holds."
    )
    issued_at = WireTimeField(help_text="When the statement was written.")
    keys = serializers.DictField(
        child=PublicKeyField(),
        help_text="Key id to public key: the phone's whole trusted set, replaced by this one (never merged).",
    )


class SignedPayloadField(serializers.CharField):
    """The ``payload`` of an envelope: base64 of the signed JSON bytes of ``content``."""

    def __init__(self, *, content: type[serializers.Serializer], **kwargs: Any) -> None:
        self.content = content
        super().__init__(**kwargs)


class SignedPayloadFieldExtension(OpenApiSerializerFieldExtension):
    """Describes a signed payload as a base64 string whose decoded bytes are JSON of the named component.

    ``contentEncoding``/``contentMediaType``/``contentSchema`` (JSON Schema 2020-12, OpenAPI 3.1)
    say it for tools; the component itself (Command, KeyStatement) is registered so a generated
    client has a model to parse the decoded bytes with.
    """

    target_class = SignedPayloadField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        # One name in every direction: the same bytes travel to the phone and to a gateway.
        component = auto_schema.resolve_serializer(self.target.content, "response")
        return {
            "type": "string",
            "pattern": BASE64_PATTERN,
            "contentEncoding": "base64",
            "contentMediaType": "application/json",
            "contentSchema": component.ref,
        }


@extend_schema_field({"type": "string", "pattern": SIGNATURE_PATTERN})
class SignatureField(serializers.CharField):
    """Standard base64 of a 64-byte Ed25519 signature."""


class _EnvelopeSerializer(serializers.Serializer):
    """The members every envelope has besides its payload."""

    v = serializers.IntegerField(
        help_text=f"Protocol version, {PROTOCOL_VERSION}. A phone refuses any other (without reading the rest) "
        "and checks in: the server answers in the version it speaks."
    )
    key_id = serializers.CharField(help_text="The server key that signed the payload; one of the trusted set.")
    signature = SignatureField(help_text="Base64 of the 64-byte Ed25519 signature over the decoded payload bytes.")


_VERIFY = "Verify the signature over the decoded bytes, only then parse them; never re-serialise (no canonical form)."


class CommandEnvelopeSerializer(_EnvelopeSerializer):
    __doc__ = (
        f"""A signed Command. A phone refuses an envelope text over {MAX_ENVELOPE_BYTES} bytes unread. {ENCODINGS}"""
    )

    payload = SignedPayloadField(
        content=CommandSerializer, help_text=f"Base64 of the exact UTF-8 JSON bytes of a Command. {_VERIFY}"
    )


class KeyStatementEnvelopeSerializer(_EnvelopeSerializer):
    __doc__ = f"""A signed KeyStatement, in the same envelope as a command. {ENCODINGS}"""

    payload = SignedPayloadField(
        content=KeyStatementSerializer, help_text=f"Base64 of the exact UTF-8 JSON bytes of a KeyStatement. {_VERIFY}"
    )
