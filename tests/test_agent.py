"""The reference device agent, from the phone owner's and the provider's point of view.

No server here: each test plays the server itself with its own Ed25519 key, signing
commands and key statements exactly as docs/lock-pipeline.md says (protocol v2: the exact
payload bytes are signed), and hands them to an ``Agent`` whose state lives in a temporary
directory. The helpers (``Provider``, ``Clock``, ``FakeTransport``, ``agent_at``) are reused by
the HTTP, MQTT and lease agent tests.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import openpaygo
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from openpaygo import TokenType

from devices.agent import Agent, AgentError, ApiError, render_html, render_text
from devices.agent.render import WIDTH, ScreenView
from devices.protocol import (
    KIND_COMMAND,
    KIND_KEY_STATEMENT,
    b64,
    enrollment_message,
    payload_bytes,
    payload_of,
    seal,
    unb64,
)

REPO = Path(__file__).resolve().parent.parent
IMEI = "351234560000648"
IMEI2 = "351234560000655"  # the second SIM slot of the same phone
OFFLINE_SECRET = "dac86b1a29ab82edc5fbbc41ec9530f6"
OFFLINE_STARTING_CODE = 516959010
START = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)


def public_b64(key: Ed25519PrivateKey) -> str:
    return b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def lock_screen(**overrides) -> dict:
    """What the server puts on a Dialog Finance lock screen (keys from the spec)."""
    screen = {
        "language": "en",
        "title": "This phone is locked by Dialog Finance",
        "body": "An installment payment of LKR 12,500.00 has been overdue since 1 Nov 2026.",
        "provider": {"name": "Dialog Finance"},
        "amount_overdue": "12500.00",
        "currency": "LKR",
        "amount_overdue_display": "LKR 12,500.00",
        "overdue_since": "2026-11-01",
        "contract_number": "DLG-2026-000417",
        "imei": IMEI,
        "payment_channels": [
            {
                "name": "eZ Cash",
                "kind": "mobile_money",
                "account": "#111#",
                "reference": "DLG-2026-000417",
                "instructions": "Choose Pay bills, then Dialog Finance.",
            },
            {
                "name": "Commercial Bank",
                "kind": "bank_transfer",
                "account": "1000123456",
                "reference": "FIN DLG-2026-000417",
                "instructions": "",
            },
        ],
        "hotline_numbers": ["+94777575727"],
        "support_email": "finance@dialog.example",
        "website": "https://dialog.example/finance",
        "service_centers": [{"name": "Colombo Service Hub", "phone": "+94112345678", "website": ""}],
        "fallback": {
            "name": "finlock platform",
            "hotline_numbers": ["+94117100100"],
            "support_email": "help@finlock.example",
            "website": "https://finlock.example",
        },
        "data_kept_notice": "Your photos, messages and apps are safe.",
        "factory_reset_warning": "A factory reset will NOT remove this lock.",
        "offline_unlock_hint": "No internet? Call the hotline for an unlock code.",
    }
    screen.update(overrides)
    return screen


def wire(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    """The phone's clocks, moved by hand: the wall clock (``now``, only stamps the log; the
    owner may set it to anything) and the monotonic clock leases run on (restarts at a reboot)."""

    def __init__(self, now: dt.datetime = START):
        self.now = now
        self.mono = 1000.0
        self.boots = 1

    def __call__(self) -> dt.datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def boot_id(self) -> str:
        return f"boot-{self.boots}"

    def advance(self, **delta) -> None:
        step = dt.timedelta(**delta)
        self.now += step
        self.mono += step.total_seconds()

    def set_wall_clock(self, when: dt.datetime) -> None:
        """The owner changes the date in the settings: the monotonic clock does not move."""
        self.now = when

    def reboot(self, **off) -> None:
        """Off for ``off`` (the wall clock moves on), then on again: the monotonic clock restarts."""
        self.now += dt.timedelta(**off)
        self.mono, self.boots = 7.0, self.boots + 1


def agent_at(path, clock: Clock, **kwargs) -> Agent:
    """An agent on ``path`` whose clocks are ``clock``'s."""
    return Agent(path, clock=clock, monotonic=clock.monotonic, boot_id=clock.boot_id, **kwargs)


