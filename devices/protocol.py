"""The wire protocol between finlock and a phone, with no Django in it.

Shared by the server (which signs) and the reference agent (which verifies), so both
produce the same bytes. The specification is ``docs/lock-pipeline.md``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PROTOCOL_VERSION = 1
#: Every device credential starts with this (an enrolment token with ``ENROLLMENT_TOKEN_PREFIX``).
CREDENTIAL_PREFIX = "fld_"
ENROLLMENT_TOKEN_PREFIX = "fle_"
#: The highest command sequence number a phone reports or acknowledges.
MAX_SEQ = 2_000_000_000
STATES = ("unlocked", "reminder", "locked", "temp_unlocked", "released")


def topic_for(device_uid: str) -> str:
    """The MQTT topic of one device (its public id, never its IMEI)."""
    return f"finlock/v1/devices/{device_uid}/command"


def canonical(command: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(command, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def sign(command: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The envelope sent on every channel: ``{"command": ..., "signature": base64}``."""
    return {"command": command, "signature": b64(private_key.sign(canonical(command)))}


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(unb64(text))


#: First line of the bytes a phone signs to enrol: names what the signature is for, so a
#: signature made for anything else can never pass as an enrolment.
ENROLL_PURPOSE = "finlock-enroll-v1"


def enrollment_message(*, challenge: str, imei: str, device_key: str) -> bytes:
    """The exact bytes a phone signs with its device key to enrol (docs/lock-pipeline.md, "Enrolment").

    Four ASCII lines joined by a line feed (0x0A), no final line feed: the purpose
    ``finlock-enroll-v1``; the challenge exactly as the server sent it (base64 text);
    the IMEI the phone enrols with as its 15 digits; the device public key exactly as
    sent in ``device_key`` (standard base64 of the raw 32 bytes). Raises ``ValueError``
    for a value that is not ASCII or holds a line feed.
    """
    parts = (ENROLL_PURPOSE, challenge, imei, device_key)
    if any("\n" in part for part in parts):
        raise ValueError("an enrolment field holds a line feed")
    return "\n".join(parts).encode("ascii")


class Rejected(ValueError):
    """A command the phone must not apply; the message says why."""


def verify(envelope: Any, public_keys: dict[str, str]) -> dict[str, Any]:
    """Check an envelope's shape and signature; return the command or raise ``Rejected``.

    ``public_keys`` maps key ids to base64 public keys (all keys the server announced).
    Device, IMEI and sequence checks are the caller's: they need the phone's own state.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("command"), dict):
        raise Rejected("not a command envelope")
    command = envelope["command"]
    key_id = command.get("key_id")
    if key_id not in public_keys:
        raise Rejected(f"unknown signing key {key_id!r}")
    try:
        signature = unb64(str(envelope.get("signature", "")))
        public_key_from_b64(public_keys[key_id]).verify(signature, canonical(command))
    except (InvalidSignature, ValueError) as exc:
        raise Rejected("bad signature") from exc
    if command.get("v") != PROTOCOL_VERSION or command.get("state") not in STATES:
        raise Rejected("unsupported command version or state")
    if not isinstance(command.get("seq"), int) or command["seq"] < 1:
        raise Rejected("missing sequence number")
    return command


def secret_digest(secret: str) -> str:
    """SHA-256 hex of a device credential or enrolment token: only this is stored, and a check-in is found by it."""
    return hashlib.sha256(secret.encode()).hexdigest()
