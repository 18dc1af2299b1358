"""An enrolment token is not a key to every phone: re-enrolling a phone needs proof bound to that phone.

Stories (issue 9, finding 2), tried as an attacker holding a provider's enrolment token and
the IMEI of an enrolled phone would try them, through the device API:

* with the token and the IMEI alone, or with a key of their own, the attacker gets the very
  same 400 as any refusal; the real phone's credential keeps working, nothing changes on the
  device, and the attempt is audited (once a minute at most);
* nothing the attacker can get carries the phone's offline-code secret, so no permanent
  release code (OpenPAYGO ``DISABLE_PAYG``) can be made;
* the real phone, reset to factory settings, enrols again by signing a fresh challenge with
  the device key it kept, and gets no secret again;
* an observed signed enrolment cannot be replayed, nor an older challenge used late, nor an
  expired or forged challenge used at all;
* a re-enrolment code from the provider's staff works once, for its phone only, for no
  other provider's device, and registers the new device key;
* a phone that lost its offline-code secret gets a new one only when two people agree
  (request and approval); it is delivered once, at the phone's next proven enrolment, and
  codes made with the old secret stop working;
* the challenge call needs nothing and answers everyone alike;
* a device key belongs to one device: a locked phone that enrols with the IMEI of another,
  never-enrolled device of its provider (or with another device's re-enrolment code) gets
  the same 400, nothing changes, the attempt is audited on the device it asked for, and the
  phone keeps its lock;
* the reference agent, told by a server that it is now another device while it holds a
  command in force, refuses and keeps its lock; a released phone, or one that never held a
  command, may become another device.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
from pathlib import Path

import openpaygo
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404
from django.urls import reverse
from django.utils import timezone
from openpaygo import TokenType
from rest_framework.test import APIClient

from devices.agent import Agent, AgentError, ApiError
from devices.agent.offline import apply_code
from devices.agent.state import OfflineState
from devices.keys import public_key_b64
from devices.models import Device, EnrollmentToken
from devices.protocol import enrollment_message, secret_digest, topic_for
from devices.services.commands import StateChange, device_states_apply
from devices.services.enrolment import (
    EnrollmentRefused,
    device_reenrollment_code_issue,
    enrollment_challenge_issue,
)
from devices.services.offline import offline_code_issue
from devices.services.tokens import enrollment_token_create
from portal.models import AuditEvent
from portal.services import staff_create
from support.services.unlocks import unlock_request_approve, unlock_request_create
from tests.factories import DeviceFactory, UserFactory, device_key_b64, enrol_device, enrolment_body, make_imei
from tests.test_agent import Clock, Provider, agent_at

ENROLL = "/api/device/v1/enroll"
CHALLENGE = "/api/device/v1/enroll/challenge"
CHECKIN = "/api/device/v1/checkin"


@pytest.fixture
def token_a(provider_a, admin_a):
    _token, secret = enrollment_token_create(provider=provider_a, name="Colombo shop", shop="Colombo 03", actor=admin_a)
    return secret


class RealPhone:
    """The owner's phone: its device key (reset-protected storage), its credential and what it was sent."""

    def __init__(self, device: Device, token: str):
        self.device = device
        self.token = token
        self.key = Ed25519PrivateKey.generate()
        self.first = self.enroll().json()
        self.credential = self.first["credential"]

    def body(self, challenge: str | None = None, **extra) -> dict:
        return enrolment_body(
            imei=self.device.imei, token=self.token, key=self.key, challenge=challenge or fresh_challenge(), **extra
        )

    def enroll(self, body: dict | None = None):
        response = APIClient().post(ENROLL, body or self.body(), format="json")
        if response.status_code == 201:
            self.credential = response.json()["credential"]
        return response

    def checkin(self, credential: str | None = None):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Device {credential or self.credential}")
        return client.post(CHECKIN, {"state": "unlocked", "last_seq": 1}, format="json")


def fresh_challenge() -> str:
    response = APIClient().post(CHALLENGE)
    assert response.status_code == 200, response.content
    return response.json()["challenge"]


