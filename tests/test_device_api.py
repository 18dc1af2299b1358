"""A phone enrols, checks in and acknowledges through the device API.

Stories:
* a phone enrols with its IMEI and the provider's enrolment token and gets a
  credential, the server's signed key statement, its offline-code data, its MQTT topic
  and a signed command that verifies with the keys of that statement; a dual-SIM phone
  enrolled with either IMEI gets commands naming both;
* a wrong token and an unknown IMEI get the very same answer, so the API cannot be
  used to learn which IMEIs are financed;
* after a factory reset the phone enrols again, signing with the device key it kept in
  reset-protected storage, and gets its **current** command: a reset never removes a
  lock; the credential it had before stops working, and the offline-code secret is not
  handed out again (the phone kept it; tests/test_enrolment_takeover.py);
* a check-in always answers the current signed command, so a missed push heals;
* a key rotation reaches enrolled phones: a check-in also answers the signed key
  statement, so a phone learns the next key (signed by a key it trusts) before it signs,
  and forgets a retired key only once a statement signed by the new key says so;
* an acknowledgement moves the reported state only forward: a replayed or late
  acknowledgement never overrides a newer one;
* a bad or missing credential is 401 with the challenge; a phone calling too often
  is told to slow down (429); a malformed body is 400 naming the field;
* a server restored from a backup (which forgot commands the phone applied) issues
  the current state again with a sequence number the phone accepts, never one above
  MAX_SEQ (which the phone could neither acknowledge nor report);
* the device API is documented in its own OpenAPI document, and no garbage sent to
  it makes the server fail (5xx).
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from devices import protocol
from devices.models import DeviceCommand, EnrollmentToken
from devices.protocol import MAX_SEQ
from devices.services.checkin import MAX_SEQ_JUMP
from devices.services.commands import StateChange, device_states_apply
from devices.services.enrolment import enrollment_challenge_issue
from devices.services.tokens import enrollment_token_create
from portal.models import AuditEvent
from tests.factories import DeviceFactory, device_key_b64, enrolment_body, make_imei
from tests.phone import first_trust, learn, read_command

ENROLL = "/api/device/v1/enroll"
CHECKIN = "/api/device/v1/checkin"
ACK = "/api/device/v1/ack"


@pytest.fixture
def token_a(provider_a, admin_a):
    _token, secret = enrollment_token_create(provider=provider_a, name="Colombo shop", actor=admin_a)
    return secret


@pytest.fixture
def phone(provider_a):
    return DeviceFactory(provider=provider_a, imei2=make_imei("35876543"))


def enroll(imei, token, app_version="1.0.0", *, key=None):
    """The phone's enrolment: a fresh challenge signed with its device key (a new key if None)."""
    body = enrolment_body(
        imei=imei,
        token=token,
        key=key or Ed25519PrivateKey.generate(),
        challenge=enrollment_challenge_issue()["challenge"],
        app_version=app_version,
    )
    return APIClient().post(ENROLL, body, format="json")


def as_phone(credential) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {credential}")
    return client


def command_for(device, envelope: dict, keys: dict[str, str]) -> dict:
    """The command a phone applies: signed by a trusted key, well-formed, and meant for it."""
    return read_command(envelope, keys, device=str(device.uid), imeis=[device.imei])


def lock(device, reason="Installment of 15 Jan 2026 overdue 12 days (grace 3 days)"):
    (command,) = device_states_apply(
        changes=[
            StateChange(
                device_id=device.pk, state="locked", reason=reason, screen={"title": "Locked"}, allowed_numbers=["119"]
            )
        ]
    )
    return command


# --- enrolment ------------------------------------------------------------------------