class Provider:
    """Plays the finlock server for one phone: holds the signing key, numbers the commands."""

    def __init__(
        self,
        key_id: str = "k2026a",
        device: str | None = None,
        imei: str = IMEI,
        *,
        imeis: list[str] | None = None,
        key: Ed25519PrivateKey | None = None,
        clock: Clock | None = None,
    ):
        self.key_id = key_id
        self.key = key or Ed25519PrivateKey.generate()
        self.device = device or str(uuid.uuid4())
        self.imei = imei
        self.imeis = imeis or [imei]
        self.clock = clock or Clock()
        self.seq = 0
        self.statement_seq = 0

    @property
    def server_keys(self) -> dict[str, str]:
        return {self.key_id: public_b64(self.key)}

    def command(self, state: str, seq: int | None = None, **overrides) -> dict:
        """A command payload with every member of docs/lock-pipeline.md, issued now (server time)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        command = {
            "kind": KIND_COMMAND,
            "device": self.device,
            "imeis": self.imeis,
            "seq": seq,
            "state": state,
            "reason": f"test: {state}",
            "issued_at": wire(self.clock.now),
            "expires_at": None,
            "lease_until": None,
            "lease_expiry_state": None,
            "lease_warning_days": 0,
            "paid_until": None,
            "offline_lock_days": None,
            "time_zone": "Asia/Colombo",
            "lock_window": None,
            "screen": {},
            "allowed_numbers": ["+94777575727", "119", "110", "112"],
        }
        if state in ("locked", "temp_unlocked"):
            command["screen"] = lock_screen()
        elif state in ("reminder", "unlocked"):
            command["screen"] = lock_screen(
                title="Payment reminder from Dialog Finance",
                body="Please pay LKR 12,500.00 for contract DLG-2026-000417 to keep using your phone.",
            )
        command.update(overrides)
        return command

    def envelope(self, state: str, seq: int | None = None, **overrides) -> dict:
        return self.seal(self.command(state, seq, **overrides))

    def seal(self, payload: dict, key: Ed25519PrivateKey | None = None) -> dict:
        return seal(payload_bytes(payload), key_id=self.key_id, private_key=key or self.key)

    def key_statement(
        self, keys: dict[str, str] | None = None, *, seq: int | None = None, signer: Provider | None = None
    ) -> dict:
        """The signed statement of the keys phones must trust (this provider's own by default)."""
        if seq is None:
            seq = self.statement_seq + 1
        self.statement_seq = max(self.statement_seq, seq)
        body = payload_bytes(
            {
                "kind": KIND_KEY_STATEMENT,
                "seq": seq,
                "issued_at": wire(self.clock.now),
                "keys": keys or self.server_keys,
            }
        )
        signer = signer or self
        return seal(body, key_id=signer.key_id, private_key=signer.key)

    def enrol(self, agent: Agent, **extra) -> None:
        extra.setdefault("key_statements", [self.key_statement(seq=max(self.statement_seq, 1))])
        agent.install_enrolment(
            device=self.device,
            imei=self.imei,
            offline={"secret": OFFLINE_SECRET, "starting_code": OFFLINE_STARTING_CODE},
            **extra,
        )


class FakeTransport:
    """Records what the phone sends; answers check-ins with ``checkin_answer``."""

    def __init__(self, agent_dir: Path | None = None):
        self.calls: list[tuple[str, dict, str | None]] = []
        self.checkin_answer: dict | None = None
        self.fail_acks = False
        self.refuse_acks = False
        self.agent_dir = agent_dir
        self.seq_on_disk_at_ack: list[int] = []

    def post(self, server_url, call, body, credential=None):
        self.calls.append((call, body, credential))
        if call == "ack":
            if self.agent_dir is not None:
                # What a crash right now would leave: the acknowledged command must already be in
                # protected storage.
                on_disk = json.loads((self.agent_dir / "protected" / "lock.json").read_text())
                self.seq_on_disk_at_ack.append(on_disk["phone"]["last_seq"])
            if self.fail_acks:
                raise ApiError("cannot reach server: connection refused")
            if self.refuse_acks:
                raise ApiError("POST ack answered 400", status=400)
            return {"ok": True}
        if call == "checkin":
            return self.checkin_answer
        raise AssertionError(f"unexpected call {call}")

    def bodies(self, call: str) -> list[dict]:
        return [body for name, body, _cred in self.calls if name == call]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def provider(clock):
    return Provider(clock=clock)


@pytest.fixture
def phone(tmp_path, provider, clock):
    """An enrolled phone with no server to talk to (acknowledgements wait)."""
    agent = agent_at(tmp_path / "phone", clock)
    provider.enrol(agent)
    return agent


def last_log(agent: Agent) -> dict:
    return agent.log[-1]


def reads(text_or_agent) -> str:
    """What the owner reads on the terminal screen: the box's text, lines joined, borders gone."""
    text = text_or_agent.render_text() if isinstance(text_or_agent, Agent) else text_or_agent
    inner = [line[1:-1].strip() for line in text.splitlines() if line.startswith("│")]
    return " ".join(" ".join(inner).split())


# --- the lock reaches the phone ---------------------------------------------------------


def test_owner_of_a_locked_phone_sees_who_locked_it_how_much_is_owed_and_whom_to_call(phone, provider):
    outcome = phone.handle_envelope(provider.envelope("locked"), source="mqtt")

    assert outcome.accepted and outcome.state == "locked"
    assert phone.state.state == "locked" and phone.state.last_seq == 1
    screen = reads(phone)
    assert "Dialog Finance" in screen
    assert "LKR 12,500.00" in screen
    assert "DLG-2026-000417" in screen
    assert "+94777575727" in screen
    assert "Emergency call" in screen
    assert last_log(phone)["event"] == "applied" and last_log(phone)["source"] == "mqtt"


def test_every_way_to_pay_shows_the_exact_account_and_reference(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))

    screen = reads(phone)
    assert "eZ Cash (mobile money)" in screen
    assert "Account: #111#" in screen
    assert "Reference: FIN DLG-2026-000417" in screen
    assert "Colombo Service Hub" in screen
    assert "finlock platform" in screen  # the fallback when the provider cannot be reached


