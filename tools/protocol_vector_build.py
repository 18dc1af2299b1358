"""Building blocks of the protocol v2 test vectors: the TEST keys, commands, envelopes and steps.

Only inputs are built here (with ``devices.protocol``); expectations are literals in
``tools/protocol_vector_cases.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.protocol import KIND_COMMAND, KIND_KEY_STATEMENT, b64, payload_bytes, seal

#: TEST KEYS ONLY: each seed is SHA-256 of a public label, published in keys.json.
KEYS = ("test-2026a", "test-2026b", "test-2026c", "test-rogue")
OLD, NEW, THIRD, ROGUE = KEYS

DEVICE = "3f0c9a52-5b1e-4c8e-9a61-2f4d7b0e8c15"
OTHER_DEVICE = "b7e2d410-91c3-4f6a-8e25-6c0d3a9f1b72"
IMEI = "490154203237518"
IMEI2 = "356938035643809"
OTHER_IMEI = "861536030196001"
#: Monday 2 March 2026, 11:30 in Colombo (UTC+05:30).
T0 = "2026-03-02T06:00:00Z"
COLOMBO = "Asia/Colombo"
WEEKDAYS_9_TO_17 = {"start_hour": 9, "end_hour": 17, "weekdays": [0, 1, 2, 3, 4]}
DAY = 86_400


def _private(kid: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"finlock protocol v2 TEST key {kid}".encode()).digest())


def seed(kid: str) -> str:
    return b64(hashlib.sha256(f"finlock protocol v2 TEST key {kid}".encode()).digest())


def public_key(kid: str) -> str:
    return b64(_private(kid).public_key().public_bytes_raw())


def trusted(*kids: str) -> dict[str, str]:
    return {kid: public_key(kid) for kid in kids}


def command(**changes: Any) -> dict[str, Any]:
    """A command payload with every member present; ``changes`` replace members (``None`` values too)."""
    payload: dict[str, Any] = {
        "kind": KIND_COMMAND,
        "device": DEVICE,
        "imeis": [IMEI],
        "seq": 1,
        "state": "unlocked",
        "reason": "paid up",
        "issued_at": T0,
        "expires_at": None,
        "lease_until": None,
        "lease_expiry_state": None,
        "lease_warning_days": 3,
        "paid_until": None,
        "offline_lock_days": None,
        "time_zone": COLOMBO,
        "lock_window": None,
        "screen": {
            "language": "en",
            "title": "Your phone",
            "message": "Thank you for paying on time.",
            "hotline_numbers": ["+94112345678"],
            "payment_channels": [{"name": "Bank transfer", "account": "0012-3456-7890"}],
        },
        "allowed_numbers": ["+94112345678", "119"],
    }
    payload.update(changes)
    return payload


def body(payload: dict[str, Any]) -> bytes:
    return payload_bytes(payload)


def sealed_bytes(data: bytes, kid: str = OLD, *, signer: str | None = None) -> dict[str, Any]:
    """The envelope of ``data`` named ``kid`` and signed by ``signer`` (default: ``kid`` itself)."""
    return seal(data, key_id=kid, private_key=_private(signer or kid))


def sealed(payload: dict[str, Any], kid: str = OLD, *, signer: str | None = None) -> dict[str, Any]:
    return sealed_bytes(body(payload), kid, signer=signer)


def statement(seq: int, keys: dict[str, str], kid: str, *, signer: str | None = None) -> dict[str, Any]:
    payload = {"kind": KIND_KEY_STATEMENT, "seq": seq, "issued_at": T0, "keys": keys}
    return sealed(payload, kid, signer=signer)


def with_member(envelope: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**envelope, **changes}


def flip_byte(text: str, index: int) -> str:
    """Standard base64 of the same bytes with byte ``index`` XOR 0x01 (still valid base64)."""
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return b64(bytes(raw))


def envelope_text(envelope: dict[str, Any], *, size: int, filler: str = " ") -> str:
    """``envelope`` as JSON text padded to exactly ``size`` UTF-8 bytes (whitespace, or a ``note`` member)."""
    text = json.dumps(envelope, separators=(",", ":"))
    if filler == " ":
        padded = text[:-1] + " " * (size - len(text.encode())) + "}"
    else:
        head = text[:-1] + ',"note":"'
        room = size - len((head + '"}').encode())
        count, rest = divmod(room, len(filler.encode()))
        padded = head + filler * count + "." * rest + '"}'
    assert len(padded.encode()) == size, (len(padded.encode()), size)
    return padded


def phone(**changes: Any) -> dict[str, Any]:
    """A phone enrolled on DEVICE with IMEI, trusting OLD, holding command 1 (unlocked) unless changed."""
    state: dict[str, Any] = {
        "device": DEVICE,
        "imeis": [IMEI],
        "trusted_keys": trusted(OLD),
        "key_statement_seq": 1,
        "last_seq": 1,
        "in_force": {"payload": b64(body(command(seq=1)))},
        "pinned_keys": None,
    }
    state.update(changes)
    return state


def cmd(envelope: dict[str, Any] | str, verdict: str, state: str, last_seq: int, **extra: Any) -> dict[str, Any]:
    return {
        "input": {"type": "command", "envelope": envelope},
        "expect": {"verdict": verdict, "state": state, "last_seq": last_seq, **extra},
    }


def keys_step(envelope: dict[str, Any] | str, verdict: str, key_ids: list[str]) -> dict[str, Any]:
    assert key_ids == sorted(key_ids)
    return {
        "input": {"type": "key_statement", "envelope": envelope},
        "expect": {"verdict": verdict, "trusted_key_ids": key_ids},
    }


def at(elapsed: int, wall_clock: str, shows: str, warning: bool) -> dict[str, Any]:
    return {
        "input": {"type": "time", "monotonic_elapsed_seconds": elapsed, "wall_clock": wall_clock},
        "expect": {"shows": shows, "warning": warning},
    }


def code(days: int, shows: str, warning: bool) -> dict[str, Any]:
    return {"input": {"type": "offline_code", "days": days}, "expect": {"shows": shows, "warning": warning}}


def case(name: str, description: str, covers: list[str], phone_: dict[str, Any], steps: list[dict[str, Any]]):
    return {"name": name, "description": description, "covers": covers, "phone": phone_, "steps": steps}
