"""10,000 payments, each posted twice at the same time by different processes: each is credited exactly once."""

import datetime as dt
import multiprocessing
import os
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from payments.models import Contract, Installment, Payment, PaymentAllocation
from tests.factories import CustomerFactory, make_contract

PAYMENTS = int(os.environ.get("FINLOCK_CONCURRENT_PAYMENTS", "10000"))
CONTRACTS = 50


def _post(provider_id: int, items: list[tuple[str, str]], received, results) -> None:
    """One process of the provider's gateway: posts its share of payments, in its own order."""
    from django.db import connection as child_connection

    from payments.ledger.services import payment_ingest
    from portal.models import Organisation

    child_connection.close()  # never share the parent's socket
    provider = Organisation.objects.get(pk=provider_id)
    created = failed = 0
    first_error = ""
    for external_id, number in items:
        try:
            _payment, was_created = payment_ingest(
                provider=provider,
                channel="mobile_money",
                external_id=external_id,
                amount=Decimal("1.00"),
                currency=provider.currency,
                received_at=received,
                reference=number,
            )
            created += was_created
        except Exception as exc:  # reported to the parent, which fails the test with it
            failed += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    child_connection.close()
    results.put((created, failed, first_error))


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_each_payment_posted_twice_concurrently_is_credited_once(provider_a):
    contracts = [
        make_contract(provider_a, number=f"DLG-K{i}", customer=CustomerFactory(provider=provider_a))
        for i in range(CONTRACTS)
    ]
    payments = [(f"MP{n:06d}", contracts[n % CONTRACTS].number) for n in range(PAYMENTS)]
    half = PAYMENTS // 2
    # Each payment goes to two processes; one posts its half forwards, the other backwards,
    # so duplicates race both early and late in the run.
    shares = [payments[:half], payments[:half][::-1], payments[half:], payments[half:][::-1]]
    connection.close()  # the children must not inherit an open connection
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    # The same transaction as both senders report it (a retry repeats the body exactly).
    received = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    processes = [context.Process(target=_post, args=(provider_a.pk, share, received, results)) for share in shares]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join(timeout=60)

    assert sum(failed for _created, failed, _error in outcomes) == 0, [error for *_, error in outcomes]
    assert sum(created for created, _failed, _error in outcomes) == PAYMENTS  # exactly one winner per payment
    assert Payment.objects.count() == PAYMENTS
    assert PaymentAllocation.objects.aggregate(total=Sum("amount"))["total"] == Decimal(PAYMENTS)
    for contract in Contract.objects.filter(pk__in=[c.pk for c in contracts]):
        paid = Installment.objects.filter(contract=contract).aggregate(total=Sum("amount_paid"))["total"]
        assert paid == Decimal(PAYMENTS // CONTRACTS), contract.number