def test_the_phone_persists_a_command_before_acknowledging_it(tmp_path, provider, clock):
    transport = FakeTransport(agent_dir=tmp_path / "phone")
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    provider.enrol(agent, credential="cred-123", server_url="http://finlock.test")

    agent.handle_envelope(provider.envelope("locked"))

    assert transport.bodies("ack") == [{"seq": 1, "state": "locked"}]
    assert transport.seq_on_disk_at_ack == [1]
    assert transport.calls[-1][2] == "cred-123"
    assert agent.state.unacked is None


def test_an_unreachable_server_gets_the_acknowledgement_at_the_next_check_in(tmp_path, provider, clock):
    transport = FakeTransport()
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    provider.enrol(agent, credential="cred-123", server_url="http://finlock.test")
    transport.fail_acks = True
    lock = provider.envelope("locked")

    assert agent.handle_envelope(lock).accepted  # applied even though the ack failed
    assert agent.state.state == "locked"
    assert agent.state.unacked == {"seq": 1, "state": "locked"}
    assert last_log(agent)["event"] == "ack_failed"

    transport.fail_acks = False
    transport.checkin_answer = {"envelope": lock}  # the server still says the same
    assert agent.checkin().status == "duplicate"
    assert transport.bodies("checkin")[-1] == {"state": "locked", "last_seq": 1, "app_version": agent.app_version}
    assert transport.bodies("ack")[-1] == {"seq": 1, "state": "locked"}
    assert agent.state.unacked is None


def test_an_acknowledgement_the_server_refuses_is_not_retried_forever(tmp_path, provider, clock):
    transport = FakeTransport()
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    provider.enrol(agent, credential="cred-123", server_url="http://finlock.test")
    transport.refuse_acks = True
    lock = provider.envelope("locked")

    agent.handle_envelope(lock)
    transport.checkin_answer = {"envelope": lock}
    agent.checkin()

    assert len(transport.bodies("ack")) == 1
    assert agent.state.unacked is None
    assert agent.state.state == "locked"
    assert any(e["event"] == "ack_refused" for e in agent.log)


def test_the_same_command_delivered_again_is_not_an_error(phone, provider):
    lock = provider.envelope("locked")
    phone.handle_envelope(lock, source="mqtt")
    entries = len(phone.log)

    again = phone.handle_envelope(lock, source="checkin")  # retained MQTT + check-in both deliver it

    assert again.status == "duplicate"
    assert phone.state.state == "locked"
    assert len(phone.log) == entries


# --- what the phone refuses ---------------------------------------------------------------


def test_a_late_unlock_never_overrides_a_newer_lock(phone, provider):
    """The owner replays an old unlock (or it arrives late): the phone stays locked."""
    old_unlock = provider.envelope("unlocked", seq=5)
    phone.handle_envelope(old_unlock)
    phone.handle_envelope(provider.envelope("locked", seq=6))

    outcome = phone.handle_envelope(old_unlock, source="mqtt")

    assert not outcome.accepted and outcome.verdict == "stale"
    assert outcome.reason == "replayed or stale (seq 5 <= 6)"
    assert phone.state.state == "locked"
    assert last_log(phone)["event"] == "rejected"
    assert last_log(phone)["reason"] == "replayed or stale (seq 5 <= 6)"


def test_a_late_lock_never_overrides_a_newer_unlock(phone, provider):
    """The provider's view: once a payment unlocked the phone, a delayed lock cannot re-lock it."""
    late_lock = provider.envelope("locked", seq=3)
    phone.handle_envelope(provider.envelope("unlocked", seq=4))

    assert phone.handle_envelope(late_lock).reason == "replayed or stale (seq 3 <= 4)"
    assert phone.state.state == "unlocked"


def test_a_forged_signature_is_refused(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))
    forger = Ed25519PrivateKey.generate()
    forged = provider.seal(provider.command("unlocked"), key=forger)  # right key id, wrong key

    outcome = phone.handle_envelope(forged)

    assert outcome.verdict == "bad_signature" and outcome.reason == "bad signature"
    assert phone.state.state == "locked"


def test_a_command_altered_after_signing_is_refused(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))
    envelope = provider.envelope("locked")
    altered = payload_of(envelope) | {"state": "unlocked"}
    envelope["payload"] = b64(payload_bytes(altered))  # the signature was made over other bytes

    assert phone.handle_envelope(envelope).verdict == "bad_signature"
    assert phone.state.state == "locked"


