"""The rules of a phone's state, without I/O: which command is in force, what the phone shows
now, and how an outcome is logged (docs/lock-pipeline.md, "What the phone must do with a command").

Used by ``devices.agent.core`` (the agent); only the standard library and the agent's own state.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from devices.agent.state import AgentState, OfflineState, ProtectedState, append_log
from devices.agent.times import format_time, parse_time

# What a temporary unlock may fall back to; anything else (or nothing known) falls back to
# "locked", because a temporary unlock is only ever granted to lift a lock.
FALLBACK_STATES = ("unlocked", "reminder", "locked")


@dataclass(frozen=True)
class Outcome:
    """What became of one envelope.

    ``status`` is ``applied``, ``duplicate`` (the command already in force, delivered again:
    MQTT retains it and every check-in repeats it) or ``rejected`` with the reason.
    """

    status: str
    reason: str
    seq: int | None = None
    state: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "applied"


def normalise_imei(imei: str) -> str:
    """The 15 digits, whatever spacing or dashes the IMEI was typed with."""
    return re.sub(r"[\s-]", "", str(imei))


def in_force(st: AgentState, prot: ProtectedState) -> tuple[dict | None, dict | None]:
    """The command in force and its fallback; after a reset, the copy kept in protected storage."""
    if st.command is not None:
        return st.command, st.fallback_command
    return prot.command, prot.fallback_command


def effective_state(st: AgentState, prot: ProtectedState, now: dt.datetime) -> tuple[str, dt.datetime | None]:
    """The state the phone shows at ``now``, and until when it lasts if time-limited."""
    command, fallback = in_force(st, prot)
    off: OfflineState = prot.offline
    if off.released or (command and command.get("state") == "released"):
        return "released", None
    until: dt.datetime | None = None
    if command is None:
        base = "unlocked"
    elif command.get("state") == "temp_unlocked":
        expires = parse_time(command.get("expires_at"))
        if expires and expires > now:
            base, until = "temp_unlocked", expires
        else:
            previous = (fallback or {}).get("state")
            base = previous if previous in FALLBACK_STATES else "locked"
    else:
        base = command.get("state") or "unlocked"
    # An offline code the owner typed lifts a lock for the days it carries.
    offline_until = parse_time(off.until)
    if offline_until and offline_until > now:
        if base == "locked":
            return "temp_unlocked", offline_until
        if base == "temp_unlocked" and until and offline_until > until:
            return base, offline_until
    return base, until


def refresh_state(
    st: AgentState, prot: ProtectedState, now: dt.datetime, *, note_expiry: bool = True
) -> tuple[bool, bool]:
    """Bring ``st.state`` up to date; return (changed, a temporary unlock just expired)."""
    state, until = effective_state(st, prot, now)
    expires_at = format_time(until) if until else None
    if (state, expires_at) == (st.state, st.expires_at):
        return False, False
    expired = note_expiry and st.state == "temp_unlocked" and state not in ("temp_unlocked", "released")
    if expired:
        append_log(
            st,
            {
                "at": format_time(now),
                "event": "expired",
                "state": state,
                "reason": f"temporary unlock ended at {st.expires_at}; back to {state}",
            },
        )
    st.state, st.expires_at = state, expires_at
    return True, expired


def log_outcome(st: AgentState, now: dt.datetime, source: str, outcome: Outcome) -> None:
    entry = {
        "at": format_time(now),
        "source": source,
        "event": outcome.status,
        "seq": outcome.seq,
        "state": outcome.state,
        "reason": outcome.reason,
    }
    if outcome.status == "rejected":
        append_dedup(st, entry)
    else:
        append_log(st, entry)


def append_dedup(st: AgentState, entry: dict[str, Any]) -> None:
    # The same refusal repeats at every check-in (e.g. a server still sending "locked" to a
    # phone released by an offline code); count it instead of flooding the bounded log.
    last = st.log[-1] if st.log else None
    keys = ("source", "event", "seq", "state", "reason")
    if last and all(last.get(k) == entry.get(k) for k in keys):
        last["repeated"] = int(last.get("repeated", 1)) + 1
        last["last_at"] = entry["at"]
        return
    append_log(st, entry)


def mqtt_account(mqtt: Any) -> dict[str, str | None]:
    """The phone's broker account from the enrolment answer; a malformed one is ignored (pull still works)."""
    if isinstance(mqtt, dict) and isinstance(mqtt.get("username"), str) and isinstance(mqtt.get("password"), str):
        return {"mqtt_username": mqtt["username"], "mqtt_password": mqtt["password"]}
    return {"mqtt_username": None, "mqtt_password": None}


def install_offline(prot: ProtectedState, offline: dict[str, Any] | None, *, same_identity: bool = False) -> str:
    """Take the OpenPAYGO secret and starting code from the enrolment answer (sent once per secret)."""
    if not isinstance(offline, dict) or not offline:
        # The server hands the secret out once; the phone keeps it in protected storage.
        return "offline codes ready" if prot.offline.secret else "no offline codes offered"
    secret = str(offline.get("secret") or offline.get("secret_key") or "")
    try:
        starting_code = int(offline.get("starting_code"))  # type: ignore[arg-type]  # None is caught below
        bytes.fromhex(secret)
    except (TypeError, ValueError):
        return "offline codes not set up: malformed secret or starting code"
    if len(secret) != 32:
        return "offline codes not set up: the secret must be 32 hex digits"
    if (prot.offline.secret, prot.offline.starting_code) != (secret, starting_code):
        # A new secret: codes made with the old one no longer decode, and the counter starts
        # again. For the same identity (a staff re-key) what codes already granted stays: days
        # paid for, and a release, which is final. A new identity is a new PAYG set-up.
        kept = prot.offline
        prot.offline = OfflineState(secret=secret, starting_code=starting_code)
        if same_identity:
            prot.offline.until, prot.offline.released = kept.until, kept.released
    return "offline codes ready"


def seq_of(envelope: Any) -> int | None:
    command = envelope.get("command") if isinstance(envelope, dict) else None
    seq = command.get("seq") if isinstance(command, dict) else None
    return seq if isinstance(seq, int) else None


def state_of(envelope: Any) -> str | None:
    command = envelope.get("command") if isinstance(envelope, dict) else None
    state = command.get("state") if isinstance(command, dict) else None
    return state if isinstance(state, str) else None
