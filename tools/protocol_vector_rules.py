"""The protocol v2 cases for the command's member rules: times, expires_at, leases, warning days, lock windows.

Expectations WRITTEN BY HAND from docs/lock-pipeline.md, "The command" (what a phone refuses as
``malformed`` at receipt), as in tools/protocol_vector_cases.py. Every malformed command here is validly
signed: only its members break a rule. Each case ends with commands at the edges of the rules that apply.
"""

from __future__ import annotations

from typing import Any

from devices.protocol import MAX_SEQ
from tools.protocol_vector_build import (
    NEW,
    OLD,
    WEEKDAYS_9_TO_17,
    body,
    case,
    cmd,
    command,
    keys_step,
    phone,
    sealed,
    sealed_bytes,
    statement,
    trusted,
)

CASES: list[dict[str, Any]] = []
add = CASES.append


def _without(member: str, **changes: Any) -> dict[str, Any]:
    """A command envelope lacking ``member`` altogether (not null: absent)."""
    payload = command(**changes)
    del payload[member]
    return sealed(payload)


def _raw(payload: dict[str, Any], old: bytes, new: bytes) -> dict[str, Any]:
    """The command's bytes with ``old`` replaced once by ``new`` (a float, which payload_bytes refuses), signed."""
    data = body(payload)
    assert data.count(old) == 1, old
    return sealed_bytes(data.replace(old, new))


def _bad(**changes: Any) -> dict[str, Any]:
    return cmd(sealed(command(seq=2, **changes)), "malformed", "unlocked", 1)


_BAD_TIMES = [
    "2026-3-2T06:00:00Z",  # one-digit fields
    "2026-03-02T06:00:00",  # no Z
    "2026-03-02 06:00:00Z",  # a space for T
    "2026-03-02t06:00:00z",  # lower case
    "2026-03-02T06:00:00.000Z",  # fractions of a second
    "2026-03-02T06:00:00+00:00",  # an offset for Z
    "2026-03-02T06:00Z",  # no seconds
    "2026-02-30T06:00:00Z",  # no such day
    "2026-13-02T06:00:00Z",  # no such month
    "2026-03-02T24:00:00Z",  # 24:00 (ISO 8601 allows it; the wire does not)
    "2026-03-02T23:59:60Z",  # a leap second
    "0000-03-02T06:00:00Z",  # year 0
    "\u0662\u0660\u0662\u0666-03-02T06:00:00Z",  # Arabic-Indic digits: digits, but not ASCII
    1772431200,  # seconds since 1970
    None,
]
add(
    case(
        "malformed_times",
        "Times the phone cannot read are `malformed`: issued_at with one-digit fields, no Z, a space, lower "
        "case, fractions, an offset, no seconds, 30 February, month 13, 24:00, a leap second, year 0, "
        "non-ASCII digits, a number, null, absent; a temporary unlock's expires_at and a lease_until that are "
        "not times. A command issued at 23:59:59 on 29 February 2028 then applies.",
        ["malformed", "times", "issued_at", "expires_at", "lease_until"],
        phone(),
        [
            *[_bad(state="locked", issued_at=value) for value in _BAD_TIMES],
            cmd(_without("issued_at", seq=2, state="locked"), "malformed", "unlocked", 1),
            _bad(state="temp_unlocked", expires_at="2026-03-02T08:00:00.5Z"),
            _bad(state="temp_unlocked", expires_at="2026-03-02T08:00Z"),
            _bad(lease_until="2026-03-09", lease_expiry_state="locked"),
            _bad(lease_until="2026-03-09T06:00:00+05:30", lease_expiry_state="locked"),
            cmd(sealed(command(seq=2, state="locked", issued_at="2028-02-29T23:59:59Z")), "apply", "locked", 2),
        ],
    )
)

add(
    case(
        "malformed_expiry_and_lease",
        "`temp_unlocked` without expires_at (null or absent) and expires_at on any other state; a lease on a "
        "`locked` or `released` command; lease_warning_days -1, 366, a string, null, true, 3.0 or absent: all "
        "`malformed`. Then lease_warning_days 0 and 365 apply, a temporary unlock with its end applies, and an "
        "unknown lease_expiry_state is ignored where lease_until is null.",
        ["malformed", "expires_at", "temp_unlocked", "lease", "lease_warning_days"],
        phone(),
        [
            _bad(state="temp_unlocked", expires_at=None),
            cmd(_without("expires_at", seq=2, state="temp_unlocked"), "malformed", "unlocked", 1),
            _bad(state="locked", expires_at="2026-03-02T08:00:00Z"),
            _bad(state="unlocked", expires_at="2026-03-02T08:00:00Z"),
            _bad(state="locked", lease_until="2026-03-09T06:00:00Z", lease_expiry_state="locked"),
            _bad(state="released", lease_until="2026-03-09T06:00:00Z", lease_expiry_state="reminder"),
            _bad(lease_warning_days=-1),
            _bad(lease_warning_days=366),
            _bad(lease_warning_days="3"),
            _bad(lease_warning_days=None),
            _bad(lease_warning_days=True),
            cmd(
                _raw(command(seq=2), b'"lease_warning_days":3', b'"lease_warning_days":3.0'), "malformed", "unlocked", 1
            ),
            cmd(_without("lease_warning_days", seq=2), "malformed", "unlocked", 1),
            cmd(sealed(command(seq=2, state="reminder", lease_warning_days=0)), "apply", "reminder", 2),
            cmd(sealed(command(seq=3, state="reminder", lease_warning_days=365)), "apply", "reminder", 3),
            cmd(
                sealed(command(seq=4, state="temp_unlocked", expires_at="2026-03-02T08:00:00Z")),
                "apply",
                "temp_unlocked",
                4,
            ),
            cmd(sealed(command(seq=5, lease_until=None, lease_expiry_state="frozen")), "apply", "unlocked", 5),
        ],
    )
)