def test_a_command_signed_with_an_unknown_key_is_refused(phone, provider):
    stranger = Provider(key_id="k-unknown", device=provider.device)

    outcome = phone.handle_envelope(stranger.envelope("unlocked", seq=9))

    assert outcome.verdict == "unknown_key"
    assert phone.state.last_seq == 0


@pytest.mark.parametrize(
    "field,value",
    [("device", str(uuid.uuid4())), ("imeis", ["490154203237518"])],
    ids=["another device id", "another IMEI"],
)
def test_a_validly_signed_command_for_another_phone_is_refused(phone, provider, field, value):
    envelope = provider.envelope("unlocked", **{field: value})

    outcome = phone.handle_envelope(envelope)

    assert outcome.verdict == "other_device" and outcome.reason == "command for another device"
    assert phone.state.last_seq == 0


def test_garbage_on_the_channel_is_refused_not_fatal(phone, provider):
    good = provider.envelope("locked")
    cases = {
        b"not json at all": "malformed",
        b"[1, 2]": "malformed",
        b"x" * 40_000: "too_large",
        json.dumps({"command": "x"}): "unknown_version",  # a v1 envelope: the phone checks in
        json.dumps(good | {"v": 3}): "unknown_version",
        json.dumps(good | {"v": True}): "unknown_version",
        json.dumps(good | {"key_id": 7}): "malformed",
        json.dumps(good | {"payload": good["payload"].rstrip("=")}): "malformed",  # base64 without padding
        json.dumps(good | {"signature": b64(b"short")}): "bad_signature",
        json.dumps(provider.key_statement()): "wrong_kind",  # a signed statement is not a command
        json.dumps(provider.seal(provider.command("locked", seq=0))): "malformed",
    }
    for raw, verdict in cases.items():
        assert phone.handle_envelope(raw).verdict == verdict, raw[:60]
    assert phone.state.last_seq == 0
    assert phone.handle_envelope(json.dumps(good)).accepted  # the same envelope as text applies


def test_a_phone_that_has_not_enrolled_applies_nothing(tmp_path, provider):
    agent = Agent(tmp_path / "phone")

    outcome = agent.handle_envelope(provider.envelope("locked"))

    assert outcome.verdict == "not_enrolled" and outcome.reason == "not enrolled: no trusted keys to verify with"


def test_a_paid_off_phone_stays_released_for_good(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))
    assert phone.handle_envelope(provider.envelope("released")).accepted

    outcome = phone.handle_envelope(provider.envelope("locked"))

    assert not outcome.accepted
    assert outcome.reason == "released is final: locked refused"
    assert phone.state.state == "released"
    assert "Released" in reads(phone)
    assert phone.handle_envelope(provider.envelope("released")).accepted  # another release is fine


def test_the_log_stays_bounded_and_counts_repeated_refusals(phone, provider, monkeypatch):
    monkeypatch.setattr("devices.agent.state.LOG_LIMIT", 12)  # the real bound is LOG_LIMIT; same code path
    phone.handle_envelope(provider.envelope("locked", seq=10))
    stale = provider.envelope("unlocked", seq=2)
    for _ in range(3):
        phone.handle_envelope(stale, source="checkin")
    assert last_log(phone)["repeated"] == 3

    for seq in range(11, 11 + 20):
        phone.handle_envelope(provider.envelope("locked", seq=seq))
    assert len(phone.log) == 12
    assert phone.log[-1]["seq"] == 30  # the newest are kept


# --- who the phone is, and whom it trusts ------------------------------------------------------


def test_a_dual_sim_phone_enrolled_with_its_second_imei_applies_commands_naming_both(tmp_path, clock):
    provider = Provider(imei=IMEI2, imeis=[IMEI, IMEI2], clock=clock)  # the server knows both slots
    transport = FakeTransport()
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    transport.post = lambda url, call, body, cred=None: (
        transport.calls.append((call, body, cred))
        or {
            "enroll/challenge": {"challenge": "Y2hhbGxlbmdl"},
            "enroll": {
                "device": provider.device,
                "credential": "cred",
                "key_statements": [provider.key_statement()],
                "envelope": provider.envelope("locked"),
            },
        }.get(call, {"ok": True})
    )

    outcome = agent.enroll("http://finlock.test", IMEI2, "enrol-token", imeis=[IMEI2, IMEI])

    assert outcome.accepted and agent.state.state == "locked"
    assert transport.bodies("enroll")[0]["imei"] == IMEI2
    assert agent.state.enrolment.imeis == [IMEI2, IMEI]
    # A command naming only the first slot is still this phone's; another phone's IMEI is not.
    assert agent.handle_envelope(provider.envelope("unlocked", imeis=[IMEI])).accepted
    refused = agent.handle_envelope(provider.envelope("locked", imeis=["490154203237518"]))
    assert refused.verdict == "other_device" and agent.state.state == "unlocked"


