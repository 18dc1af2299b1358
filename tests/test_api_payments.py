"""A provider's systems post payments; a retry is harmless, a conflict is named, and the phone unlocks at once."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Device
from payments.locks.services import lock_sweep
from payments.models import LockPolicy, Payment
from tests.factories import make_contract

URL = "/api/v1/payments/"


@pytest.fixture
def locked(provider_a):
    LockPolicy.objects.create(provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    contract = make_contract(provider_a, number="DLG-7", first_due_date=provider_a.today() - dt.timedelta(days=40))
    lock_sweep()
    return contract


def body(**overrides):
    return {
        "external_id": "QK71H2XYZ",
        "channel": "mobile_money",
        "amount": "16666.66",
        "currency": "LKR",
        "received_at": (timezone.now() - dt.timedelta(minutes=5)).isoformat(),
        "reference": "DLG-7",
        "payer_phone": "0771234567",
    } | overrides


def test_a_payment_is_recorded_matched_and_the_phone_unlocked(api_a, locked):
    response = api_a.post(URL, body(), format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert (data["status"], data["contract_number"], data["match_rule"]) == ("matched", "DLG-7", "reference_exact")
    assert data["allocations"] == [{"installment": 1, "amount": "8333.33"}, {"installment": 2, "amount": "8333.33"}]
    assert Device.objects.get(pk=locked.device_id).desired_state == "unlocked"


def test_a_retry_returns_the_same_payment_and_a_changed_body_is_409_naming_the_difference(api_a, locked):
    sent = body()
    first = api_a.post(URL, sent, format="json")
    again = api_a.post(URL, sent, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    conflict = api_a.post(URL, {**sent, "amount": "100.00"}, format="json")
    assert conflict.status_code == 409
    assert set(conflict.json()["errors"]) == {"amount"}
    assert Payment.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": "0"}, "amount"),
        ({"amount": "-10"}, "amount"),
        ({"currency": "KES"}, "currency"),
        ({"currency": "LK"}, "currency"),
        ({"received_at": "yesterday"}, "received_at"),
        ({"contract_number": "NOPE-1"}, "contract_number"),
        ({"channel": "gold"}, "channel"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_records_nothing(api_a, locked, change, field):
    response = api_a.post(URL, body(**change), format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert not Payment.objects.exists()


def test_another_providers_payment_is_404_and_lists_are_scoped(api_a, api_b, locked):
    created = api_a.post(URL, body(), format="json").json()
    assert api_b.get(f"{URL}{created['id']}/").status_code == 404
    assert api_b.get(URL).json()["results"] == []
    assert [p["external_id"] for p in api_a.get(URL).json()["results"]] == ["QK71H2XYZ"]


def test_the_payment_list_costs_the_same_queries_for_2_or_12_payments(api_a, locked):
    def queries():
        with CaptureQueriesContext(connection) as ctx:
            assert api_a.get(URL).status_code == 200
        return len(ctx.captured_queries)

    for i in range(2):
        api_a.post(URL, body(external_id=f"A{i}", amount="10.00"), format="json")
    few = queries()
    for i in range(10):
        api_a.post(URL, body(external_id=f"B{i}", amount="10.00"), format="json")
    assert queries() == few
