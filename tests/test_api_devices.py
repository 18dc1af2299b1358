"""A provider's systems register devices and read them back through the API.

Stories:
* registering a phone with a mistyped IMEI is refused with an error on that field,
  so the integrator knows which value to fix; nothing is stored;
* an IMEI is unique within a provider's registry, but two providers may each
  finance a phone with the same IMEI (second-hand resale), so that is allowed;
* the list is cursor-paginated, newest first, filtered, and only ever the key's
  own provider's devices; its cost in queries does not grow with the page;
* one device is found by its first or second IMEI, typed as printed on the box;
  another provider's device is 404;
* every registration is on the audit trail, attributed to the key.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device
from portal.audit_verify import audit_verify_chain
from portal.models import ApiKey, AuditEvent
from tests.factories import DeviceFactory, make_imei

DEVICES = "/api/v1/devices/"
VALID = "490154203237518"  # the textbook valid IMEI
BAD_LUHN = "490154203237517"


def errors_of(response) -> dict:
    body = response.json()
    assert "detail" in body, body
    return body["errors"]


# --- registering ------------------------------------------------------------------------


def test_registering_a_device_returns_it_unlocked_and_audits_it_against_the_key(api_a, provider_a):
    response = api_a.post(
        DEVICES, {"imei": VALID, "serial_number": "R58N", "maker": "Samsung", "model": "A15"}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["imei"] == VALID and body["maker"] == "Samsung" and body["model"] == "A15"
    assert body["desired_state"] == "unlocked"

    device = Device.objects.get(provider=provider_a, imei=VALID)
    key = ApiKey.objects.get(provider=provider_a)
    event = AuditEvent.objects.get(action="device.create", object_id=str(device.pk))
    assert event.actor_label == f"api-key:{key.prefix}"
    assert event.organisation_id == provider_a.pk
    assert event.ip_address == "127.0.0.1"
    assert event.after["imei"] == VALID
    assert audit_verify_chain().ok


def test_a_device_is_registered_as_json_and_the_schema_declares_only_that(api_a, provider_a):
    """A generated client gets one request body type for POST /devices/ (a CSV goes to the bulk upload)."""
    form = api_a.post(DEVICES, {"imei": VALID, "serial_number": "R58N", "maker": "Samsung", "model": "A15"})
    assert form.status_code == 415
    assert not Device.objects.filter(provider=provider_a).exists()
    schema = api_a.get("/api/schema/", {"format": "json"}).json()
    assert list(schema["paths"][DEVICES]["post"]["requestBody"]["content"]) == ["application/json"]


def test_an_imei_typed_as_printed_on_the_box_is_stored_as_digits(api_a):
    response = api_a.post(DEVICES, {"imei": "49-015420-323751-8", "imei2": make_imei()}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["imei"] == VALID


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"imei": BAD_LUHN}, "imei", "Luhn"),
        ({"imei": VALID[:14]}, "imei", "15 digits (this has 14)"),
        ({"imei": "49015420323751X"}, "imei", "digits only"),
        ({"imei": VALID, "imei2": VALID}, "imei2", "must differ"),
        ({"imei": VALID, "imei2": BAD_LUHN}, "imei2", "Luhn"),
        ({"maker": "Samsung"}, "imei", "required"),
        ({"imei": VALID, "model": "x" * 65}, "model", "64 characters"),
    ],
)
def test_an_invalid_device_is_refused_with_an_error_naming_the_field(api_a, payload, field, reason):
    response = api_a.post(DEVICES, payload, format="json")
    assert response.status_code == 400
    errors = errors_of(response)
    assert list(errors) == [field], errors
    assert any(reason in message for message in errors[field]), errors
    assert not Device.objects.exists()


def test_the_same_imei_twice_at_one_provider_is_refused(api_a, provider_a):
    assert api_a.post(DEVICES, {"imei": VALID}, format="json").status_code == 201
    response = api_a.post(DEVICES, {"imei": "49 015420 323751 8"}, format="json")
    assert response.status_code == 400
    assert "already registered" in errors_of(response)["imei"][0]
    assert Device.objects.filter(provider=provider_a).count() == 1


def test_the_same_imei_at_another_provider_is_allowed(api_a, api_b, provider_a, provider_b):
    assert api_a.post(DEVICES, {"imei": VALID}, format="json").status_code == 201
    response = api_b.post(DEVICES, {"imei": VALID}, format="json")
    assert response.status_code == 201, response.json()
    assert Device.objects.filter(imei=VALID).count() == 2
    # Each provider reads its own record.
    assert api_a.get(f"{DEVICES}{VALID}/").status_code == 200
    assert api_b.get(f"{DEVICES}{VALID}/").status_code == 200


# --- listing ----------------------------------------------------------------------------


def test_the_list_walks_cursor_pages_newest_first_and_holds_only_own_devices(api_a, provider_a, provider_b):
    own = [DeviceFactory(provider=provider_a).imei for _ in range(5)]
    theirs = {DeviceFactory(provider=provider_b).imei for _ in range(3)}

    seen, url, pages = [], f"{DEVICES}?page_size=2", 0
    while url:
        page = api_a.get(url)
        assert page.status_code == 200
        body = page.json()
        assert len(body["results"]) <= 2
        seen += [d["imei"] for d in body["results"]]
        url, pages = body["next"], pages + 1
    assert pages == 3
    assert seen == list(reversed(own))
    assert not theirs & set(seen)


def test_the_list_filters_by_maker_and_lock_state(api_a, provider_a):
    samsung = DeviceFactory(provider=provider_a, maker="Samsung")
    locked = DeviceFactory(provider=provider_a, desired_state="locked")
    assert [d["imei"] for d in api_a.get(f"{DEVICES}?maker=samsung").json()["results"]] == [samsung.imei]
    assert [d["imei"] for d in api_a.get(f"{DEVICES}?desired_state=locked").json()["results"]] == [locked.imei]
    bad = api_a.get(f"{DEVICES}?desired_state=bricked")
    assert bad.status_code == 400
    assert "desired_state" in errors_of(bad)


def test_a_tampered_cursor_is_a_clean_404_not_a_server_error(api_a, provider_a):
    import base64

    DeviceFactory(provider=provider_a)
    cursor = base64.b64encode(b"p=not-a-number").decode()
    response = api_a.get(f"{DEVICES}?cursor={cursor}")
    assert response.status_code == 404
    assert "cursor" in response.json()["detail"].lower()


@pytest.mark.parametrize("size", ["0", "501", "abc", "-3", ""])
def test_a_page_size_out_of_range_is_refused_rather_than_silently_replaced(api_a, size):
    response = api_a.get(f"{DEVICES}?page_size={size}")
    assert response.status_code == 400
    assert errors_of(response) == {"page_size": ["A whole number from 1 to 500."]}


def list_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"{DEVICES}?page_size=100").status_code == 200
    return len(queries)


def test_listing_costs_the_same_queries_for_3_or_60_devices(api_a, provider_a, django_assert_max_num_queries):
    DeviceFactory.create_batch(3, provider=provider_a)
    api_a.get(DEVICES)  # first use touches last_used_at; measure steady state
    few = list_queries(api_a)
    assert few <= 3  # key lookup and one page query (plus a savepoint on some backends)

    DeviceFactory.create_batch(57, provider=provider_a)
    with django_assert_max_num_queries(few):
        response = api_a.get(f"{DEVICES}?page_size=100")
    assert len(response.json()["results"]) == 60


# --- one device ---------------------------------------------------------------------------


def test_one_device_is_found_by_either_imei_in_any_printed_form(api_a, provider_a):
    second = make_imei()
    device = DeviceFactory(provider=provider_a, imei=VALID, imei2=second, maker="Tecno")
    for ref in (VALID, second, "49-015420-323751-8", "49%20015420%20323751%208"):
        response = api_a.get(f"{DEVICES}{ref}/")
        assert response.status_code == 200, ref
        assert response.json()["imei"] == device.imei
        assert response.json()["maker"] == "Tecno"


def test_another_providers_device_is_404_by_either_imei(api_a, provider_b):
    theirs = DeviceFactory(provider=provider_b, imei2=make_imei())
    for ref in (theirs.imei, theirs.imei2):
        response = api_a.get(f"{DEVICES}{ref}/")
        assert response.status_code == 404
        assert theirs.maker not in response.content.decode()


@pytest.mark.parametrize("ref", [BAD_LUHN, "12345", "not-an-imei"])
def test_an_unknown_or_malformed_imei_is_404(api_a, provider_a, ref):
    DeviceFactory(provider=provider_a, imei=VALID)
    assert api_a.get(f"{DEVICES}{ref}/").status_code == 404