def test_the_signing_key_rotates_through_key_statements_at_check_in(tmp_path, clock):
    """docs/lock-pipeline.md, "Rotation": announce (signed by old), sign with new, retire old (signed by new)."""
    old = Provider(key_id="k2026a", clock=clock)
    new = Provider(key_id="k2027a", device=old.device, clock=clock)
    transport = FakeTransport()
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    old.enrol(agent, credential="cred", server_url="http://finlock.test")
    chain = [old.key_statement(seq=1)]  # the server's answers carry every statement, oldest first
    transport.checkin_answer = {"envelope": old.envelope("locked", seq=1), "key_statements": chain}
    agent.checkin()

    # (1) The new key is announced, signed by the old one.
    both = {**old.server_keys, **new.server_keys}
    chain.append(old.key_statement(both))
    transport.checkin_answer = {"envelope": old.envelope("locked", seq=1), "key_statements": chain}
    agent.checkin()
    assert agent.phone.trusted_key_ids == ["k2026a", "k2027a"] and agent.phone.key_statement_seq == 2
    # (2) Commands are now signed by the new key.
    transport.checkin_answer = {"envelope": new.envelope("unlocked", seq=2), "key_statements": chain}
    assert agent.checkin().accepted
    # (3) The old key is retired by a statement the new key signs: it is no longer trusted. The
    #     statements it signed stay in the chain; the phone skips them as held, unverified.
    chain.append(old.key_statement(new.server_keys, seq=3, signer=new))
    transport.checkin_answer = {"envelope": new.envelope("unlocked", seq=2), "key_statements": chain}
    agent.checkin()
    agent.checkin()
    assert agent.phone.trusted_key_ids == ["k2027a"]
    assert agent.handle_envelope(old.envelope("locked", seq=3)).verdict == "unknown_key"
    assert agent.protected.phone["trusted_keys"] == new.server_keys  # kept through a reset
    assert [e["event"] for e in agent.log if e["event"].startswith("key_statement")] == ["key_statement_apply"] * 2


def test_a_key_statement_from_an_untrusted_key_or_an_old_one_changes_nothing(phone, provider):
    attacker = Provider(key_id="k2026a", device=provider.device)  # claims the trusted key id
    assert phone.receive_key_statement(attacker.key_statement(attacker.server_keys, seq=9)) == "bad_signature"
    stranger = Provider(key_id="k-evil", device=provider.device)
    assert phone.receive_key_statement(stranger.key_statement(seq=9)) == "unknown_key"
    assert phone.receive_key_statement(provider.key_statement(seq=1)) == "stale"  # the one it holds
    bad_key = provider.key_statement({"k-short": b64(b"not 32 bytes")}, seq=5)
    assert phone.receive_key_statement(bad_key) == "malformed"
    assert phone.receive_key_statement(provider.envelope("locked")) == "wrong_kind"

    assert phone.phone.trusted_key_ids == ["k2026a"] and phone.phone.key_statement_seq == 1
    assert phone.handle_envelope(provider.envelope("locked")).accepted
    assert phone.log[-2]["event"] == "key_statement_wrong_kind"


def test_a_new_phone_refuses_an_enrolment_whose_statement_does_not_verify(tmp_path, clock):
    provider, other = Provider(clock=clock), Provider(key_id="k2026a", clock=clock)
    agent = agent_at(tmp_path / "phone", clock)

    with pytest.raises(AgentError, match="its key statement was refused: bad_signature"):
        provider.enrol(agent, key_statements=[provider.key_statement(signer=other)])
    assert agent.phone is None or not agent.phone.trusted_keys


def test_an_envelope_of_an_unknown_version_is_refused_and_the_phone_checks_in(tmp_path, provider, clock):
    transport = FakeTransport()
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    provider.enrol(agent, credential="cred", server_url="http://finlock.test")
    transport.checkin_answer = {
        "envelope": provider.envelope("locked"),
        "key_statements": [provider.key_statement(seq=1)],
    }

    outcome = agent.handle_envelope(provider.envelope("unlocked") | {"v": 3}, source="mqtt")

    assert outcome.verdict == "unknown_version"
    assert len(transport.bodies("checkin")) == 1  # the server answers in the version it speaks
    assert agent.state.state == "locked" and agent.state.last_seq == 1


# --- restart, reset, and the owner's data -----------------------------------------------------


def test_the_lock_survives_a_reboot(phone, provider, clock):
    old_unlock = provider.envelope("unlocked")
    phone.handle_envelope(old_unlock)
    phone.handle_envelope(provider.envelope("locked"))

    rebooted = agent_at(phone.store.root, clock)

    assert rebooted.state.state == "locked" and rebooted.state.last_seq == 2
    assert "LKR 12,500.00" in reads(rebooted)
    assert rebooted.handle_envelope(old_unlock).reason == "replayed or stale (seq 1 <= 2)"


