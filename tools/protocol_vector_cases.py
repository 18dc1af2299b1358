"""The protocol v2 test cases: inputs built with tools/protocol_vector_build.py, expectations WRITTEN BY HAND.

Each expectation is what docs/lock-pipeline.md says a phone must do; none is computed. The phone of a
case holds command 1 (``unlocked``, seq 1) and trusts ``test-2026a`` unless the case says otherwise.
Commands are issued on Monday 2 March 2026 06:00 UTC (11:30 in Colombo) unless they say otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from devices.protocol import MAX_SEQ, b64, unb64
from tools.protocol_vector_build import (
    DAY,
    DEVICE,
    IMEI,
    IMEI2,
    NEW,
    OLD,
    OTHER_DEVICE,
    OTHER_IMEI,
    ROGUE,
    THIRD,
    at,
    body,
    case,
    cmd,
    command,
    envelope_text,
    flip_byte,
    keys_step,
    phone,
    sealed,
    sealed_bytes,
    statement,
    trusted,
    with_member,
)

CASES: list[dict[str, Any]] = []
add = CASES.append

# --- Applying, and the texts a phone must decode exactly -------------------------------------------------

add(
    case(
        "apply_fresh_phone",
        "A new phone (nothing in force, last_seq 0) applies command 1; without a lease it stays unlocked.",
        ["apply", "fresh phone", "no lease"],
        phone(in_force=None, last_seq=0),
        [
            cmd(sealed(command(seq=1)), "apply", "unlocked", 1),
            at(30 * DAY, "2026-04-01T06:00:00Z", "unlocked", False),
        ],
    )
)

#: Sinhala (with a zero-width joiner), Swahili, Tamil, an emoji outside the BMP, U+00A0, control
#: characters (JSON escapes them), a raw U+2028 (JSON does not), a quote, a backslash and "/".
UNICODE_REASON = (
    "ශ්\u200dරී ලංකා · Lipa sasa · தமிழ் · 😀 · 50\u00a0000\u00a0LKR · "
    'tab\tnl\nnul\u0000us\u001fdel\u007f · "quoted" \\ · line\u2028sep · a/b'
)
_escaped = body(command(seq=3, reason="😀|😀|a/b|\u00a0"))
_escaped = _escaped.replace("😀".encode(), b"\\ud83d\\ude00", 1).replace("😀".encode(), b"\\uD83D\\uDE00", 1)
_escaped = _escaped.replace(b"a/b", b"a\\/b", 1).replace("\u00a0".encode(), b"\\u00a0", 1)
assert b"\\uD83D\\uDE00" in _escaped and b"a\\/b" in _escaped and b"\\u00a0" in _escaped
add(
    case(
        "unicode_texts",
        "Texts in Sinhala, Swahili and Tamil, an emoji, U+00A0, escaped control characters, a raw U+2028 and "
        '"/"; then the same kinds of text written as JSON escapes (a surrogate pair in lower and upper case, '
        '"\\/", "\\u00a0"). The phone verifies the bytes as sent and decodes the strings exactly.',
        ["Sinhala", "Swahili", "Tamil", "emoji", "U+00A0", "U+0000-U+001F", "U+2028", "/", "surrogate pair"],
        phone(),
        [
            cmd(
                sealed(
                    command(
                        seq=2,
                        reason=UNICODE_REASON,
                        screen={
                            "language": "si",
                            "title": "ඔබේ දුරකථනය",
                            "message": "Tafadhali lipa · தயவுசெய்து செலுத்துங்கள் 🙏",
                            "hotline_numbers": ["+94\u00a0112\u00a0345\u00a0678"],
                            "payment_channels": [{"name": "M-Pesa / Paybill", "account": "ශ්‍රී 522522"}],
                        },
                    )
                ),
                "apply",
                "unlocked",
                2,
                reason=UNICODE_REASON,
            ),
            cmd(sealed_bytes(_escaped), "apply", "unlocked", 3, reason="😀|😀|a/b|\u00a0"),
        ],
    )
)

add(
    case(
        "same_command",
        "The command in force received again (byte for byte) is `same`: nothing changes, the phone acks again.",
        ["same", "in_force bytes"],
        phone(),
        [
            cmd(sealed(command(seq=1)), "same", "unlocked", 1),
            cmd(sealed(command(seq=2, state="reminder", reason="due today")), "apply", "reminder", 2),
            cmd(sealed(command(seq=2, state="reminder", reason="due today")), "same", "reminder", 2),
        ],
    )
)

# --- Signatures and keys ---------------------------------------------------------------------------------

_two = sealed(command(seq=2, state="locked", reason="overdue"))
_three = sealed(command(seq=3, state="locked", reason="overdue"))
add(
    case(
        "bad_signature",
        "Signatures that do not verify with the named trusted key: made by another key, 63 bytes, made for "
        "other bytes, all zeros. Then the genuine envelope applies.",
        ["bad_signature", "signature length"],
        phone(),
        [
            cmd(
                sealed(command(seq=2, state="locked", reason="overdue"), OLD, signer=ROGUE),
                "bad_signature",
                "unlocked",
                1,
            ),
            cmd(with_member(_two, signature=b64(unb64(_two["signature"])[:63])), "bad_signature", "unlocked", 1),
            cmd(with_member(_two, signature=_three["signature"]), "bad_signature", "unlocked", 1),
            cmd(with_member(_two, signature=b64(bytes(64))), "bad_signature", "unlocked", 1),
            cmd(_two, "apply", "locked", 2),
        ],
    )
)

add(
    case(
        "flipped_payload_byte",
        "One bit of one byte of the payload changed (the seq digit, then a byte of the reason), then one "
        "byte of the signature: `bad_signature` each time; the genuine envelope applies.",
        ["bad_signature", "tampered payload"],
        phone(),
        [
            cmd(
                with_member(_two, payload=flip_byte(_two["payload"], unb64(_two["payload"]).index(b'"seq":2') + 6)),
                "bad_signature",
                "unlocked",
                1,
            ),
            cmd(
                with_member(_two, payload=flip_byte(_two["payload"], unb64(_two["payload"]).index(b"overdue"))),
                "bad_signature",
                "unlocked",
                1,
            ),
            cmd(with_member(_two, signature=flip_byte(_two["signature"], 31)), "bad_signature", "unlocked", 1),
            cmd(_two, "apply", "locked", 2),
        ],
    )
)

add(
    case(
        "unknown_key",
        "Envelopes naming a key the phone does not trust (a valid signature by that key, an empty id, the "
        "trusted id in other case): `unknown_key`. The same command signed by the trusted key applies.",
        ["unknown_key"],
        phone(),
        [
            cmd(sealed(command(seq=2, state="locked"), ROGUE), "unknown_key", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked"), NEW), "unknown_key", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked"), "", signer=OLD), "unknown_key", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked"), OLD.upper(), signer=OLD), "unknown_key", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked")), "apply", "locked", 2),
        ],
    )
)

# --- Whose command, and in which order -------------------------------------------------------------------

add(
    case(
        "other_device",
        "A validly signed command for another device id (listing this phone's IMEI): `other_device`.",
        ["other_device", "device id"],
        phone(),
        [cmd(sealed(command(seq=2, state="locked", device=OTHER_DEVICE)), "other_device", "unlocked", 1)],
    )
)

add(
    case(
        "second_imei",
        "A dual-SIM phone that knows both IMEIs and enrolled with the second: a command listing both "
        "applies, and so does one listing only the second.",
        ["second IMEI", "apply"],
        phone(imeis=[IMEI2, IMEI]),
        [
            cmd(sealed(command(seq=2, imeis=[IMEI, IMEI2], state="reminder")), "apply", "reminder", 2),
            cmd(sealed(command(seq=3, imeis=[IMEI2], state="locked")), "apply", "locked", 3),
        ],
    )
)

add(
    case(
        "imei_not_listed",
        "The right device id but none of the phone's IMEIs in `imeis`: `other_device`.",
        ["other_device", "IMEI"],
        phone(),
        [
            cmd(sealed(command(seq=2, state="locked", imeis=[OTHER_IMEI])), "other_device", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked", imeis=[IMEI2, OTHER_IMEI])), "other_device", "unlocked", 1),
        ],
    )
)

add(
    case(
        "replayed_older_seq",
        "Commands 2 and 3 apply; command 2 and command 1 replayed later are `stale` and change nothing.",
        ["stale", "replay"],
        phone(),
        [
            cmd(sealed(command(seq=2, state="locked", reason="overdue")), "apply", "locked", 2),
            cmd(sealed(command(seq=3, state="reminder", reason="due today")), "apply", "reminder", 3),
            cmd(sealed(command(seq=2, state="locked", reason="overdue")), "stale", "reminder", 3),
            cmd(sealed(command(seq=1)), "stale", "reminder", 3),
        ],
    )
)

_spaced = b"{ " + body(command(seq=2, state="locked", reason="overdue"))[1:]
add(
    case(
        "stale_same_seq",
        "The seq in force with other bytes is `stale`: another state, and the same members with one more "
        "space (bytes are compared, never re-serialised objects).",
        ["stale", "same seq", "no canonical form"],
        phone(),
        [
            cmd(_two, "apply", "locked", 2),
            cmd(sealed(command(seq=2, state="unlocked", reason="paid up")), "stale", "locked", 2),
            cmd(sealed_bytes(_spaced), "stale", "locked", 2),
        ],
    )
)

add(
    case(
        "released_final",
        "Once released, a later locked or unlocked command is `released_final`; a later released one applies.",
        ["released_final"],
        phone(),
        [
            cmd(sealed(command(seq=2, state="released", reason="paid off")), "apply", "released", 2),
            cmd(sealed(command(seq=3, state="locked", reason="overdue")), "released_final", "released", 2),
            cmd(sealed(command(seq=4, state="unlocked")), "released_final", "released", 2),
            cmd(sealed(command(seq=5, state="released", reason="paid off again")), "apply", "released", 5),
            at(400 * DAY, "2027-04-06T06:00:00Z", "released", False),
        ],
    )
)

# --- Envelopes the phone refuses before it parses the payload --------------------------------------------

_v = sealed(command(seq=2, state="locked"))
add(
    case(
        "unknown_version",
        '`v` other than the integer 2 (1, 3, the string "2", the number 2.0, true, absent): `unknown_version`, '
        "although the signature is valid. Then v 2 applies.",
        ["unknown_version"],
        phone(),
        [
            cmd(with_member(_v, v=1), "unknown_version", "unlocked", 1),
            cmd(with_member(_v, v=3), "unknown_version", "unlocked", 1),
            cmd(with_member(_v, v="2"), "unknown_version", "unlocked", 1),
            cmd(with_member(_v, v=2.0), "unknown_version", "unlocked", 1),
            cmd(with_member(_v, v=True), "unknown_version", "unlocked", 1),
            cmd({k: val for k, val in _v.items() if k != "v"}, "unknown_version", "unlocked", 1),
            cmd(_v, "apply", "locked", 2),
        ],
    )
)


def _padded_to_three(seq: int) -> dict[str, Any]:
    """A command whose payload and signature base64 both hold "+" or "/" and whose payload ends in "="."""
    for extra in range(200):
        envelope = sealed(command(seq=seq, state="locked", reason="overdue?" + "?" * extra))
        text, sig = envelope["payload"], envelope["signature"]
        if text.endswith("=") and set("+/") & set(text) and set("+/") & set(sig):
            return envelope
    raise AssertionError("no suitable padding")


_b = _padded_to_three(2)
_sig = _b["signature"]
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# 64 bytes end in one byte: its last base64 digit carries 2 bits of it and 4 zero bits; set one of those.
_trailing = _sig[:85] + _ALPHABET[_ALPHABET.index(_sig[85]) | 1] + "=="
assert _trailing != _sig
add(
    case(
        "malformed_base64",
        "Payload or signature not in standard padded base64: URL-safe alphabet, padding removed, a line "
        "break, non-zero trailing bits. `malformed` each time; the genuine envelope applies.",
        ["malformed", "URL-safe base64", "unpadded base64", "whitespace", "trailing bits"],
        phone(),
        [
            cmd(with_member(_b, payload=_b["payload"].replace("+", "-").replace("/", "_")), "malformed", "unlocked", 1),
            cmd(with_member(_b, payload=_b["payload"].rstrip("=")), "malformed", "unlocked", 1),
            cmd(with_member(_b, signature=_sig.replace("+", "-").replace("/", "_")), "malformed", "unlocked", 1),
            cmd(with_member(_b, signature=_sig.rstrip("=")), "malformed", "unlocked", 1),
            cmd(with_member(_b, payload=_b["payload"][:76] + "\n" + _b["payload"][76:]), "malformed", "unlocked", 1),
            cmd(with_member(_b, signature=_trailing), "malformed", "unlocked", 1),
            cmd(_b, "apply", "locked", 2),
        ],
    )
)

_text = json.dumps(_v)
add(
    case(
        "malformed_envelope",
        "Envelope text that is not a JSON object (not JSON, an array, a string, empty, trailing data) and "
        "objects whose key_id, payload or signature is not a string: `malformed`. The text of a good "
        "envelope applies.",
        ["malformed", "envelope text"],
        phone(),
        [
            cmd("not json", "malformed", "unlocked", 1),
            cmd("[2]", "malformed", "unlocked", 1),
            cmd('"{}"', "malformed", "unlocked", 1),
            cmd("", "malformed", "unlocked", 1),
            cmd(_text + "x", "malformed", "unlocked", 1),
            cmd(with_member(_v, key_id=7), "malformed", "unlocked", 1),
            cmd(with_member(_v, payload=None), "malformed", "unlocked", 1),
            cmd({k: val for k, val in _v.items() if k != "signature"}, "malformed", "unlocked", 1),
            cmd(_text, "apply", "locked", 2),
        ],
    )
)

_limit = 32_768
add(
    case(
        "too_large",
        "An envelope of exactly 32768 bytes applies; 32769 bytes (spaces, or a member of Sinhala text "
        "that is under 32768 characters but over 32768 UTF-8 bytes) and 40000 bytes of junk are "
        "`too_large`, refused before parsing.",
        ["too_large", "size limit in bytes"],
        phone(),
        [
            cmd(envelope_text(_v, size=_limit), "apply", "locked", 2),
            cmd(envelope_text(sealed(command(seq=3)), size=_limit + 1), "too_large", "locked", 2),
            cmd(envelope_text(sealed(command(seq=3)), size=_limit + 1, filler="ශ"), "too_large", "locked", 2),
            cmd("x" * 40_000, "too_large", "locked", 2),
        ],
    )
)


def _raw(data: bytes) -> dict[str, Any]:
    return sealed_bytes(data)


_good = body(command(seq=2, state="locked"))
_nokind = body({k: val for k, val in command(seq=2, state="locked").items() if k != "kind"})
add(
    case(
        "malformed_payload",
        "Validly signed bytes that are not a command: not UTF-8, not JSON, a JSON array, a raw control "
        "character in a string, then commands whose members break the rules (seq 0, above MAX_SEQ, a "
        "string, 2.0; an unknown state; no IMEIs; a device that is no string; a lease without its expiry "
        "state): `malformed`. Then seq MAX_SEQ applies.",
        ["malformed", "invalid UTF-8", "MAX_SEQ"],
        phone(),
        [
            cmd(_raw(b'{"kind":"command","reason":"\xff"}'), "malformed", "unlocked", 1),
            cmd(_raw(_good[:-1]), "malformed", "unlocked", 1),
            cmd(_raw(b'["command"]'), "malformed", "unlocked", 1),
            cmd(_raw(_good.replace(b'"locked"', b'"lock\x01ed"')), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=0, state="locked")), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=MAX_SEQ + 1, state="locked")), "malformed", "unlocked", 1),
            cmd(sealed(command(seq="2", state="locked")), "malformed", "unlocked", 1),
            cmd(_raw(_good.replace(b'"seq":2,', b'"seq":2.0,')), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=2, state="frozen")), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked", imeis=[])), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked", device=7)), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=2, lease_until="2026-03-09T06:00:00Z")), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=MAX_SEQ, state="locked")), "apply", "locked", MAX_SEQ),
        ],
    )
)

add(
    case(
        "wrong_kind",
        "A signature is made for one kind: a key statement sent as a command, a command sent as a key "
        'statement, a payload without `kind`, and `kind` "Command" are all `wrong_kind`.',
        ["wrong_kind"],
        phone(),
        [
            cmd(statement(2, trusted(OLD), OLD), "wrong_kind", "unlocked", 1),
            keys_step(_two, "wrong_kind", [OLD]),
            cmd(_raw(_nokind), "wrong_kind", "unlocked", 1),
            cmd(sealed(command(seq=2, kind="Command")), "wrong_kind", "unlocked", 1),
            cmd(_two, "apply", "locked", 2),
        ],
    )
)

# --- Key statements --------------------------------------------------------------------------------------

_statement3 = statement(3, trusted(NEW), NEW)
add(
    case(
        "key_rotation",
        "Rotation: statement 2 {old, new} signed by old applies; a command signed by new applies; statement 3 "
        "{new} signed by new applies; a command signed by old is then `unknown_key`; statement 4 {new, third} "
        "applies; statement 3 replayed is `stale`, statement 2 replayed `unknown_key` (old is no longer "
        "trusted); a statement by an untrusted key is `unknown_key`, one naming new but signed by another "
        "key `bad_signature`; a command signed by third applies.",
        ["key statement", "rotation", "stale", "unknown_key"],
        phone(),
        [
            keys_step(statement(2, trusted(OLD, NEW), OLD), "apply", [OLD, NEW]),
            cmd(sealed(command(seq=2, state="reminder"), NEW), "apply", "reminder", 2),
            keys_step(_statement3, "apply", [NEW]),
            cmd(sealed(command(seq=3, state="locked"), OLD), "unknown_key", "reminder", 2),
            keys_step(statement(4, trusted(NEW, THIRD), NEW), "apply", [NEW, THIRD]),
            keys_step(_statement3, "stale", [NEW, THIRD]),
            keys_step(statement(2, trusted(OLD, NEW), OLD), "unknown_key", [NEW, THIRD]),
            keys_step(statement(5, trusted(ROGUE), ROGUE), "unknown_key", [NEW, THIRD]),
            keys_step(statement(5, trusted(ROGUE), NEW, signer=ROGUE), "bad_signature", [NEW, THIRD]),
            cmd(sealed(command(seq=3, state="locked"), THIRD), "apply", "locked", 3),
        ],
    )
)

add(
    case(
        "key_statement_checks",
        "Statements the phone refuses: no keys, a key of 31 bytes, a key that is no string (`malformed`), "
        "the seq it holds (`stale`). Statement 2 {new} signed by old then replaces the set: old is gone.",
        ["key statement", "malformed", "stale"],
        phone(),
        [
            keys_step(statement(2, {}, OLD), "malformed", [OLD]),
            keys_step(statement(2, {NEW: b64(bytes(31))}, OLD), "malformed", [OLD]),
            keys_step(statement(2, {NEW: 7}, OLD), "malformed", [OLD]),  # type: ignore[dict-item]
            keys_step(statement(1, trusted(OLD, NEW), OLD), "stale", [OLD]),
            keys_step(statement(2, trusted(NEW), OLD), "apply", [NEW]),
            cmd(sealed(command(seq=2, state="locked"), OLD), "unknown_key", "unlocked", 1),
            cmd(sealed(command(seq=2, state="locked"), NEW), "apply", "locked", 2),
        ],
    )
)

assert DEVICE != OTHER_DEVICE and len({c["name"] for c in CASES}) == len(CASES)
