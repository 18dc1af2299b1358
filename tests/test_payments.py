"""Every payment counts exactly once, lands on the right contract, and unlocks the phone the moment arrears clear."""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from devices.models import Device, DeviceCommand
from payments.ledger.errors import PaymentAlreadyVerified, PaymentConflict
from payments.ledger.services import payment_ingest
from payments.ledger.verify import payment_match_manual, payment_reverse, payment_verify
from payments.locks.services import lock_sweep
from payments.models import Contract, Installment, LockPolicy, Payment, PaymentAllocation
from portal.models import AuditEvent
from tests.factories import CustomerFactory, make_contract

# Payments run on the real clock (they decide the lock "now"), so the schedule is set relative to today:
# DLG-100's first two monthly installments of 8,333.33 fell due 40 and about 10 days ago.
RECEIVED = timezone.now() - dt.timedelta(hours=1)


@pytest.fixture
def locked(provider_a):
    # A policy that lets a lock start at any hour, so the tests do not depend on the time of day.
    LockPolicy.objects.create(provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    first_due = provider_a.today() - dt.timedelta(days=40)
    contract = make_contract(provider_a, number="DLG-100", first_due_date=first_due)
    lock_sweep()
    contract.refresh_from_db()
    assert contract.lock_state == "locked"
    return contract


def pay(provider, amount, external_id="TX1", **kw):
    params = {
        "channel": "mobile_money",
        "currency": provider.currency,
        "received_at": RECEIVED,
        "reference": "DLG-100",
    } | kw
    return payment_ingest(provider=provider, external_id=external_id, amount=Decimal(amount), **params)


def test_paying_the_arrears_unlocks_the_phone_in_the_same_transaction(locked, provider_a):
    payment, created = pay(provider_a, "16666.66")
    assert created and payment.status == "matched" and payment.match_rule == "reference_exact"
    locked.refresh_from_db()
    assert locked.lock_state == "unlocked" and locked.arrears_cleared_at is not None
    device = Device.objects.get(pk=locked.device_id)
    assert device.desired_state == "unlocked"
    assert DeviceCommand.objects.filter(device=device).order_by("-seq").first().state == "unlocked"
    paid = list(Installment.objects.filter(contract=locked).order_by("number").values_list("amount_paid", flat=True))
    assert paid[:3] == [Decimal("8333.33"), Decimal("8333.33"), Decimal("0")]
    assert AuditEvent.objects.filter(action="payment.match", object_id=str(payment.pk)).exists()


def test_a_partial_payment_goes_to_the_oldest_installment_and_the_lock_stays(locked, provider_a):
    pay(provider_a, "10000.00")
    paid = list(Installment.objects.filter(contract=locked).order_by("number").values_list("amount_paid", flat=True))
    assert paid[:3] == [Decimal("8333.33"), Decimal("1666.67"), Decimal("0")]
    locked.refresh_from_db()
    assert locked.lock_state == "locked"  # 6,666.66 still overdue since 15 Feb


def test_the_same_transaction_twice_counts_once_and_a_different_body_is_a_conflict(locked, provider_a):
    first, created = pay(provider_a, "5000.00")
    again, created_again = pay(provider_a, "5000.00")
    assert created and not created_again and again.pk == first.pk
    assert PaymentAllocation.objects.filter(payment=first).count() == 1
    with pytest.raises(PaymentConflict) as conflict:
        pay(provider_a, "5500.00")
    assert "amount" in conflict.value.message_dict and "5000.00" in conflict.value.message_dict["amount"][0]
    assert Payment.objects.count() == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", Decimal("0"), "more than zero"),
        ("amount", Decimal("-5"), "more than zero"),
        ("amount", Decimal("1.005"), "at most 2 decimals"),
        ("currency", "KES", "never converted"),
        ("external_id", "", "required"),
        ("channel", "barter", "One of"),
    ],
)
def test_bad_input_changes_nothing_and_says_why(locked, provider_a, field, value, message):
    kwargs = {"amount": Decimal("100.00"), "external_id": "TX9"} | {field: value}
    amount, external_id = kwargs.pop("amount"), kwargs.pop("external_id")
    with pytest.raises(ValidationError) as exc:
        pay(provider_a, amount, external_id=external_id, **kwargs)
    assert message in " ".join(exc.value.message_dict[field])
    assert not Payment.objects.exists()