def test_a_factory_reset_keeps_the_owners_data_and_does_not_remove_the_lock(tmp_path, provider, clock):
    transport = FakeTransport()
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    provider.enrol(agent, credential="old-cred", server_url="http://finlock.test")
    old_unlock = provider.envelope("unlocked")
    agent.handle_envelope(old_unlock)
    current_lock = provider.envelope("locked")
    agent.handle_envelope(current_lock)
    photo = agent.user_data_dir / "DCIM" / "beach.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"\xff\xd8 the owner's photo")

    agent.factory_reset()

    # The reset did what a reset does to the agent: the enrolment and credential are gone ...
    assert agent.state.enrolment is None
    assert agent.phone.last_seq == 2  # (the last applied seq is in reset-protected storage)
    # ... but the owner's data is untouched, and the lock screen is still there.
    assert photo.read_bytes() == b"\xff\xd8 the owner's photo"
    assert agent.state.state == "locked"
    assert "LKR 12,500.00" in reads(agent)

    # Enrolling again: the server answers with the current lock, and the phone applies it.
    def enroll_answer(server_url, call, body, credential=None):
        transport.calls.append((call, body, credential))
        if call == "enroll/challenge":
            return {"challenge": "Y2hhbGxlbmdl", "expires_in": 300}
        if call == "enroll":
            return {
                "device": provider.device,
                "credential": "new-cred",
                "key_statements": [provider.key_statement(seq=1)],  # the one it already holds
                "offline": None,  # handed out once, at the first enrolment; the phone kept it
                "mqtt_topic": f"finlock/v1/devices/{provider.device}/command",
                "envelope": current_lock,
            }
        return {"ok": True}

    transport.post = enroll_answer
    assert agent.enroll("http://finlock.test", IMEI, "enrol-token").verdict == "same"  # the lock it kept
    sent = transport.bodies("enroll")[0]
    assert sent["imei"] == IMEI and sent["challenge"] == "Y2hhbGxlbmdl"
    public = Ed25519PrivateKey.from_private_bytes(unb64(agent.protected.device_key)).public_key()
    assert sent["device_key"] == b64(public.public_bytes_raw())
    message = enrollment_message(challenge="Y2hhbGxlbmdl", imei=IMEI, device_key=sent["device_key"])
    public.verify(unb64(sent["signature"]), message)  # raises if the phone signed anything else
    assert agent.state.enrolment.credential == "new-cred"
    assert agent.state.state == "locked" and agent.state.last_seq == 2
    assert agent.protected.offline.secret == OFFLINE_SECRET
    assert agent.handle_envelope(old_unlock).reason == "replayed or stale (seq 1 <= 2)"
    assert photo.exists()


def test_after_a_reset_an_older_command_is_refused_even_as_the_first_one_after_enrolling_again(
    tmp_path, provider, clock
):
    """The reset wipes agent.json and its last seq; reset-protected storage keeps it, so a replay cannot unlock."""
    agent = agent_at(tmp_path / "phone", clock)
    provider.enrol(agent)
    old_unlock = provider.envelope("unlocked")
    agent.handle_envelope(old_unlock)
    agent.handle_envelope(provider.envelope("locked"))
    agent.factory_reset()

    provider.enrol(agent)  # enrolled again; whoever answers first replays the old unlock
    outcome = agent.handle_envelope(old_unlock)

    assert outcome.status == "rejected" and outcome.verdict == "stale"
    assert agent.view().state == "locked"
    assert agent.handle_envelope(provider.envelope("unlocked")).accepted  # a newer command still applies
    assert agent.protected.phone["last_seq"] == 3


def test_a_phone_re_provisioned_under_a_new_identity_does_not_keep_the_old_lock(tmp_path, clock):
    """Sold again on a new contract after a reset: the old contract's release must not bind it."""
    first = Provider(clock=clock)
    agent = agent_at(tmp_path / "phone", clock)
    first.enrol(agent)
    agent.handle_envelope(first.envelope("released"))
    agent.factory_reset()
    assert agent.state.state == "released"  # still released until the phone enrols again

    second = Provider(key=first.key, clock=clock)  # the same server: the same signing key
    second.enrol(agent)

    assert agent.handle_envelope(second.envelope("locked")).accepted
    assert agent.state.state == "locked"


def test_no_command_deletes_anything_in_the_owners_data(phone, provider):
    note = phone.user_data_dir / "notes.txt"
    note.write_text("shopping list")
    for state in ("reminder", "locked", "unlocked", "locked", "released"):
        phone.handle_envelope(provider.envelope(state))

    assert note.read_text() == "shopping list"


# --- temporary unlock -----------------------------------------------------------------------


