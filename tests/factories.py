"""Factories for test data. Contracts go through the service so schedules are real."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import factory
from stdnum import luhn

from devices.models import Device
from payments.models import Customer
from portal.models import Organisation, User

_imei_counter = itertools.count(1)


def make_imei(prefix: str = "35123456") -> str:
    """A fresh valid IMEI: 14 digits plus the Luhn check digit."""
    body = f"{prefix}{next(_imei_counter):06d}"[:14]
    return body + luhn.calc_check_digit(body)


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation
        django_get_or_create = ("slug",)

    kind = "provider"
    name = factory.Sequence(lambda n: f"Organisation {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    time_zone = "UTC"


class ProviderFactory(OrganisationFactory):
    kind = "provider"
    country = "LK"
    currency = "LKR"
    time_zone = "Asia/Colombo"
    languages = factory.LazyFunction(lambda: ["en"])
    hotline_numbers = factory.LazyFunction(lambda: ["+94777575727"])
    support_email = "help@example.com"
    website = "https://example.com"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    role = "agent"
    password = factory.PostGenerationMethodCall("set_password", "correct-horse-battery")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device

    imei = factory.LazyFunction(make_imei)
    maker = "Xiaomi"
    model = "Redmi 13C"
    serial_number = factory.Sequence(lambda n: f"SN{n:08d}")


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    name = factory.Sequence(lambda n: f"Customer {n}")
    phone = factory.Sequence(lambda n: f"+9477{1000000 + n:07d}")
    preferred_language = "en"


def local_mobile(country: str) -> str:
    """A fresh valid mobile number in E.164 for a Sri Lankan or Kenyan customer."""
    n = next(_imei_counter)
    return f"+2547{n % 10**8:08d}" if country == "KE" else f"+9477{n % 10**7:07d}"


def make_contract(provider, *, number=None, device=None, customer=None, actor=None, **overrides):
    """An active contract with its schedule, created through ``contract_create``."""
    from payments.services import contract_create

    device = device or DeviceFactory(provider=provider)
    customer = customer or CustomerFactory(provider=provider, phone=local_mobile(provider.country))
    params = {
        "cash_price": Decimal("60000.00"),
        "down_payment": Decimal("10000.00"),
        "installment_count": 6,
        "frequency": "monthly",
        "first_due_date": dt.date(2026, 1, 15),
    } | overrides
    return contract_create(
        provider=provider,
        actor=actor,
        number=number or f"C-{next(_imei_counter):06d}",
        device=device,
        customer=customer,
        **params,
    )
