"""The agent console: a customer is on the line, the agent types what they read out and lands on their phone.

One search box takes an IMEI (with spaces, or the second IMEI), a phone number in local or
international form, a contract number however it was typed, or a name; one page shows the
device, its contract and schedule, payments, commands and audit trail, with links to act.
"""

import datetime as dt
import sys
import types
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.models import DeliveryAttempt, Device
from payments.ledger.services import payment_ingest
from payments.locks.services import lock_sweep
from payments.models import LockPolicy
from tests.factories import CustomerFactory, DeviceFactory, make_command, make_contract, make_imei

SEARCH = reverse("console:search")


def device_url(device) -> str:
    return reverse("console:device", args=[device.pk])


def spaced(imei: str) -> str:
    """An IMEI as printed on a box: 35 123456 000001 7."""
    return f"{imei[:2]} {imei[2:8]} {imei[8:14]} {imei[14]}"


@pytest.fixture
def any_hour(provider_a):
    """A policy that lets a lock start at any hour on any day, so the tests do not depend on the clock."""
    return LockPolicy.objects.create(
        provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7))
    )


@pytest.fixture
def nimal(provider_a, any_hour):
    """Nimal Perera's phone, locked: two installments of DLG-000131 are overdue."""
    customer = CustomerFactory(provider=provider_a, name="Nimal Perera", phone="+94771234567")
    device = DeviceFactory(provider=provider_a, imei=make_imei(), imei2=make_imei(), maker="Samsung", model="A15")
    contract = make_contract(
        provider_a,
        number="DLG-000131",
        device=device,
        customer=customer,
        first_due_date=provider_a.today() - dt.timedelta(days=40),
    )
    lock_sweep()
    device.refresh_from_db()
    assert device.desired_state == "locked"
    return contract


# --- finding the phone ---------------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["077 123 4567", "0771234567", "+94 77 123 4567", "0094 77-123-4567"])
def test_agent_finds_a_locked_phone_by_the_number_the_customer_reads_out(nimal, agent_a, as_user, typed):
    response = as_user(agent_a).get(SEARCH, {"q": typed})
    assert response.status_code == 302
    assert response["Location"] == device_url(nimal.device)


def test_the_device_page_shows_what_the_agent_tells_the_customer(nimal, agent_a, as_user):
    html = as_user(agent_a).get(SEARCH, {"q": "077 123 4567"}, follow=True).content.decode()
    assert "Nimal Perera" in html and "DLG-000131" in html and nimal.device.imei in html
    assert "Locked" in html and "Overdue now" in html and "LKR" in html and " since " in html
    assert "Asia/Colombo" in html or "+0530" in html  # times in the provider's zone
    # Act: verify a payment (an existing page), open a case and request an unlock (plain links).
    assert reverse("payments:verify_payment", args=[nimal.pk]) in html
    assert f'href="/support/cases/new/?device={nimal.device.pk}"' in html
    assert f'href="/support/unlocks/new/?device={nimal.device.pk}"' in html
    # The audit timeline: the contract was created, the device was locked.
    assert "contract.create" in html and "device.state" in html


@pytest.mark.parametrize("form", [spaced, lambda imei: f"{imei[:8]}-{imei[8:]}", str])
def test_agent_finds_a_phone_by_its_imei_with_spaces_or_dashes(nimal, agent_a, as_user, form):
    response = as_user(agent_a).get(SEARCH, {"q": form(nimal.device.imei)})
    assert response["Location"] == device_url(nimal.device)


def test_agent_finds_a_dual_sim_phone_by_its_second_imei(nimal, agent_a, as_user):
    response = as_user(agent_a).get(SEARCH, {"q": spaced(nimal.device.imei2)})
    assert response["Location"] == device_url(nimal.device)


@pytest.mark.parametrize("typed", ["dlg 131", "DLG-000131", "dlg/0131", " DLG 131 "])
def test_agent_finds_a_phone_by_its_contract_number_however_typed(nimal, agent_a, as_user, typed):
    response = as_user(agent_a).get(SEARCH, {"q": typed})
    assert response["Location"] == device_url(nimal.device)


def test_a_name_finds_every_customer_who_has_it_as_a_list_of_links(nimal, provider_a, agent_a, as_user):
    other = make_contract(provider_a, customer=CustomerFactory(provider=provider_a, name="Kamala Perera"))
    html = as_user(agent_a).get(SEARCH, {"q": "perera"}).content.decode()
    assert "2 devices for “perera”" in html
    assert f'href="{device_url(nimal.device)}"' in html and f'href="{device_url(other.device)}"' in html
    assert "customer name" in html
    # One name, one phone: straight to it.
    assert as_user(agent_a).get(SEARCH, {"q": "nimal"})["Location"] == device_url(nimal.device)