def test_a_temporary_unlock_ends_with_the_lock_screen_and_a_check_in(tmp_path, provider, clock):
    transport = FakeTransport()
    agent = agent_at(tmp_path / "phone", clock, transport=transport)
    provider.enrol(agent, credential="cred", server_url="http://finlock.test")
    agent.handle_envelope(provider.envelope("locked"))
    temp = provider.envelope("temp_unlocked", expires_at="2026-11-23T11:00:00Z")
    assert agent.handle_envelope(temp).accepted
    assert agent.state.state == "temp_unlocked"
    assert "until 2026-11-23 11:00 UTC" in reads(agent)

    transport.checkin_answer = {"envelope": temp}  # nothing new on the server yet
    clock.advance(hours=2, minutes=1)
    assert agent.tick() is True

    assert agent.state.state == "locked"
    assert "LKR 12,500.00" in reads(agent)
    assert [e for e in agent.log if e["event"] == "expired"][-1]["state"] == "locked"
    assert transport.bodies("checkin")[-1]["state"] == "locked"


def test_a_temporary_unlock_that_expired_while_the_agent_was_not_running_is_over_when_it_starts(phone, provider, clock):
    phone.handle_envelope(provider.envelope("locked"))
    phone.handle_envelope(provider.envelope("temp_unlocked", expires_at="2026-11-23T10:00:00Z"))
    clock.advance(days=1)  # the same boot: the monotonic clock counted the day

    restarted = agent_at(phone.store.root, clock)

    assert restarted.state.state == "locked"


def test_extending_a_temporary_unlock_still_falls_back_to_the_lock(phone, provider, clock):
    phone.handle_envelope(provider.envelope("locked"))
    phone.handle_envelope(provider.envelope("temp_unlocked", expires_at="2026-11-23T10:00:00Z"))
    phone.handle_envelope(provider.envelope("temp_unlocked", expires_at="2026-11-24T10:00:00Z"))

    clock.advance(days=2)
    phone.tick()

    assert phone.state.state == "locked"


def test_a_temporary_unlock_without_an_expiry_is_refused(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))

    outcome = phone.handle_envelope(provider.envelope("temp_unlocked", expires_at=None))

    assert outcome.verdict == "malformed"
    assert phone.state.state == "locked"


# --- offline unlock codes (OpenPAYGO Token) ---------------------------------------------------


def offline_code(count: int, days: int | None = None, token_type: int = TokenType.ADD_TIME) -> tuple[int, str]:
    """What the provider's hotline reads out: (the new count, the digits)."""
    return openpaygo.generate_token(
        secret_key=OFFLINE_SECRET,
        count=count,
        value=days,
        token_type=token_type,
        starting_code=OFFLINE_STARTING_CODE,
    )


def test_an_offline_code_unlocks_the_phone_for_its_days_and_only_once(phone, provider, clock):
    """No data on the phone: the owner pays, calls the hotline, types the code read out."""
    phone.handle_envelope(provider.envelope("locked"))
    _count, token = offline_code(count=0, days=7)

    result = phone.enter_code(token)

    assert result.ok and result.days == 7
    assert phone.state.state == "unlocked" and phone.view().offline_unlock  # unlocked by offline code
    assert phone.state.expires_at == "2026-11-30T09:00:00Z"
    assert "by an offline code" in reads(phone)

    replay = phone.enter_code(token)
    assert not replay.ok and replay.message == "That code has already been used on this phone."

    # Still used after a reboot, and after a factory reset: the counter is in protected storage.
    assert not agent_at(phone.store.root, clock).enter_code(token).ok
    phone.factory_reset()
    assert not phone.enter_code(token).ok

    clock.advance(days=7, seconds=1)
    phone.tick()
    assert phone.state.state == "locked"


def test_two_offline_codes_add_up(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))
    count, first = offline_code(count=0, days=3)
    _count, second = offline_code(count=count, days=4)

    assert phone.enter_code(first).ok
    assert phone.enter_code(second).ok

    assert phone.state.expires_at == "2026-11-30T09:00:00Z"


def test_the_paid_off_code_releases_the_phone_for_good(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))
    _count, token = offline_code(count=0, token_type=TokenType.DISABLE_PAYG)

    result = phone.enter_code(token)

    assert result.ok and result.kind == "release"
    assert phone.state.state == "released"
    assert phone.handle_envelope(provider.envelope("locked")).reason == "released is final: locked refused"


@pytest.mark.parametrize("typed", ["123456789", "12345", "not-a-code", "1234567890123"])
def test_a_wrong_offline_code_is_refused_and_changes_nothing(phone, provider, typed):
    phone.handle_envelope(provider.envelope("locked"))

    result = phone.enter_code(typed)

    assert not result.ok
    assert phone.state.state == "locked"
    assert phone.protected.offline.last_count == 0
    assert last_log(phone)["event"] == "code_refused"


def test_offline_codes_typed_with_spaces_are_accepted(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))
    _count, token = offline_code(count=0, days=1)

    assert phone.enter_code(f"{token[:3]} {token[3:6]} {token[6:]}").ok


# --- the screen -------------------------------------------------------------------------------


