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
        "What a phone's agent calls (docs/lock-pipeline.md). `enroll` with the IMEI and a provider's "
        "enrolment token returns a credential; send it as `Authorization: Device <credential>` to "
        "`checkin` and `ack`. Every answer carrying a command holds the signed envelope "
        '`{"command": ..., "signature": ...}`, to verify with the keys from `enroll`.'
    ),
    "SCHEMA_PATH_PREFIX": r"/api/device/v1",
    "PREPROCESSING_HOOKS": [],
    # A phone receives no webhooks (those go to a provider's systems: the provider document).
    "WEBHOOKS": [],
}


def without_device_api(endpoints, **kwargs):
    """Preprocessing hook of the provider document: leave the phone calls out."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith(DEVICE_API_PREFIX)]
