"""Small rules of the agent around the phone model, without I/O: outcomes and how they are logged,
IMEIs, the enrolment answer's MQTT account and OpenPAYGO set-up.

The phone's decisions themselves are ``devices.agent.phone`` (docs/lock-pipeline.md); only
the standard library and the agent's own state here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from devices.agent.state import AgentState, OfflineState, ProtectedState, append_log
from devices.agent.times import format_time
from devices.protocol import unb64

#: What each refusal means, for the log and the command line (the verdict is the code).
VERDICT_REASONS = {
    "unknown_version": "envelope version this phone does not speak; checking in",
    "malformed": "not a well-formed envelope or command",
    "too_large": "envelope larger than 32768 bytes",
    "unknown_key": "signed with a key this phone does not trust",
    "bad_signature": "bad signature",
    "wrong_kind": "signed payload is not a command",
    "other_device": "command for another device",
    "stale": "replayed or stale",
    "released_final": "released is final",
    "not_enrolled": "not enrolled: no trusted keys to verify with",
}


@dataclass(frozen=True)
class Outcome:
    """What became of one envelope.

    ``status`` is ``applied``, ``duplicate`` (the command already in force, delivered again:
    MQTT retains it and every check-in repeats it; verdict ``same``) or ``rejected``;
    ``verdict`` is the phone's (docs/protocol/vectors), ``reason`` says it in words.
    """

    status: str
    reason: str
    seq: int | None = None
    state: str | None = None
    verdict: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "applied"


def normalise_imei(imei: str) -> str:
    """The 15 digits, whatever spacing or dashes the IMEI was typed with."""
    return re.sub(r"[\s-]", "", str(imei))


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


def install_offline(prot: ProtectedState, offline: dict[str, Any] | None) -> str:
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
        # again. What codes already granted (days paid for, a release) is the phone's and
        # stays for the same identity; a new identity is a new PAYG set-up (Agent.install_enrolment).
        prot.offline = OfflineState(secret=secret, starting_code=starting_code)
    return "offline codes ready"


def unverified_command(envelope: Any) -> dict[str, Any]:
    """The payload of an envelope read WITHOUT checking it: only to label a log entry."""
    try:
        wire = json.loads(envelope) if isinstance(envelope, bytes | str) else envelope
        parsed = json.loads(unb64(wire["payload"]).decode("utf-8"))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def seq_of(envelope: Any) -> int | None:
    seq = unverified_command(envelope).get("seq")
    return seq if type(seq) is int else None


def state_of(envelope: Any) -> str | None:
    state = unverified_command(envelope).get("state")
    return state if isinstance(state, str) else None
