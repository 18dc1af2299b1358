"""A phone trusts a command only if finlock's key signed it, across key rotations.

Stories:
* the server and any phone produce the same canonical bytes for a command, so a
  signature made in Python verifies in any agent;
* a command signed with the current key verifies with the public keys the server
  announces, and any change to it breaks the signature;
* after a rotation, commands signed with the retired key still verify (phones that
  have not checked in since keep working), and new ones carry the new key id;
* a developer without configuration gets a key generated once, private to its
  owner, and the same key on every restart;
* an operator with a malformed key, or none in production, is stopped at start-up
  with a message naming the variable.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices import protocol
from devices.keys import current_signer, public_key_b64, public_keys
from portal.env import ImproperEnvironment, env_keyed_bytes
from tests.test_settings import _manage

ROOT = Path(__file__).resolve().parent.parent

COMMAND = {
    "v": 1,
    "device": "6f1c1f0e-2f4e-4c7b-9a57-8d1c2b3a4f50",
    "imei": "351234560000648",
    "seq": 7,
    "state": "locked",
    "reason": "Installment of 1 Nov 2026 overdue 12 days (grace 3 days)",
    "issued_at": "2026-11-23T09:00:04Z",
    "expires_at": None,
    "key_id": "k2026a",
    "screen": {"title": "Ayubowan — payment overdue", "amount_overdue": "12500.00", "emergency": True},
    "allowed_numbers": ["+94117100100", "119"],
}


def seed() -> bytes:
    return os.urandom(32)


@pytest.fixture
def key_2025(settings):
    settings.DEVICE_SIGNING_KEY = ("k2025", seed())
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    return settings.DEVICE_SIGNING_KEY


def test_the_canonical_form_is_sorted_compact_ascii_and_stable():
    expected = (
        b'{"allowed_numbers":["+94117100100","119"],"device":"6f1c1f0e-2f4e-4c7b-9a57-8d1c2b3a4f50",'
        b'"expires_at":null,"imei":"351234560000648","issued_at":"2026-11-23T09:00:04Z","key_id":"k2026a",'
        b'"reason":"Installment of 1 Nov 2026 overdue 12 days (grace 3 days)",'
        b'"screen":{"amount_overdue":"12500.00","emergency":true,"title":"Ayubowan \\u2014 payment overdue"},'
        b'"seq":7,"state":"locked","v":1}'
    )
    assert protocol.canonical(COMMAND) == expected
    # Key order in memory does not matter: the same command gives the same bytes.
    assert protocol.canonical(dict(reversed(list(COMMAND.items())))) == expected


def test_a_command_signed_with_the_current_key_verifies_and_any_change_breaks_it(key_2025):
    key_id, private_key = current_signer()
    assert key_id == "k2025"
    envelope = protocol.sign(COMMAND | {"key_id": key_id}, private_key)
    assert len(base64.b64decode(envelope["signature"])) == 64

    assert protocol.verify(envelope, public_keys()) == envelope["command"]

    tampered = {"command": envelope["command"] | {"state": "unlocked"}, "signature": envelope["signature"]}
    with pytest.raises(protocol.Rejected, match="bad signature"):
        protocol.verify(tampered, public_keys())


def test_after_a_rotation_commands_signed_with_the_retired_key_still_verify(settings, key_2025):
    _old_id, old_private = current_signer()
    old_envelope = protocol.sign(COMMAND | {"key_id": "k2025"}, old_private)

    # The operator rotates: the new key signs, the old public key stays announced.
    settings.DEVICE_SIGNING_KEY = ("k2026", seed())
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2025": old_private.public_key().public_bytes_raw()}

    new_id, new_private = current_signer()
    assert new_id == "k2026"
    keys = public_keys()
    assert set(keys) == {"k2025", "k2026"}
    assert keys["k2025"] == public_key_b64(old_private)
    assert protocol.verify(old_envelope, keys)["seq"] == 7
    new_envelope = protocol.sign(COMMAND | {"key_id": new_id}, new_private)
    assert protocol.verify(new_envelope, keys)["key_id"] == "k2026"

    # Once the retired key is dropped from the list, its commands are refused.
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    with pytest.raises(protocol.Rejected, match="unknown signing key"):
        protocol.verify(old_envelope, public_keys())


def test_without_configuration_a_development_key_is_generated_once_and_kept_private(settings, tmp_path):
    path = tmp_path / "device-signing-key"
    settings.DEVICE_SIGNING_KEY = None
    settings.DEVICE_SIGNING_KEY_FILE = path

    key_id, private_key = current_signer()
    assert key_id.startswith("dev-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    current_signer.cache_clear()  # a restart
    again_id, again_key = current_signer()
    assert again_id == key_id
    assert public_key_b64(again_key) == public_key_b64(private_key)


def test_key_variables_are_parsed_and_malformed_values_name_the_variable(monkeypatch):
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    monkeypatch.setenv("X_KEYS", f"k2025:{base64.b64encode(raw).decode()}, k2026:{base64.b64encode(raw).decode()}")
    assert env_keyed_bytes("X_KEYS", length=32) == {"k2025": raw, "k2026": raw}

    for bad, message in [
        ("k2025", "X_KEYS must be <key_id>:<base64 key>"),
        ("k 1:" + base64.b64encode(raw).decode(), "X_KEYS must be <key_id>:<base64 key>"),
        ("k1:not base64!", "X_KEYS: the key 'k1' is not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "must decode to 32 bytes, not 5"),
    ]:
        monkeypatch.setenv("X_KEYS", bad)
        with pytest.raises(ImproperEnvironment, match=message):
            env_keyed_bytes("X_KEYS", length=32)


def _manage_check(env: dict) -> subprocess.CompletedProcess:
    return _manage("check", env=env)


def test_production_without_a_signing_key_or_with_a_malformed_one_refuses_to_start(tmp_path):
    production = {
        "DEBUG": "0",
        "SECRET_KEY": "s" * 60,
        "ALLOWED_HOSTS": "finlock.example.com",
        "FINLOCK_VAR_DIR": str(tmp_path),
    }
    result = _manage_check(production)
    assert result.returncode != 0
    assert "DEVICE_SIGNING_KEY must be set when DEBUG is off" in result.stderr
    assert not (tmp_path / "device-signing-key").exists()

    result = _manage_check(production | {"DEVICE_SIGNING_KEY": "k2026a:c2hvcnQ="})
    assert result.returncode != 0
    assert "DEVICE_SIGNING_KEY: the key 'k2026a' must decode to 32 bytes" in result.stderr