def test_a_phone_enrols_and_gets_everything_it_needs_signed(phone, token_a):
    key = Ed25519PrivateKey.generate()

    response = enroll(phone.imei, token_a, key=key)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["device"] == str(phone.uid)
    assert body["credential"].startswith("fld_")
    assert body["mqtt_topic"] == f"finlock/v1/devices/{phone.uid}/command"
    offline = body["offline"]
    assert len(offline["secret"]) == 32 and int(offline["secret"], 16) >= 0
    assert isinstance(offline["starting_code"], int) and offline["count"] == 0
    keys, _seq = first_trust(body["key_statements"])
    command = command_for(phone, body["envelope"], keys)
    assert (command["imeis"], command["state"]) == ([phone.imei, phone.imei2], "unlocked")

    phone.refresh_from_db()
    assert phone.enrolled_at is not None and phone.app_version == "1.0.0"
    assert phone.credential_digest and body["credential"] not in phone.credential_digest
    assert phone.device_key == device_key_b64(key) and phone.offline_sent_at is not None
    assert EnrollmentToken.objects.get().uses == 1
    event = AuditEvent.objects.get(action="device.enrol")
    assert event.after["re_enrolment"] is False and event.organisation_id == phone.provider_id
    assert event.after["proof"] == "first_enrolment" and event.after["shop"] == ""
    assert offline["secret"] not in json.dumps(event.after)


def test_a_phone_may_enrol_with_its_second_imei_typed_as_printed(phone, token_a):
    printed = f"{phone.imei2[:2]} {phone.imei2[2:8]} {phone.imei2[8:14]} {phone.imei2[14]}"

    response = enroll(printed, token_a)

    assert response.status_code == 201, response.json()
    assert response.json()["device"] == str(phone.uid)


def test_a_dual_sim_phone_enrolled_with_its_second_imei_receives_commands_naming_both(phone, token_a):
    enrolled = enroll(phone.imei2, token_a).json()
    keys, _seq = first_trust(enrolled["key_statements"])
    # Whichever SIM slot it read its IMEI from, the phone finds one of its IMEIs in every command.
    assert command_for(phone, enrolled["envelope"], keys)["imeis"] == [phone.imei, phone.imei2]
    command = lock(phone)

    answer = as_phone(enrolled["credential"]).post(CHECKIN, {"state": "unlocked", "last_seq": 1}, format="json")

    current = command_for(phone, answer.json()["envelope"], keys)
    assert (current["seq"], current["state"], current["imeis"]) == (command.seq, "locked", [phone.imei, phone.imei2])


def test_every_refusal_gives_the_same_answer_revealing_nothing(phone, token_a, provider_b, admin_a):
    _other_token, token_b = enrollment_token_create(provider=provider_b, name="Nairobi", actor=None)
    revoked, revoked_secret = enrollment_token_create(provider=phone.provider, name="Old", actor=admin_a)
    EnrollmentToken.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    expired, expired_secret = enrollment_token_create(
        provider=phone.provider, name="Expired", actor=admin_a, expires_at=timezone.now()
    )

    answers = [
        enroll(make_imei("35111111"), token_a),  # unknown IMEI, good token
        enroll(phone.imei, "fle_wrong"),  # known IMEI, wrong token
        enroll(phone.imei, token_b),  # another provider's token
        enroll(phone.imei, revoked_secret),
        enroll(phone.imei, expired_secret),
    ]

    assert {a.status_code for a in answers} == {400}
    assert len({a.content for a in answers}) == 1, [a.json() for a in answers]
    assert "IMEI and the enrolment token" in answers[0].json()["errors"]["non_field_errors"][0]
    phone.refresh_from_db()
    assert phone.enrolled_at is None
    assert not AuditEvent.objects.filter(action="device.enrol").exists()


def test_a_malformed_imei_is_a_field_error(token_a):
    response = enroll("12345", token_a)

    assert response.status_code == 400
    assert "imei" in response.json()["errors"]


