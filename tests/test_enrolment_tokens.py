"""A provider admin scopes, lists, creates and revokes enrolment tokens, and issues re-enrolment codes, in the portal.

Stories:
* the admin creates a token for one shop, for a number of phones and a number of days; its
  secret is shown once (never cached) and only a digest is kept; the trail records it
  without the secret; every enrolment it performs names the shop;
* a token enrols as many phones for the first time as it allows, then refuses more; a
  phone it enrolled still re-enrols with its device key; an expired or revoked token
  enrols nobody;
* the admin revokes a token in the portal (audited with the real before and after);
  another provider's token is 404, and staff without the settings right get 403;
* on a phone's page the admin issues a one-time re-enrolment code, shown once; staff
  without the right do not see the button and get 403, another provider's staff 404.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ValidationError
from django.utils import timezone

from devices.models import Device, EnrollmentToken
from devices.services.enrolment import EnrollmentRefused
from devices.services.tokens import enrollment_token_create, enrollment_token_revoke
from portal.models import AuditEvent
from tests.conftest import signed_in
from tests.factories import DeviceFactory, UserFactory, enrol_device

URL = "/devices/enrolment-tokens/"


def create(client, **data):
    return client.post(URL, {"name": "Kandy shop", "shop": "", "max_uses": "", "days": "", **data})


def test_the_admin_creates_a_token_for_a_shop_and_sees_its_secret_once(client, admin_a, provider_a):
    admin = signed_in(client, admin_a)
    assert "Enrolment tokens" in admin.get("/settings/").content.decode()

    response = create(admin, name="Kandy shop", shop="Kandy, Peradeniya Rd", max_uses="50", days="14")

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    page = response.content.decode()
    secret = page.split('id="new-enrollment-token">')[1].split("<")[0]
    assert secret.startswith("fle_")
    token = EnrollmentToken.objects.get(provider=provider_a)
    assert (token.name, token.shop, token.max_uses, token.created_by) == (
        "Kandy shop",
        "Kandy, Peradeniya Rd",
        50,
        admin_a,
    )
    assert dt.timedelta(days=13, hours=23) < token.expires_at - timezone.now() <= dt.timedelta(days=14)
    assert secret not in token.digest
    event = AuditEvent.objects.get(action="enrollment_token.create")
    assert event.actor == admin_a and event.after["shop"] == "Kandy, Peradeniya Rd" and event.after["max_uses"] == 50
    assert "digest" not in event.after and secret not in str(event.after)
    # Listed afterwards, never with its secret again.
    listing = admin.get(URL).content.decode()
    assert "Kandy, Peradeniya Rd" in listing and "0 of 50" in listing and secret not in listing

    enrolment = enrol_device(DeviceFactory(provider=provider_a).imei, secret)
    assert enrolment.credential
    assert AuditEvent.objects.filter(action="device.enrol").get().after["shop"] == "Kandy, Peradeniya Rd"


def test_a_bad_token_form_names_the_field_and_creates_nothing(client, admin_a):
    admin = signed_in(client, admin_a)

    response = create(admin, name="", max_uses="0", days="-1")

    assert response.status_code == 200
    form = response.context["form"]
    assert set(form.errors) == {"name", "max_uses", "days"}
    assert not EnrollmentToken.objects.exists()


def test_a_token_enrols_as_many_new_phones_as_it_allows_and_its_phones_still_re_enrol(provider_a):
    _token, secret = enrollment_token_create(provider=provider_a, name="Two phones", actor=None, max_uses=2)
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    phones = [DeviceFactory(provider=provider_a) for _ in range(3)]

    for phone, key in zip(phones, keys, strict=False):
        enrol_device(phone.imei, secret, key=key)
    with pytest.raises(EnrollmentRefused):
        enrol_device(phones[2].imei, secret)

    token = EnrollmentToken.objects.get()
    assert (token.uses, token.status()) == (2, "used up")
    # A used-up token still lets a phone it enrolled come back after a reset, signed with its key.
    assert enrol_device(phones[0].imei, secret, key=keys[0]).offline is None
    assert EnrollmentToken.objects.get().uses == 2
    assert Device.objects.get(pk=phones[2].pk).enrolled_at is None


def test_an_expired_or_revoked_token_enrols_nobody_not_even_a_signed_phone(provider_a, admin_a):
    key = Ed25519PrivateKey.generate()
    phone = DeviceFactory(provider=provider_a)
    token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=admin_a)
    enrol_device(phone.imei, secret, key=key)

    enrollment_token_revoke(token=token, actor=admin_a)
    with pytest.raises(EnrollmentRefused):
        enrol_device(phone.imei, secret, key=key)

    expired, expired_secret = enrollment_token_create(
        provider=provider_a, name="old", actor=admin_a, expires_at=timezone.now() + dt.timedelta(seconds=1)
    )
    EnrollmentToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    with pytest.raises(EnrollmentRefused):
        enrol_device(DeviceFactory(provider=provider_a).imei, expired_secret)
    assert EnrollmentToken.objects.get(pk=expired.pk).status() == "expired"


def test_the_admin_revokes_a_token_in_the_portal_and_it_is_audited(client, admin_a, provider_a):
    token, secret = enrollment_token_create(provider=provider_a, name="Galle shop", actor=admin_a)
    admin = signed_in(client, admin_a)

    response = admin.post(f"{URL}{token.pk}/revoke/")

    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None and token.status() == "revoked"
    event = AuditEvent.objects.get(action="enrollment_token.revoke")
    assert event.before["revoked_at"] is None and event.after["revoked_at"] is not None
    assert event.actor == admin_a
    with pytest.raises(EnrollmentRefused):
        enrol_device(DeviceFactory(provider=provider_a).imei, secret)
    # Revoking again changes nothing and records nothing more.
    admin.post(f"{URL}{token.pk}/revoke/")
    assert AuditEvent.objects.filter(action="enrollment_token.revoke").count() == 1


def test_tokens_are_the_providers_own_and_the_admins_only(client, admin_a, agent_a, provider_b, technician):
    other, _secret = enrollment_token_create(provider=provider_b, name="Nairobi", actor=None)
    admin_b = UserFactory(username="admin.b", organisation=provider_b, role="provider_admin")

    assert signed_in(client, admin_a).post(f"{URL}{other.pk}/revoke/").status_code == 404
    assert "Nairobi" not in client.get(URL).content.decode()
    client.logout()
    assert signed_in(client, agent_a).get(URL).status_code == 403
    assert client.post(f"{URL}{other.pk}/revoke/").status_code == 403
    client.logout()
    assert signed_in(client, technician).get(URL).status_code == 403
    client.logout()
    assert signed_in(client, admin_b).get(URL).status_code == 200
    assert EnrollmentToken.objects.get(pk=other.pk).revoked_at is None


def test_a_token_needs_a_name_and_a_sane_number_of_phones(provider_a):
    with pytest.raises(ValidationError) as refused:
        enrollment_token_create(provider=provider_a, name=" ", actor=None, max_uses=0, shop="x" * 81)

    assert set(refused.value.message_dict) == {"name", "max_uses", "shop"}


# --- re-enrolment codes on the device page -----------------------------------------------------------


@pytest.fixture
def enrolled_phone(provider_a):
    phone = DeviceFactory(provider=provider_a)
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    enrol_device(phone.imei, secret)
    return phone


def test_the_admin_issues_a_reenrollment_code_on_the_phones_page_shown_once(client, admin_a, enrolled_phone):
    admin = signed_in(client, admin_a)
    page = admin.get(f"/devices/{enrolled_phone.pk}/").content.decode()
    assert "Issue a re-enrolment code" in page and "SHA256:" in page

    response = admin.post(f"/devices/{enrolled_phone.pk}/reenrollment-code/")

    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    code = response.content.decode().split('id="reenrollment-code">')[1].split("<")[0]
    assert len(code) == 19 and code.count("-") == 3
    again = admin.get(f"/devices/{enrolled_phone.pk}/").content.decode()
    assert code not in again and "an unused code works until" in again
    assert AuditEvent.objects.filter(action="device.reenrollment_code", actor=admin_a).count() == 1


def test_staff_without_the_right_cannot_issue_a_reenrollment_code(
    client, agent_a, technician, enrolled_phone, provider_b
):
    for user in (agent_a, technician):
        page = signed_in(client, user).get(f"/devices/{enrolled_phone.pk}/").content.decode()
        assert "Issue a re-enrolment code" not in page
        assert client.post(f"/devices/{enrolled_phone.pk}/reenrollment-code/").status_code == 403
        client.logout()
    admin_b = UserFactory(username="admin.b", organisation=provider_b, role="provider_admin")
    assert signed_in(client, admin_b).post(f"/devices/{enrolled_phone.pk}/reenrollment-code/").status_code == 404
    assert not Device.objects.get(pk=enrolled_phone.pk).reenrollment_code_digest


def test_a_refused_takeover_shows_on_the_phones_page(client, agent_a, enrolled_phone):
    _token, secret = enrollment_token_create(provider=enrolled_phone.provider, name="leaked", shop="Matara", actor=None)
    with pytest.raises(EnrollmentRefused):
        enrol_device(enrolled_phone.imei, secret)  # someone else's key

    page = signed_in(client, agent_a).get(f"/devices/{enrolled_phone.pk}/").content.decode()

    assert "Refused enrolment" in page and "token of Matara" in page