@pytest.fixture
def real_phone(provider_a, token_a):
    phone = RealPhone(DeviceFactory(provider=provider_a), token_a)
    assert phone.first["offline"]["secret"]
    return phone


def attacker_enrol(imei: str, token: str, **extra):
    """What anyone holding the token tries: the phone's IMEI, signed with a key of their own."""
    body = enrolment_body(imei=imei, token=token, key=Ed25519PrivateKey.generate(), challenge=fresh_challenge())
    return APIClient().post(ENROLL, {**body, **extra}, format="json")


def any_refusal(token: str):
    """The answer to an enrolment that is refused for the most ordinary reason: an IMEI nobody registered."""
    return attacker_enrol(make_imei("35999999"), token)


# --- the attacker with the token and the IMEI ------------------------------------------------------


def test_the_token_and_the_imei_of_an_enrolled_phone_get_the_same_400_and_the_phone_keeps_working(real_phone):
    device = Device.objects.get(pk=real_phone.device.pk)
    reference = any_refusal(real_phone.token)

    attempts = [
        attacker_enrol(device.imei, real_phone.token),  # a key of their own
        attacker_enrol(device.imei, real_phone.token, device_key=device.device_key),  # claims the phone's public key
        attacker_enrol(device.imei, real_phone.token, reenrollment_code="7K2M-9QXD-4TNB-H3WE"),  # a guessed code
    ]

    assert reference.status_code == 400
    assert all(a.status_code == 400 and a.content == reference.content for a in attempts), [a.json() for a in attempts]
    assert real_phone.checkin().status_code == 200, "the real phone's credential still works"
    after = Device.objects.get(pk=device.pk)
    assert (after.credential_digest, after.device_key, after.enrolled_at) == (
        device.credential_digest,
        device.device_key,
        device.enrolled_at,
    )
    # The takeover attempt is in the trail, once (the enrolment limit bounds each address).
    refused = AuditEvent.objects.filter(action="device.enrol_refused", object_id=str(device.pk))
    assert refused.count() == 1
    assert refused.get().after["shop"] == "Colombo 03" and "proof" in refused.get().after["reason"]


def test_with_what_an_attacker_can_get_no_permanent_release_code_can_be_made(real_phone):
    device = Device.objects.get(pk=real_phone.device.pk)
    seen = [APIClient().post(CHALLENGE).content for _ in range(3)]
    seen += [attacker_enrol(device.imei, real_phone.token).content for _ in range(3)]
    seen += [attacker_enrol(device.imei2 or device.imei, real_phone.token, app_version="x").content]
    # Even the real phone's own re-enrolment (after a reset) carries no secret any more.
    again = real_phone.enroll()
    assert again.status_code == 201 and again.json()["offline"] is None
    seen.append(again.content)
    everything = b"\n".join(seen).decode()

    assert device.offline_secret not in everything
    assert str(device.offline_starting_code) not in everything
    candidates = set(re.findall(r"[0-9a-fA-F]{32}", everything))
    for candidate in candidates:  # any 32-hex value an answer happens to hold is not the secret
        _count, code = openpaygo.generate_token(
            secret_key=candidate,
            count=device.offline_count,
            value=None,
            token_type=TokenType.DISABLE_PAYG,
            starting_code=device.offline_starting_code,
        )
        assert not apply_code(code, phone_offline(device), timezone.now()).ok
    # The control: with the secret, such a code is exactly what would release the phone for good.
    _count, forged = openpaygo.generate_token(
        secret_key=device.offline_secret,
        count=device.offline_count,
        value=None,
        token_type=TokenType.DISABLE_PAYG,
        starting_code=device.offline_starting_code,
    )
    assert apply_code(forged, phone_offline(device), timezone.now()).kind == "release"


def phone_offline(device: Device) -> OfflineState:
    """The OpenPAYGO state the real phone keeps in reset-protected storage."""
    return OfflineState(secret=device.offline_secret, starting_code=device.offline_starting_code)


# --- the real phone ------------------------------------------------------------------------------


