"""A phone's secrets: device credentials, enrolment-token digests, device-key fingerprints and re-enrolment codes."""

from __future__ import annotations

import hashlib

from devices.models import (
    Device,
)
from devices.protocol import (
    CREDENTIAL_PREFIX,
    b64,
    secret_digest,
    unb64,
)

# Re-enrolment codes: 16 characters of Crockford's base32 (80 bits), typed by a person on the phone.
REENROLLMENT_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REENROLLMENT_CODE_LENGTH = 16


def device_key_fingerprint(device_key: str) -> str:
    """A short, stable name of a device public key for people and the audit trail (``SHA256:`` + 16 hex)."""
    if not device_key:
        return ""
    return "SHA256:" + hashlib.sha256(unb64(device_key)).hexdigest()[:16]


def exact_b64(text: object, length: int) -> bytes | None:
    """The bytes of standard base64 with padding that decodes to exactly ``length`` bytes, else None.

    Only the canonical text of those bytes is accepted, so one key has one spelling
    (the signed message contains the key as sent).
    """
    if not isinstance(text, str):
        return None
    try:
        raw = unb64(text)
    except ValueError:
        return None
    return raw if len(raw) == length and b64(raw) == text else None


def normalise_reenrollment_code(text: str) -> str | None:
    """The 16 characters of a re-enrolment code as typed ("7K2M-9QXD-..."), or None if it cannot be one."""
    value = "".join(ch for ch in str(text).upper() if ch not in " -\t")
    value = value.translate(str.maketrans("OIL", "011"))  # Crockford: read-alike letters
    if len(value) != REENROLLMENT_CODE_LENGTH or any(ch not in REENROLLMENT_CODE_ALPHABET for ch in value):
        return None
    return value


def reenrollment_code_digest_of(device: Device, code: str) -> str:
    # Bound to the device: the same characters are worthless for any other device.
    return secret_digest(f"{device.uid}:{code}")


def device_by_credential(credential: str) -> Device | None:
    """The enrolled device holding ``credential``, or None (looked up by digest)."""
    if not credential.startswith(CREDENTIAL_PREFIX):
        return None
    found = Device.objects.filter(credential_digest=secret_digest(credential), enrolled_at__isnull=False)[:1]
    return next(iter(found), None)
