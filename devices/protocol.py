"""The wire protocol between finlock and a phone (version 2), with no Django in it.

Shared by the server (which signs) and the reference agent (which verifies). The
specification is ``docs/lock-pipeline.md``; Python is not the spec: the published test
vectors in ``docs/protocol/vectors/`` are, and a Java program checks them too.

Version 2 signs **bytes, not objects**: the signer serialises the JSON once, signs those
UTF-8 bytes and sends them base64-encoded inside the envelope. The phone verifies the
signature over the decoded bytes and only then parses them, so no implementation ever
has to reproduce anyone's serialisation (no canonical form anywhere).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PROTOCOL_VERSION = 2
#: Every device credential starts with this (an enrolment token with ``ENROLLMENT_TOKEN_PREFIX``).
CREDENTIAL_PREFIX = "fld_"
ENROLLMENT_TOKEN_PREFIX = "fle_"
#: The highest command sequence number the server ever issues (and a phone reports or
#: acknowledges). It fits a signed 32-bit integer, a JavaScript number and every JSON parser.
MAX_SEQ = 2_000_000_000
STATES = ("unlocked", "reminder", "locked", "temp_unlocked", "released")
#: The states a lease may end in: a phone out of contact is reminded or locked, never released.
LEASE_EXPIRY_STATES = ("reminder", "locked")
#: The states a command may carry a lease in (a phone that is usable now); a locked or released
#: command has nothing to fall to, so a lease on it is malformed.
LEASED_STATES = ("unlocked", "reminder", "temp_unlocked")
#: The largest ``lease_warning_days``: a year (the server's policy allows 1 to 10). Bounded so that
#: ``lease_until`` minus the warning is a time every implementation can compute.
MAX_WARNING_DAYS = 365
#: ``YYYY-MM-DDTHH:MM:SSZ``, ASCII digits only (``re.ASCII``: no other script's digits).
_WIRE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", re.ASCII)
#: What a signed payload is: a signature made for one kind never passes as the other.
KIND_COMMAND = "command"
KIND_KEY_STATEMENT = "key_statement"
#: The largest envelope a phone accepts (bytes of its JSON text); anything larger is refused
#: unparsed. A command of the demo is 2-4 KB; the largest (Sinhala labels) about 7 KB.
MAX_ENVELOPE_BYTES = 32_768
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def topic_for(device_uid: str) -> str:
    """The MQTT topic of one device (its public id, never its IMEI)."""
    return f"finlock/v1/devices/{device_uid}/command"


def payload_bytes(payload: dict[str, Any]) -> bytes:
    """Serialise a payload once, as the bytes that are signed and sent.

    Any valid JSON would do: the phone never re-serialises. The server writes UTF-8 with
    sorted keys and no whitespace (Sinhala, Tamil and emoji as themselves, a third of the
    size of ``\\u`` escapes), and refuses floats and non-finite numbers, which print
    differently across languages (amounts are decimal strings).
    """
    _check_wire_value(payload, "payload")
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _check_wire_value(value: object, where: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_wire_value(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            _check_wire_value(item, f"{where}.{key}")
        return
    raise ValueError(f"{where} is a {type(value).__name__}; a payload holds only str, int, bool, None, list, dict")


def b64(data: bytes) -> str:
    """Standard base64 (RFC 4648 section 4: ``+/``) with ``=`` padding: the only encoding on the wire."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode standard base64 with padding; anything else (URL-safe, unpadded, spaces) is a ``ValueError``."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not standard base64 with padding") from exc
    if b64(data) != text:  # refuses non-zero trailing bits: one text per byte string
        raise ValueError("not standard base64 with padding")
    return data


