"""The phone's side of the lock pipeline: which commands it applies, and what it shows.

This is the executable form of "What the phone must do with a command" in
docs/lock-pipeline.md. A command is applied only if its signature verifies with a key the
server announced, it names this phone (device id and IMEI), its sequence number is higher
than the last applied one, and the phone is not already released. An applied command is
written to disk before the screen changes, then acknowledged. No command ever touches the
owner's data.

Only the standard library, ``cryptography`` (through ``devices.protocol``), ``openpaygo``
and, for push, ``paho-mqtt``: a phone has no Django.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.agent import offline as offline_codes
from devices.agent.client import ApiError, HttpTransport, Transport
from devices.agent.render import ScreenView, render_html, render_text
from devices.agent.rules import (
    Outcome,
    append_dedup,
    effective_state,
    in_force,
    install_offline,
    log_outcome,
    mqtt_account,
    normalise_imei,
    refresh_state,
    seq_of,
    state_of,
)
from devices.agent.state import (
    AgentState,
    Enrolment,
    ProtectedState,
    Store,
    append_log,
)
from devices.agent.times import format_time, parse_time, utc_now
from devices.protocol import Rejected, b64, check_command, enrollment_message, open_envelope, topic_for, unb64

APP_VERSION = "finlock-reference-agent/1.0"


class AgentError(RuntimeError):
    """The agent cannot do what was asked (not enrolled, malformed server answer)."""


class Agent:
    """A phone's finance-lock agent, with its state in ``state_dir``.

    Every method reads the state from disk under a lock and writes it back before
    returning, so several agents (the ``run`` loop, a CLI ``enter-code``) on one directory
    stay consistent, and a new ``Agent`` on the same directory carries on where the last
    one stopped, as a phone does after a reboot.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        transport: Transport | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        app_version: str = APP_VERSION,
        on_change: Callable[[Agent], None] | None = None,
    ):
        self.store = Store(state_dir)
        self.transport: Transport = transport or HttpTransport()
        self.clock = clock
        self.app_version = app_version
        self.on_change = on_change
        # Booting: a temporary unlock may have expired while the phone was off.
        self._settle()

    # --- what the phone knows -----------------------------------------------------------

    @property
    def state(self) -> AgentState:
        """The enrolment and protocol state as last written to disk."""
        return self.store.load_agent()

    @property
    def protected(self) -> ProtectedState:
        return self.store.load_protected()

    @property
    def enrolled(self) -> bool:
        return self.state.enrolment is not None

    @property
    def log(self) -> list[dict[str, Any]]:
        """Applied and rejected commands with reasons, newest last (bounded)."""
        return self.state.log

    @property
    def user_data_dir(self) -> Path:
        """The owner's data. Nothing in the agent deletes anything in here."""
        return self.store.user_data_dir

    def view(self) -> ScreenView:
        """What the screen shows now."""
        with self.store.locked():
            st, prot = self.store.load_agent(), self.store.load_protected()
            now = self.clock()
            state, until = effective_state(st, prot, now)
            command, fallback = in_force(st, prot)
        shown = command or {}
        if fallback and (state != shown.get("state") or not shown.get("screen")):
            # Back from a temporary unlock, or a command without screen content: the lock
            # screen is the one that was in force before.
            screen = shown.get("screen") or fallback.get("screen")
            allowed = shown.get("allowed_numbers") or fallback.get("allowed_numbers")
        else:
            screen, allowed = shown.get("screen"), shown.get("allowed_numbers")
        offline_until = parse_time(prot.offline.until)
        return ScreenView(
            state=state,
            screen=screen if isinstance(screen, dict) else {},
            allowed_numbers=allowed if isinstance(allowed, list) else [],
            expires_at=until,
            imei=st.enrolment.imei if st.enrolment else None,
            enrolled=st.enrolment is not None,
            offline_unlock=bool(state == "temp_unlocked" and offline_until and offline_until == until),
        )

    def render_text(self) -> str:
        return render_text(self.view())

    def render_html(self) -> str:
        return render_html(self.view())

    # --- commands -----------------------------------------------------------------------

    def handle_envelope(self, envelope: Any, source: str = "local") -> Outcome:
        """Apply a signed envelope from any channel, or reject it with the reason.

        ``envelope`` is the decoded JSON object, or its raw bytes/text as it came off the
        wire. Order matters and follows the spec: persist, then show, then acknowledge.
        """
        if isinstance(envelope, bytes | str):
            try:
                envelope = json.loads(envelope)
            except (UnicodeDecodeError, json.JSONDecodeError):
                envelope = None  # refused below as "not a command envelope"
        with self.store.locked():
            st, prot = self.store.load_agent(), self.store.load_protected()
            now = self.clock()
            # A temporary unlock may have ended since the last tick; rule 4 needs the truth.
            settled, _expired = refresh_state(st, prot, now)
            try:
                command = self._admissible(envelope, st, prot, now)
            except Rejected as exc:
                outcome = Outcome("rejected", str(exc), seq_of(envelope), state_of(envelope))
                log_outcome(st, now, source, outcome)
                self.store.save_agent(st)
            else:
                if command is None:  # the command already in force, delivered again
                    outcome = Outcome("duplicate", f"already applied (seq {st.last_seq})", st.last_seq, st.state)
                    if settled:
                        self.store.save_agent(st)
                else:
                    outcome = self._apply(command, st, prot, now, source)
        if outcome.accepted or settled:
            self._changed()
        self._send_ack()
        return outcome

    def _admissible(self, envelope: Any, st: AgentState, prot: ProtectedState, now: dt.datetime) -> dict | None:
        """The command if the phone must apply it, None if it is the one in force; else raise."""
        if st.enrolment is None:
            raise Rejected("not enrolled: no server keys to verify with")
        # 1. a known key and a valid signature over the canonical form
        command = check_command(open_envelope(envelope, st.enrolment.server_keys))
        # 2. this phone, by its public id and by its IMEI
        if command.get("device") != st.enrolment.device or command.get("imei") != st.enrolment.imei:
            raise Rejected("command for another device")
        # 3. newer than anything applied, so a late unlock never beats a newer lock (or vice versa)
        seq = command["seq"]
        if seq <= st.last_seq:
            if seq == st.last_seq and command == st.command:
                return None
            raise Rejected(f"replayed or stale (seq {seq} <= {st.last_seq})")
        # ... and than anything applied before a factory reset (reset-protected storage
        # keeps the last seq): only the very command in force may be applied again.
        floor = prot.last_seq if prot.device == st.enrolment.device else 0
        if seq < floor or (seq == floor and command != prot.command):
            raise Rejected(f"replayed or stale (seq {seq} <= {floor}, applied before a reset)")
        # 4. released is final
        current, _until = effective_state(st, prot, now)
        if current == "released" and command["state"] != "released":
            raise Rejected(f"released is final: {command['state']} refused")
        if command["state"] == "temp_unlocked" and parse_time(command.get("expires_at")) is None:
            raise Rejected("temporary unlock without a valid expires_at")
        return command

    def _apply(self, command: dict, st: AgentState, prot: ProtectedState, now: dt.datetime, source: str) -> Outcome:
        previous, previous_fallback = in_force(st, prot)
        if command["state"] == "temp_unlocked":
            # Remember what to return to when it expires; extending a temporary unlock
            # keeps the original fallback rather than falling back to another unlock.
            if previous and previous.get("state") == "temp_unlocked":
                st.fallback_command = previous_fallback
            else:
                st.fallback_command = previous
        else:
            st.fallback_command = None
        st.command = command
        st.last_seq = command["seq"]
        st.unacked = {"seq": command["seq"], "state": command["state"]}
        # A new command replaces a temporary unlock: that is not an expiry, so no expiry entry.
        refresh_state(st, prot, now, note_expiry=False)
        outcome = Outcome("applied", command.get("reason") or "", command["seq"], command["state"])
        log_outcome(st, now, source, outcome)
        # Persist before the screen changes: after a power cut the phone must come back in
        # the state it last showed, and never re-apply an older command.
        self.store.save_agent(st)
        prot.command, prot.fallback_command = st.command, st.fallback_command
        prot.device, prot.last_seq = str(command["device"]), command["seq"]
        self.store.save_protected(prot)
        return outcome

    def tick(self) -> bool:
        """Re-evaluate time-limited unlocks; on expiry show the lock again and check in.

        Returns whether the screen changed. Called every second or so by the run loop.
        """
        changed, expired = self._settle()
        if expired and self._can_reach_server():
            # The spec: when a temporary unlock ends the phone checks in, so a payment made
            # meanwhile unlocks it at once instead of at the next periodic check-in. A failure
            # is logged by checkin, and the periodic check-in retries.
            with contextlib.suppress(ApiError, AgentError):
                self.checkin()
        return changed

    def _settle(self) -> tuple[bool, bool]:
        with self.store.locked():
            st, prot = self.store.load_agent(), self.store.load_protected()
            changed, expired = refresh_state(st, prot, self.clock())
            if changed:
                self.store.save_agent(st)
        if changed:
            self._changed()
        return changed, expired

    # --- enrolment and the server -------------------------------------------------------

    def install_enrolment(
        self,
        *,
        device: str,
        imei: str,
        server_keys: dict[str, str],
        credential: str | None = None,
        server_url: str | None = None,
        mqtt_topic: str | None = None,
        offline: dict[str, Any] | None = None,
        mqtt: dict[str, Any] | None = None,
    ) -> None:
        """Record who this phone is (what ``enroll`` does with the server's answer).

        Public so a test, or a factory provisioning tool, can enrol a phone without a server.
        """
        if not isinstance(server_keys, dict) or not server_keys:
            raise AgentError("enrolment without server keys: the phone could never verify a command")
        with self.store.locked():
            st, prot = self.store.load_agent(), self.store.load_protected()
            now = self.clock()
            if st.enrolment and st.enrolment.device != device:
                # Another identity (re-provisioned for another contract): its numbering starts over.
                st.last_seq, st.command, st.fallback_command, st.unacked = 0, None, None, None
            previous = prot.device or (prot.command or {}).get("device")
            same_identity = previous is None or previous == str(device)
            if not same_identity:
                # The lock kept through a reset belongs to the phone's previous identity; the
                # new identity's current command arrives with this enrolment.
                prot.command, prot.fallback_command, prot.last_seq = None, None, 0
            prot.device = str(device)
            st.enrolment = Enrolment(
                device=str(device),
                imei=normalise_imei(imei),
                server_keys={str(k): str(v) for k, v in server_keys.items()},
                credential=credential,
                server_url=server_url,
                mqtt_topic=mqtt_topic or topic_for(str(device)),
                enrolled_at=format_time(now),
                **mqtt_account(mqtt),
            )
            note = install_offline(prot, offline, same_identity=same_identity)
            append_log(st, {"at": format_time(now), "event": "enrolled", "device": str(device), "reason": note})
            self.store.save_agent(st)
            self.store.save_protected(prot)

    def device_key(self) -> Ed25519PrivateKey:
        """The phone's device key, generated (and saved to protected storage) the first time it is needed.

        Saved before anything is sent: if the server registers the key and its answer is
        lost, the phone still holds the key the server knows.
        """
        with self.store.locked():
            prot = self.store.load_protected()
            if prot.device_key:
                return Ed25519PrivateKey.from_private_bytes(unb64(prot.device_key))
            key = Ed25519PrivateKey.generate()
            prot.device_key = b64(key.private_bytes_raw())
            self.store.save_protected(prot)
            return key

    def enroll(
        self, server_url: str, imei: str, enrollment_token: str, reenrollment_code: str | None = None
    ) -> Outcome:
        """``POST enroll/challenge``, sign it with the device key, ``POST enroll``, apply the current command.

        The same steps for the first enrolment and every later one (after a reset the
        device key is still in protected storage, so the server knows it is this phone).
        A phone that lost its protected storage has a new key the server does not know:
        it needs ``reenrollment_code`` from its provider's staff. A reset never removes a lock.
        """
        digits = normalise_imei(imei)
        key = self.device_key()
        challenge = self.transport.post(server_url, "enroll/challenge", {}).get("challenge")
        if not isinstance(challenge, str) or not challenge:
            raise AgentError("the server answered no enrolment challenge")
        device_key = b64(key.public_key().public_bytes_raw())
        signature = key.sign(enrollment_message(challenge=challenge, imei=digits, device_key=device_key))
        body = {
            "imei": digits,
            "enrollment_token": enrollment_token,
            "app_version": self.app_version,
            "device_key": device_key,
            "challenge": challenge,
            "signature": b64(signature),
        }
        if reenrollment_code:
            body["reenrollment_code"] = reenrollment_code
        answer = self.transport.post(server_url, "enroll", body)
        missing = [k for k in ("device", "credential", "server_keys", "envelope") if not answer.get(k)]
        if missing:
            raise AgentError(f"the enrolment answer lacks {', '.join(missing)}")
        self.install_enrolment(
            device=answer["device"],
            imei=imei,
            server_keys=answer["server_keys"],
            credential=answer["credential"],
            server_url=server_url,
            mqtt_topic=answer.get("mqtt_topic"),
            offline=answer.get("offline"),
            mqtt=answer.get("mqtt"),
        )
        return self.handle_envelope(answer["envelope"], source="enroll")

    def checkin(self) -> Outcome:
        """``POST checkin`` with what the phone shows, and apply the current command it answers.

        This is how a missed push heals itself: the answer is always the current command.
        """
        self._settle()
        st = self.state
        enrolment = st.enrolment
        if not self._can_reach_server():
            raise AgentError("not enrolled with a server: run `enroll` first")
        assert enrolment is not None and enrolment.server_url  # narrowed by _can_reach_server
        body = {"state": st.state, "last_seq": st.last_seq, "app_version": self.app_version}
        try:
            answer = self.transport.post(enrolment.server_url, "checkin", body, enrolment.credential)
        except ApiError as exc:
            self._note("checkin_failed", str(exc))
            raise
        if "envelope" not in answer:
            raise AgentError("the check-in answer has no envelope")
        keys = answer.get("server_keys")
        with self.store.locked():
            st = self.store.load_agent()
            st.last_checkin_at = format_time(self.clock())
            if isinstance(keys, dict) and st.enrolment is not None:
                # Key rotation: the server announces a new public key before it signs with it.
                # Known keys are kept (commands signed before the rotation still verify); the
                # answer comes over the same authenticated channel as the enrolment's keys.
                for key_id, public in keys.items():
                    if isinstance(key_id, str) and isinstance(public, str):
                        st.enrolment.server_keys.setdefault(key_id, public)
            self.store.save_agent(st)
        return self.handle_envelope(answer["envelope"], source="checkin")

    def _can_reach_server(self) -> bool:
        enrolment = self.state.enrolment
        return bool(enrolment and enrolment.server_url and enrolment.credential)

    def _send_ack(self) -> bool:
        """Acknowledge the applied command, if the server has not had it yet; True if the server took it."""
        st = self.state
        pending, enrolment = st.unacked, st.enrolment
        if not pending or not enrolment or not enrolment.server_url or not enrolment.credential:
            return False
        delivered = True
        try:
            self.transport.post(
                enrolment.server_url, "ack", {"seq": pending["seq"], "state": pending["state"]}, enrolment.credential
            )
        except ApiError as exc:
            delivered = False
            refused = exc.status is not None and 400 <= exc.status < 500 and exc.status != 401
            if not refused:
                # The command stays applied; the next check-in retries (and reports last_seq anyway).
                self._note("ack_failed", str(exc), seq=pending["seq"])
                return False
            # The server heard it and said no: retrying the same body would be refused forever.
            self._note("ack_refused", str(exc), seq=pending["seq"])
        with self.store.locked():
            st = self.store.load_agent()
            if st.unacked == pending:
                st.unacked = None
                self.store.save_agent(st)
        return delivered

    # --- offline codes ------------------------------------------------------------------

    def enter_code(self, token: str) -> offline_codes.CodeResult:
        """Type an OpenPAYGO code on the lock screen: N days unlocked, or released for good."""
        with self.store.locked():
            st, prot = self.store.load_agent(), self.store.load_protected()
            now = self.clock()
            result = offline_codes.apply_code(token, prot.offline, now)
            # The counter is saved before anything else, so a code can never be typed twice,
            # not even across a crash or a restart.
            if result.ok:
                self.store.save_protected(prot)
            changed, _expired = refresh_state(st, prot, now)
            append_log(
                st,
                {
                    "at": format_time(now),
                    "source": "offline_code",
                    "event": "code_accepted" if result.ok else "code_refused",
                    "state": st.state,
                    "reason": result.message,
                },
            )
            self.store.save_agent(st)
        if changed:
            self._changed()
        return result

    # --- factory reset ------------------------------------------------------------------

    def factory_reset(self) -> None:
        """Simulate a factory reset: the agent's enrolment file is wiped, as on a real phone.

        What a real finance-lock agent keeps in reset-protected storage survives: the lock in
        force and the offline-code counters. So the lock screen stays, the phone must enrol
        again (and gets its current command back), and the owner's data directory is not
        touched by the agent. A reset never removes a lock; the lock never costs data.
        """
        with self.store.locked():
            self.store.wipe_agent()
        self._settle()

    # --- helpers ------------------------------------------------------------------------

    def _note(self, event: str, reason: str, seq: int | None = None) -> None:
        with self.store.locked():
            st = self.store.load_agent()
            entry: dict[str, Any] = {"at": format_time(self.clock()), "event": event, "reason": reason}
            if seq is not None:
                entry["seq"] = seq
            append_dedup(st, entry)
            self.store.save_agent(st)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)
