"""Security changes leave a usable audit record, and no secret ever enters the trail.

Stories (the security review's finding 8):
* an operator sets a staff member's password in the Django admin: ``user.password_change`` names
  the operator and the user, never the hash;
* an operator changes which providers a service centre serves: the event holds the real
  before and after (the many-to-many is read before the form saves and after it saved);
* an operator edits a phone in the admin: the trail shows the edit, not the phone's offline-code
  secret or credential digest;
* what enters the trail is an explicit allow-list per model (``audit_fields``), never a guess
  by field name: every model the admin can change declares one, no list names a secret, and a
  model without a list cannot be snapshotted. (``tests/conftest.py`` also checks every list
  ``snapshot`` used anywhere in the test run.)
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured

from devices.services.tokens import enrollment_token_create
from portal.admin_mixins import AuditedAdmin, ReadOnlyAdmin
from portal.audit import AUDITED_FIELD_LISTS, snapshot
from portal.models import AuditEvent, Organisation
from tests.conftest import secrets_in
from tests.factories import DeviceFactory, OrganisationFactory, UserFactory, enrol_device


def admin_lists():
    for model, model_admin in admin.site._registry.items():
        if isinstance(model_admin, AuditedAdmin):
            yield model, model_admin, model_admin.audit_fields or getattr(model, "audit_fields", None)


@pytest.fixture
def operator_client(as_user, operator):
    operator.is_superuser = True
    operator.save(update_fields=["is_superuser"])
    return as_user(operator)


# --- the allow-lists --------------------------------------------------------------------------


def test_every_model_the_admin_can_change_is_audited_through_an_allow_list():
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        if label == "portal.AuditEvent":
            continue  # the trail itself: the admin only reads it
        assert isinstance(model_admin, AuditedAdmin | ReadOnlyAdmin), f"{label}: changes in the admin are not audited"
    for model, _model_admin, fields in admin_lists():
        assert fields, f"{model._meta.label} is edited in the admin but declares no audit_fields"


def test_no_allow_list_names_a_secret():
    checked = []
    for model, _model_admin, fields in admin_lists():
        assert secrets_in(model._meta.label, fields) == set(), model._meta.label
        checked.append(model._meta.label)
    for model in apps.get_models():
        fields = getattr(model, "audit_fields", None)
        if fields is not None:
            assert secrets_in(model._meta.label, fields) == set(), model._meta.label
            checked.append(model._meta.label)
    assert {"devices.Device", "portal.User", "portal.ApiKey", "otp_totp.TOTPDevice"} <= set(checked)


def test_the_lists_snapshot_used_in_this_run_hold_no_secret(provider_a, admin_a):
    """A few writes that snapshot secret-bearing models, then the record of every list snapshot used."""
    from portal.services import api_key_create, staff_create

    api_key_create(provider=provider_a, name="erp", actor=admin_a)
    staff_create(organisation=provider_a, username="a.new", role="agent", actor=admin_a)
    device = DeviceFactory(provider=provider_a)
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=admin_a)
    enrol_device(device.imei, secret)
    assert AUDITED_FIELD_LISTS
    for (label, _requested), fields in AUDITED_FIELD_LISTS.items():
        assert secrets_in(label, [f.name for f in fields]) == set(), label


def test_a_model_without_an_allow_list_cannot_be_snapshotted(db):
    from axes.models import AccessAttempt

    with pytest.raises(ImproperlyConfigured, match="declares no audit_fields"):
        snapshot(AccessAttempt(username="x"))
    # An explicit list still works for it (other apps' models, new models passing fields=).
    assert snapshot(AccessAttempt(username="x"), ("username",)) == {"username": "x"}


def test_a_declared_list_cannot_be_widened_by_a_caller(provider_a):
    device = DeviceFactory(provider=provider_a)
    with pytest.raises(ImproperlyConfigured, match="does not allow offline_secret"):
        snapshot(device, ("imei", "offline_secret"))
    with pytest.raises(ImproperlyConfigured, match="no_such_field"):
        snapshot(Organisation(name="x"), ("no_such_field",))


# --- the admin's security changes ----------------------------------------------------------------


def test_a_password_set_in_the_admin_is_audited_without_the_hash(operator_client, operator, agent_a):
    response = operator_client.post(
        f"/admin/portal/user/{agent_a.pk}/password/",
        {"usable_password": "true", "password1": "a-new-passphrase-2026", "password2": "a-new-passphrase-2026"},
    )
    assert response.status_code == 302
    agent_a.refresh_from_db()
    assert agent_a.check_password("a-new-passphrase-2026")
    event = AuditEvent.objects.get(action="user.password_change")
    assert event.actor == operator and event.object_type == "portal.User" and event.object_id == str(agent_a.pk)
    assert event.organisation_id == agent_a.organisation_id
    hashed = agent_a.password.split("$")[-1]
    assert hashed not in str(event.after) and "password1" not in str(event.after)
    assert event.after == {"usable_password": True}


def test_a_change_of_served_providers_shows_the_real_before_and_after(operator_client, provider_a, provider_b):
    centre = OrganisationFactory(kind="service_center", name="Hub", slug="hub", time_zone="Asia/Colombo")
    centre.served_providers.add(provider_a)
    data = {
        "kind": "service_center",
        "name": "Hub",
        "slug": "hub",
        "time_zone": "Asia/Colombo",
        "languages": "[]",
        "hotline_numbers": "[]",
        "served_providers": [provider_b.pk],
    }
    response = operator_client.post(f"/admin/portal/organisation/{centre.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert list(centre.served_providers.all()) == [provider_b]
    event = AuditEvent.objects.get(action="organisation.update")
    assert event.before["served_providers"] == [provider_a.pk]
    assert event.after["served_providers"] == [provider_b.pk]


def test_editing_a_phone_in_the_admin_keeps_its_secrets_out_of_the_trail(operator_client, provider_a):
    device = DeviceFactory(provider=provider_a, model="")
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    enrol_device(device.imei, secret)
    device.refresh_from_db()
    assert device.offline_secret and device.credential_digest
    data = {
        "provider": provider_a.pk,
        "imei": device.imei,
        "imei2": "",
        "serial_number": device.serial_number,
        "maker": device.maker,
        "model": "Redmi 13C",
    }
    response = operator_client.post(f"/admin/devices/device/{device.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.get(action="device.update")
    assert event.before["model"] == "" and event.after["model"] == "Redmi 13C"
    trail = str([(e.before, e.after) for e in AuditEvent.objects.all()])
    for value in (device.offline_secret, device.credential_digest, secret):
        assert value not in trail
    for name in ("offline_secret", "credential_digest", "offline_starting_code"):
        assert name not in event.before and name not in event.after


def test_an_authenticator_changed_in_the_admin_is_audited_and_its_key_never_shown(operator_client, provider_a):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = UserFactory(username="a.twofactor", organisation=provider_a, role="provider_admin")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    page = operator_client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/").content.decode()
    assert device.key not in page
    response = operator_client.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="totpdevice.delete")
    assert event.before["user_id"] == user.pk and device.key not in str(event.before)


def test_unlocking_a_locked_out_account_in_the_admin_is_audited(operator_client, agent_a, client):
    from axes.models import AccessAttempt
    from django.conf import settings
    from django.test import Client

    stranger = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        stranger.post("/login/", {"username": "agent.a", "password": "guess"})
    attempt = AccessAttempt.objects.get(username="agent.a")
    response = operator_client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="accessattempt.delete")
    assert event.before["username"] == "agent.a" and "guess" not in str(event.before)