def test_a_reset_phone_enrols_again_with_its_device_key_and_the_old_credential_dies(real_phone):
    old_credential = real_phone.credential

    again = real_phone.enroll()

    assert again.status_code == 201, again.json()
    body = again.json()
    assert body["offline"] is None and body["credential"] != old_credential
    assert real_phone.checkin(old_credential).status_code == 401
    assert real_phone.checkin().status_code == 200
    event = AuditEvent.objects.filter(action="device.enrol").latest("id")
    assert event.after["proof"] == "device_key" and event.after["offline_key_sent"] is False
    assert event.before["device_key"] == event.after["device_key"]


def test_an_observed_signed_enrolment_cannot_be_replayed(real_phone):
    observed = real_phone.body()
    assert real_phone.enroll(observed).status_code == 201
    current = real_phone.credential
    reference = any_refusal(real_phone.token)

    replayed = APIClient().post(ENROLL, observed, format="json")

    assert replayed.status_code == 400 and replayed.content == reference.content
    assert real_phone.checkin(current).status_code == 200


def test_a_challenge_older_than_the_last_one_used_is_refused(real_phone):
    early = fresh_challenge()
    late = fresh_challenge()
    assert real_phone.enroll(real_phone.body(late)).status_code == 201

    assert real_phone.enroll(real_phone.body(early)).status_code == 400


def test_an_expired_or_forged_challenge_is_a_field_error(real_phone, settings):
    stale = enrollment_challenge_issue(
        now=timezone.now() - dt.timedelta(seconds=settings.DEVICE_ENROLL_CHALLENGE_SECONDS + 1)
    )["challenge"]
    raw = bytearray(base64.b64decode(fresh_challenge()))
    raw[5] ^= 1  # another issue time under the same MAC
    forged = base64.b64encode(bytes(raw)).decode()

    for challenge in (stale, forged, "not base64!"):
        response = real_phone.enroll(real_phone.body(challenge))
        assert response.status_code == 400
        assert "challenge" in response.json()["errors"], response.json()
    assert real_phone.checkin().status_code == 200


def test_a_signature_over_anything_else_is_refused(real_phone):
    challenge = fresh_challenge()
    body = real_phone.body(challenge)
    other = real_phone.body(fresh_challenge())

    assert real_phone.enroll({**body, "signature": other["signature"]}).status_code == 400
    assert real_phone.enroll({**body, "app_version": "9.9"}).status_code == 201  # app_version is not signed


# --- a phone that lost its device key: the staff's re-enrolment code ----------------------------------


def test_a_reenrollment_code_works_once_for_its_phone_only(real_phone, admin_a, provider_a, provider_b):
    other_phone = RealPhone(DeviceFactory(provider=provider_a), real_phone.token)
    _b, token_b = enrollment_token_create(provider=provider_b, name="Nairobi", actor=None)
    b_phone = RealPhone(DeviceFactory(provider=provider_b), token_b)
    code, _expires = device_reenrollment_code_issue(device=real_phone.device, actor=admin_a)
    reference = any_refusal(real_phone.token)
    old_credential = real_phone.credential
    new_key = Ed25519PrivateKey.generate()  # the re-flashed phone made a new key

    def with_code(imei, token, key=None):
        key = key or Ed25519PrivateKey.generate()
        body = enrolment_body(imei=imei, token=token, key=key, challenge=fresh_challenge(), code=code)
        return APIClient().post(ENROLL, body, format="json")

    # Not for another phone of the provider, nor for another provider's phone, nor with its token.
    for attempt in (
        with_code(other_phone.device.imei, real_phone.token),
        with_code(b_phone.device.imei, token_b),
        with_code(real_phone.device.imei, token_b),
    ):
        assert attempt.status_code == 400 and attempt.content == reference.content

    used = with_code(real_phone.device.imei, real_phone.token, new_key)

    assert used.status_code == 201, used.json()
    assert used.json()["offline"] is None
    device = Device.objects.get(pk=real_phone.device.pk)
    assert device.device_key == device_key_b64(new_key) and not device.reenrollment_code_digest
    assert real_phone.checkin(old_credential).status_code == 401
    assert real_phone.enroll().status_code == 400, "the old device key no longer re-enrols this phone"
    again = with_code(real_phone.device.imei, real_phone.token)
    assert again.status_code == 400 and again.content == reference.content, "a code works once"
    event = AuditEvent.objects.filter(action="device.enrol").latest("id")
    assert event.after["proof"] == "reenrollment_code" and event.before["device_key"] != event.after["device_key"]


