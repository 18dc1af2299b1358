"""A phone trusts a command only if finlock's key signed its exact bytes, across key rotations (protocol v2).

Stories:
* the signature covers the exact UTF-8 bytes the server wrote, carried in the envelope as
  they are: a Sinhala lock screen with a no-break space (U+00A0) verifies without any
  escaping, and nobody has to reproduce anyone's serialisation (no canonical form);
* any change of those bytes, or of the key that claims to have signed them, is refused;
* the envelope's encodings are exactly one: standard base64 with padding, a 64-byte
  signature; anything else is malformed or a bad signature, never "probably fine";
* an envelope of another version is refused as such (the phone checks in and learns);
* a signature made for a command never passes as a key statement, nor the other way;
* the server writes a new signed key statement (seq + 1, audited) only when its configured set
  adds keys no statement ever listed or drops keys the operator named in
  DEVICE_SIGNING_RETIRED_KEYS, signed by a key the newest statement lists; a rotation in three
  steps moves phones to the new key without ever asking them to trust a key nobody they trust
  vouched for;
* a worker still on an older configuration serves the newest statement, writes nothing and logs
  the difference once: it can neither take back an announced key, nor bring back a retired one,
  nor sign with a key the phones do not trust yet (the outsider review's stranded phones);
* answers carry the newest 64 statements, oldest first: a phone that missed one catches up, and a
  new phone trusts the oldest it can verify (with its own keys, or a pinned key), then the rest;
* a developer without configuration gets a key generated once, private to its
  owner, and the same key on every restart;
* an operator with a malformed key, or none in production, is stopped at start-up
  with a message naming the variable.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import string
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.core.management import call_command
from django.test import override_settings

from devices import protocol
from devices.keys import (
    CHAIN_LENGTH,
    UntrustedSigner,
    current_signer,
    key_statements,
    public_key_b64,
    public_keys,
)
from devices.models import Device, KeyStatement
from devices.protocol import KIND_COMMAND, KIND_KEY_STATEMENT, Rejected, b64
from devices.services.commands import StateChange, device_current_envelope, device_states_apply
from portal.env import ImproperEnvironment, env_keyed_bytes
from portal.models import AuditEvent
from tests.factories import DeviceFactory, make_command
from tests.phone import first_trust, learn
from tests.test_settings import _manage

ROOT = Path(__file__).resolve().parent.parent

SINHALA_TITLE = "ගෙවීම ප්\u200dරමාද වී ඇත"  # "payment overdue", with a zero-width joiner
AMOUNT = "රු.\u00a012,500.00"  # Rs.<U+00A0>12,500.00, as the screen shows it

COMMAND = {
    "kind": "command",
    "device": "6f1c1f0e-2f4e-4c7b-9a57-8d1c2b3a4f50",
    "imeis": ["351234560000648", "358765430000012"],
    "seq": 7,
    "state": "locked",
    "reason": "Installment of 1 Nov 2026 overdue 12 days (grace 3 days)",
    "issued_at": "2026-11-23T09:00:04Z",
    "expires_at": None,
    "lease_until": None,
    "lease_expiry_state": None,
    "lease_warning_days": 3,
    "paid_until": None,
    "offline_lock_days": None,
    "time_zone": "Asia/Colombo",
    "lock_window": {"start_hour": 8, "end_hour": 18, "weekdays": [0, 1, 2, 3, 4]},
    "screen": {"language": "si", "title": SINHALA_TITLE, "amount_overdue": AMOUNT, "emergency": True},
    "allowed_numbers": ["+94117100100", "119"],
}


def seed() -> bytes:
    return os.urandom(32)


def failure(envelope, keys, *, kind: str = KIND_COMMAND) -> str:
    """The verdict a phone gives an envelope it refuses."""
    with pytest.raises(Rejected) as refused:
        protocol.open_envelope(envelope, keys, kind=kind)
    return refused.value.code


@pytest.fixture
def key_2025(settings):
    settings.DEVICE_SIGNING_KEY = ("k2025", seed())
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    return settings.DEVICE_SIGNING_KEY


@pytest.fixture
def sealed(key_2025):
    """A command sealed with the current key: (envelope, the exact bytes signed)."""
    key_id, private_key = current_signer()
    body = protocol.payload_bytes(COMMAND)
    return protocol.seal(body, key_id=key_id, private_key=private_key), body


# --- the exact bytes ------------------------------------------------------------------------


def test_the_signature_covers_the_exact_utf8_bytes_so_sinhala_and_a_no_break_space_need_no_escaping(sealed):
    envelope, body = sealed

    # Written once, as UTF-8: the Sinhala letters, the joiner and U+00A0 as themselves.
    assert SINHALA_TITLE.encode("utf-8") in body and b"\xc2\xa0" in body  # U+00A0 as its two UTF-8 bytes
    assert b"\\u" not in body and AMOUNT.encode("utf-8") in body
    # The envelope carries those very bytes, and the signature is Ed25519 over them: any
    # Ed25519 library verifies it without knowing anything about JSON.
    assert protocol.unb64(envelope["payload"]) == body
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_keys()["k2025"]))
    public.verify(base64.b64decode(envelope["signature"]), body)  # raises if not
    opened = protocol.open_envelope(envelope, public_keys())
    assert opened == COMMAND and opened["screen"]["amount_overdue"] == AMOUNT
    assert protocol.check_command(opened) == COMMAND

    # The same command serialised differently (escaped, spaced, reordered) is other bytes:
    # the signature does not cover it. Nobody ever re-serialises to check a signature.
    escaped = json.dumps(COMMAND, ensure_ascii=True, indent=1).encode()
    assert json.loads(escaped) == COMMAND and escaped != body
    forged = envelope | {"payload": protocol.b64(escaped)}
    assert failure(forged, public_keys()) == "bad_signature"
    # Any serialisation the signer chose verifies, since the bytes travel with it: there is no canonical form.
    _key_id, private_key = current_signer()
    assert protocol.open_envelope(protocol.seal(escaped, key_id="k2025", private_key=private_key), public_keys()) == (
        COMMAND
    )


def test_any_change_of_the_bytes_or_of_the_signing_key_is_refused(settings, sealed):
    envelope, body = sealed
    keys = public_keys()

    one_byte = body.replace(b'"locked"', b'"lockee"')
    assert failure(envelope | {"payload": protocol.b64(one_byte)}, keys) == "bad_signature"
    other = Ed25519PrivateKey.generate()
    resigned = protocol.seal(body, key_id="k2025", private_key=other)  # someone else's key, our key's name
    assert failure(resigned, keys) == "bad_signature"
    # Another trusted key's name on our signature: it is checked with that key, and fails.
    assert failure(envelope | {"key_id": "k2026"}, keys | {"k2026": public_key_b64(other)}) == "bad_signature"
    assert failure(envelope | {"key_id": "k1999"}, keys) == "unknown_key"
    assert failure(envelope, {"k2026": public_key_b64(other)}) == "unknown_key"


# --- encodings ------------------------------------------------------------------------------


def test_the_envelope_is_four_members_in_standard_base64_with_padding_and_a_64_byte_signature(sealed):
    envelope, body = sealed

    assert set(envelope) == {"v", "payload", "key_id", "signature"} and envelope["v"] == 2
    assert len(envelope["signature"]) == 88 and envelope["signature"].endswith("==")
    assert len(base64.b64decode(envelope["signature"], validate=True)) == 64
    assert envelope["payload"] == base64.b64encode(body).decode("ascii")
    assert all(len(key) == 44 and len(base64.b64decode(key, validate=True)) == 32 for key in public_keys().values())


def _with_alphabet_and_padding(key_2025) -> tuple[dict, bytes]:
    """A sealed command whose payload's and signature's base64 hold ``+`` or ``/``, the payload padded."""
    key_id, private_key = current_signer()
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    for extra in range(400):
        body = protocol.payload_bytes(COMMAND | {"reason": COMMAND["reason"] + "?" * extra + ">"})
        text = protocol.b64(body)
        sealed = protocol.seal(body, key_id=key_id, private_key=private_key)
        signature = sealed["signature"]
        # The key is made per run, so the signature varies: pick one whose URL-safe form differs
        # and whose last data character has a free low bit to set (the "loose" variant below).
        if (
            ("+" in text or "/" in text)
            and text.endswith("=")
            and ("+" in signature or "/" in signature)
            and alphabet.index(signature[-3]) % 2 == 0
        ):
            return sealed, body
    raise AssertionError("no such payload")


def test_every_other_encoding_is_refused(key_2025):
    envelope, body = _with_alphabet_and_padding(key_2025)
    keys = public_keys()
    payload, signature = envelope["payload"], envelope["signature"]
    assert protocol.open_envelope(envelope, keys)["kind"] == "command"

    url_safe = base64.urlsafe_b64encode(body).decode()
    assert url_safe != payload
    unpadded = payload.rstrip("=")
    spaced = payload[:40] + "\n" + payload[40:]
    # The last character before "==" carries 4 unused bits; setting one keeps the bytes but not the text.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    loose = signature[:-3] + alphabet[alphabet.index(signature[-3]) + 1] + "=="
    assert base64.b64decode(loose) == base64.b64decode(signature)
    for bad in (
        {"payload": url_safe},
        {"payload": unpadded},
        {"payload": spaced},
        {"signature": signature.rstrip("=")},
        {"signature": base64.urlsafe_b64encode(base64.b64decode(signature)).decode().replace("=", "") + "=="},
        {"signature": loose},
    ):
        assert failure(envelope | bad, keys) == "malformed", bad
    # Valid base64, but not a 64-byte signature.
    raw = base64.b64decode(signature)
    for wrong_length in (raw[:63], raw + b"\0", b""):
        assert failure(envelope | {"signature": protocol.b64(wrong_length)}, keys) == "bad_signature"
    # Members of the wrong type, and what is no envelope at all.
    for bad in ({"key_id": 1}, {"payload": None}, {"signature": ["x"]}):
        assert failure(envelope | bad, keys) == "malformed"
    for text in ("[]", "not json", '"a string"'):
        assert failure(text, keys) == "malformed"
    assert failure("x" * (protocol.MAX_ENVELOPE_BYTES + 1), keys) == "too_large"


@pytest.mark.parametrize("version", [1, 3, "2", 2.0, True, None, "missing"])
def test_an_envelope_of_any_other_version_is_refused_as_unknown_version(sealed, version):
    envelope, _body = sealed
    other = {k: v for k, v in envelope.items() if k != "v"}
    if version != "missing":
        other["v"] = version

    assert failure(other, public_keys()) == "unknown_version"
    # The same over the wire, where 2.0 is a JSON number that is no integer.
    assert failure(json.dumps(other), public_keys()) == "unknown_version"


def test_a_command_signature_never_verifies_as_a_key_statement_nor_the_other_way(sealed, db):
    envelope, _body = sealed
    keys = public_keys()

    assert failure(envelope, keys, kind=KIND_KEY_STATEMENT) == "wrong_kind"
    statement = newest()
    assert failure(statement, keys, kind=KIND_COMMAND) == "wrong_kind"
    assert protocol.open_envelope(statement, keys, kind=KIND_KEY_STATEMENT)["keys"] == keys
    # A payload naming no kind is neither.
    _key_id, private_key = current_signer()
    kindless = {k: v for k, v in COMMAND.items() if k != "kind"}
    unnamed = protocol.seal(protocol.payload_bytes(kindless), key_id="k2025", private_key=private_key)
    assert failure(unnamed, keys) == failure(unnamed, keys, kind=KIND_KEY_STATEMENT) == "wrong_kind"


# --- the key statement and a rotation -------------------------------------------------------


def lock(device, reason: str = "Overdue"):
    (command,) = device_states_apply(changes=[StateChange(device_id=device.pk, state="locked", reason=reason)])
    return command


def statement_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="device.key_statement").order_by("id"))


def public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def newest() -> dict:
    return key_statements()[-1]


def test_the_key_statement_is_written_once_per_configured_key_set_signed_and_audited(key_2025, db):
    chain = key_statements()

    assert len(chain) == 1
    keys, seq = first_trust(chain)
    assert (keys, seq, chain[0]["key_id"]) == (public_keys(), 1, "k2025")
    statement = protocol.open_envelope(chain[0], keys, kind=KIND_KEY_STATEMENT)
    assert set(statement) == {"kind", "seq", "issued_at", "keys"}
    assert key_statements() == chain  # nothing changed: the same statement, not another
    assert KeyStatement.objects.count() == 1
    (event,) = statement_events()
    assert event.actor_label == "server configuration"
    assert event.before == {"keys": []} and event.after == {"keys": ["k2025"], "seq": 1, "signed_by": "k2025"}


def test_a_rotation_in_three_steps_moves_phones_to_the_new_key(settings, key_2025, provider_a, caplog):
    old_private = current_signer()[1]
    new_seed = seed()
    new_private = Ed25519PrivateKey.from_private_bytes(new_seed)
    phone = DeviceFactory(provider=provider_a)
    enrolled_with = first_trust(key_statements())  # a phone enrolled before the rotation holds statement 1
    old_command = lock(phone, "Before the rotation")
    assert protocol.open_envelope(old_command.envelope, enrolled_with[0])["seq"] == 1

    # 1. Announce: the new public key joins the set; statement 2, signed by the OLD key.
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": public(new_private)}
    announced = newest()
    assert announced["key_id"] == "k2025"
    checked_in = learn(enrolled_with, key_statements())
    assert (sorted(checked_in[0]), checked_in[1]) == (["k2025", "k2026"], 2)
    assert checked_in[0]["k2026"] == public_key_b64(new_private)
    assert lock(phone).key_id == "k2025"  # the old key still signs until step 2

    # 2. Switch: the new key signs, the old stays listed. The same set: no new statement.
    settings.DEVICE_SIGNING_KEY = ("k2026", new_seed)
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2025": public(old_private)}
    assert newest() == announced and KeyStatement.objects.count() == 2
    new_command = lock(phone, "After the switch")
    assert new_command.key_id == new_command.envelope["key_id"] == "k2026"
    assert protocol.open_envelope(new_command.envelope, checked_in[0])["reason"] == "After the switch"
    # A phone that missed step 1 refuses the new key's commands until it checks in.
    assert failure(new_command.envelope, enrolled_with[0]) == "unknown_key"
    # Commands the old key signed still verify (phones that have not checked in keep working).
    assert protocol.open_envelope(old_command.envelope, checked_in[0])["seq"] == 1

    # 3. Retire: removing the old key is not enough (a process missing a key may just be
    #    stale): nothing is written until the operator names it retired.
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    assert newest() == announced and KeyStatement.objects.count() == 2
    assert "k2025 is not configured but not retired (DEVICE_SIGNING_RETIRED_KEYS)" in caplog.text
    settings.DEVICE_SIGNING_RETIRED_KEYS = frozenset({"k2025"})
    retired = newest()
    assert retired["key_id"] == "k2026"  # statement 3, signed by the NEW key
    after = learn(checked_in, key_statements())
    assert (list(after[0]), after[1]) == (["k2026"], 3)
    assert failure(old_command.envelope, after[0]) == "unknown_key"  # an absent key is no longer trusted
    # Statement 3 alone means nothing to a phone still on statement 1 (nothing it trusts signed it)...
    with pytest.raises(Rejected) as skipped:
        learn(enrolled_with, [retired])
    assert skipped.value.code == "unknown_key"
    # ... but the answers carry the chain, through which it catches up at its next check-in.
    assert learn(enrolled_with, key_statements()) == after
    # The announcement replayed to an up-to-date phone is stale: skipped, and nothing changes.
    assert learn(after, [announced]) == after

    assert [(e.before["keys"], e.after) for e in statement_events()] == [
        ([], {"keys": ["k2025"], "seq": 1, "signed_by": "k2025"}),
        (["k2025"], {"keys": ["k2025", "k2026"], "seq": 2, "signed_by": "k2025"}),
        (["k2025", "k2026"], {"keys": ["k2026"], "seq": 3, "signed_by": "k2026"}),
    ]


def test_a_worker_still_on_the_old_configuration_can_no_longer_strand_the_phones(settings, key_2025, db, caplog):
    """The outsider review's reproduction: a worker not restarted after step 1 used to write {old}."""
    old_seed, new_seed = settings.DEVICE_SIGNING_KEY[1], seed()
    old_public, new_public = (
        public(Ed25519PrivateKey.from_private_bytes(old_seed)),
        public(Ed25519PrivateKey.from_private_bytes(new_seed)),
    )
    held = first_trust(key_statements())
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": new_public}  # step 1, restarted processes
    held = learn(held, key_statements())
    assert (sorted(held[0]), held[1]) == (["k2025", "k2026"], 2)

    # A worker that was not restarted: it serves statement 2 unchanged, writes nothing, and says why.
    with override_settings(DEVICE_SIGNING_PUBLIC_KEYS={}):
        caplog.clear()
        served = key_statements()
        assert [protocol.payload_of(s)["seq"] for s in served] == [1, 2]
        assert key_statements() == served
    assert KeyStatement.objects.count() == 2
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]  # once, however often it answers
    assert error.getMessage() == (
        "configured keys differ from the published statement 2: k2026 is not configured but not retired "
        "(DEVICE_SIGNING_RETIRED_KEYS); restart every process with the current configuration"
    )
    assert learn(held, served) == held

    # Step 2 goes ahead: the new key signs and the phones, trusting it since step 1, take its commands.
    settings.DEVICE_SIGNING_KEY = ("k2026", new_seed)
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2025": old_public}
    assert learn(held, key_statements()) == held and KeyStatement.objects.count() == 2
    _key_id, signer = current_signer()
    command = protocol.seal(protocol.payload_bytes(COMMAND), key_id="k2026", private_key=signer)
    assert protocol.open_envelope(command, held[0])["seq"] == COMMAND["seq"]
    assert statement_events()[-1].after["seq"] == 2


