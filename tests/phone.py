"""A phone enrolling over HTTP, and reading what the server signs, for scripts and tests (no Django needed).

The same steps as the reference agent (docs/lock-pipeline.md, "Enrolment"): fetch a challenge,
sign it with a fresh device key, enrol; then trust the keys of the enrolment's key statement
and verify commands with them, as protocol v2 says.
"""

from __future__ import annotations

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.protocol import (
    KIND_KEY_STATEMENT,
    b64,
    check_command,
    check_key_statement,
    enrollment_message,
    open_envelope,
    payload_of,
)


def enrol_over_http(base_url: str, imei: str, token: str, *, app_version: str = "test", timeout: float = 30) -> dict:
    """Enrol ``imei`` with enrolment ``token`` at ``base_url``; returns the answer (``credential``, ...)."""
    key = Ed25519PrivateKey.generate()
    challenge = requests.post(f"{base_url}/api/device/v1/enroll/challenge", json={}, timeout=timeout)
    challenge.raise_for_status()
    text = challenge.json()["challenge"]
    device_key = b64(key.public_key().public_bytes_raw())
    body = {
        "imei": imei,
        "enrollment_token": token,
        "app_version": app_version,
        "device_key": device_key,
        "challenge": text,
        "signature": b64(key.sign(enrollment_message(challenge=text, imei=imei, device_key=device_key))),
    }
    enrolled = requests.post(f"{base_url}/api/device/v1/enroll", json=body, timeout=timeout)
    enrolled.raise_for_status()
    return enrolled.json()


def first_trust(statement: dict) -> tuple[dict[str, str], int]:
    """What a new phone trusts from its enrolment's key statement: its keys, if it verifies with one of them.

    Returns ``(keys, seq)``; raises ``devices.protocol.Rejected`` for a statement that does not.
    """
    claimed = payload_of(statement)["keys"]  # unverified: only to find the key to check it with
    verified = open_envelope(statement, claimed, kind=KIND_KEY_STATEMENT)
    return check_key_statement(verified), verified["seq"]


def learn(held: tuple[dict[str, str], int], statement: dict) -> tuple[dict[str, str], int]:
    """A phone's trusted keys after a check-in's statement: replaced only by a newer one signed by a trusted key."""
    keys, seq = held
    verified = open_envelope(statement, keys, kind=KIND_KEY_STATEMENT)
    if verified["seq"] <= seq:
        return held
    return check_key_statement(verified), verified["seq"]


def read_command(envelope: dict, keys: dict[str, str], *, device: str | None = None, imeis=()) -> dict:
    """The command a phone applies: signed by a trusted key, well formed and, if given, meant for it."""
    command = check_command(open_envelope(envelope, keys))
    if device is not None:
        assert command["device"] == device, "other_device"
    if imeis:
        assert set(imeis) & set(command["imeis"]), "other_device"
    return command
