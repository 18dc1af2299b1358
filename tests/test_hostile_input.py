"""Malformed and hostile input gets a 400 (or a clean page), never a 500, and changes nothing.

Stories:
* 50,000-deep JSON to the enrolment (no credential needed), the payments API, a phone's
  check-in and Daraja's callbacks is 400; a JSON body past the size limit is 413;
* a NUL byte in a portal search box (console, contracts, devices, audit) is a 400 page naming
  the field, also in a form field, and in a path 404; a broken multipart form is 400;
* ``next=282545`` after the two-factor step, or after signing in, lands on the home page (it
  used to be taken for a view name); only a path on this site is followed;
* the corpus of tests/hostile.py, posted to every POST endpoint of both APIs and every
  portal form (each found, not listed), gets no 5xx.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.test import Client
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from devices.services.tokens import enrollment_token_create
from payments.models import Payment
from portal.api.throttling import ApiKeyRateThrottle
from portal.models import AuditEvent
from portal.services import api_key_create
from tests import hostile
from tests.conftest import signed_in
from tests.factories import DeviceFactory, enrolment_body, make_contract

pytestmark = pytest.mark.django_db

NESTED = "[" * 50_000 + "]" * 50_000


@pytest.fixture
def phone(provider_a, admin_a):
    """An enrolled phone: its device client, and the enrolment secret."""
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=admin_a)
    device = DeviceFactory(provider=provider_a)
    challenge = APIClient().post("/api/device/v1/enroll/challenge", {}, format="json").json()["challenge"]
    body = enrolment_body(imei=device.imei, token=secret, key=Ed25519PrivateKey.generate(), challenge=challenge)
    enrolled = APIClient().post("/api/device/v1/enroll", body, format="json")
    assert enrolled.status_code == 201, enrolled.content
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {enrolled.json()['credential']}")
    return device, client, enrolled.json()["credential"], secret


# --- deeply nested and oversized JSON -------------------------------------------------------------


def test_deeply_nested_json_is_400_on_every_api(api_a, phone, provider_a):
    _device, device_client, _credential, _secret = phone
    key = api_key_create(provider=provider_a, name="daraja")[1]
    answers = {
        "enroll": APIClient().post("/api/device/v1/enroll", NESTED, content_type="application/json"),
        "payments": api_a.post("/api/v1/payments/", NESTED, content_type="application/json"),
        "contracts": api_a.post("/api/v1/contracts/", NESTED, content_type="application/json"),
        "checkin": device_client.post("/api/device/v1/checkin", NESTED, content_type="application/json"),
        "c2b": APIClient().post(f"/api/v1/c2b/confirmation/?key={key}", NESTED, content_type="application/json"),
    }
    for name, response in answers.items():
        assert response.status_code == 400, (name, response.status_code)
        assert "nested deeper than" in response.json()["detail"], name
    assert not Payment.objects.exists()


def test_the_depth_limit_is_far_above_any_real_body_and_refuses_one_level_more(api_a):
    from portal.api.parsers import MAX_DEPTH

    def nested(levels: int) -> dict:
        body: dict = {"a": 1}
        for _ in range(levels - 1):
            body = {"a": body}
        return body

    at_limit = api_a.post("/api/v1/payments/", nested(MAX_DEPTH), format="json").json()
    assert "external_id" in at_limit["errors"]  # read, then refused by the serializer naming the fields
    past = api_a.post("/api/v1/payments/", nested(MAX_DEPTH + 1), format="json")
    assert past.status_code == 400 and "nested deeper than" in past.json()["detail"]


def test_a_json_body_past_the_size_limit_is_413_before_it_is_read(api_a, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50_000
    body = '{"reference": "' + "x" * 60_000 + '"}'
    response = api_a.post("/api/v1/payments/", body, content_type="application/json")
    assert response.status_code == 413
    assert "larger than 50000 bytes" in response.json()["detail"]


@pytest.mark.parametrize("raw", [b'{"amount": 1e999}', b'{"amount": NaN}', b'{"a": "\xff"}', b"9" * 5000])
def test_numbers_json_cannot_hold_and_bytes_that_are_not_utf8_are_400(api_a, raw):
    response = api_a.post("/api/v1/payments/", raw, content_type="application/json")
    assert response.status_code == 400, response.content


# --- NUL bytes in the portal -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, field",
    [
        ("/console/?q=a%00b", "q"),
        ("/contracts/?q=%00", "q"),
        ("/devices/?q=%00", "q"),
        ("/audit/?action=%00", "action"),
        ("/contracts/payments/?status=%00", "status"),
    ],
)
def test_a_nul_byte_in_a_search_box_is_a_400_page_naming_the_field(client, admin_a, agent_a, url, field):
    signed_in(client, admin_a if url.startswith("/audit/") else agent_a)
    response = client.get(url)
    assert response.status_code == 400
    page = response.content.decode()
    assert f"<code>{field}</code>" in page and "NUL characters" in page
    assert 'href="/"' in page  # the portal's own page, with a way home


def test_a_nul_byte_in_a_form_field_is_400_and_changes_nothing(client, admin_a):
    signed_in(client, admin_a)
    before = AuditEvent.objects.count()
    response = client.post("/settings/api-keys/new/", {"name": "erp\x00"})
    assert response.status_code == 400 and b"<code>name</code>" in response.content
    assert AuditEvent.objects.count() == before
    assert not admin_a.organisation.api_keys.exists()


def test_a_nul_byte_in_a_path_is_404_and_in_an_api_query_a_400_in_the_apis_shape(client, agent_a, api_a):
    signed_in(client, agent_a)
    assert client.get("/contracts/%00/").status_code == 404
    assert api_a.get("/api/v1/contracts/%00/").status_code == 404
    response = api_a.get("/api/v1/payments/?contract_number=a%00b")
    assert response.status_code == 400
    assert response.json()["errors"] == {"contract_number": ["NUL characters (\\x00) are not allowed."]}


def test_a_broken_multipart_form_is_400_not_a_crash(client, finance_a):
    signed_in(client, finance_a)
    response = client.generic("POST", "/contracts/statements/", b"--x\r\nbroken", content_type="multipart/form-data")
    assert response.status_code == 400
    assert "The form data could not be read" in response.content.decode()


# --- next= --------------------------------------------------------------------------------------------


def _code(device: TOTPDevice) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


@pytest.mark.parametrize(
    "target, lands_on",
    [
        ("282545", "/"),  # a bare word: redirect() took it for a view name (500)
        ("portal:settings", "/"),  # a view name is not a URL either
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("/settings/", "/settings/"),
    ],
)
def test_after_the_code_next_is_followed_only_to_a_path_on_this_site(client, admin_a, target, lands_on):
    device = TOTPDevice.objects.create(user=admin_a, name="phone", confirmed=True)
    client.post("/login/", {"username": "admin.a", "password": "correct-horse-battery"})
    response = client.post("/login/verify/", {"token": _code(device), "next": target})
    assert response.status_code == 302 and response["Location"] == lands_on
    # Already verified, the same parameter on a GET goes the same way.
    assert client.get("/login/verify/", {"next": target})["Location"] == lands_on


def test_signing_in_with_a_next_that_is_not_a_path_lands_on_home(client, agent_a):
    response = client.post("/login/?next=282545", {"username": "agent.a", "password": "correct-horse-battery"})
    assert response.status_code == 302 and response["Location"] == "/"
    page = Client().get("/login/?next=282545").content.decode()
    assert 'name="next" value=""' in page  # not carried into the form either


# --- the corpus, everywhere ------------------------------------------------------------------------------


@pytest.fixture
def personas(admin_a, agent_a, finance_a, auditor_a, technician, operator):
    roles = {
        "technician": technician,
        "agent": agent_a,
        "finance": finance_a,
        "auditor": auditor_a,
        "provider_admin": admin_a,
        "operator": operator,
    }
    clients = {"anonymous": Client(enforce_csrf_checks=True)}
    for role, user in roles.items():
        clients[role] = signed_in(Client(enforce_csrf_checks=True), user)
    return clients


@pytest.mark.slow  # about 3,000 requests: 45 s in-process; .ci/run also posts the corpus to the live server
def test_no_hostile_body_to_any_api_endpoint_or_portal_form_gets_a_5xx(
    provider_a, admin_a, agent_a, technician, personas, phone, settings, monkeypatch
):
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "1000000/min"})
    settings.DEVICE_API_RATE = settings.DEVICE_ENROLL_RATE = "1000000/min"
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 200_000
    device, _client, credential, secret = phone
    make_contract(provider_a, device=DeviceFactory(provider=provider_a), number="DLG-HOSTILE")
    objects = hostile.one_of_each(provider_a, admin=admin_a, agent=agent_a, technician=technician)
    bearer = api_key_create(provider=provider_a, name="hostile")[1]
    transport = hostile.DjangoTransport(personas)
    docs = hostile.fetch_docs(lambda url: transport.send("anonymous", "GET", url)[1])
    report = hostile.Report()

    hostile.run_api(
        transport,
        report,
        docs,
        hints=hostile.hints_for(provider_a, device, secret),
        bearer=bearer,
        device=credential,
        big=settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1,
        anonymous="anonymous",
    )
    hostile.run_portal(transport, report, personas=["anonymous", *hostile.PERSONA_ROLES], objects=objects)

    assert not report.failures, report.summary()
    # Everything was found and reached: both documents' POST operations and the portal's forms.
    api = [t for t in report.targets if t.startswith("POST /api/")]
    assert {"POST /api/v1/payments/", "POST /api/device/v1/enroll", "POST /api/v1/c2b/confirmation/"} <= set(api)
    assert len(api) >= 10, api
    assert len(report.targets) - len(api) >= 50, report.targets
    assert not report.unreached, report.summary()