def test_a_retired_key_is_never_listed_again_by_a_process_that_still_has_it(settings, key_2025, db, caplog):
    old_seed, new_seed = settings.DEVICE_SIGNING_KEY[1], seed()
    old_public = public(Ed25519PrivateKey.from_private_bytes(old_seed))
    new_public = public(Ed25519PrivateKey.from_private_bytes(new_seed))
    key_statements()
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": new_public}
    key_statements()
    settings.DEVICE_SIGNING_KEY = ("k2026", new_seed)
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    settings.DEVICE_SIGNING_RETIRED_KEYS = frozenset({"k2025"})
    retired = key_statements()
    assert list(protocol.payload_of(retired[-1])["keys"]) == ["k2026"]

    # A process still at step 2 lists k2025 again; one still at step 1 even signs with it.
    for stale in [
        {"DEVICE_SIGNING_KEY": ("k2026", new_seed), "DEVICE_SIGNING_PUBLIC_KEYS": {"k2025": old_public}},
        {"DEVICE_SIGNING_KEY": ("k2025", old_seed), "DEVICE_SIGNING_PUBLIC_KEYS": {"k2026": new_public}},
    ]:
        with override_settings(DEVICE_SIGNING_RETIRED_KEYS=frozenset(), **stale):
            caplog.clear()
            assert key_statements() == retired
            assert "k2025 was dropped by an earlier statement" in caplog.text
    assert "the signing key k2025 is not listed" in caplog.text
    assert KeyStatement.objects.count() == 3 and len(statement_events()) == 3


