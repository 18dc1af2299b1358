"""The set-based sweep and the pure decision give the same answer, contract by contract.

Thousands of generated contracts (schedules, part payments, overrides, current states)
are evaluated at several moments under several policies, in SQL and in Python.
"""

import datetime as dt
import random
from decimal import Decimal

import pytest
from django.db.models import Prefetch

from devices.models import Device
from payments.locks.selectors import decide_contract
from payments.locks.sweep import annotate_desired_state
from payments.models import Contract, Customer, Installment, LockOverride, LockPolicy
from tests.factories import make_imei

STATES = ["unlocked", "reminder", "locked", "temp_unlocked"]
NOW_BASE = dt.datetime(2026, 6, 15, 6, 30, tzinfo=dt.UTC)


def _generate(provider, n: int, rng: random.Random) -> None:
    devices = Device.objects.bulk_create(
        [Device(provider=provider, imei=make_imei(f"35{rng.randrange(10**6):06d}")) for _ in range(n)]
    )
    customers = Customer.objects.bulk_create(
        [Customer(provider=provider, name=f"Owner {i}", phone="+94771234567") for i in range(n)]
    )
    contracts, installments, overrides = [], [], []
    for i in range(n):
        count = rng.randint(1, 8)
        first = dt.date(2026, 4, 1) + dt.timedelta(days=rng.randint(0, 90))
        contracts.append(
            Contract(
                provider=provider,
                number=f"SW-{i}",
                device=devices[i],
                customer=customers[i],
                currency="LKR",
                cash_price=Decimal("60000"),
                down_payment=Decimal("0"),
                financed_amount=Decimal("1000") * count,
                installment_count=count,
                frequency="weekly",
                first_due_date=first,
                status=rng.choice(["active", "active", "active", "defaulted"]),
                lock_state=rng.choice(STATES),
            )
        )
    contracts = Contract.objects.bulk_create(contracts)
    for contract in contracts:
        step = rng.choice([7, 14, 30])
        for k in range(contract.installment_count):
            paid = rng.choice([Decimal("0"), Decimal("1000"), Decimal("400")])
            installments.append(
                Installment(
                    contract=contract,
                    number=k + 1,
                    due_date=contract.first_due_date + dt.timedelta(days=step * k),
                    amount_due=Decimal("1000"),
                    amount_paid=paid,
                )
            )
        roll = rng.random()
        if roll < 0.15:
            start = NOW_BASE - dt.timedelta(hours=rng.randint(0, 200))
            overrides.append(
                LockOverride(
                    contract=contract,
                    kind="temp_unlock",
                    starts_at=start,
                    ends_at=start + dt.timedelta(hours=rng.randint(1, 300)),
                    lifted_at=NOW_BASE if rng.random() < 0.2 else None,
                    reason="generated",
                )
            )
        elif roll < 0.25:
            overrides.append(
                LockOverride(
                    contract=contract,
                    kind="dispute_hold",
                    starts_at=NOW_BASE - dt.timedelta(days=rng.randint(-3, 20)),
                    ends_at=None if rng.random() < 0.5 else NOW_BASE + dt.timedelta(days=rng.randint(-10, 10)),
                    reason="generated",
                )
            )
    Installment.objects.bulk_create(installments, batch_size=2000)
    LockOverride.objects.bulk_create(overrides)


@pytest.mark.django_db
def test_the_sweep_sql_agrees_with_the_decision_on_thousands_of_contracts(provider_a):
    rng = random.Random(20261123)
    _generate(provider_a, 1500, rng)
    policies = [
        LockPolicy(provider=provider_a),
        LockPolicy(provider=provider_a, grace_days=0, reminder_days_before=[0], lock_weekdays=[5, 6]),
        LockPolicy(provider=provider_a, grace_days=7, reminder_days_before=[5, 2], lock_start_hour=0, lock_end_hour=24),
    ]
    compared = 0
    for policy in policies:
        rules = policy.rules()
        for hours in (0, 5, 30, 24 * 9 + 3, 24 * 33 + 14):
            now = NOW_BASE + dt.timedelta(hours=hours)
            live = Contract.objects.filter(provider=provider_a)
            sql = dict(
                annotate_desired_state(live, rules=rules, now=now, zone=provider_a.zone).values_list("pk", "desired")
            )
            loaded = live.select_related("provider").prefetch_related(
                Prefetch("installments", queryset=Installment.objects.order_by("number")), "overrides"
            )
            for contract in loaded:
                assert sql[contract.pk] == decide_contract(contract, rules=rules, now=now).state, (
                    contract.pk,
                    now,
                    policy.grace_days,
                )
                compared += 1
    assert compared == 1500 * 15
    # The generated cases cover every state, so agreement is not vacuous.
    assert set(sql.values()) >= {"unlocked", "reminder", "locked"}
