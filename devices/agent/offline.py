"""Offline unlock codes (OpenPAYGO Token), for a phone that cannot reach the server.

The owner pays, calls the hotline with the IMEI, and types the digits the agent reads out.
The code carries a number of days (or "disable PAYG", value 998, which releases the phone
for good) and a counter; the phone accepts each counter once, so a code cannot be typed
twice. Both sides share a per-device secret and starting code, sent at enrolment.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import openpaygo
from openpaygo import OpenPAYGOTokenDecoder, TokenType

from devices.agent.state import OfflineState
from devices.agent.times import human_time

# Standard OpenPAYGO tokens are 9 digits, extended ones 12 (restricted digit sets are not used).
MAX_TOKEN_DIGITS = 12
KIND_BY_TYPE = {
    TokenType.ADD_TIME: "add_days",
    TokenType.SET_TIME: "set_days",
    TokenType.DISABLE_PAYG: "release",
    TokenType.COUNTER_SYNC: "counter_sync",
}


@dataclass(frozen=True)
class CodeResult:
    """What typing a code did; ``message`` is what the owner reads on the screen."""

    ok: bool
    message: str
    kind: str | None = None
    days: int | None = None
    count: int | None = None
    #: Until when the code keeps the phone usable (trusted time), for a time code.
    until: dt.datetime | None = None


def normalise(token: str) -> str | None:
    """The digits of a code as typed ("123 456 789", "123-456-789"), or None if it is not a code."""
    digits = "".join(ch for ch in str(token) if ch not in " -\t")
    if not digits.isdigit() or not 1 <= len(digits) <= MAX_TOKEN_DIGITS:
        return None
    return digits


def _used_after(past: list[int], value: int, count: int, token_type: int) -> list[int]:
    # openpaygo 0.6.3 returns None when nothing was used before (its `if not past_used_counts`),
    # which would forget the first code and let it be typed a second time. Seeding the list with
    # the count itself gives the result the library computes in every other case.
    return OpenPAYGOTokenDecoder.update_used_counts(list(past) or [count], value, count, token_type)


def apply_code(
    token: str, offline: OfflineState, now: dt.datetime, current_until: dt.datetime | None = None
) -> CodeResult:
    """Decode ``token`` and, when valid, count it as used in ``offline`` (in place).

    ``now`` is the phone's trusted time and ``current_until`` what earlier codes granted;
    the result says what the code grants, and the caller gives it to the phone
    (``Phone.offline_code`` / ``Phone.offline_release``) and persists both. A refused code
    changes nothing.
    """
    if not offline.secret or offline.starting_code is None:
        return CodeResult(False, "Offline codes are not set up on this phone yet: it must enrol once first.")
    digits = normalise(token)
    if digits is None:
        return CodeResult(False, "That is not an unlock code: type the 9 or 12 digits you were given.")
    try:
        value, token_type, count, _updated = openpaygo.decode_token(
            token=digits,
            secret_key=offline.secret,
            count=offline.last_count,
            # A copy: the library must not see (or mutate) our list half-way.
            used_counts=list(offline.used_counts),
            starting_code=offline.starting_code,
        )
    except ValueError:
        return CodeResult(False, "That code is not valid for this phone. Check the digits and try again.")
    if token_type == TokenType.ALREADY_USED:
        return CodeResult(False, "That code has already been used on this phone.")
    if token_type not in KIND_BY_TYPE or value is None or count is None:
        return CodeResult(False, "That code is not valid for this phone. Check the digits and try again.")

    value = int(value)  # decode_token divides by value_divider, which makes a float
    offline.used_counts = _used_after(offline.used_counts, value, count, token_type)
    offline.last_count = max(offline.last_count, count)
    kind = KIND_BY_TYPE[token_type]

    if token_type == TokenType.DISABLE_PAYG:
        return CodeResult(True, "Paid off: this phone is released for good.", kind=kind, count=count)
    if token_type == TokenType.COUNTER_SYNC:
        return CodeResult(True, "Code counter synchronised. Nothing else changed.", kind=kind, count=count)

    if token_type == TokenType.ADD_TIME:
        # Days add to what is left of an earlier code, so paying early never loses a day
        # (Phone.offline_code(add=True) counts the same way).
        start = current_until if current_until and current_until > now else now
        until = start + dt.timedelta(days=value)
    else:  # SET_TIME: the provider states the remaining time outright (0 ends it now).
        until = now + dt.timedelta(days=value)
    if until <= now:
        return CodeResult(
            True, "The offline unlock has been ended by your provider.", kind=kind, days=0, count=count, until=until
        )
    return CodeResult(
        True,
        f"Unlocked for {value} day(s), until {human_time(until)}.",
        kind=kind,
        days=value,
        count=count,
        until=until,
    )