def test_a_worker_still_signing_with_a_retired_key_issues_nothing_and_its_command_is_reissued(
    settings, key_2025, provider_a, caplog
):
    """A stale worker's commands would be unknown_key on every phone: a paid phone would stay locked."""
    old_seed, new_seed = settings.DEVICE_SIGNING_KEY[1], seed()
    new_public = public(Ed25519PrivateKey.from_private_bytes(new_seed))
    phone = DeviceFactory(provider=provider_a)
    key_statements()
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": new_public}
    key_statements()
    settings.DEVICE_SIGNING_KEY = ("k2026", new_seed)
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    settings.DEVICE_SIGNING_RETIRED_KEYS = frozenset({"k2025"})
    key_statements()  # statement 3: only k2026

    stale = {"DEVICE_SIGNING_KEY": ("k2025", old_seed), "DEVICE_SIGNING_PUBLIC_KEYS": {"k2026": new_public}}
    with (
        override_settings(DEVICE_SIGNING_RETIRED_KEYS=frozenset(), **stale),
        pytest.raises(UntrustedSigner, match="k2025 is not in the published key statement"),
    ):
        device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked")])
    assert not phone.commands.exists()
    assert "Refusing to sign device commands" in caplog.text

    # A command a stale worker stored before this guard (signed k2025) is issued again, not served.
    make_command(phone, private_key=Ed25519PrivateKey.from_private_bytes(old_seed), state="unlocked", key_id="k2025")
    envelope = device_current_envelope(Device.objects.get(pk=phone.pk))
    assert envelope["key_id"] == "k2026"
    assert protocol.check_command(protocol.open_envelope(envelope, {"k2026": b64(new_public)}))["state"] == "unlocked"