def seal(body: bytes, *, key_id: str, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The envelope of signed bytes: ``{"v": 2, "payload", "key_id", "signature"}``."""
    return envelope_of(body, key_id=key_id, signature=b64(private_key.sign(body)))


def envelope_of(body: bytes, *, key_id: str, signature: str) -> dict[str, Any]:
    """The envelope of bytes already signed (a stored command): the same four members."""
    return {"v": PROTOCOL_VERSION, "payload": b64(body), "key_id": key_id, "signature": signature}


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    raw = unb64(text)
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError("a public key is 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


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
    """A payload the phone must not apply; ``code`` is the verdict of docs/protocol/vectors."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(message or code)
        self.code = code


def open_envelope(envelope: Any, trusted_keys: dict[str, str], *, kind: str = KIND_COMMAND) -> dict[str, Any]:
    """Check an envelope's version, key and signature, then parse its payload; or raise ``Rejected``.

    The order is the specification's (docs/lock-pipeline.md, "What the phone does"): the
    signature is checked over the decoded bytes before anything in them is read.
    ``trusted_keys`` maps key ids to base64 public keys. Device, IMEI, sequence and lease
    checks are the caller's: they need the phone's own state.
    """
    if isinstance(envelope, bytes | str):
        if isinstance(envelope, str):
            envelope = envelope.encode("utf-8")  # the bound is in bytes, not characters
        if len(envelope) > MAX_ENVELOPE_BYTES:
            raise Rejected("too_large", "envelope larger than 32768 bytes")
        try:
            envelope = json.loads(envelope)
        except ValueError as exc:
            raise Rejected("malformed", "not JSON") from exc
    if not isinstance(envelope, dict):
        raise Rejected("malformed", "not an envelope")
    # The integer 2 only: JSON's 2.0 (a float in most parsers) equals 2 in Python but is no version.
    if type(envelope.get("v")) is not int or envelope["v"] != PROTOCOL_VERSION:
        raise Rejected("unknown_version", f"envelope version {envelope.get('v')!r}")
    key_id, payload, signature = envelope.get("key_id"), envelope.get("payload"), envelope.get("signature")
    if not isinstance(key_id, str) or not isinstance(payload, str) or not isinstance(signature, str):
        raise Rejected("malformed", "key_id, payload and signature are strings")
    if key_id not in trusted_keys:
        raise Rejected("unknown_key", f"unknown signing key {key_id!r}")
    try:
        body, raw_signature = unb64(payload), unb64(signature)
    except ValueError as exc:
        raise Rejected("malformed", "payload or signature is not standard base64") from exc
    try:
        if len(raw_signature) != SIGNATURE_BYTES:
            raise InvalidSignature
        public_key_from_b64(trusted_keys[key_id]).verify(raw_signature, body)
    except (InvalidSignature, ValueError) as exc:
        raise Rejected("bad_signature", "bad signature") from exc
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected("malformed", "payload is not UTF-8 JSON") from exc
    if not isinstance(parsed, dict):
        raise Rejected("malformed", "payload is not a JSON object")
    if parsed.get("kind") != kind:
        raise Rejected("wrong_kind", f"not a {kind}")
    return parsed


def read_wire_time(value: object) -> dt.datetime | None:
    """A wire time (``YYYY-MM-DDTHH:MM:SSZ``, a real UTC date and time) as an aware datetime; None otherwise.

    Strict, as every phone must read it (docs/lock-pipeline.md, "The command"): exactly two digits
    per field, year 0001 to 9999, hour 00 to 23, second 00 to 59 (no leap second, no 24:00).
    """
    if not isinstance(value, str) or not _WIRE_TIME.fullmatch(value):
        return None
    try:
        return dt.datetime(
            int(value[0:4]),
            int(value[5:7]),
            int(value[8:10]),
            int(value[11:13]),
            int(value[14:16]),
            int(value[17:19]),
            tzinfo=dt.UTC,
        )
    except ValueError:  # year 0, month 13, 30 February, hour 24, second 60
        return None


def check_command(command: dict[str, Any]) -> dict[str, Any]:
    """The members every command must hold, with their types and ranges (after ``open_envelope``); or ``Rejected``.

    The rules a phone applies at receipt (docs/lock-pipeline.md, "The command"): the server runs its
    own commands through this too, so it can never issue one a phone would call ``malformed``.
    ``time_zone`` is not checked: a zone the phone does not know means UTC, never a refusal.
    """
    seq = command.get("seq")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise Rejected("malformed", "seq is an integer from 1 to MAX_SEQ")
    state = command.get("state")
    if state not in STATES:
        raise Rejected("malformed", f"unknown state {state!r}")
    imeis = command.get("imeis")
    if not isinstance(command.get("device"), str) or not isinstance(imeis, list) or not imeis:
        raise Rejected("malformed", "device and imeis are required")
    _check_command_times(command, state)
    warning = command.get("lease_warning_days")
    if type(warning) is not int or not 0 <= warning <= MAX_WARNING_DAYS:
        raise Rejected("malformed", f"lease_warning_days is an integer from 0 to {MAX_WARNING_DAYS}")
    _check_lock_window(command.get("lock_window"))
    return command


def _check_command_times(command: dict[str, Any], state: str) -> None:
    # The phone anchors trusted time at issued_at and ends a temporary unlock at expires_at:
    # a command it could not place in time is refused, never guessed at.
    if read_wire_time(command.get("issued_at")) is None:
        raise Rejected("malformed", "issued_at is not a time")
    expires_at = command.get("expires_at")
    if state == "temp_unlocked" and read_wire_time(expires_at) is None:
        raise Rejected("malformed", "a temporary unlock names when it ends (expires_at)")
    if state != "temp_unlocked" and expires_at is not None:
        raise Rejected("malformed", "expires_at is null for every state but temp_unlocked")
    lease_until = command.get("lease_until")
    if lease_until is None:
        return
    if read_wire_time(lease_until) is None:
        raise Rejected("malformed", "lease_until is not a time")
    if state not in LEASED_STATES:
        raise Rejected("malformed", f"a {state} command has no lease")
    if command.get("lease_expiry_state") not in LEASE_EXPIRY_STATES:
        raise Rejected("malformed", "a lease names the state it expires into")


def _check_lock_window(window: object) -> None:
    if window is None:
        return
    if not isinstance(window, dict):
        raise Rejected("malformed", "lock_window is an object or null")
    start, end, weekdays = window.get("start_hour"), window.get("end_hour"), window.get("weekdays")
    if type(start) is not int or type(end) is not int or not 0 <= start < end <= 24:
        raise Rejected("malformed", "lock_window hours: 0 <= start_hour < end_hour <= 24")
    if not isinstance(weekdays, list) or not weekdays or any(type(d) is not int or not 0 <= d <= 6 for d in weekdays):
        raise Rejected("malformed", "lock_window weekdays: a non-empty array of integers 0 (Monday) to 6")


def check_key_statement(statement: dict[str, Any]) -> dict[str, str]:
    """The key set of a verified key statement (ids to base64 raw public keys); or ``Rejected``."""
    keys, seq = statement.get("keys"), statement.get("seq")
    if type(seq) is not int or seq < 1 or not isinstance(keys, dict) or not keys:
        raise Rejected("malformed", "a key statement has a positive seq and at least one key")
    for key_id, key in keys.items():
        try:
            public_key_from_b64(key if isinstance(key, str) else "")
        except (TypeError, ValueError) as exc:
            raise Rejected("malformed", f"key {key_id!r} is not 32 raw bytes in base64") from exc
    return dict(keys)


def payload_of(envelope: dict[str, Any]) -> dict[str, Any]:
    """The payload of an envelope WITHOUT checking its signature: for logs, benches and tests only."""
    return json.loads(unb64(envelope["payload"]).decode("utf-8"))


def secret_digest(secret: str) -> str:
    """SHA-256 hex of a device credential or enrolment token: only this is stored, and a check-in is found by it."""
    return hashlib.sha256(secret.encode()).hexdigest()