def test_a_phone_with_two_contracts_lists_both_devices(nimal, provider_a, agent_a, as_user):
    second = make_contract(provider_a, customer=nimal.customer)
    html = as_user(agent_a).get(SEARCH, {"q": "0771234567"}).content.decode()
    assert device_url(nimal.device) in html and device_url(second.device) in html


def test_nothing_found_says_what_was_tried(nimal, agent_a, as_user):
    html = as_user(agent_a).get(SEARCH, {"q": "dlg 999"}).content.decode()
    assert "Nothing found for “dlg 999”" in html and "contract number dlg 999 (or DLG999)" in html

    html = as_user(agent_a).get(SEARCH, {"q": "077 999 0000"}).content.decode()
    assert "Nothing found" in html and "phone number +94779990000" in html

    wrong_check_digit = nimal.device.imei[:14] + str((int(nimal.device.imei[14]) + 1) % 10)
    html = as_user(agent_a).get(SEARCH, {"q": wrong_check_digit}).content.decode()
    assert "Nothing found" in html and "check digit is wrong" in html


def test_the_search_box_is_keyboard_friendly(agent_a, as_user):
    html = as_user(agent_a).get(SEARCH).content.decode()
    assert 'name="q"' in html and "autofocus" in html and 'type="submit"' in html and 'method="get"' in html
    assert "<script" not in html and "style=" not in html  # strict CSP: no inline JS or CSS


# --- tenants and roles -----------------------------------------------------------------------------


def test_another_providers_agent_finds_nothing_and_gets_404(nimal, agent_b, as_user):
    client = as_user(agent_b)
    for typed in (nimal.device.imei, "DLG-000131", "+94771234567", "Nimal"):
        html = client.get(SEARCH, {"q": typed}).content.decode()
        assert "Nothing found" in html, typed
        assert device_url(nimal.device) not in html and "Nimal Perera" not in html
    assert client.get(device_url(nimal.device)).status_code == 404


def test_a_technician_cannot_use_the_console(nimal, technician, as_user):
    client = as_user(technician)
    assert client.get(SEARCH, {"q": nimal.device.imei}).status_code == 403
    assert client.get(device_url(nimal.device)).status_code == 403


def test_an_outsider_is_sent_to_sign_in_and_refused_once_signed_in(nimal, outsider, client):
    for url in (SEARCH, device_url(nimal.device)):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("portal:login"))
    client.force_login(outsider)
    assert client.get(device_url(nimal.device)).status_code == 403


def test_a_provider_admin_uses_the_console_too(nimal, admin_a, as_user):
    assert as_user(admin_a).get(device_url(nimal.device)).status_code == 200


def test_an_unknown_device_is_404(agent_a, as_user):
    assert as_user(agent_a).get(reverse("console:device", args=[999999])).status_code == 404


# --- the page's story ------------------------------------------------------------------------------


def test_paid_but_still_locked_is_called_out(nimal, provider_a, agent_a, as_user):
    Device.objects.filter(pk=nimal.device.pk).update(reported_state="locked", reported_at=timezone.now())
    payment_ingest(
        provider=provider_a,
        channel="mobile_money",
        external_id="QK7H2ABC",
        amount=Decimal("30000.00"),
        currency="LKR",
        received_at=timezone.now() - dt.timedelta(minutes=5),
        reference="DLG-000131",
    )
    html = as_user(agent_a).get(device_url(nimal.device)).content.decode()
    assert "Nothing is overdue" in html and "it last reported <strong>locked</strong>" in html
    assert "QK7H2ABC" in html and "reference = contract number" in html  # the payment and how it was matched
    assert "payment.match" in html  # and its audit events


def test_an_unmatched_payment_from_the_customers_phone_is_shown(nimal, provider_a, agent_a, as_user):
    make_contract(provider_a, customer=nimal.customer)  # two live contracts: the phone alone matches neither
    payment, _ = payment_ingest(
        provider=provider_a,
        channel="mobile_money",
        external_id="NOREF1",
        amount=Decimal("500.00"),
        currency="LKR",
        received_at=timezone.now() - dt.timedelta(minutes=5),
        reference="for my phone",
        payer_phone="+94771234567",
    )
    assert payment.status == "unmatched"
    html = as_user(agent_a).get(device_url(nimal.device)).content.decode()
    assert "Unmatched payments from +94 77 123 4567" in html and "NOREF1" in html