def test_a_key_phones_do_not_trust_yet_never_signs_a_statement(settings, key_2025, db, caplog):
    """Step 2 before step 1: the statement would be unknown_key to every phone, so none is written."""
    first = key_statements()
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2025": public(current_signer()[1])}
    settings.DEVICE_SIGNING_KEY = ("k2026", seed())

    assert key_statements() == first and KeyStatement.objects.count() == 1
    assert "the signing key k2026 is not listed, so phones would refuse a statement it signs" in caplog.text


def test_answers_carry_the_newest_statements_up_to_the_chain_length_oldest_first(settings, key_2025, db):
    key_statements()
    announced = {}
    for number in range(CHAIN_LENGTH + 2):  # CHAIN_LENGTH + 2 more statements: every one adds a key
        announced[f"k-extra-{number}"] = public(Ed25519PrivateKey.generate())
        settings.DEVICE_SIGNING_PUBLIC_KEYS = dict(announced)
        key_statements()

    chain = key_statements()
    newest = CHAIN_LENGTH + 3  # the first statement, then CHAIN_LENGTH + 2 more
    assert [protocol.payload_of(s)["seq"] for s in chain] == list(range(newest - CHAIN_LENGTH + 1, newest + 1))
    keys, seq = first_trust(chain)  # a new phone trusts the oldest it can verify, then the rest
    assert seq == newest and len(keys) == newest