def test_after_a_factory_reset_the_phone_gets_its_current_lock_back_and_the_old_credential_dies(phone, token_a):
    key = Ed25519PrivateKey.generate()  # kept in reset-protected storage
    first = enroll(phone.imei, token_a, key=key).json()
    command = lock(phone)

    # The owner factory-resets the phone; the agent comes back and enrols again, signing with its key.
    again = enroll(phone.imei, token_a, key=key)

    assert again.status_code == 201
    body = again.json()
    keys, _seq = first_trust(body["key_statements"])
    current = command_for(phone, body["envelope"], keys)
    assert (current["seq"], current["state"]) == (command.seq, "locked")
    assert body["credential"] != first["credential"]
    assert (
        as_phone(first["credential"]).post(CHECKIN, {"state": "locked", "last_seq": 2}, format="json").status_code
        == 401
    )
    assert (
        as_phone(body["credential"]).post(CHECKIN, {"state": "locked", "last_seq": 2}, format="json").status_code == 200
    )
    # The offline-code secret was handed out once; the phone kept it with its device key.
    assert first["offline"]["secret"] and body["offline"] is None
    event = AuditEvent.objects.filter(action="device.enrol").latest("id")
    assert event.after["re_enrolment"] is True and event.after["proof"] == "device_key"


def test_the_enrolment_token_cli_prints_a_secret_that_enrols(phone, capsys):
    call_command(
        "create_enrollment_token",
        phone.provider.slug,
        *("--name", "Kandy shop", "--days", "7", "--shop", "Kandy, Peradeniya Rd", "--max-uses", "1"),
    )

    out = capsys.readouterr().out.strip().splitlines()
    secret = out[-1]
    assert secret.startswith("fle_") and "Kandy, Peradeniya Rd" in out[0] and "at most 1 phone" in out[0]
    assert enroll(phone.imei, secret).status_code == 201
    token = EnrollmentToken.objects.get(name="Kandy shop")
    assert token.expires_at > timezone.now() and token.digest != secret
    assert (token.shop, token.max_uses, token.uses) == ("Kandy, Peradeniya Rd", 1, 1)
    assert AuditEvent.objects.get(action="device.enrol").after["shop"] == "Kandy, Peradeniya Rd"
    # Its one first enrolment is used: another phone is refused.
    assert enroll(DeviceFactory(provider=phone.provider).imei, secret).status_code == 400


# --- check-in ---------------------------------------------------------------------------


@pytest.fixture
def enrolled(phone, token_a):
    return enroll(phone.imei, token_a).json()


def test_a_check_in_answers_the_current_signed_command(phone, enrolled):
    command = lock(phone)

    response = as_phone(enrolled["credential"]).post(
        CHECKIN, {"state": "unlocked", "last_seq": 1, "app_version": "1.0.1"}, format="json"
    )

    assert response.status_code == 200, response.json()
    keys, _seq = first_trust(enrolled["key_statements"])
    current = command_for(phone, response.json()["envelope"], keys)
    assert (current["seq"], current["state"]) == (command.seq, "locked")
    phone.refresh_from_db()
    assert phone.last_checkin_at is not None and phone.app_version == "1.0.1"
    # It reported seq 1 (the enrolment's unlock) applied: that is what it shows now.
    assert (phone.reported_seq, phone.reported_state) == (1, "unlocked")


def test_a_routine_check_in_costs_three_queries(phone, enrolled, settings, django_assert_num_queries):
    """Every phone checks in every few minutes: credential, "seen now", current command, nothing more.

    This is the database path, all there is without Redis; with Redis a routine check-in
    costs no query at all (tests/test_checkin_cache.py).
    """
    settings.CHECKIN_CACHE_SECONDS = 0
    lock(phone)
    client = as_phone(enrolled["credential"])
    client.post(ACK, {"seq": 2, "state": "locked"}, format="json")
    with django_assert_num_queries(3):
        response = client.post(CHECKIN, {"state": "locked", "last_seq": 2}, format="json")
    assert response.status_code == 200
    phone.refresh_from_db()
    assert phone.last_checkin_at is not None and (phone.reported_seq, phone.reported_state) == (2, "locked")


