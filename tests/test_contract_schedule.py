"""A provider's systems create contracts; the schedule must add up to the cent."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from payments.contracts.selectors import contract_position
from payments.models import Installment, nth_due_date
from payments.money import split_evenly
from tests.factories import DeviceFactory, make_contract


@given(
    total=st.decimals(min_value="0.01", max_value="9999999.99", places=2),
    parts=st.integers(min_value=1, max_value=520),
)
def test_split_sums_exactly_with_remainder_on_the_last(total, parts):
    amounts = split_evenly(total, parts, "LKR")
    assert sum(amounts) == total
    assert len(amounts) == parts
    assert len(set(amounts[:-1])) <= 1
    assert all(a.as_tuple().exponent >= -2 for a in amounts)
    assert amounts[-1] >= amounts[0]


@given(total=st.integers(min_value=1, max_value=10**9), parts=st.integers(min_value=1, max_value=100))
@settings(max_examples=50)
def test_zero_decimal_currency_splits_in_whole_units(total, parts):
    amounts = split_evenly(Decimal(total), parts, "JPY")
    assert sum(amounts) == total
    assert all(a == a.to_integral_value() for a in amounts)


def test_monthly_due_dates_keep_the_day_and_clamp_to_month_end():
    first = dt.date(2026, 1, 31)
    assert [nth_due_date(first, "monthly", n) for n in range(4)] == [
        dt.date(2026, 1, 31),
        dt.date(2026, 2, 28),
        dt.date(2026, 3, 31),
        dt.date(2026, 4, 30),
    ]
    assert nth_due_date(dt.date(2026, 11, 30), "monthly", 3) == dt.date(2027, 2, 28)
    assert nth_due_date(dt.date(2026, 1, 1), "weekly", 2) == dt.date(2026, 1, 15)
    assert nth_due_date(dt.date(2026, 1, 1), "fortnightly", 2) == dt.date(2026, 1, 29)


def test_a_contract_gets_a_schedule_that_sums_to_the_financed_amount(provider_a):
    contract = make_contract(
        provider_a, cash_price=Decimal("100000.00"), down_payment=Decimal("0"), installment_count=3
    )
    amounts = list(
        Installment.objects.filter(contract=contract).order_by("number").values_list("amount_due", flat=True)
    )
    assert amounts == [Decimal("33333.33"), Decimal("33333.33"), Decimal("33333.34")]
    assert contract.currency == "LKR"
    assert contract.financed_amount == Decimal("100000.00")


def test_position_shows_balance_arrears_and_next_due(provider_a):
    contract = make_contract(provider_a, installment_count=5, first_due_date=dt.date(2026, 1, 10))
    first = contract.installments.get(number=1)
    first.amount_paid = first.amount_due
    first.save()
    second = contract.installments.get(number=2)
    second.amount_paid = Decimal("4000.00")
    second.save()
    position = contract_position(contract, today=dt.date(2026, 3, 20))
    assert position.paid == Decimal("14000.00")
    assert position.balance == Decimal("36000.00")
    assert position.arrears == Decimal("16000.00")  # 6000 left of #2 (Feb 10) + 10000 of #3 (Mar 10)
    assert position.overdue_since == dt.date(2026, 2, 10)
    assert position.next_due_date == dt.date(2026, 4, 10)
    assert position.next_due_amount == Decimal("10000.00")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cash_price": Decimal("0")}, "cash_price"),
        ({"down_payment": Decimal("70000")}, "down_payment"),
        ({"financed_amount": Decimal("100")}, "financed_amount"),
        ({"installment_count": 0}, "installment_count"),
        ({"frequency": "daily"}, "frequency"),
        ({"first_due_date": dt.date(1990, 1, 1)}, "first_due_date"),
        ({"cash_price": Decimal("10.001")}, "cash_price"),
    ],
)
def test_bad_contract_terms_name_the_field_and_create_nothing(provider_a, overrides, field):
    with pytest.raises(ValidationError) as err:
        make_contract(provider_a, **overrides)
    assert field in err.value.message_dict
    assert not Installment.objects.exists()


def test_contract_numbers_are_unique_per_provider_not_globally(provider_a, provider_b):
    make_contract(provider_a, number="C-1")
    make_contract(provider_b, number="C-1")
    with pytest.raises(ValidationError) as err:
        make_contract(provider_a, number="C-1")
    assert "already exists" in err.value.message_dict["number"][0]


def test_a_device_has_one_active_contract_at_a_time(provider_a):
    device = DeviceFactory(provider=provider_a)
    make_contract(provider_a, device=device)
    with pytest.raises(ValidationError) as err:
        make_contract(provider_a, device=device)
    assert "active contract" in err.value.message_dict["device"][0]
