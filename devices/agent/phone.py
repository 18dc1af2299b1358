"""The phone's decisions under protocol v2, as one pure model: no I/O, no clock of its own.

This is the ONE Python implementation of what a finlock phone decides (docs/lock-pipeline.md,
"What the phone does" and "Offline lease"): which envelope it applies and with what verdict,
which key set it trusts, and what it shows at a given reading of its monotonic clock. The
reference agent (``devices.agent.core``) keeps a ``Phone`` in protected storage and asks it;
the published test vectors are checked against it. Every method that needs time takes the
monotonic clock reading as an argument: the wall clock never enters a decision.

Verdicts are the strings of the vectors: ``apply``, ``same``, ``unknown_version``,
``malformed``, ``too_large``, ``unknown_key``, ``bad_signature``, ``wrong_kind``,
``other_device``, ``stale``, ``released_final``.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import dataclass, field, replace
from typing import Any

from devices.protocol import (
    KIND_KEY_STATEMENT,
    MAX_SEQ,
    Rejected,
    b64,
    check_command,
    check_key_statement,
    open_envelope,
    read_wire_time,
    unb64,
)

DAY = dt.timedelta(days=1)
#: Without a command in force the phone has nothing to restrict.
NO_COMMAND_STATE = "unlocked"
#: What an ended temporary unlock falls back to when no command was in force before it
#: (docs/lock-pipeline.md, "What the phone does"): usable, urging a check-in, under the
#: temporary unlock's own lease. Never a lock the server did not send.
TEMP_FALLBACK_STATE = "reminder"
#: A lock window is searched this far ahead (a week and a day covers every weekday set).
WINDOW_SEARCH_HOURS = 24 * 9


def parse_wire_time(value: object) -> dt.datetime | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` as an aware UTC datetime; None for anything else (strict, as on receipt)."""
    return read_wire_time(value)


def wire_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zone_of(command: dict[str, Any]) -> dt.tzinfo:
    """The command's IANA zone; UTC when it names none the phone knows (the moment is still right).

    Never a refusal: a phone with older time-zone data must still apply an unlock.
    """
    name = command.get("time_zone")
    try:
        return zoneinfo.ZoneInfo(name) if isinstance(name, str) and name else dt.UTC
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # unknown, not a key, not a TZif file
        return dt.UTC


def in_window(moment: dt.datetime, window: Any, zone: dt.tzinfo) -> bool:
    """Whether a lock may start at ``moment``: its local weekday and hour are inside the window."""
    if window is None:
        return True
    if not isinstance(window, dict):
        return False
    local = moment.astimezone(zone)
    weekdays, start, end = window.get("weekdays"), window.get("start_hour"), window.get("end_hour")
    if not isinstance(weekdays, list) or type(start) is not int or type(end) is not int:
        return False
    return local.weekday() in weekdays and start <= local.hour < end


def first_lock_moment(lease: dt.datetime, command: dict[str, Any]) -> dt.datetime | None:
    """The first instant >= ``lease`` inside the command's lock window; None if the window never opens."""
    zone, window = zone_of(command), command.get("lock_window")
    moment = lease
    for _hour in range(WINDOW_SEARCH_HOURS):
        if in_window(moment, window, zone):
            return moment
        local = moment.astimezone(zone)
        # The next local hour begins where this one began plus an hour (UTC arithmetic, so a
        # daylight-saving change in between is counted right).
        moment = moment - dt.timedelta(minutes=local.minute, seconds=local.second) + dt.timedelta(hours=1)
    return None