def test_a_check_in_never_moves_the_reported_state_backwards(phone, enrolled):
    lock(phone)
    client = as_phone(enrolled["credential"])
    client.post(ACK, {"seq": 2, "state": "locked"}, format="json")

    client.post(CHECKIN, {"state": "unlocked", "last_seq": 1}, format="json")  # stale

    phone.refresh_from_db()
    assert (phone.reported_seq, phone.reported_state) == (2, "locked")


def test_a_server_restored_from_a_backup_reissues_the_state_with_a_seq_the_phone_accepts(phone, enrolled):
    lock(phone)
    # The phone applied seq 7 before the server's database was restored to seq 2.
    response = as_phone(enrolled["credential"]).post(CHECKIN, {"state": "locked", "last_seq": 7}, format="json")

    assert response.status_code == 200
    current = command_for(phone, response.json()["envelope"], first_trust(enrolled["key_statements"])[0])
    assert current["seq"] == 8 and current["state"] == "locked"
    phone.refresh_from_db()
    assert phone.command_seq == 8 and phone.desired_state == "locked"


def test_a_stolen_credential_can_neither_exhaust_the_sequence_nor_mint_commands(phone, enrolled):
    command = lock(phone)
    client = as_phone(enrolled["credential"])
    keys, _seq = first_trust(enrolled["key_statements"])

    # Far above anything issued (towards MAX_SEQ): no backup ever lost that many commands.
    response = client.post(CHECKIN, {"state": "locked", "last_seq": MAX_SEQ - 1}, format="json")
    assert response.status_code == 200
    assert command_for(phone, response.json()["envelope"], keys)["seq"] == command.seq  # nothing issued
    far = client.post(CHECKIN, {"state": "locked", "last_seq": command.seq + MAX_SEQ_JUMP + 1}, format="json")
    assert command_for(phone, far.json()["envelope"], keys)["seq"] == command.seq

    # One genuine-looking jump is honoured (a restored backup) ...
    first = client.post(CHECKIN, {"state": "locked", "last_seq": command.seq + 5}, format="json")
    assert command_for(phone, first.json()["envelope"], keys)["seq"] == command.seq + 6
    # ... but not a second one the same day: repeated check-ins mint nothing more.
    again = client.post(CHECKIN, {"state": "locked", "last_seq": command.seq + 20}, format="json")
    assert command_for(phone, again.json()["envelope"], keys)["seq"] == command.seq + 6
    phone.refresh_from_db()
    assert phone.command_seq == command.seq + 6
    assert DeviceCommand.objects.filter(device=phone).count() == 3  # enrolment's, the lock, the one re-issue


def test_a_phone_reporting_max_seq_is_answered_its_current_command_and_nothing_above_max_seq(phone, enrolled):
    command = lock(phone)
    keys, _seq = first_trust(enrolled["key_statements"])

    response = as_phone(enrolled["credential"]).post(CHECKIN, {"state": "locked", "last_seq": MAX_SEQ}, format="json")

    assert response.status_code == 200
    current = command_for(phone, response.json()["envelope"], keys)
    assert (current["seq"], current["state"]) == (command.seq, "locked")
    phone.refresh_from_db()
    assert phone.command_seq == command.seq  # no jump: never up to MAX_SEQ
    assert not DeviceCommand.objects.filter(device=phone, seq__gt=command.seq).exists()
    # Above MAX_SEQ is no sequence number at all.
    above = as_phone(enrolled["credential"]).post(CHECKIN, {"state": "locked", "last_seq": MAX_SEQ + 1}, format="json")
    assert above.status_code == 400 and "last_seq" in above.json()["errors"]


