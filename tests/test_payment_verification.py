"""An agent verifies a payment with the customer on the line; receipts are checked by content and kept private."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from payments.ledger.services import payment_ingest
from payments.locks.services import lock_sweep
from payments.models import LockPolicy, Payment, PaymentProof
from tests.factories import UserFactory, make_contract

RECEIVED = timezone.now() - dt.timedelta(hours=1)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


@pytest.fixture
def locked(provider_a):
    LockPolicy.objects.create(provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    contract = make_contract(provider_a, number="DLG-100", first_due_date=provider_a.today() - dt.timedelta(days=40))
    lock_sweep()
    return contract


def existing(provider, external_id="QK7H2ABC", reference="DLG-100"):
    payment, _ = payment_ingest(
        provider=provider,
        channel="mobile_money",
        external_id=external_id,
        amount=Decimal("16666.66"),
        currency=provider.currency,
        received_at=RECEIVED,
        reference=reference,
    )
    return payment


def record(client, contract, upload, transaction_id="RCPT-55"):
    return client.post(
        reverse("payments:verify_payment", args=[contract.pk]),
        {
            "action": "record",
            "channel": "mobile_money",
            "amount": "16666.66",
            "received_at": timezone.localtime(RECEIVED, contract.provider.zone).strftime("%Y-%m-%dT%H:%M"),
            "transaction_id": transaction_id,
            "receipt": upload,
        },
    )


def test_an_agent_verifies_an_existing_payment_by_its_transaction_id(locked, provider_a, agent_a, as_user):
    payment = existing(provider_a, reference="thanks")  # unmatched: verifying credits it to this contract
    client = as_user(agent_a)
    url = reverse("payments:verify_payment", args=[locked.pk])
    found = client.get(url, {"transaction_id": " qk7h2abc "}).content.decode()
    assert "QK7H2ABC" in found and "Verify payment QK7H2ABC" in found

    response = client.post(url, {"action": "verify", "payment": payment.pk, "transaction_id": "QK7H2ABC"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("payments:contract", args=[locked.pk])
    html = response.content.decode()
    assert "verified for contract DLG-100" in html and "agent.a" in html  # the Payments card says who
    payment.refresh_from_db()
    assert (payment.status, payment.contract_id, payment.verified_by) == ("verified", locked.pk, agent_a)
    locked.device.refresh_from_db()
    assert locked.device.desired_state == "unlocked"


def test_an_agent_records_a_payment_from_a_png_receipt(locked, provider_a, agent_a, finance_a, client):
    from tests.conftest import signed_in

    signed_in(client, agent_a)
    lookup = client.get(reverse("payments:verify_payment", args=[locked.pk]), {"transaction_id": "RCPT-55"})
    assert "Record it from the customer" in lookup.content.decode()

    response = record(client, locked, SimpleUploadedFile("whatsapp.png", PNG, content_type="image/png"))
    assert response.status_code == 302, response.content.decode()
    payment = Payment.objects.get(external_id="RCPT-55")
    # A receipt alone is provisional: the oldest installment's 8,333.33 at once, the rest held
    # (tests/test_provisional_payments.py tells the whole story).
    assert (payment.source, payment.status, payment.contract_id) == ("agent", "provisional", locked.pk)
    assert (payment.held_amount, payment.recorded_by) == (Decimal("8333.33"), agent_a)
    proof = PaymentProof.objects.get(payment=payment)
    assert proof.content_type == "image/png" and proof.size == len(PNG) and len(proof.sha256) == 64
    assert proof.file.name.startswith("payment-proofs/") and proof.file.name.endswith(".png")

    client.logout()
    signed_in(client, finance_a)
    download = client.get(reverse("payments:proof", args=[proof.pk]))
    assert download.status_code == 200 and b"".join(download.streaming_content) == PNG
    assert download["Content-Type"] == "image/png" and download["X-Content-Type-Options"] == "nosniff"
    assert download["Content-Disposition"].startswith("attachment")


def test_a_second_agent_is_told_it_is_already_verified(locked, provider_a, agent_a, as_user):
    payment = existing(provider_a)
    second = UserFactory(username="agent.second", organisation=provider_a, role="agent")
    client = as_user(agent_a)
    url = reverse("payments:verify_payment", args=[locked.pk])
    client.post(url, {"action": "verify", "payment": payment.pk, "transaction_id": payment.external_id})
    client.logout()
    client = as_user(second)
    response = client.post(
        url, {"action": "verify", "payment": payment.pk, "transaction_id": payment.external_id}, follow=True
    )
    assert response.status_code == 200
    assert "Already verified by agent.a" in response.content.decode()
    payment.refresh_from_db()
    assert payment.verified_by == agent_a


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("receipt.jpg", b"MZ\x90\x00\x03" + b"\x00" * 200, "a Windows program, not a receipt"),
        (
            "receipt.svg",
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "SVG images are not accepted: they can carry scripts",
        ),
        ("big.png", PNG + b"\x00" * (11 * 1024 * 1024), "the limit is 10.0 MB"),
    ],
)
def test_bad_receipts_are_refused_clearly_and_nothing_is_created(locked, agent_a, as_user, name, content, message):
    client = as_user(agent_a)
    response = record(client, locked, SimpleUploadedFile(name, content, content_type="image/jpeg"))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Payment.objects.filter(external_id="RCPT-55").exists()
    assert not PaymentProof.objects.exists()


def test_a_proof_is_404_for_another_provider_and_403_for_a_technician(
    locked, provider_a, agent_a, agent_b, technician, client
):
    from tests.conftest import signed_in

    signed_in(client, agent_a)
    record(client, locked, SimpleUploadedFile("r.png", PNG, content_type="image/png"))
    proof = PaymentProof.objects.get()
    client.logout()
    signed_in(client, agent_b)
    assert client.get(reverse("payments:proof", args=[proof.pk])).status_code == 404
    client.logout()
    signed_in(client, technician)
    assert client.get(reverse("payments:proof", args=[proof.pk])).status_code == 403


def test_the_receipt_form_starts_at_the_providers_local_time_and_keeps_it(locked, provider_a, agent_a, as_user):
    """Review: the form said "local time" but started at UTC, so an agent accepting it recorded Colombo
    payments 5.5 hours early."""
    client = as_user(agent_a)
    url = reverse("payments:verify_payment", args=[locked.pk])
    before = timezone.localtime(timezone.now(), provider_a.zone)
    html = client.get(url, {"transaction_id": "QK7NEW01"}).content.decode()  # not received yet: record it
    after = timezone.localtime(timezone.now(), provider_a.zone)
    shown = {f'value="{moment:%Y-%m-%dT%H:%M}"' for moment in (before, after)}
    assert any(value in html for value in shown), html
