"""A finance officer works the unmatched payments: sees suggestions, matches one, and the phone unlocks."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.models import Device
from payments.ledger.services import payment_ingest
from payments.locks.services import lock_sweep
from payments.models import LockPolicy, Payment
from portal.models import AuditEvent
from tests.factories import make_contract

RECEIVED = timezone.now() - dt.timedelta(hours=1)


@pytest.fixture
def locked(provider_a):
    """DLG-100: two monthly installments of 8,333.33 overdue, the phone locked."""
    LockPolicy.objects.create(provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    contract = make_contract(provider_a, number="DLG-100", first_due_date=provider_a.today() - dt.timedelta(days=40))
    lock_sweep()
    contract.refresh_from_db()
    assert contract.lock_state == "locked"
    return contract


def unmatched(provider, external_id="TX1", amount="16666.66", reference="dlg-10", **kw):
    payment, _ = payment_ingest(
        provider=provider,
        channel="mobile_money",
        external_id=external_id,
        amount=Decimal(amount),
        currency=provider.currency,
        received_at=RECEIVED,
        reference=reference,
        **kw,
    )
    assert payment.status == "unmatched"
    return payment


def test_finance_sees_unmatched_payments_with_a_suggestion_and_matches_one(locked, provider_a, finance_a, as_user):
    payment = unmatched(provider_a)
    client = as_user(finance_a)

    page = client.get(reverse("payments:payments"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "TX1" in html and "DLG-100" in html and "reference starts like it" in html

    response = client.post(
        reverse("payments:payment_match", args=[payment.pk]), {"contract": locked.pk, "next": "queue"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("payments:payments")
    assert "matched to contract DLG-100" in response.content.decode()
    payment.refresh_from_db()
    assert payment.status == "matched" and payment.contract_id == locked.pk and payment.match_rule == "manual"
    assert Device.objects.get(pk=locked.device_id).desired_state == "unlocked"
    assert AuditEvent.objects.filter(action="payment.match", object_id=str(payment.pk), actor=finance_a).exists()


def test_finance_matches_by_a_typed_contract_number(locked, provider_a, finance_a, as_user):
    payment = unmatched(provider_a, reference="thanks")
    client = as_user(finance_a)
    client.post(reverse("payments:payment_match", args=[payment.pk]), {"contract_number": "dlg/100"})
    payment.refresh_from_db()
    assert payment.contract_id == locked.pk

    other = unmatched(provider_a, external_id="TX2", reference="thanks")
    response = client.post(
        reverse("payments:payment_match", args=[other.pk]), {"contract_number": "NOPE-1"}, follow=True
    )
    assert "No contract of this provider has that number" in response.content.decode()
    other.refresh_from_db()
    assert other.status == "unmatched"


def test_the_payment_page_shows_its_story_and_reverses_after_confirmation(locked, provider_a, finance_a, as_user):
    payment = unmatched(provider_a)
    client = as_user(finance_a)
    client.post(reverse("payments:payment_match", args=[payment.pk]), {"contract": locked.pk})
    page = client.get(reverse("payments:payment", args=[payment.pk])).content.decode()
    assert "payment.match" in page and "Installment 1" in page and "Reverse" in page

    url = reverse("payments:payment_reverse", args=[payment.pk])
    refused = client.post(url, {"reason": "Bank returned it"})  # not confirmed
    assert refused.status_code == 200
    payment.refresh_from_db()
    assert payment.status == "matched"
    client.post(url, {"reason": "Bank returned it", "confirm": "on"})
    payment.refresh_from_db()
    assert payment.status == "reversed" and payment.reversal_reason == "Bank returned it"


def test_another_providers_agent_gets_404_and_a_technician_403(locked, provider_a, agent_b, technician, client):
    from tests.conftest import signed_in

    payment = unmatched(provider_a)
    signed_in(client, agent_b)
    assert client.get(reverse("payments:payment", args=[payment.pk])).status_code == 404
    assert client.post(reverse("payments:payment_match", args=[payment.pk]), {"contract": locked.pk}).status_code == 404
    client.logout()
    signed_in(client, technician)
    assert client.get(reverse("payments:payments")).status_code == 403
    payment.refresh_from_db()
    assert payment.status == "unmatched"


def test_the_queue_costs_the_same_number_of_queries_for_2_or_12_payments(locked, provider_a, finance_a, as_user):
    client = as_user(finance_a)
    for i in range(2):
        unmatched(provider_a, external_id=f"A{i}", payer_phone="+94771234567", reference=f"dlg-10 feb {i}")
    client.get(reverse("payments:payments"))  # warm the session and caches
    with CaptureQueriesContext(connection) as two:
        assert client.get(reverse("payments:payments")).status_code == 200
    for i in range(10):
        unmatched(provider_a, external_id=f"B{i}", payer_phone="+94771234568", reference=f"dlg-10 march {i}")
    with CaptureQueriesContext(connection) as twelve:
        html = client.get(reverse("payments:payments")).content.decode()
    assert Payment.objects.filter(status="unmatched").count() == 12 and "B9" in html
    assert len(twelve) == len(two)