def test_a_key_rotation_reaches_an_enrolled_phone_through_its_check_ins(settings, phone, token_a):
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    settings.DEVICE_SIGNING_KEY = ("k2025", old.private_bytes_raw())
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    enrolled = enroll(phone.imei, token_a).json()
    client = as_phone(enrolled["credential"])
    held = first_trust(enrolled["key_statements"])
    keys, first_seq = held
    assert set(keys) == {"k2025"}

    def check_in() -> dict:
        return client.post(CHECKIN, {"state": "unlocked", "last_seq": 1}, format="json").json()

    # 1. The operator announces the next key; the phone learns it at its next check-in, from a
    #    statement signed by the key it already trusts.
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2026": new.public_key().public_bytes_raw()}
    chain = check_in()["key_statements"]
    assert [s["key_id"] for s in chain] == ["k2025", "k2025"]
    held = learn(held, chain)
    assert (set(held[0]), held[1]) == ({"k2025", "k2026"}, first_seq + 1)

    # 2. The new key signs; the old one stays listed: the same set, so no new statement.
    settings.DEVICE_SIGNING_KEY = ("k2026", new.private_bytes_raw())
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {"k2025": old.public_key().public_bytes_raw()}
    lock(phone)
    answer = check_in()
    assert protocol.payload_of(answer["key_statements"][-1])["seq"] == first_seq + 1
    assert learn(held, answer["key_statements"]) == held
    assert answer["envelope"]["key_id"] == "k2026"
    assert command_for(phone, answer["envelope"], held[0])["state"] == "locked"
    assert command_for(phone, enrolled["envelope"], held[0])["seq"] == 1  # the old command still verifies

    # 3. The old key is retired (named in DEVICE_SIGNING_RETIRED_KEYS): a statement signed by
    #    the new key drops it.
    settings.DEVICE_SIGNING_PUBLIC_KEYS = {}
    settings.DEVICE_SIGNING_RETIRED_KEYS = frozenset({"k2025"})
    chain = check_in()["key_statements"]
    assert chain[-1]["key_id"] == "k2026"
    held = learn(held, chain)
    assert (set(held[0]), held[1]) == ({"k2026"}, first_seq + 2)
    with pytest.raises(protocol.Rejected) as refused:
        protocol.open_envelope(enrolled["envelope"], held[0])
    assert refused.value.code == "unknown_key"
    # A phone that missed every check-in since its enrolment catches up through the chain.
    assert learn(first_trust(enrolled["key_statements"]), chain) == held
    # And a new phone enrolling now trusts the oldest statement it can verify, then follows the rest.
    another = DeviceFactory(provider=phone.provider)
    assert first_trust(enroll(another.imei, token_a).json()["key_statements"]) == held


# --- acknowledgement --------------------------------------------------------------------


def test_an_acknowledgement_moves_the_reported_state_forward_and_is_audited_once(phone, enrolled):
    command = lock(phone)
    client = as_phone(enrolled["credential"])

    response = client.post(ACK, {"seq": command.seq, "state": "locked"}, format="json")

    assert response.status_code == 200 and response.json() == {"ok": True}
    phone.refresh_from_db()
    assert (phone.reported_seq, phone.reported_state) == (command.seq, "locked")
    assert phone.reported_at is not None
    assert DeviceCommand.objects.get(pk=command.pk).acknowledged_at is not None
    event = AuditEvent.objects.get(action="device.ack")
    assert event.before["state"] == "" and event.after == {"state": "locked", "seq": command.seq, "via": "ack"}

    # The same acknowledgement again (a retry) changes nothing and is not audited again.
    assert client.post(ACK, {"seq": command.seq, "state": "locked"}, format="json").status_code == 200
    assert AuditEvent.objects.filter(action="device.ack").count() == 1


def test_a_replayed_older_acknowledgement_is_ignored(phone, enrolled):
    lock(phone)  # seq 2
    device_states_apply(changes=[StateChange(device_id=phone.pk, state="unlocked", reason="Arrears cleared")])  # 3
    client = as_phone(enrolled["credential"])
    client.post(ACK, {"seq": 3, "state": "unlocked"}, format="json")

    late = client.post(ACK, {"seq": 2, "state": "locked"}, format="json")

    assert late.status_code == 200
    phone.refresh_from_db()
    assert (phone.reported_seq, phone.reported_state) == (3, "unlocked")