def test_references_as_payers_type_them_still_match(locked, provider_a):
    payment, _ = pay(provider_a, "100.00", external_id="TX2", reference=" dlg 100 ")
    assert (payment.contract_id, payment.match_rule, payment.match_confidence) == (
        locked.pk,
        "reference_normalised",
        90,
    )
    by_imei, _ = pay(provider_a, "100.00", external_id="TX3", reference=f"phone {locked.device.imei}")
    assert (by_imei.contract_id, by_imei.match_rule) == (locked.pk, "imei")
    by_phone, _ = pay(provider_a, "100.00", external_id="TX4", reference="", payer_phone=str(locked.customer.phone))
    assert (by_phone.contract_id, by_phone.match_rule) == (locked.pk, "payer_phone")


def test_an_unmatched_payment_waits_for_a_finance_officer_who_matches_it(locked, provider_a, finance_a):
    payment, _ = pay(provider_a, "16666.66", reference="thanks")
    assert payment.status == "unmatched" and payment.contract_id is None
    payment_match_manual(payment=payment, contract=locked, actor=finance_a)
    locked.refresh_from_db()
    assert locked.lock_state == "unlocked"
    with pytest.raises(ValidationError, match="already matched"):
        payment_match_manual(payment=payment, contract=locked, actor=finance_a)


def test_paying_the_last_installment_releases_the_phone_for_good(locked, provider_a):
    payment, _ = pay(provider_a, "50000.00")
    locked.refresh_from_db()
    assert locked.status == "paid_off" and locked.lock_state == "released"
    assert Device.objects.get(pk=locked.device_id).desired_state == "released"


def test_an_overpayment_is_held_as_credit(locked, provider_a):
    payment, _ = pay(provider_a, "50100.00")
    credit = PaymentAllocation.objects.get(payment=payment, installment__isnull=True)
    assert credit.amount == Decimal("100.00")


def test_a_reversal_undoes_the_allocation_and_decides_the_lock_again(locked, provider_a, finance_a):
    payment, _ = pay(provider_a, "16666.66")
    payment_reverse(payment=payment, actor=finance_a, reason="chargeback from the bank")
    assert Installment.objects.filter(contract=locked, amount_paid__gt=0).count() == 0
    locked.refresh_from_db()
    assert locked.lock_state == "locked"  # back in arrears, and this policy lets a lock start at any hour
    assert AuditEvent.objects.filter(action="payment.reverse", object_id=str(payment.pk)).exists()
    with pytest.raises(ValidationError, match="already reversed"):
        payment_reverse(payment=payment, actor=finance_a, reason="again")


def test_two_agents_verify_the_same_payment_one_succeeds_the_other_is_told(locked, provider_a, agent_a):
    from tests.factories import UserFactory

    other = UserFactory(username="agent.a2", organisation=provider_a, role="agent")
    payment, _ = pay(provider_a, "1000.00")
    payment_verify(payment=payment, actor=agent_a, proof="M-PESA SMS QK71H2")
    with pytest.raises(PaymentAlreadyVerified, match="agent.a"):
        payment_verify(payment=payment, actor=other)
    assert Payment.objects.get(pk=payment.pk).verified_by == agent_a


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_same_payments_posted_twice_at_once_are_each_credited_once(provider_a):
    contracts = [
        make_contract(provider_a, number=f"DLG-C{i}", customer=CustomerFactory(provider=provider_a)) for i in range(20)
    ]
    errors = []

    def post_all():
        try:
            for round_ in range(5):
                for i, contract in enumerate(contracts):
                    pay(provider_a, "100.00", external_id=f"TX-{round_}-{i}", reference=contract.number)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection; release it for teardown

    threads = [threading.Thread(target=post_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Payment.objects.count() == 100
    for contract in Contract.objects.filter(pk__in=[c.pk for c in contracts]):
        assert sum(i.amount_paid for i in contract.installments.all()) == Decimal("500.00")