def test_a_new_phone_with_pinned_keys_trusts_the_first_statement_a_pinned_key_signed(settings, key_2025, db):
    old_public = public(current_signer()[1])
    new_seed = seed()
    new_public = public(Ed25519PrivateKey.from_private_bytes(new_seed))
    key_statements()
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": new_public}
    key_statements()
    settings.DEVICE_SIGNING_KEY = ("k2026", new_seed)
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    settings.DEVICE_SIGNING_RETIRED_KEYS = frozenset({"k2025"})
    chain = key_statements()

    # An app built after the rotation pins only the new key: statement 3 is the first it can verify.
    assert first_trust(chain, pinned={"k2026": b64(new_public)}) == ({"k2026": b64(new_public)}, 3)
    # An app built before it pins the old key and follows the chain from statement 1.
    assert first_trust(chain, pinned={"k2025": b64(old_public)}) == ({"k2026": b64(new_public)}, 3)
    with pytest.raises(Rejected) as refused:
        first_trust(chain, pinned={"k-other": b64(public(Ed25519PrivateKey.generate()))})
    assert refused.value.code == "unknown_key"


def test_a_replayed_older_statement_changes_nothing(settings, key_2025, db):
    first = key_statements()
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": Ed25519PrivateKey.generate().public_key().public_bytes_raw()}
    second = key_statements()
    held = learn(first_trust(first), second)

    assert held[1] == 2
    assert learn(held, first) == held  # stale: seq 1 is not above 2
    assert learn(held, second) == held  # the same statements again


