"""A phone enrolling over HTTP, and reading what the server signs, for scripts and tests (no Django needed).

The same steps as the reference agent (docs/lock-pipeline.md, "Enrolment"): fetch a challenge,
sign it with a fresh device key, enrol; then trust the keys of the enrolment's key statements
(a chain, oldest first) and verify commands with them, as protocol v2 says.
"""

from __future__ import annotations

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.protocol import (
    KIND_KEY_STATEMENT,
    Rejected,
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


def first_trust(chain: list[dict], *, pinned: dict[str, str] | None = None) -> tuple[dict[str, str], int]:
    """What a new phone trusts from its enrolment's ``key_statements`` (oldest first), as the protocol says.

    It takes the oldest statement that verifies with one of the keys it lists itself (with
    ``pinned`` keys: the first that verifies with a pinned key), then applies the rest in order.
    Returns ``(keys, seq)``; raises ``devices.protocol.Rejected`` when no statement can be trusted.
    """
    refused: Rejected | None = None
    for at, statement in enumerate(chain):
        verifying = pinned or payload_of(statement)["keys"]  # unverified: only to find the key to check it with
        try:
            verified = open_envelope(statement, verifying, kind=KIND_KEY_STATEMENT)
        except Rejected as exc:
            refused = refused or exc
            continue
        return learn((check_key_statement(verified), verified["seq"]), chain[at + 1 :])
    raise refused or Rejected("malformed", "no key statement")


def learn(held: tuple[dict[str, str], int], chain: list[dict]) -> tuple[dict[str, str], int]:
    """A phone's trusted keys after an answer's ``key_statements``, applied in order.

    One whose seq is not above the held one is stale and skipped (unverified: skipping grants
    nothing); a newer one must verify with the keys held at that point, else ``Rejected``.
    """
    for statement in chain:
        if payload_of(statement)["seq"] <= held[1]:
            continue
        verified = open_envelope(statement, held[0], kind=KIND_KEY_STATEMENT)
        held = check_key_statement(verified), verified["seq"]
    return held


def read_command(envelope: dict, keys: dict[str, str], *, device: str | None = None, imeis=()) -> dict:
    """The command a phone applies: signed by a trusted key, well formed and, if given, meant for it."""
    command = check_command(open_envelope(envelope, keys))
    if device is not None:
        assert command["device"] == device, "other_device"
    if imeis:
        assert set(imeis) & set(command["imeis"]), "other_device"
    return command