def test_an_expired_reenrollment_code_is_refused(real_phone, admin_a, settings):
    code, expires_at = device_reenrollment_code_issue(device=real_phone.device, actor=admin_a)
    assert expires_at - timezone.now() <= dt.timedelta(minutes=settings.DEVICE_REENROLL_CODE_MINUTES)
    Device.objects.filter(pk=real_phone.device.pk).update(reenrollment_code_expires_at=timezone.now())

    body = enrolment_body(
        imei=real_phone.device.imei,
        token=real_phone.token,
        key=Ed25519PrivateKey.generate(),
        challenge=fresh_challenge(),
        code=code,
    )

    assert APIClient().post(ENROLL, body, format="json").status_code == 400


def test_a_reenrollment_code_is_staff_only_audited_and_never_stored_in_clear(
    real_phone, admin_a, agent_a, agent_b, technician
):
    for outsider, error in ((agent_b, Http404), (agent_a, PermissionDenied), (technician, PermissionDenied)):
        with pytest.raises(error):
            device_reenrollment_code_issue(device=real_phone.device, actor=outsider)

    code, _expires = device_reenrollment_code_issue(device=real_phone.device, actor=admin_a)

    device = Device.objects.get(pk=real_phone.device.pk)
    plain = code.replace("-", "")
    assert len(plain) == 16 and plain not in device.reenrollment_code_digest
    event = AuditEvent.objects.get(action="device.reenrollment_code")
    assert event.actor == admin_a and plain not in json.dumps([event.before, event.after])
    with pytest.raises(ValidationError, match="not enrolled yet"):
        device_reenrollment_code_issue(device=DeviceFactory(provider=real_phone.device.provider), actor=admin_a)


# --- a phone that lost its offline-code secret: a re-key, four eyes ------------------------------------


def test_a_new_offline_code_key_needs_two_people_and_reaches_the_phone_once(real_phone, admin_a, agent_a, provider_a):
    device = Device.objects.get(pk=real_phone.device.pk)
    old = phone_offline(device)
    _count, old_code = openpaygo.generate_token(
        secret_key=device.offline_secret,
        count=0,
        value=3,
        token_type=TokenType.SET_TIME,
        starting_code=device.offline_starting_code,
    )
    request = unlock_request_create(
        device=device, kind="rekey", requested_by=admin_a, reason="Storage replaced at the service centre"
    )
    # Two accounts of one person are not two people: one the requester set up cannot approve.
    set_up_by_requester, _link = staff_create(
        organisation=provider_a, actor=admin_a, username="new.agent", role="agent", first_name="", last_name=""
    )
    with pytest.raises(PermissionDenied):
        unlock_request_approve(unlock_request=request, approver=admin_a)
    with pytest.raises(PermissionDenied, match="set up"):
        unlock_request_approve(unlock_request=request, approver=set_up_by_requester)
    assert Device.objects.get(pk=device.pk).offline_secret == device.offline_secret

    unlock_request_approve(unlock_request=request, approver=agent_a, note="checked the phone")

    rekeyed = Device.objects.get(pk=device.pk)
    assert rekeyed.offline_secret != device.offline_secret and rekeyed.offline_count == 0
    assert rekeyed.offline_sent_at is None
    event = AuditEvent.objects.get(action="device.offline_rekey")
    assert (event.after["requested_by"], event.after["approved_by"]) == ("admin.a", "agent.a")
    assert rekeyed.offline_secret not in json.dumps([event.before, event.after])
    # Until the phone has it, a code under the new key would not work: none is issued.
    approver = UserFactory(username="admin.two", organisation=provider_a, role="provider_admin")
    with pytest.raises(ValidationError, match="not received its new offline-code key"):
        offline_code_issue(device=rekeyed, kind="release", requested_by=agent_a, approved_by=approver, reason="x")

    delivered = real_phone.enroll()  # the phone's next proven enrolment
    assert delivered.status_code == 201
    offline = delivered.json()["offline"]
    assert offline == {
        "secret": rekeyed.offline_secret,
        "starting_code": rekeyed.offline_starting_code,
        "count": 0,
    }
    assert real_phone.enroll().json()["offline"] is None, "delivered once"
    # Codes made with the old key do not work with the new one; they did with the old.
    assert apply_code(old_code, old, timezone.now()).ok
    new = OfflineState(secret=offline["secret"], starting_code=offline["starting_code"])
    assert not apply_code(old_code, new, timezone.now()).ok


