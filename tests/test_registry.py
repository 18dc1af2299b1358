"""Devices and customers enter the registry clean: valid IMEIs, E.164 phones, masked national IDs."""

import pytest
from django.core.exceptions import ValidationError

from devices.models import normalise_imei
from devices.services.registry import device_create
from payments.contracts.services import customer_create
from payments.models import Customer
from portal.models import AuditEvent


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("490154203237518", "490154203237518"),
        ("49-015420-323751-8", "490154203237518"),
        (" 4901542032 37518 ", "490154203237518"),
    ],
)
def test_imeis_as_printed_on_the_box_are_accepted(raw, expected):
    assert normalise_imei(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("490154203237519", "check digit"),
        ("4901542032375", "15 digits"),
        ("49015420323751A", "digits only"),
        ("49015420323751", "15 digits"),
    ],
)
def test_a_mistyped_imei_is_refused_with_the_reason(raw, message):
    with pytest.raises(ValidationError) as err:
        normalise_imei(raw)
    assert message in err.value.messages[0]


def test_second_imei_must_differ(provider_a, agent_a):
    with pytest.raises(ValidationError) as err:
        device_create(provider=provider_a, actor=agent_a, imei="490154203237518", imei2="490154203237518")
    assert "imei2" in err.value.message_dict


@pytest.mark.parametrize(
    ("provider_fixture", "raw", "e164"),
    [
        ("provider_a", "0771234567", "+94771234567"),
        ("provider_a", "077 123 4567", "+94771234567"),
        ("provider_a", "+94 77 123 4567", "+94771234567"),
        ("provider_b", "0712 345 678", "+254712345678"),
        ("provider_b", "254712345678", "+254712345678"),
        ("provider_b", "+254-712-345-678", "+254712345678"),
    ],
)
def test_local_phone_numbers_use_the_providers_country(request, provider_fixture, raw, e164, agent_a):
    provider = request.getfixturevalue(provider_fixture)
    customer = customer_create(provider=provider, actor=agent_a, name="Nimal Perera", phone=raw)
    assert customer.phone.as_e164 == e164


def test_a_bad_phone_number_is_refused(provider_a, agent_a):
    with pytest.raises(ValidationError) as err:
        customer_create(provider=provider_a, actor=agent_a, name="Nimal", phone="12")
    assert "phone" in err.value.message_dict
    assert not Customer.objects.exists()


def test_the_national_id_is_stored_masked_and_never_in_clear(provider_a, agent_a):
    customer = customer_create(
        provider=provider_a, actor=agent_a, name="Nimal Perera", phone="0771234567", national_id="199012345678"
    )
    customer.refresh_from_db()
    assert customer.national_id_masked == "••••••••5678"
    row = Customer.objects.filter(pk=customer.pk).values().get()
    assert all("199012345678" not in str(v) for v in row.values())
    event = AuditEvent.objects.get(action="customer.create")
    assert "199012345678" not in str(event.after)
    assert "national_id_digest" not in event.after


def test_a_language_outside_the_providers_is_refused(provider_b, agent_b):
    with pytest.raises(ValidationError) as err:
        customer_create(provider=provider_b, actor=agent_b, name="Achieng", phone="0712345678", preferred_language="si")
    assert "preferred_language" in err.value.message_dict