@dataclass(frozen=True)
class Signed:
    """A command as the phone keeps it: the exact payload bytes and what signed them."""

    payload: bytes
    key_id: str = ""
    signature: str = ""

    @property
    def command(self) -> dict[str, Any]:
        parsed = json.loads(self.payload.decode("utf-8"))
        return parsed if isinstance(parsed, dict) else {}

    def to_dict(self) -> dict[str, str]:
        return {"payload": b64(self.payload), "key_id": self.key_id, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Signed | None:
        if not data:
            return None
        return cls(unb64(data["payload"]), str(data.get("key_id") or ""), str(data.get("signature") or ""))


@dataclass(frozen=True)
class Showing:
    """What the phone shows at one moment of trusted time, with what the screen needs to say why."""

    state: str
    warning: bool = False
    #: The command whose screen content is shown (a temporary unlock's predecessor once it ended).
    command: dict[str, Any] = field(default_factory=dict)
    trusted_now: dt.datetime | None = None
    #: Until when a time-limited state lasts (a temporary unlock, an offline code).
    until: dt.datetime | None = None
    by_offline_code: bool = False
    #: When the lease ends, what it ends into and when that takes effect (a lock waits for its window).
    lease_until: dt.datetime | None = None
    lease_expiry_state: str | None = None
    happens_at: dt.datetime | None = None
    #: The lease ended and the phone has not heard from the server since (the banner's "since").
    offline_since: dt.datetime | None = None


class Phone:
    """One phone's protocol state and decisions (docs/lock-pipeline.md), serialisable to protected storage."""

    def __init__(
        self,
        *,
        device: str | None,
        imeis: list[str],
        trusted_keys: dict[str, str],
        key_statement_seq: int = 0,
        last_seq: int = 0,
        in_force: bytes | None = None,
        pinned_keys: dict[str, str] | None = None,
    ):
        self.device = device
        self.imeis = list(imeis)
        self.trusted_keys = dict(trusted_keys)
        self.key_statement_seq = key_statement_seq
        self.last_seq = last_seq
        self.pinned_keys = dict(pinned_keys) if pinned_keys else None
        self.current: Signed | None = Signed(in_force) if in_force is not None else None
        # The command a temporary unlock returns to when it ends.
        self.previous: Signed | None = None
        # Trusted time: (a trusted moment, the monotonic reading at that moment).
        self.anchor_at: dt.datetime | None = None
        self.anchor_monotonic = 0.0
        if self.current is not None:
            self.anchor_at = parse_wire_time(self.current.command.get("issued_at"))
        # What offline codes granted: usable until (trusted time), or released for good.
        self.offline_until: dt.datetime | None = None
        self.offline_released = False
        # Once a lease locked the phone it stays locked until a newer command or a code arrives.
        self.lease_locked = False

    # --- what it holds ------------------------------------------------------------------

    @property
    def trusted_key_ids(self) -> list[str]:
        return sorted(self.trusted_keys)

    @property
    def in_force(self) -> bytes | None:
        return self.current.payload if self.current else None

    @property
    def command(self) -> dict[str, Any] | None:
        """The command in force, parsed from its bytes."""
        return self.current.command if self.current else None

    @property
    def state(self) -> str:
        """The state of the command in force (what the server last said), before time and codes."""
        if self.offline_released:
            return "released"
        command = self.command
        return str(command["state"]) if command else NO_COMMAND_STATE

    def trusted_now(self, monotonic: float) -> dt.datetime:
        """The phone's trusted time: its anchor moved on by the monotonic clock, never the wall clock."""
        if self.anchor_at is None:
            raise ValueError("no trusted time yet: the phone has applied no command")
        return self.anchor_at + dt.timedelta(seconds=monotonic - self.anchor_monotonic)

    def has_trusted_time(self) -> bool:
        return self.anchor_at is not None

    def rebooted(self, *, elapsed: dt.datetime | None, monotonic: float) -> None:
        """After a boot (the monotonic clock restarted): trusted time carries on from the persisted ``elapsed``."""
        if elapsed is not None:
            self.anchor_at, self.anchor_monotonic = elapsed, monotonic

    # --- commands -----------------------------------------------------------------------

    def receive_command(self, envelope: Any, *, monotonic: float) -> str:
        """Decide about one command envelope from any channel; apply it if the verdict is ``apply``.

        On ``apply`` the caller persists this phone (protected storage) BEFORE it changes the
        screen, then acknowledges ``last_seq``. On ``unknown_version`` the caller checks in.
        """
        try:
            command = check_command(open_envelope(envelope, self.trusted_keys))
        except Rejected as exc:
            return exc.code
        imeis = command["imeis"]
        if command["device"] != self.device or not any(imei in imeis for imei in self.imeis):
            return "other_device"
        wire = envelope_dict(envelope)
        signed = Signed(unb64(wire["payload"]), wire["key_id"], wire["signature"])
        seq = command["seq"]
        if seq < self.last_seq:
            return "stale"
        if seq == self.last_seq:
            if self.current is None or signed.payload != self.current.payload:
                return "stale"
            self._anchor(command, monotonic, forward_only=True)
            return "same"
        if self.state == "released" and command["state"] != "released":
            return "released_final"
        self._apply(signed, command, monotonic)
        return "apply"

    def _apply(self, signed: Signed, command: dict[str, Any], monotonic: float) -> None:
        if command["state"] == "temp_unlocked":
            # Extending a temporary unlock keeps what the first one returns to.
            current = self.command
            if current is None or current.get("state") != "temp_unlocked":
                self.previous = self.current
        else:
            self.previous = None
        self.current, self.last_seq, self.lease_locked = signed, command["seq"], False
        # A newer command held back and fed in late must not give back the days it was held.
        self._anchor(command, monotonic, forward_only=True)

    def _anchor(self, command: dict[str, Any], monotonic: float, *, forward_only: bool) -> None:
        issued_at = parse_wire_time(command["issued_at"])
        assert issued_at is not None  # checked by check_command
        if forward_only and self.anchor_at is not None and issued_at < self.trusted_now(monotonic):
            # The command in force delivered again (retained MQTT, a replay) never turns
            # trusted time back: otherwise replaying it would extend the lease for ever.
            return
        self.anchor_at, self.anchor_monotonic = issued_at, monotonic

    # --- keys ---------------------------------------------------------------------------

    def receive_key_statement(self, envelope: Any) -> str:
        """Decide about a signed key statement; on ``apply`` the trusted set is REPLACED (persist it)."""
        verifying = self.trusted_keys or self.pinned_keys or _declared_keys(envelope)
        try:
            statement = open_envelope(envelope, verifying, kind=KIND_KEY_STATEMENT)
        except Rejected as exc:
            return exc.code
        seq = statement.get("seq")
        if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
            return "malformed"
        if seq <= self.key_statement_seq:
            return "stale"
        try:
            keys = check_key_statement(statement)
        except Rejected as exc:
            return exc.code
        self.trusted_keys, self.key_statement_seq = keys, seq
        return "apply"

    # --- offline codes ------------------------------------------------------------------

    def offline_code(self, *, days: int, monotonic: float, add: bool = False) -> None:
        """An OpenPAYGO time code typed at trusted time e: usable until e + ``days`` (SET_TIME).

        ``add`` (ADD_TIME) counts from the end of an earlier grant still running, so paying
        early never loses a day. Either lifts a lock by lease.
        """
        now = self.trusted_now(monotonic)
        start = self.offline_until if add and self.offline_until and self.offline_until > now else now
        self.offline_until = start + days * DAY
        self.lease_locked = False

    def offline_release(self) -> None:
        """DISABLE_PAYG: released for good; no later command but ``released`` is applied."""
        self.offline_released, self.offline_until, self.lease_locked = True, None, False

    # --- what it shows ------------------------------------------------------------------

    def shows(self, *, monotonic: float) -> tuple[str, bool]:
        """(state shown, warning shown) at this monotonic reading."""
        showing = self.showing(monotonic=monotonic)
        return showing.state, showing.warning

    def settle(self, *, monotonic: float) -> Showing:
        """What it shows now, recording a lock by lease so that it sticks (call on every tick)."""
        showing = self.showing(monotonic=monotonic)
        if showing.state == "locked" and showing.lease_expiry_state == "locked" and showing.offline_since:
            self.lease_locked = True
        return showing

    def showing(self, *, monotonic: float) -> Showing:
        """The effective state at trusted time (docs/lock-pipeline.md, "Effective state")."""
        command = self.command
        now = self.trusted_now(monotonic) if self.anchor_at is not None else None
        if self.offline_released:
            return Showing("released", command=command or {}, trusted_now=now)
        if command is None or now is None:
            return Showing(self.state, command=command or {}, trusted_now=now)
        if command["state"] == "released":
            return Showing("released", command=command, trusted_now=now)
        if command["state"] == "temp_unlocked":
            expires_at = parse_wire_time(command.get("expires_at"))
            if expires_at is not None and now < expires_at:
                return Showing("temp_unlocked", command=command, trusted_now=now, until=expires_at)
            previous = self.previous.command if self.previous else None
            if previous is None or previous.get("state") not in ("unlocked", "reminder", "locked"):
                # Nothing before it: a reminder (the phone checks in), still bound by this command's lease.
                previous = {**command, "state": TEMP_FALLBACK_STATE}
            command = previous
        return self._leased(command, now)

    def _offline_or(self, showing: Showing) -> Showing:
        now = showing.trusted_now
        if self.offline_until is not None and now is not None and now < self.offline_until:
            return Showing(
                "unlocked", command=showing.command, trusted_now=now, until=self.offline_until, by_offline_code=True
            )
        return showing

    def _leased(self, command: dict[str, Any], now: dt.datetime) -> Showing:
        state = str(command["state"])
        offline = self._offline_or(Showing(state, command=command, trusted_now=now))
        if offline.by_offline_code:
            return offline
        lease_until = parse_wire_time(command.get("lease_until"))
        if lease_until is None or state in ("locked", "released"):
            return Showing(state, command=command, trusted_now=now)
        lease = max(lease_until, self.offline_until) if self.offline_until else lease_until
        expiry = command.get("lease_expiry_state")
        happens_at = first_lock_moment(lease, command) if expiry == "locked" else lease
        base = Showing(
            state,
            command=command,
            trusted_now=now,
            lease_until=lease,
            lease_expiry_state=expiry if isinstance(expiry, str) else None,
            happens_at=happens_at,
        )
        warning_days = command.get("lease_warning_days")
        warn_from = lease - (warning_days if type(warning_days) is int and warning_days > 0 else 0) * DAY
        if now < warn_from:
            return base
        if now < lease:
            return replace(base, warning=True)
        since = _issued(command)
        if expiry == "reminder":
            return replace(base, state="reminder", offline_since=since)
        if self.lease_locked or (happens_at is not None and now >= happens_at):
            return replace(base, state="locked", offline_since=since)
        # Past the lease, outside the lock window: a reminder, warning when the lock starts.
        return replace(base, state="reminder", warning=True, offline_since=since)

    # --- protected storage --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "imeis": self.imeis,
            "trusted_keys": self.trusted_keys,
            "key_statement_seq": self.key_statement_seq,
            "pinned_keys": self.pinned_keys,
            "last_seq": self.last_seq,
            "in_force": self.current.to_dict() if self.current else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "anchor_at": wire_time(self.anchor_at) if self.anchor_at else None,
            "anchor_monotonic": self.anchor_monotonic,
            "offline_until": wire_time(self.offline_until) if self.offline_until else None,
            "offline_released": self.offline_released,
            "lease_locked": self.lease_locked,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Phone:
        phone = cls(
            device=data.get("device"),
            imeis=list(data.get("imeis") or []),
            trusted_keys=dict(data.get("trusted_keys") or {}),
            key_statement_seq=int(data.get("key_statement_seq") or 0),
            last_seq=int(data.get("last_seq") or 0),
            pinned_keys=data.get("pinned_keys"),
        )
        phone.current = Signed.from_dict(data.get("in_force"))
        phone.previous = Signed.from_dict(data.get("previous"))
        phone.anchor_at = parse_wire_time(data.get("anchor_at"))
        phone.anchor_monotonic = float(data.get("anchor_monotonic") or 0.0)
        phone.offline_until = parse_wire_time(data.get("offline_until"))
        phone.offline_released = bool(data.get("offline_released"))
        phone.lease_locked = bool(data.get("lease_locked"))
        return phone


def envelope_dict(envelope: Any) -> dict[str, Any]:
    """The envelope as an object (after ``open_envelope`` accepted it, text or bytes parse)."""
    return envelope if isinstance(envelope, dict) else json.loads(envelope)


def _issued(command: dict[str, Any]) -> dt.datetime | None:
    return parse_wire_time(command.get("issued_at"))


def _declared_keys(envelope: Any) -> dict[str, str]:
    """A new phone's first statement verifies with a key it declares itself (self-consistent).

    Read leniently and unverified: ``open_envelope`` then checks it in the normal order, so
    anything unreadable here simply ends as that check's verdict.
    """
    try:
        keys = json.loads(unb64(envelope_dict(envelope)["payload"]).decode("utf-8")).get("keys")
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return {}
    if not isinstance(keys, dict):
        return {}
    return {k: v for k, v in keys.items() if isinstance(k, str) and isinstance(v, str)}