def test_a_rekey_service_call_by_one_person_is_refused(real_phone, admin_a):
    from devices.services.offline import device_offline_rekey

    with pytest.raises(PermissionDenied, match="second person"):
        device_offline_rekey(device=real_phone.device, requested_by=admin_a, approved_by=admin_a, reason="lost")


# --- the challenge --------------------------------------------------------------------------------------


def test_the_challenge_needs_nothing_answers_everyone_alike_and_is_rate_limited(db, settings):
    settings.DEVICE_ENROLL_RATE = "3/min"
    client = APIClient()

    answers = [client.post(CHALLENGE, {"imei": make_imei()}, format="json") for _ in range(3)]
    throttled = client.post(CHALLENGE)

    assert [a.status_code for a in answers] == [200, 200, 200]
    bodies = [a.json() for a in answers]
    assert all(set(b) == {"challenge", "expires_in"} and b["expires_in"] == 300 for b in bodies)
    assert len({b["challenge"] for b in bodies}) == 3 and len({len(b["challenge"]) for b in bodies}) == 1
    assert throttled.status_code == 429


def test_the_worked_example_in_the_protocol_page_is_exactly_what_is_signed():
    """docs/lock-pipeline.md ("Enrolment") gives implementers bytes to check their own code against."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "lock-pipeline.md").read_text()
    row = dict(re.findall(r"^\| (seed \(base64\)|`device_key`|`challenge`|`signature`) \| `([^`]+)` \|$", page, re.M))
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(row["seed (base64)"]))
    message = enrollment_message(challenge=row["`challenge`"], imei="351234560000648", device_key=row["`device_key`"])

    assert device_key_b64(key) == row["`device_key`"]
    assert len(message) == 155 and f"message ({len(message)} bytes)" in page
    assert (
        message
        == b"finlock-enroll-v1\n" + row["`challenge`"].encode() + b"\n351234560000648\n" + row["`device_key`"].encode()
    )
    assert base64.b64encode(key.sign(message)).decode() == row["`signature`"]  # Ed25519 is deterministic


def test_the_device_pages_link_opens_the_request_form_on_a_new_offline_code_key(real_phone, admin_a, as_user):
    """Review: the link opened the form on "Temporary unlock", which then asked "How many hours?"."""
    client = as_user(admin_a)
    page = client.get(reverse("devices:detail", args=[real_phone.device.pk])).content.decode()
    link = f"{reverse('support:unlock_new')}?device={real_phone.device.pk}&amp;kind=rekey"
    assert link in page
    form = client.get(link.replace("&amp;", "&")).content.decode()
    assert re.search(r'<input[^>]*value="rekey"[^>]*checked', form), "the key request is chosen"
    assert not re.search(r'<input[^>]*value="temporary"[^>]*checked', form)


# --- a device key belongs to one device: a locked phone cannot become another device ---------------


def enrol_as(phone: RealPhone, imei: str, **extra):
    """What a locked phone tries: another device's IMEI, signed with its own (registered) device key."""
    body = enrolment_body(imei=imei, token=phone.token, key=phone.key, challenge=fresh_challenge(), **extra)
    return APIClient().post(ENROLL, body, format="json")


