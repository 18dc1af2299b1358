"""A provider's systems authenticate with an API key and only ever see that provider's data.

Stories:
* an integrator who forgets the key, mistypes the header or uses a revoked key gets
  401 with a message that says what to fix (and never a hint about other tenants);
* a key of provider A never reaches provider B's devices or contracts (404, not 403);
* an admin creates a key with ``manage.py create_api_key``: the key is the last line
  printed, it works at once, and only its SHA-256 digest is stored.
"""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from portal.models import ApiKey, AuditEvent
from portal.services import api_key_create, api_key_revoke
from tests.factories import DeviceFactory, make_contract

DEVICES = "/api/v1/devices/"


def client_with(header: str | None) -> APIClient:
    """An API client sending ``header`` verbatim as ``Authorization`` (or none at all)."""
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    return client


@pytest.fixture
def key_a(provider_a):
    """A fresh key of provider A: (row, full key)."""
    return api_key_create(provider=provider_a, name="erp")


# --- 401: no key, a malformed header, an unknown or revoked key -----------------------


def test_a_request_without_a_key_is_told_how_to_authenticate(db):
    response = client_with(None).get(DEVICES)
    assert response.status_code == 401
    assert "Bearer" in response.json()["detail"]
    # The challenge tells a generic HTTP client which scheme to use.
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",  # scheme without a key
        "Bearer fl_abc_def extra",  # the key split by a space
        "Token fl_abc_def",  # another framework's scheme
        "Basic dXNlcjpwYXNz",  # a password instead of a key
    ],
)
def test_a_malformed_authorization_header_is_a_401_naming_the_expected_form(db, header):
    response = client_with(header).get(DEVICES)
    assert response.status_code == 401
    assert "Authorization: Bearer <key>" in response.json()["detail"]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-finlock-key",
        "fl_deadbeef_" + "x" * 43,
        "fl_only-two-parts",
        "fl_dead\x00beef_secret",  # a NUL byte must not reach the database (PostgreSQL raises)
        "fl_" + "a" * 40 + "_secret",  # longer than any prefix
    ],
)
def test_an_unknown_key_is_rejected_as_invalid(db, token):
    response = client_with(f"Bearer {token}").get(DEVICES)
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid API key."


def test_a_known_prefix_with_a_wrong_secret_is_rejected_without_revealing_the_key_exists(key_a):
    row, full = key_a
    forged = f"fl_{row.prefix}_{'A' * 43}"
    assert forged != full
    response = client_with(f"Bearer {forged}").get(DEVICES)
    assert response.status_code == 401
    # Same message as an unknown key: a guesser learns nothing from a valid prefix.
    assert response.json()["detail"] == "Invalid API key."


def test_a_revoked_key_stops_working_at_once_and_says_so(key_a):
    row, full = key_a
    client = client_with(f"Bearer {full}")
    assert client.get(DEVICES).status_code == 200

    api_key_revoke(key=row, actor=None)

    response = client.get(DEVICES)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="api_key.revoke", object_id=str(row.pk)).count() == 1


def test_a_used_key_records_when_it_was_last_used(key_a):
    row, full = key_a
    assert row.last_used_at is None
    client_with(f"Bearer {full}").get(DEVICES)
    row.refresh_from_db()
    assert row.last_used_at is not None


# --- tenant isolation -------------------------------------------------------------------


def test_provider_a_key_never_sees_provider_b_devices_or_contracts(api_a, provider_a, provider_b):
    own = make_contract(provider_a, number="DLG-1")
    other = make_contract(provider_b, number="JAM-1")
    DeviceFactory(provider=provider_b)

    listed = [d["imei"] for d in api_a.get(DEVICES).json()["results"]]
    assert listed == [own.device.imei]
    contracts = [c["number"] for c in api_a.get("/api/v1/contracts/").json()["results"]]
    assert contracts == ["DLG-1"]

    # Another tenant's object does not exist for this key: 404, never 403.
    assert api_a.get(f"{DEVICES}{other.device.imei}/").status_code == 404
    assert api_a.get("/api/v1/contracts/JAM-1/").status_code == 404
    assert api_a.get(f"{DEVICES}{own.device.imei}/").status_code == 200


def test_a_key_is_bound_to_its_own_secret_not_just_its_prefix(provider_a, provider_b):
    row_a, _full_a = api_key_create(provider=provider_a, name="a")
    _row_b, full_b = api_key_create(provider=provider_b, name="b")
    secret_b = full_b.split("_", 2)[2]
    spliced = f"fl_{row_a.prefix}_{secret_b}"
    assert client_with(f"Bearer {spliced}").get(DEVICES).status_code == 401


# --- create_api_key and storage ------------------------------------------------------------


def test_create_api_key_prints_a_working_key_as_its_last_line(provider_a):
    out = StringIO()
    call_command("create_api_key", "dialog", "--name", "erp", stdout=out)
    lines = out.getvalue().strip().splitlines()
    key = lines[-1]
    assert key.startswith("fl_")
    assert "Dialog Finance" in lines[0]  # says whose key it is

    row = ApiKey.objects.get(provider=provider_a, name="erp")
    assert key.split("_")[1] == row.prefix
    response = client_with(f"Bearer {key}").get(DEVICES)
    assert response.status_code == 200


def test_create_api_key_for_an_unknown_provider_lists_the_known_ones(provider_a, provider_b):
    with pytest.raises(CommandError) as excinfo:
        call_command("create_api_key", "nope", stdout=StringIO())
    message = str(excinfo.value)
    assert "'nope'" in message and "dialog" in message and "jamii" in message
    assert not ApiKey.objects.exists()


def test_keys_are_stored_as_a_sha256_digest_never_in_clear(key_a):
    row, full = key_a
    row.refresh_from_db()
    secret = full.split("_", 2)[2]
    assert row.digest == hashlib.sha256(full.encode()).hexdigest()
    stored = [str(v) for v in ApiKey.objects.filter(pk=row.pk).values().get().values()]
    assert not any(secret in value for value in stored)
    # The audit trail records the creation without the digest or the secret.
    event = AuditEvent.objects.get(action="api_key.create", object_id=str(row.pk))
    assert "digest" not in event.after
    assert secret not in str(event.after) and row.digest not in str(event.after)
    assert event.after["prefix"] == row.prefix
