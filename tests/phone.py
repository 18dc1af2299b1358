"""A phone enrolling over HTTP, for scripts and tests that talk to a live server (no Django needed).

The same steps as the reference agent (docs/lock-pipeline.md, "Enrolment"): fetch a challenge,
sign it with a fresh device key, enrol.
"""

from __future__ import annotations

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.protocol import b64, enrollment_message


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
