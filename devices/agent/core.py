"""The phone's side of the lock pipeline: the agent around the phone model, with storage and network.

What the phone decides (which envelope it applies, which keys it trusts, what it shows at a
given moment of trusted time) is ``devices.agent.phone.Phone``, the executable form of
docs/lock-pipeline.md. This module keeps that model in reset-protected storage, feeds it
from every channel (MQTT, check-in, enrolment, the command line), reads the monotonic clock
for it, and does what the specification asks around it: persist an applied command before
the screen changes, then acknowledge it; check in when an envelope speaks an unknown version
or a temporary unlock ends; keep trusted time across a restart. No command ever touches the
owner's data.

Only the standard library, ``cryptography`` (through ``devices.protocol``), ``openpaygo``
and, for push, ``paho-mqtt``: a phone has no Django.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.agent import keychain
from devices.agent import offline as offline_codes
from devices.agent.client import ApiError, HttpTransport, Transport
from devices.agent.phone import Phone, Showing
from devices.agent.render import ScreenView, render_html, render_text
from devices.agent.rules import (
    VERDICT_REASONS,
    Outcome,
    append_dedup,
    install_offline,
    log_outcome,
    mqtt_account,
    normalise_imei,
    seq_of,
    state_of,
)
from devices.agent.state import AgentState, Enrolment, ProtectedState, Store, append_log
from devices.agent.times import format_time, parse_time, utc_now
from devices.protocol import b64, enrollment_message, topic_for, unb64

APP_VERSION = "finlock-reference-agent/2.0"
#: Trusted time is written to protected storage at least this often (and at every write), so
#: a reboot loses at most this much of it (docs/lock-pipeline.md, "Offline lease").
CHECKPOINT_SECONDS = 60.0
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class AgentError(RuntimeError):
    """The agent cannot do what was asked (not enrolled, malformed server answer)."""


def read_boot_id() -> str:
    """This boot's id (Linux); empty where there is none (then only a clock going back tells a reboot)."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


@dataclass
class _Loaded:
    """Both state files and the phone model, read under the store lock at one monotonic reading."""

    st: AgentState
    prot: ProtectedState
    phone: Phone | None
    monotonic: float