def test_acknowledging_a_command_never_issued_is_refused(enrolled):
    response = as_phone(enrolled["credential"]).post(ACK, {"seq": 99, "state": "locked"}, format="json")

    assert response.status_code == 400
    assert "seq" in response.json()["errors"]


# --- credentials, limits, malformed input -----------------------------------------------


@pytest.mark.parametrize("header", [None, "Device fld_not-a-credential", "Bearer fl_abc_def", "Device", "Device a b"])
def test_a_bad_or_missing_credential_is_401_with_the_challenge(enrolled, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.post(CHECKIN, {"state": "locked", "last_seq": 0}, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Device")
    assert "device credential" in response.json()["detail"].lower()


def test_a_phone_calling_too_often_is_told_to_slow_down(settings, enrolled):
    settings.DEVICE_API_RATE = "3/min"
    client = as_phone(enrolled["credential"])

    codes = [client.post(CHECKIN, {"state": "unlocked", "last_seq": 1}, format="json").status_code for _ in range(4)]

    assert codes == [200, 200, 200, 429]


def test_enrolment_attempts_are_limited_per_address(settings, phone):
    settings.DEVICE_ENROLL_RATE = "2/min"

    codes = [enroll(phone.imei, "fle_guess").status_code for _ in range(3)]

    assert codes == [400, 400, 429]


def test_a_malformed_body_is_400_naming_the_field(enrolled):
    client = as_phone(enrolled["credential"])

    bad_json = client.post(CHECKIN, "{not json", content_type="application/json")
    wrong_types = client.post(CHECKIN, {"state": "wiped", "last_seq": -1}, format="json")
    not_an_object = client.post(ACK, [1, 2], format="json")

    assert bad_json.status_code == 400
    assert wrong_types.status_code == 400
    assert set(wrong_types.json()["errors"]) == {"state", "last_seq"}
    assert not_an_object.status_code == 400


# --- documentation and robustness -------------------------------------------------------


def test_the_device_api_has_its_own_openapi_document(db):
    document = APIClient().get("/api/device/v1/schema/?format=json").json()
    provider_document = APIClient().get("/api/schema/?format=json").json()

    assert set(document["paths"]) == {ENROLL, ENROLL + "/challenge", CHECKIN, ACK}
    assert "DeviceCredential" in document["components"]["securitySchemes"]
    assert document["paths"][CHECKIN]["post"]["security"] == [{"DeviceCredential": []}]
    assert not any(path.startswith("/api/device/") for path in provider_document["paths"])


def test_no_garbage_makes_the_device_api_fail(settings, provider_a):
    settings.DEVICE_API_RATE = settings.DEVICE_ENROLL_RATE = "100000/min"
    device = DeviceFactory(provider=provider_a)
    _token, secret = enrollment_token_create(provider=provider_a, name="fuzz", actor=None)
    phone_client = as_phone(enroll(device.imei, secret).json()["credential"])
    schema = schemathesis.openapi.from_dict(APIClient().get("/api/device/v1/schema/?format=json").json())
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)

    @given(case=cases)
    @hypothesis_settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def send(case):
        # Through the test client (the test's database transaction), as an enrolled phone.
        if isinstance(case.body, NotSet):
            body = b""
        elif isinstance(case.body, bytes):
            body = case.body  # raw garbage, sent as is
        else:
            body = json.dumps(case.body)
        response = phone_client.generic(
            case.method, case.formatted_path, body, content_type=case.media_type or "application/json"
        )
        assert response.status_code < 500, (case.method, case.path, case.body, response.content)
        json.loads(response.content or b"{}")  # every answer is JSON

    send()