def test_a_phone_enrolling_as_a_never_enrolled_device_with_its_key_gets_the_same_400(real_phone, provider_a):
    other = DeviceFactory(provider=provider_a)  # registered, never enrolled: the token alone would enrol it
    uses = _token_uses(real_phone)
    reference = any_refusal(real_phone.token)

    taken = enrol_as(real_phone, other.imei)

    assert taken.status_code == 400 and taken.content == reference.content
    after = Device.objects.get(pk=other.pk)
    assert (after.enrolled_at, after.device_key, after.credential_digest, after.offline_sent_at) == (
        None,
        "",
        other.credential_digest,
        None,
    )
    assert _token_uses(real_phone) == uses, "a refused first enrolment uses none of the token"
    assert real_phone.checkin().status_code == 200, "the phone's own credential still works"
    refused = AuditEvent.objects.get(action="device.enrol_refused", object_id=str(other.pk))
    assert refused.after["reason"] == "the device key is not accepted for this device"  # names no other device
    assert not AuditEvent.objects.filter(action="device.enrol_refused", object_id=str(real_phone.device.pk)).exists()
    # The very device the phone is still enrols with its key; the other device with a key of its own.
    assert real_phone.enroll().status_code == 201
    assert attacker_enrol(other.imei, real_phone.token).status_code == 201


def test_another_devices_reenrollment_code_does_not_move_a_phones_key_either(real_phone, provider_a, admin_a):
    other = RealPhone(DeviceFactory(provider=provider_a), real_phone.token)  # enrolled, lost its key
    code, _expires = device_reenrollment_code_issue(device=other.device, actor=admin_a)
    before = Device.objects.get(pk=other.device.pk)

    taken = enrol_as(real_phone, other.device.imei, code=code)

    assert taken.status_code == 400 and taken.content == any_refusal(real_phone.token).content
    after = Device.objects.get(pk=other.device.pk)
    assert (after.device_key, after.credential_digest, after.reenrollment_code_digest) == (
        before.device_key,
        before.credential_digest,
        before.reenrollment_code_digest,
    ), "nothing changed, and the code is still there for the phone it was issued for"
    assert other.checkin().status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_key_presented_for_four_new_devices_at_once_is_registered_to_one(provider_a, token_a):
    key = Ed25519PrivateKey.generate()
    devices = [DeviceFactory(provider=provider_a) for _ in range(4)]
    enrolled, refused, errors, start = [], [], [], threading.Barrier(len(devices))

    def go(device):
        try:
            start.wait()
            enrolled.append(enrol_device(device.imei, token_a, key=key))
        except EnrollmentRefused:
            refused.append(device)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=go, args=(device,)) for device in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and (len(enrolled), len(refused)) == (1, 3)
    assert Device.objects.filter(device_key=device_key_b64(key)).count() == 1


def _token_uses(phone: RealPhone) -> int:
    return EnrollmentToken.objects.get(digest=secret_digest(phone.token)).uses


class DjangoTransport:
    """The reference agent's HTTP calls, through Django's test client to the real device API."""

    def post(self, server_url, call, body, credential=None):
        client = APIClient()
        if credential:
            client.credentials(HTTP_AUTHORIZATION=f"Device {credential}")
        response = client.post(f"/api/device/v1/{call}", body, format="json")
        if response.status_code >= 400:
            raise ApiError(f"{call} answered {response.status_code}", status=response.status_code, body=response.json())
        return response.json()


def test_a_locked_reference_phone_cannot_drop_its_lock_by_enrolling_as_another_device(
    provider_a, token_a, tmp_path, django_capture_on_commit_callbacks
):
    mine, other = DeviceFactory(provider=provider_a), DeviceFactory(provider=provider_a)
    phone = Agent(tmp_path / "phone", transport=DjangoTransport())
    phone.enroll("http://testserver", mine.imei, token_a)
    with django_capture_on_commit_callbacks(execute=True):
        device_states_apply(changes=[StateChange(device_id=mine.pk, state="locked", reason="Overdue")])
    device_states_apply(changes=[StateChange(device_id=other.pk, state="unlocked", reason="Paid")])
    phone.checkin()
    assert phone.view().state == "locked"

    with pytest.raises(ApiError) as refused:
        phone.enroll("http://testserver", other.imei, token_a)

    assert refused.value.status == 400
    assert phone.view().state == "locked" and phone.state.enrolment.device == str(mine.uid)
    assert Device.objects.get(pk=other.pk).enrolled_at is None
    assert phone.checkin().verdict == "same" and phone.view().state == "locked", "its credential still works"