def test_without_configuration_a_development_key_is_generated_once_and_kept_private(settings, tmp_path):
    path = tmp_path / "device-signing-key"
    settings.DEVICE_SIGNING_KEY = None
    settings.DEVICE_SIGNING_KEY_FILE = path

    key_id, private_key = current_signer()
    assert key_id.startswith("dev-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    current_signer.cache_clear()  # a restart
    again_id, again_key = current_signer()
    assert again_id == key_id
    assert public_key_b64(again_key) == public_key_b64(private_key)


def test_key_variables_are_parsed_and_malformed_values_name_the_variable(monkeypatch):
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    monkeypatch.setenv("X_KEYS", f"k2025:{base64.b64encode(raw).decode()}, k2026:{base64.b64encode(raw).decode()}")
    assert env_keyed_bytes("X_KEYS", length=32) == {"k2025": raw, "k2026": raw}

    for bad, message in [
        ("k2025", "X_KEYS must be <key_id>:<base64 key>"),
        ("k 1:" + base64.b64encode(raw).decode(), "X_KEYS must be <key_id>:<base64 key>"),
        ("k1:not base64!", "X_KEYS: the key 'k1' is not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "must decode to 32 bytes, not 5"),
    ]:
        monkeypatch.setenv("X_KEYS", bad)
        with pytest.raises(ImproperEnvironment, match=message):
            env_keyed_bytes("X_KEYS", length=32)


def _manage_check(env: dict) -> subprocess.CompletedProcess:
    return _manage("check", env=env)


def test_production_without_a_signing_key_or_with_a_malformed_one_refuses_to_start(tmp_path):
    production = {
        "DEBUG": "0",
        "SECRET_KEY": "s" * 60,
        "ALLOWED_HOSTS": "finlock.example.com",
        "FINLOCK_VAR_DIR": str(tmp_path),
    }
    result = _manage_check(production)
    assert result.returncode != 0
    assert "DEVICE_SIGNING_KEY must be set when DEBUG is off" in result.stderr
    assert not (tmp_path / "device-signing-key").exists()

    result = _manage_check(production | {"DEVICE_SIGNING_KEY": "k2026a:c2hvcnQ="})
    assert result.returncode != 0
    assert "DEVICE_SIGNING_KEY: the key 'k2026a' must decode to 32 bytes" in result.stderr


def test_a_malformed_retired_key_list_refuses_to_start_naming_the_variable(tmp_path):
    production = {
        "DEBUG": "0",
        "SECRET_KEY": "s" * 60,
        "ALLOWED_HOSTS": "finlock.example.com",
        "FINLOCK_VAR_DIR": str(tmp_path),
        "DEVICE_SIGNING_KEY": "k2026a:" + "A" * 43 + "=",
        "AUDIT_HMAC_KEY": "audit2026a:" + "B" * 43 + "=",
    }
    result = _manage_check(production | {"DEVICE_SIGNING_RETIRED_KEYS": "k2025a, k 2024"})
    assert result.returncode != 0
    assert "DEVICE_SIGNING_RETIRED_KEYS lists ids of keys no longer configured; not 'k 2024'" in result.stderr
    # Retiring the key that signs (or one still listed) is a contradiction, not a rotation step.
    result = _manage_check(production | {"DEVICE_SIGNING_RETIRED_KEYS": "k2025a,k2026a"})
    assert result.returncode != 0
    assert "DEVICE_SIGNING_RETIRED_KEYS lists ids of keys no longer configured; not 'k2026a'" in result.stderr
    assert _manage_check(production | {"DEVICE_SIGNING_RETIRED_KEYS": "k2025a"}).returncode == 0


def test_the_operator_sees_whether_a_configuration_would_write_a_statement(settings, key_2025, db):
    def shown() -> str:
        out = io.StringIO()
        call_command("device_signing_key", stdout=out)
        return out.getvalue()

    assert "No key statement yet" in shown()
    key_statements()
    new_seed = seed()
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": public(Ed25519PrivateKey.from_private_bytes(new_seed))}
    assert "This configuration writes statement 2: k2025, k2026." in shown()
    key_statements()
    settings.DEVICE_SIGNING_KEY = ("k2026", new_seed)
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    text = shown()
    assert "Published key statement 2 lists k2025, k2026." in text
    assert "writes no statement: k2025 is not configured but not retired (DEVICE_SIGNING_RETIRED_KEYS)." in text
    settings.DEVICE_SIGNING_RETIRED_KEYS = frozenset({"k2025"})
    assert "This configuration writes statement 3: k2026." in shown()
    assert KeyStatement.objects.count() == 2  # showing writes nothing