_BAD_WINDOWS: list[Any] = [
    {"end_hour": 17, "weekdays": [0]},  # no start_hour
    {"start_hour": 9, "weekdays": [0]},  # no end_hour
    {"start_hour": 9, "end_hour": 17},  # no weekdays
    {"start_hour": -1, "end_hour": 17, "weekdays": [0]},
    {"start_hour": 9, "end_hour": 25, "weekdays": [0]},
    {"start_hour": 0, "end_hour": 0, "weekdays": [0]},
    {"start_hour": 17, "end_hour": 9, "weekdays": [0]},  # start after end (no window across midnight)
    {"start_hour": 9, "end_hour": 9, "weekdays": [0]},  # start = end: never open
    {"start_hour": "9", "end_hour": 17, "weekdays": [0]},
    {"start_hour": True, "end_hour": 17, "weekdays": [0]},
    {"start_hour": 9, "end_hour": 17, "weekdays": []},  # never open
    {"start_hour": 9, "end_hour": 17, "weekdays": [7]},
    {"start_hour": 9, "end_hour": 17, "weekdays": [-1]},
    {"start_hour": 9, "end_hour": 17, "weekdays": "0,1"},
    {"start_hour": 9, "end_hour": 17, "weekdays": [0, "1"]},
    {"start_hour": 9, "end_hour": 17, "weekdays": [True]},
    {"start_hour": 9, "end_hour": 17, "weekdays": None},
    "09:00-17:00",
    [9, 17, [0]],
    0,
]
add(
    case(
        "malformed_lock_window",
        "A lock_window that is neither null nor a valid object is `malformed` at receipt: a member missing, "
        "hours out of range, start_hour not before end_hour, hours that are strings, true or 9.0, weekdays "
        "empty, out of 0-6, not an array or holding a non-integer; a string, an array or a number for the "
        "window. Then 00-24 on Sundays only, and a window with an unknown extra member, apply.",
        ["malformed", "lock_window"],
        phone(),
        [
            *[_bad(state="reminder", lock_window=window) for window in _BAD_WINDOWS],
            cmd(
                _raw(
                    command(seq=2, state="reminder", lock_window=WEEKDAYS_9_TO_17),
                    b'"start_hour":9',
                    b'"start_hour":9.0',
                ),
                "malformed",
                "unlocked",
                1,
            ),
            cmd(
                sealed(
                    command(seq=2, state="reminder", lock_window={"start_hour": 0, "end_hour": 24, "weekdays": [6]})
                ),
                "apply",
                "reminder",
                2,
            ),
            cmd(
                sealed(command(seq=3, state="locked", lock_window={**WEEKDAYS_9_TO_17, "timezone_hint": "ignored"})),
                "apply",
                "locked",
                3,
            ),
        ],
    )
)

add(
    case(
        "key_statement_seq_range",
        "A key statement's seq is an integer from 1 to MAX_SEQ (2,000,000,000), as a command's is: 0, "
        'MAX_SEQ + 1, the string "2" and true are `malformed`. Statement MAX_SEQ applies; sent again it is '
        "`stale`.",
        ["key statement", "malformed", "MAX_SEQ"],
        phone(),
        [
            keys_step(statement(0, trusted(OLD, NEW), OLD), "malformed", [OLD]),
            keys_step(statement(MAX_SEQ + 1, trusted(OLD, NEW), OLD), "malformed", [OLD]),
            keys_step(statement("2", trusted(OLD, NEW), OLD), "malformed", [OLD]),  # type: ignore[arg-type]
            keys_step(statement(True, trusted(OLD, NEW), OLD), "malformed", [OLD]),
            keys_step(statement(MAX_SEQ, trusted(OLD, NEW), OLD), "apply", [OLD, NEW]),
            keys_step(statement(MAX_SEQ, trusted(OLD, NEW), OLD), "stale", [OLD, NEW]),
        ],
    )
)