class ForgetfulServer:
    """A server without the one-key-one-device rule: it enrols the phone as whatever device it names."""

    def __init__(self, device: Provider):
        self.device = device

    def post(self, server_url, call, body, credential=None):
        if call == "enroll/challenge":
            return {"challenge": "Y2hhbGxlbmdl", "expires_in": 300}
        if call == "enroll":
            statement = self.device.key_statement(seq=1)
            return {
                "device": self.device.device,
                "credential": "fd1.other",
                # Both spellings: the answer's single statement, and the chain that replaces it.
                "key_statement": statement,
                "key_statements": [statement],
                "offline": None,
                "mqtt_topic": topic_for(self.device.device),
                "envelope": self.device.envelope("unlocked"),
            }
        if call == "ack":
            return {"ok": True}
        raise AssertionError(f"unexpected call {call}")


@pytest.mark.parametrize("state", ["locked", "reminder", "unlocked", "temp_unlocked"])
def test_the_reference_agent_holding_a_command_never_adopts_another_device_id(tmp_path, state):
    clock = Clock()
    key = Ed25519PrivateKey.generate()  # the server signs every device's commands with its key
    mine = Provider(clock=clock, key=key)
    other = Provider(clock=clock, key=key, imei=mine.imei)  # the phone's IMEI: only the device id differs
    phone = agent_at(tmp_path / "phone", clock, transport=ForgetfulServer(other))
    mine.enrol(phone)
    extra = {"expires_at": "2026-11-24T09:00:00Z"} if state == "temp_unlocked" else {}
    assert phone.handle_envelope(mine.envelope(state, **extra)).accepted
    phone.device_key()  # made at its first enrolment, kept since
    protected = (tmp_path / "phone" / "protected" / "lock.json").read_text()
    shown = phone.view().state

    with pytest.raises(AgentError, match=f"device {mine.device}, holding a {state} command, not {other.device}"):
        phone.enroll("https://finlock.example", mine.imei, "token")

    assert (tmp_path / "phone" / "protected" / "lock.json").read_text() == protected, "nothing changed"
    assert phone.view().state == shown and phone.state.enrolment.device == mine.device
    assert phone.log[-1]["event"] == "enrol_refused" and other.device in phone.log[-1]["reason"]
    # And the other device's unlock is still for another device.
    assert phone.handle_envelope(other.envelope("unlocked")).verdict == "other_device"
    assert phone.view().state == shown


@pytest.mark.parametrize("held", ["released", None])
def test_a_released_phone_or_one_without_a_command_may_become_another_device(tmp_path, held):
    clock = Clock()
    key = Ed25519PrivateKey.generate()
    mine = Provider(clock=clock, key=key)
    other = Provider(clock=clock, key=key, imei=mine.imei)
    phone = agent_at(tmp_path / "phone", clock, transport=ForgetfulServer(other))
    mine.enrol(phone)
    if held:
        assert phone.handle_envelope(mine.envelope(held)).accepted

    outcome = phone.enroll("https://finlock.example", mine.imei, "token")

    assert outcome.accepted and phone.state.enrolment.device == other.device
    assert phone.view().state == "unlocked"


def test_a_phone_released_for_good_can_be_financed_again_as_another_device_with_its_key(real_phone, provider_a):
    # Paid off: released for good. The same handset is later sold again on a new contract.
    Device.objects.filter(pk=real_phone.device.pk).update(desired_state="released")
    again = DeviceFactory(provider=provider_a)

    assert enrol_as(real_phone, again.imei).status_code == 201  # its key moves to the new record

    registered = Device.objects.get(pk=real_phone.device.pk).device_key
    assert registered == ""  # the released record holds it no more
    assert Device.objects.get(pk=again.pk).device_key == public_key_b64(real_phone.key)