def test_open_cases_are_listed_when_the_support_app_offers_them(nimal, agent_a, as_user, monkeypatch):
    html = as_user(agent_a).get(device_url(nimal.device)).content.decode()
    offered = "Open cases" in html

    fake = types.ModuleType("support.selectors")
    fake.open_cases_for_device = lambda device: [f"Case 7: paid but still locked ({device.imei})"]
    monkeypatch.setattr("support.console.open_cases_for_device", fake.open_cases_for_device)
    html = as_user(agent_a).get(device_url(nimal.device)).content.decode()
    assert "Open cases" in html and f"Case 7: paid but still locked ({nimal.device.imei})" in html

    if not offered:  # without the function the section is not there at all
        monkeypatch.setitem(sys.modules, "support.selectors", types.ModuleType("support.selectors"))
        assert "Open cases" not in as_user(agent_a).get(device_url(nimal.device)).content.decode()


# --- a fixed number of queries -------------------------------------------------------------------


def _busy_device(provider, *, payments: int, commands: int, installments: int):
    """A locked device with a long story: many installments, payments, commands and delivery attempts."""
    contract = make_contract(
        provider,
        installment_count=installments,
        frequency="weekly",
        first_due_date=provider.today() - dt.timedelta(days=7 * installments + 14),
    )
    for n in range(payments):
        payment_ingest(
            provider=provider,
            channel="bank_transfer",
            external_id=f"{contract.number}-{n}",
            amount=Decimal("10.00"),
            currency="LKR",
            received_at=timezone.now() - dt.timedelta(hours=n + 1),
            reference=contract.number,
        )
    key = Ed25519PrivateKey.generate()
    for _ in range(commands):
        command = make_command(contract.device, private_key=key)
        DeliveryAttempt.objects.create(command=command, channel="mqtt", ok=False, error="broker down")
        DeliveryAttempt.objects.create(command=command, channel="mqtt", ok=True)
    return contract


def _queries(client, url, params=None) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, params or {})
    assert response.status_code in (200, 302)
    return len(captured)


def test_the_device_page_costs_the_same_queries_for_a_short_or_a_long_story(
    provider_a, agent_a, as_user, django_assert_num_queries
):
    client = as_user(agent_a)
    few = _busy_device(provider_a, payments=1, commands=1, installments=3)
    many = _busy_device(provider_a, payments=60, commands=30, installments=40)
    client.get(device_url(few.device))  # warm up the session

    count = _queries(client, device_url(few.device))
    assert count <= 17  # 4 to sign in, 3 to save the session, 7 for the page (+ the support app's open cases)
    with django_assert_num_queries(count):
        html = client.get(device_url(many.device)).content.decode()
    assert html.count('href="/contracts/payments/') >= 50  # payments are cut at 50
    assert "the last 20" in html  # commands are cut at 20


@pytest.mark.parametrize(
    "typed",
    [lambda c: spaced(c.device.imei), lambda c: "07" + str(c.customer.phone)[4:], lambda c: c.number.lower()],
    ids=["imei", "phone", "contract"],
)
def test_the_search_costs_the_same_queries_for_few_or_many_devices(
    provider_a, agent_a, as_user, django_assert_num_queries, typed
):
    client = as_user(agent_a)
    target = make_contract(provider_a)
    client.get(SEARCH)
    count = _queries(client, SEARCH, {"q": typed(target)})
    assert count <= 10  # 4 to sign in, 3 to save the session, one per reading of the query
    for _ in range(25):
        make_contract(provider_a)
    with django_assert_num_queries(count):
        response = client.get(SEARCH, {"q": typed(target)})
    assert response["Location"] == device_url(target.device)


def test_a_name_search_costs_the_same_queries_for_2_or_25_hits(provider_a, agent_a, as_user, django_assert_num_queries):
    client = as_user(agent_a)
    for _ in range(2):
        make_contract(provider_a, customer=CustomerFactory(provider=provider_a, name="Silva"))
    count = _queries(client, SEARCH, {"q": "silva"})
    for _ in range(23):
        make_contract(provider_a, customer=CustomerFactory(provider=provider_a, name="Silva"))
    with django_assert_num_queries(count):
        html = client.get(SEARCH, {"q": "silva"}).content.decode()
    assert "20+ devices" in html and "Only the first 20" in html
