"""The device API's own OpenAPI document, apart from the provider API's.

Two audiences: provider integrators read ``/api/schema/`` (Bearer API keys); device
makers read ``/api/device/v1/schema/`` (device credentials). Keeping the phone calls
out of the provider document keeps it true to its one authentication scheme.
"""

from __future__ import annotations

DEVICE_API_PREFIX = "/api/device/"

DEVICE_SCHEMA_SETTINGS = {
    "TITLE": "finlock device API",
    "DESCRIPTION": (
        "What a phone's agent calls (docs/lock-pipeline.md). `enroll` with the IMEI, a provider's "
        "enrolment token and a challenge from `enroll/challenge` signed with the phone's device key "
        "returns a credential; send it as `Authorization: Device <credential>` to "
        "`checkin` and `ack`. Every answer carrying a command holds the signed envelope "
        '`{"v": 2, "payload", "key_id", "signature"}` (`CommandEnvelope`): `payload` is base64 of the exact '
        "signed UTF-8 JSON bytes of a `Command`. Verify the signature over the decoded bytes with a trusted "
        "key, then parse them. The trusted keys come in `key_statements` (`KeyStatementEnvelope`s, oldest first, "
        "each with a `KeyStatement` as payload), in the same envelope. Base64 is the standard alphabet with "
        "`=` padding (RFC 4648 section 4) everywhere; keys are raw 32-byte Ed25519 public keys, signatures "
        "64 bytes; times are `YYYY-MM-DDTHH:MM:SSZ` (UTC)."
    ),
    "SCHEMA_PATH_PREFIX": r"/api/device/v1",
    "PREPROCESSING_HOOKS": [],
    # A phone receives no webhooks (those go to a provider's systems: the provider document).
    "WEBHOOKS": [],
}


def without_device_api(endpoints, **kwargs):
    """Preprocessing hook of the provider document: leave the phone calls out."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith(DEVICE_API_PREFIX)]