def test_the_html_lock_screen_is_phone_sized_self_contained_and_callable(phone, provider):
    phone.handle_envelope(provider.envelope("locked"))

    page = phone.render_html()

    assert '<meta name="viewport" content="width=360">' in page
    assert "width:360px;height:800px" in page
    assert 'id="emergency-call" href="tel:112">Emergency call</a>' in page
    assert 'href="tel:+94777575727"' in page  # the hotline, one tap away
    assert 'id="amount">LKR 12,500.00<' in page
    assert "DLG-2026-000417" in page
    assert "<script" not in page and "src=" not in page and "@import" not in page
    assert "default-src 'none'" in page


def test_the_html_screen_escapes_whatever_the_server_sends(phone, provider):
    evil = '<script>alert("x")</script>'
    screen = lock_screen(
        provider={"name": f"Acme {evil}"},
        hotline_numbers=["+94777575727", 'javascript:alert(1)"><script>'],
        payment_channels=[{"name": evil, "account": "<b>1</b>", "reference": "R&D"}],
    )
    phone.handle_envelope(provider.envelope("locked", screen=screen))

    page = phone.render_html()

    assert "<script>" not in page
    assert "Acme &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;1&lt;/b&gt;" in page and "R&amp;D" in page
    # Links are only ever tel: with dialable characters, whatever the server calls a number.
    assert 'href="tel:+94777575727"' in page
    assert re.findall(r'href="([^"]*)"', page) == [
        re.match(r"tel:[0-9+*#]+", href).group(0) for href in re.findall(r'href="([^"]*)"', page)
    ]


@pytest.mark.parametrize("state", ["locked", "reminder", "temp_unlocked", "unlocked", "released"])
@pytest.mark.parametrize(
    "screen",
    [
        {},
        {"title": None, "provider": "Plain string provider", "payment_channels": "nope", "fallback": []},
        {"hotline_numbers": "+94777575727", "service_centers": [None, 3, {"name": "Hub"}], "amount_overdue": 5},
        lock_screen(),
    ],
    ids=["empty", "wrong types", "odd shapes", "full"],
)
def test_a_partial_or_malformed_screen_still_renders_with_an_emergency_button(state, screen):
    view = ScreenView(
        state=state,
        screen=screen,
        allowed_numbers=["119"],
        expires_at=START if state == "temp_unlocked" else None,
    )

    text = render_text(view)
    page = render_html(view)

    assert "Emergency call" in text and 'id="emergency-call"' in page
    assert all(len(line) == WIDTH for line in text.splitlines())


def test_the_terminal_screen_is_a_40_column_box_even_for_long_words():
    screen = lock_screen(body="Pay at " + "x" * 100 + " today", contract_number="C-" + "9" * 60)
    text = render_text(ScreenView(state="locked", screen=screen))

    lines = text.splitlines()
    assert lines[0].startswith("┌") and lines[-1].startswith("└")
    assert all(len(line) == WIDTH for line in lines)


def test_a_reminder_is_a_banner_on_a_usable_phone(phone, provider):
    phone.handle_envelope(provider.envelope("reminder"))

    text, page = reads(phone), phone.render_html()

    assert "works normally" in text and "LKR 12,500.00" in text
    assert 'class="banner"' in page and "works normally" in page


def test_an_unlocked_phone_shows_no_restrictions(phone, provider):
    phone.handle_envelope(provider.envelope("unlocked"))

    assert "No restrictions" in reads(phone)
    assert "No restrictions" in phone.render_html()


# --- the agent is a phone, not a server ---------------------------------------------------------


def test_the_agent_imports_no_django_and_no_server_module():
    code = (
        "import sys, devices.agent, devices.agent.__main__, devices.agent.mqtt\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'portal', 'payments')"
        " or (m.startswith('devices.') and not m.startswith(('devices.agent', 'devices.protocol'))))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={"PATH": "/usr/bin:/bin"})


def test_the_command_line_shows_status_renders_html_and_takes_codes(phone, provider, tmp_path):
    phone.handle_envelope(provider.envelope("locked"))
    _count, token = offline_code(count=0, days=2)

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "devices.agent", *args, "--state-dir", str(phone.store.root)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        )

    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "state:       locked" in status.stdout and "LKR 12,500.00" in reads(status.stdout)

    html_path = tmp_path / "screen.html"
    assert cli("render", "--html", str(html_path)).returncode == 0
    assert 'id="emergency-call"' in html_path.read_text()

    assert cli("enter-code", token).returncode == 0
    refused = cli("enter-code", token)
    assert refused.returncode == 1 and "already been used" in refused.stdout

    phone.install_enrolment(
        device=provider.device,
        imei=IMEI,
        key_statements=[provider.key_statement(seq=1)],
        credential="device-cred-secret",
    )
    dump = cli("status", "--json").stdout
    assert json.loads(dump)["agent"]["state"] == "unlocked"  # by the offline code
    # The secret mints codes and the credential impersonates the phone: never printed.
    assert OFFLINE_SECRET not in dump and "device-cred-secret" not in dump

    reset = cli("factory-reset")
    assert reset.returncode == 0 and "LKR 12,500.00" in reads(reset.stdout)
