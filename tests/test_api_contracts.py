"""A provider's systems create contracts and read where each one stands.

Stories:
* creating a contract with its customer generates the schedule in the provider's
  currency, splitting the financed amount so it sums exactly (the remainder on the
  last installment); whatever currency the client sends is ignored;
* a bad request is refused with an error on the field to fix (amounts, device,
  customer, duplicate number) and leaves nothing behind — no orphan customer;
* an agent's system reads one contract: schedule with paid / partial / due /
  overdue, balance, arrears, overdue since and next due, all from the schedule;
* another provider's contract is 404; the list costs the same queries for any page.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from payments.models import Contract, Customer, Installment
from portal.models import AuditEvent
from tests.factories import DeviceFactory, make_contract

CONTRACTS = "/api/v1/contracts/"


@pytest.fixture
def device_a(provider_a):
    return DeviceFactory(provider=provider_a)


def payload(device, **overrides) -> dict:
    """A valid contract request: a 60,000 phone with 10,000 down, seven monthly installments."""
    return {
        "number": "DLG-2026-0001",
        "device_imei": device.imei,
        "customer": {"name": "Nimal Perera", "phone": "077 123 4567", "national_id": "199012345678"},
        "cash_price": "60000.00",
        "down_payment": "10000.00",
        "installment_count": 7,
        "frequency": "monthly",
        "first_due_date": "2026-01-31",
    } | overrides


def errors_of(response) -> dict:
    assert response.status_code == 400, response.content
    return response.json()["errors"]


# --- creating -------------------------------------------------------------------------------


def test_a_contract_is_created_in_the_providers_currency_with_an_exact_schedule(api_a, provider_a, device_a):
    response = api_a.post(CONTRACTS, payload(device_a, currency="USD"), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()

    assert body["number"] == "DLG-2026-0001"
    assert body["currency"] == "LKR"  # the provider's, never the client's
    assert body["status"] == "active"
    assert body["financed_amount"] == "50000.00"
    assert body["device"]["imei"] == device_a.imei
    assert body["customer"]["phone"] == "+94771234567"  # local number read in the provider's country
    assert body["customer"]["national_id"] == "••••••••5678"  # shown masked only

    schedule = body["schedule"]
    assert [i["number"] for i in schedule] == list(range(1, 8))
    # 50,000 / 7 = 7,142.857…: six of 7,142.85 and the remainder on the last.
    assert [i["amount_due"] for i in schedule] == ["7142.85"] * 6 + ["7142.90"]
    assert sum(Decimal(i["amount_due"]) for i in schedule) == Decimal("50000.00")
    # Monthly on the 31st keeps the day where it can and clamps to the month's end.
    assert [i["due_date"] for i in schedule[:3]] == ["2026-01-31", "2026-02-28", "2026-03-31"]
    assert body["balance"] == "50000.00"

    contract = Contract.objects.get(provider=provider_a, number="DLG-2026-0001")
    assert contract.currency == "LKR"
    assert contract.installments.count() == 7
    actions = set(AuditEvent.objects.filter(organisation=provider_a).values_list("action", flat=True))
    assert {"customer.create", "contract.create"} <= actions


def test_provider_b_contracts_are_in_shillings(api_b, provider_b):
    device = DeviceFactory(provider=provider_b)
    body = payload(device, number="JAM-1", customer={"name": "Wanjiku", "phone": "0712 345678"})
    response = api_b.post(CONTRACTS, body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["currency"] == "KES"
    assert response.json()["customer"]["phone"] == "+254712345678"


def test_an_explicit_financed_amount_with_interest_is_split_exactly(api_a, device_a):
    response = api_a.post(CONTRACTS, payload(device_a, financed_amount="55000.01", installment_count=3), format="json")
    assert response.status_code == 201, response.json()
    amounts = [Decimal(i["amount_due"]) for i in response.json()["schedule"]]
    assert amounts == [Decimal("18333.33"), Decimal("18333.33"), Decimal("18333.35")]
    assert sum(amounts) == Decimal("55000.01")


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"cash_price": "abc"}, "cash_price", "number"),
        ({"cash_price": "0"}, "cash_price", "greater than zero"),
        ({"cash_price": "-5"}, "cash_price", "greater than or equal to 0"),
        ({"cash_price": "100.005"}, "cash_price", "2 decimal places"),
        ({"down_payment": "60000.00"}, "down_payment", "less than the cash price"),
        ({"financed_amount": "40000.00"}, "financed_amount", "cannot be less than"),
        ({"installment_count": 0}, "installment_count", "greater than or equal to 1"),
        ({"frequency": "daily"}, "frequency", "not a valid choice"),
        ({"first_due_date": "1999-12-31"}, "first_due_date", "between"),
        ({"number": ""}, "number", "blank"),
        ({"number": "DLG\n7"}, "number", "no control characters"),
    ],
)
def test_a_bad_amount_or_term_is_refused_on_its_field_and_nothing_is_created(api_a, device_a, overrides, field, reason):
    errors = errors_of(api_a.post(CONTRACTS, payload(device_a, **overrides), format="json"))
    assert field in errors, errors
    assert any(reason in m for m in errors[field]), errors
    assert not Contract.objects.exists()
    assert not Customer.objects.exists()  # the customer is not left behind either


def test_a_schedule_of_installments_smaller_than_a_cent_is_refused(api_a, device_a):
    # 1.00 over 520 weekly installments would put 0.00 on 519 of them.
    body = payload(device_a, cash_price="1.00", down_payment="0", installment_count=520, frequency="weekly")
    errors = errors_of(api_a.post(CONTRACTS, body, format="json"))
    assert list(errors) == ["financed_amount"], errors
    assert "520 installments" in errors["financed_amount"][0]
    assert not Contract.objects.exists()


def test_a_bad_customer_is_refused_on_the_nested_field(api_a, device_a):
    body = payload(device_a, customer={"name": "Nimal", "phone": "12", "preferred_language": "fr"})
    errors = errors_of(api_a.post(CONTRACTS, body, format="json"))
    assert set(errors) == {"customer"}, errors
    assert set(errors["customer"]) == {"phone", "preferred_language"}
    assert "not a valid phone number" in errors["customer"]["phone"][0]
    assert not Customer.objects.exists()


def test_an_unknown_device_is_refused_on_device_imei(api_a, provider_a):
    errors = errors_of(api_a.post(CONTRACTS, payload(DeviceFactory.build()), format="json"))
    assert "No device with this IMEI" in errors["device_imei"][0]


def test_another_providers_device_is_refused_as_if_it_did_not_exist(api_a, provider_b):
    theirs = DeviceFactory(provider=provider_b)
    errors = errors_of(api_a.post(CONTRACTS, payload(theirs), format="json"))
    assert "No device with this IMEI" in errors["device_imei"][0]
    assert not Contract.objects.exists()


def test_a_duplicate_number_is_refused_and_the_first_contract_is_untouched(api_a, provider_a, device_a):
    first = make_contract(provider_a, number="DLG-2026-0001")
    errors = errors_of(api_a.post(CONTRACTS, payload(device_a), format="json"))
    assert "already exists" in errors["number"][0]
    assert list(Contract.objects.values_list("pk", flat=True)) == [first.pk]
    assert Customer.objects.count() == 1  # only the first contract's customer


def test_a_device_with_an_active_contract_is_refused_on_device_imei(api_a, provider_a):
    existing = make_contract(provider_a, number="DLG-1")
    errors = errors_of(api_a.post(CONTRACTS, payload(existing.device, number="DLG-2"), format="json"))
    assert "already has an active contract" in errors["device_imei"][0]


def test_the_same_number_at_another_provider_is_allowed(api_a, provider_b, device_a):
    make_contract(provider_b, number="DLG-2026-0001")
    assert api_a.post(CONTRACTS, payload(device_a), format="json").status_code == 201


# --- reading one contract ----------------------------------------------------------------


@pytest.fixture
def overdue_contract(provider_a):
    """Six weekly installments of 10,000 LKR, the first due two weeks ago.

    #1 paid in full, #2 (due a week ago) only 2,500 paid, #3 (due today) 4,000 paid ahead.
    """
    today = provider_a.today()
    contract = make_contract(
        provider_a,
        number="DLG-OVERDUE",
        cash_price=Decimal("70000.00"),
        down_payment=Decimal("10000.00"),
        installment_count=6,
        frequency="weekly",
        first_due_date=today - dt.timedelta(days=14),
    )
    paid = {1: Decimal("10000.00"), 2: Decimal("2500.00"), 3: Decimal("4000.00")}
    for number, amount in paid.items():
        Installment.objects.filter(contract=contract, number=number).update(amount_paid=amount)
    return contract


def test_the_detail_shows_schedule_balance_arrears_and_next_due(api_a, provider_a, overdue_contract):
    today = provider_a.today()
    response = api_a.get(f"{CONTRACTS}DLG-OVERDUE/")
    assert response.status_code == 200
    body = response.json()

    assert [i["status"] for i in body["schedule"]] == ["paid", "overdue", "partial", "due", "due", "due"]
    assert [i["amount_paid"] for i in body["schedule"][:3]] == ["10000.00", "2500.00", "4000.00"]
    assert body["balance"] == "43500.00"  # 60,000 financed - 16,500 paid
    assert body["arrears"] == "7500.00"  # only #2 is past due and unpaid
    assert body["overdue_since"] == (today - dt.timedelta(days=7)).isoformat()
    assert body["next_due"] == {"date": today.isoformat(), "amount": "6000.00"}
    assert body["customer"]["name"] == overdue_contract.customer.name


def test_the_list_carries_the_same_paid_and_arrears_totals(api_a, overdue_contract):
    rows = api_a.get(CONTRACTS).json()["results"]
    assert [(r["number"], r["paid"], r["arrears"]) for r in rows] == [("DLG-OVERDUE", "16500.00", "7500.00")]


def test_a_contract_paid_to_date_has_no_arrears_and_no_overdue_since(api_a, provider_a):
    make_contract(provider_a, number="DLG-FUTURE", first_due_date=provider_a.today() + dt.timedelta(days=3))
    body = api_a.get(f"{CONTRACTS}DLG-FUTURE/").json()
    assert body["arrears"] == "0.00" and body["overdue_since"] is None
    assert body["next_due"]["date"] == (provider_a.today() + dt.timedelta(days=3)).isoformat()
    assert {i["status"] for i in body["schedule"]} == {"due"}


def test_another_providers_contract_is_404_even_with_the_same_number_elsewhere(api_a, provider_a, provider_b):
    make_contract(provider_b, number="JAM-7")
    assert api_a.get(f"{CONTRACTS}JAM-7/").status_code == 404
    make_contract(provider_b, number="SHARED-1", cash_price=Decimal("99999.00"))
    make_contract(provider_a, number="SHARED-1")
    body = api_a.get(f"{CONTRACTS}SHARED-1/").json()
    assert body["cash_price"] == "60000.00" and body["currency"] == "LKR"


def test_a_contract_number_with_a_slash_can_be_read_back(api_a, provider_a, device_a):
    created = api_a.post(CONTRACTS, payload(device_a, number="DLG/2026/7"), format="json")
    assert created.status_code == 201, created.json()
    response = api_a.get(f"{CONTRACTS}DLG/2026/7/")
    assert response.status_code == 200
    assert response.json()["number"] == "DLG/2026/7"


@pytest.mark.parametrize("ref", ["DLG%0A1", "DLG%001", "a/b/c", "%C2%B0%F2%A5%B0%84"])
def test_any_unknown_number_is_a_json_404_whatever_characters_it_has(api_a, provider_a, ref):
    make_contract(provider_a, number="DLG-1")
    response = api_a.get(f"{CONTRACTS}{ref}/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


# --- listing -------------------------------------------------------------------------------


def test_the_list_costs_the_same_queries_for_2_or_25_contracts(api_a, provider_a, django_assert_max_num_queries):
    for _ in range(2):
        make_contract(provider_a)
    api_a.get(CONTRACTS)  # first use touches last_used_at; measure steady state
    with CaptureQueriesContext(connection) as few:
        assert api_a.get(f"{CONTRACTS}?page_size=100").status_code == 200
    assert len(few) <= 3

    for _ in range(23):
        make_contract(provider_a)
    with django_assert_max_num_queries(len(few)):
        response = api_a.get(f"{CONTRACTS}?page_size=100")
    assert len(response.json()["results"]) == 25


def test_the_list_filters_by_status(api_a, provider_a):
    from payments.contracts.services import contract_set_status

    active = make_contract(provider_a, number="DLG-A")
    cancelled = make_contract(provider_a, number="DLG-C")
    contract_set_status(contract=cancelled, status="cancelled", actor=None)
    numbers = [r["number"] for r in api_a.get(f"{CONTRACTS}?status=cancelled").json()["results"]]
    assert numbers == ["DLG-C"]
    numbers = [r["number"] for r in api_a.get(f"{CONTRACTS}?status=active").json()["results"]]
    assert numbers == [active.number]