class Agent:
    """A phone's finance-lock agent, with its state in ``state_dir``.

    Every method reads the state from disk under a lock and writes it back before
    returning, so several agents (the ``run`` loop, a CLI ``enter-code``) on one directory
    stay consistent, and a new ``Agent`` on the same directory carries on where the last
    one stopped, as a phone does after a reboot. ``clock`` (the wall clock) only stamps the
    log: leases and temporary unlocks run on ``monotonic`` from a trusted anchor.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        transport: Transport | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        boot_id: Callable[[], str] = read_boot_id,
        app_version: str = APP_VERSION,
        on_change: Callable[[Agent], None] | None = None,
    ):
        self.store = Store(state_dir)
        self.transport: Transport = transport or HttpTransport()
        self.clock = clock
        self.monotonic = monotonic
        self.boot_id = boot_id
        self.app_version = app_version
        self.on_change = on_change
        self._checkpointed_at: float | None = None
        # Booting: a temporary unlock may have expired, or a lease run out, while the phone was off.
        self._settle()

    # --- what the phone knows -----------------------------------------------------------

    @property
    def state(self) -> AgentState:
        """The enrolment and what the screen shows, as last written to disk."""
        return self.store.load_agent()

    @property
    def protected(self) -> ProtectedState:
        return self.store.load_protected()

    @property
    def phone(self) -> Phone | None:
        """The phone model as it stands now (None before the first enrolment)."""
        with self._loaded() as loaded:
            return loaded.phone

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
        with self._loaded() as loaded:
            st, phone = loaded.st, loaded.phone
            showing = phone.showing(monotonic=loaded.monotonic) if phone else Showing("unlocked")
        screen = showing.command.get("screen")
        if not screen and phone is not None:
            # A command without screen content: the lock screen is the one in force before.
            screen = next((c.command.get("screen") for c in (phone.current, phone.previous) if c), None)
        allowed = showing.command.get("allowed_numbers")
        zone = showing.command.get("time_zone")
        return ScreenView(
            # An offline code is drawn like a temporary unlock: time-limited, amount and hotline shown.
            state="temp_unlocked" if showing.by_offline_code else showing.state,
            screen=screen if isinstance(screen, dict) else {},
            allowed_numbers=allowed if isinstance(allowed, list) else [],
            expires_at=showing.until,
            imei=st.enrolment.imei if st.enrolment else None,
            enrolled=st.enrolment is not None,
            offline_unlock=showing.by_offline_code,
            warning=showing.warning,
            warning_state=showing.lease_expiry_state,
            warning_at=showing.happens_at,
            time_zone=zone if isinstance(zone, str) else "UTC",
            offline_since=showing.offline_since,
        )

    def render_text(self) -> str:
        return render_text(self.view())

    def render_html(self) -> str:
        return render_html(self.view())

    # --- storage ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _loaded(self) -> Iterator[_Loaded]:
        """Both files under the store lock; after a reboot, trusted time resumes from its checkpoint."""
        with self.store.locked():
            st, prot, now = self.store.load_agent(), self.store.load_protected(), self.monotonic()
            phone = Phone.from_dict(prot.phone) if prot.phone else None
            loaded = _Loaded(st, prot, phone, now)
            boot = self.boot_id()
            if phone is not None and (prot.boot_id != boot or now < phone.anchor_monotonic):
                # The monotonic clock restarted: its old readings mean nothing now. Saved at
                # once, or every later read would re-anchor at the same checkpoint.
                phone.rebooted(elapsed=parse_time(prot.elapsed), monotonic=now)
                self._save_protected(loaded)
            yield loaded

    def _save_protected(self, loaded: _Loaded) -> None:
        prot, phone = loaded.prot, loaded.phone
        prot.boot_id = self.boot_id()
        if phone is not None:
            prot.phone = phone.to_dict()
            if phone.has_trusted_time():
                prot.elapsed = format_time(phone.trusted_now(loaded.monotonic))
        self.store.save_protected(prot)
        self._checkpointed_at = loaded.monotonic

    def _refresh(self, loaded: _Loaded, *, note_expiry: bool = True) -> tuple[bool, bool]:
        """Bring what ``agent.json`` says is shown up to date; (changed, a temporary unlock just ended)."""
        st, phone = loaded.st, loaded.phone
        if phone is None:
            showing = Showing("unlocked")
        else:
            was_locked = phone.lease_locked
            showing = phone.settle(monotonic=loaded.monotonic)
            st.last_seq = phone.last_seq
            if phone.lease_locked and not was_locked:
                # The lease lock sticks until a newer command or a code: it is protected state.
                self._save_protected(loaded)
        expires_at = format_time(showing.until) if showing.until else None
        shown = (showing.state, showing.warning, expires_at)
        if shown == (st.state, st.warning, st.expires_at):
            return False, False
        at = format_time(self.clock())
        expired = note_expiry and st.state == "temp_unlocked" and showing.state not in ("temp_unlocked", "released")
        if expired:
            reason = f"temporary unlock ended at {st.expires_at}; back to {showing.state}"
            append_log(st, {"at": at, "event": "expired", "state": showing.state, "reason": reason})
        elif showing.offline_since is not None and (showing.state, showing.warning) != (st.state, st.warning):
            reason = f"no word from the server since {format_time(showing.offline_since)}: lease ended"
            append_log(st, {"at": at, "event": "lease_expired", "state": showing.state, "reason": reason})
        elif showing.warning and not st.warning and showing.happens_at:
            reason = f"{showing.lease_expiry_state} at {format_time(showing.happens_at)} unless the phone checks in"
            append_log(st, {"at": at, "event": "lease_warning", "state": showing.state, "reason": reason})
        st.state, st.warning, st.expires_at = shown
        return True, expired

    # --- commands -----------------------------------------------------------------------

    def handle_envelope(self, envelope: Any, source: str = "local") -> Outcome:
        """Apply a signed envelope from any channel, or refuse it with the phone's verdict.

        ``envelope`` is the decoded JSON object, or its raw bytes/text as it came off the
        wire. Order matters and follows the spec: persist, then show, then acknowledge.
        """
        with self._loaded() as loaded:
            st, phone = loaded.st, loaded.phone
            if phone is None or not phone.trusted_keys:
                verdict = "not_enrolled"
            else:
                verdict = phone.receive_command(envelope, monotonic=loaded.monotonic)
            if verdict in ("apply", "same"):
                # Persist before the screen changes: after a power cut the phone must come back
                # in the state it last showed, and never re-apply an older command.
                self._save_protected(loaded)
            changed, _expired = self._refresh(loaded, note_expiry=False)
            outcome = self._outcome(verdict, envelope, phone, st.state)
            if verdict == "apply":
                st.unacked = {"seq": outcome.seq, "state": st.state}
            if verdict != "same":  # the command in force again (retained MQTT, every check-in): no news
                log_outcome(st, self.clock(), source, outcome)
            self.store.save_agent(st)
        if changed:
            self._changed()
        if verdict == "unknown_version" and source != "checkin" and self._can_reach_server():
            # The server answers a check-in in the version it speaks (and a newer command).
            with contextlib.suppress(ApiError, AgentError):
                self.checkin()
        self._send_ack()
        return outcome

    @staticmethod
    def _outcome(verdict: str, envelope: Any, phone: Phone | None, shown: str) -> Outcome:
        if verdict == "apply" and phone is not None and phone.command is not None:
            command = phone.command
            return Outcome("applied", str(command.get("reason") or ""), phone.last_seq, shown, verdict)
        if verdict == "same" and phone is not None:
            return Outcome("duplicate", f"already applied (seq {phone.last_seq})", phone.last_seq, shown, verdict)
        seq, state = seq_of(envelope), state_of(envelope)
        reason = VERDICT_REASONS.get(verdict, verdict)
        if verdict == "stale" and phone is not None:
            reason = f"{reason} (seq {seq} <= {phone.last_seq})"
        elif verdict == "released_final":
            reason = f"{reason}: {state} refused"
        return Outcome("rejected", reason, seq, state, verdict)

    def receive_key_statement(self, envelope: Any, source: str = "checkin") -> str:
        """One signed key statement of an enrolment or check-in answer's chain (apply them in order): the verdict.

        On ``apply`` the trusted set is replaced (and saved to protected storage) before any
        command of the same answer is checked, so a command signed by a newly announced key verifies.
        """
        with self._loaded() as loaded:
            phone = loaded.phone
            if phone is None:
                return "not_enrolled"
            before = phone.trusted_key_ids
            verdict = "stale" if keychain.held(phone, envelope) else phone.receive_key_statement(envelope)
            if verdict == "apply":
                self._save_protected(loaded)
            if verdict != "stale":
                keys = ", ".join(phone.trusted_key_ids)
                reason = f"trusted keys {keys} (statement {phone.key_statement_seq})" if verdict == "apply" else ""
                entry = {"at": format_time(self.clock()), "source": source, "event": f"key_statement_{verdict}"}
                entry["reason"] = reason or f"refused; still trusting {', '.join(before)}"
                append_dedup(loaded.st, entry)
                self.store.save_agent(loaded.st)
        return verdict

    def tick(self) -> bool:
        """Re-evaluate time: temporary unlocks, lease warnings and lease locks; checkpoint trusted time.

        Returns whether the screen changed. Called every second or so by the run loop. When a
        temporary unlock ends the phone checks in, so a payment made meanwhile unlocks it at
        once instead of at the next periodic check-in.
        """
        changed, expired = self._settle()
        if expired and self._can_reach_server():
            # A failure is logged by checkin, and the periodic check-in retries.
            with contextlib.suppress(ApiError, AgentError):
                self.checkin()
        return changed

    def _settle(self) -> tuple[bool, bool]:
        with self._loaded() as loaded:
            changed, expired = self._refresh(loaded)
            if changed:
                self.store.save_agent(loaded.st)
            due = self._checkpointed_at is None or loaded.monotonic - self._checkpointed_at >= CHECKPOINT_SECONDS
            if loaded.phone is not None and due:
                self._save_protected(loaded)
        if changed:
            self._changed()
        return changed, expired

    # --- enrolment and the server -------------------------------------------------------

    def install_enrolment(
        self,
        *,
        device: str,
        imei: str,
        imeis: list[str] | None = None,
        key_statements: list[Any] | None = None,
        server_keys: dict[str, str] | None = None,
        credential: str | None = None,
        server_url: str | None = None,
        mqtt_topic: str | None = None,
        offline: dict[str, Any] | None = None,
        mqtt: dict[str, Any] | None = None,
    ) -> None:
        """Record who this phone is (what ``enroll`` does with the server's answer).

        ``key_statements`` is the answer's chain, applied in order: a phone that trusts no key
        yet takes the first that verifies with a key it names (or with a pinned key); later
        ones need a key already trusted. ``server_keys`` provisions the trusted set directly (a factory
        tool, a test). ``imeis`` are every IMEI of the phone (dual SIM), ``imei`` the one it
        enrolled with. Public so a test, or a provisioning tool, can enrol without a server.
        """
        with self._loaded() as loaded:
            st, prot, old = loaded.st, loaded.prot, loaded.phone
            if old and old.device != str(device) and old.command and old.state != "released":
                # A phone holding a command never adopts another device id: it would start afresh
                # (no command, seq 0) and drop its lock. Nothing changes (docs/lock-pipeline.md).
                refused = f"this phone is device {old.device}, holding a {old.state} command, not {device}"
                append_log(st, {"at": format_time(self.clock()), "event": "enrol_refused", "reason": refused})
                self.store.save_agent(st)
                raise AgentError(f"enrolment refused: {refused}")
            digits = normalise_imei(imei)
            all_imeis = list(dict.fromkeys([digits, *(normalise_imei(i) for i in imeis or [])]))
            phone = old
            if phone is None or phone.device != str(device):
                # A new identity (re-provisioned for another contract): its numbering, its
                # command and what codes granted start over. The trusted keys and trusted time
                # are the phone's, not the contract's.
                phone = Phone(device=str(device), imeis=all_imeis, trusted_keys={})
                if old is not None:
                    phone.trusted_keys, phone.key_statement_seq = old.trusted_keys, old.key_statement_seq
                    phone.pinned_keys = old.pinned_keys
                    phone.anchor_at, phone.anchor_monotonic = old.anchor_at, old.anchor_monotonic
            phone.imeis = all_imeis
            loaded.phone = phone
            if server_keys:
                phone.trusted_keys = {str(k): str(v) for k, v in server_keys.items()}
            verdicts = keychain.apply_chain(phone, key_statements or [])
            if not phone.trusted_keys:
                why = f" (its key statement was refused: {', '.join(verdicts)})" if verdicts else ""
                raise AgentError(f"enrolment without server keys{why}: the phone could never verify a command")
            now = format_time(self.clock())
            if st.enrolment and st.enrolment.device != str(device):
                st.unacked = None
            st.enrolment = Enrolment(
                device=str(device),
                imei=digits,
                imeis=all_imeis,
                credential=credential,
                server_url=server_url,
                mqtt_topic=mqtt_topic or topic_for(str(device)),
                enrolled_at=now,
                **mqtt_account(mqtt),
            )
            note = install_offline(prot, offline)
            note += "".join(f"; key statement refused ({v})" for v in verdicts if v not in ("apply", "stale"))
            append_log(st, {"at": now, "event": "enrolled", "device": str(device), "reason": note})
            self._save_protected(loaded)
            self._refresh(loaded)
            self.store.save_agent(st)

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
        self,
        server_url: str,
        imei: str,
        enrollment_token: str,
        reenrollment_code: str | None = None,
        *,
        imeis: list[str] | None = None,
    ) -> Outcome:
        """``POST enroll/challenge``, sign it with the device key, ``POST enroll``, apply the current command.

        The same steps for the first enrolment and every later one (after a reset the
        device key is still in protected storage, so the server knows it is this phone).
        A phone that lost its protected storage has a new key the server does not know:
        it needs ``reenrollment_code`` from its provider's staff. A reset never removes a lock.
        ``imei`` is the IMEI it enrols with (either SIM slot); ``imeis`` every IMEI it has.
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
        missing = [k for k in ("device", "credential", "key_statements", "envelope") if not answer.get(k)]
        if missing:
            raise AgentError(f"the enrolment answer lacks {', '.join(missing)}")
        self.install_enrolment(
            device=answer["device"],
            imei=digits,
            imeis=imeis,
            key_statements=keychain.chain_of(answer),
            credential=answer["credential"],
            server_url=server_url,
            mqtt_topic=answer.get("mqtt_topic"),
            offline=answer.get("offline"),
            mqtt=answer.get("mqtt"),
        )
        return self.handle_envelope(answer["envelope"], source="enroll")

    def checkin(self) -> Outcome:
        """``POST checkin`` with what the phone shows; take the answer's key statement, then its command.

        This is how a missed push heals itself, and how a lease is renewed: the answer is
        always the current command (re-issued with a fresh lease when the lease moved).
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
        with self.store.locked():
            st = self.store.load_agent()
            st.last_checkin_at = format_time(self.clock())
            self.store.save_agent(st)
        for statement in keychain.chain_of(answer):
            self.receive_key_statement(statement, source="checkin")
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
        """Type an OpenPAYGO code on the lock screen: usable N days from now (trusted time), or released for good."""
        with self._loaded() as loaded:
            st, prot, phone = loaded.st, loaded.prot, loaded.phone
            if prot.offline.secret and (phone is None or not phone.has_trusted_time()):
                result = offline_codes.CodeResult(
                    False, "This phone has no trusted time yet: it must receive its first command before a code."
                )
            else:
                now = phone.trusted_now(loaded.monotonic) if phone else self.clock()
                result = offline_codes.apply_code(token, prot.offline, now, phone.offline_until if phone else None)
            if result.ok and phone is not None:
                if result.kind == "release":
                    phone.offline_release()
                elif result.kind in ("add_days", "set_days"):
                    phone.offline_code(days=result.days or 0, monotonic=loaded.monotonic, add=result.kind == "add_days")
            # The counter is saved before anything else, so a code can never be typed twice,
            # not even across a crash or a restart.
            if result.ok:
                self._save_protected(loaded)
            changed, _expired = self._refresh(loaded, note_expiry=False)
            append_log(
                st,
                {
                    "at": format_time(self.clock()),
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

        What a real finance-lock agent keeps in reset-protected storage survives: the phone
        model (trusted keys, the lock in force, last seq, trusted time, code grants) and the
        offline-code counters. So the lock screen stays, the phone must enrol again (and gets
        its current command back), and the owner's data directory is not touched by the
        agent. A reset never removes a lock; the lock never costs data.
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
