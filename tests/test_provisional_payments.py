"""A payment an agent records from a customer's receipt alone is provisional.

The security review's finding: an agent "recorded from receipt" an invented transaction id
with a 69-byte image, credited any amount and unlocked any phone alone. Now such a payment
credits at once only up to the provider's limit (by default what is still due on the
contract's oldest unpaid installment); the rest is held until a second person confirms it
(four eyes) or the channel's own record with the same transaction id does (a statement
line, the M-Pesa confirmation, the provider's API), exactly once; a different amount is a
conflict flagged to finance, never a second credit; one nobody confirms in time is flagged.

Contracts here: LKR 150,000 financed in 60 monthly installments of 2,500.
"""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from devices.models import Device
from payments.ledger.services import payment_ingest
from payments.ledger.verify import payment_record_from_proof
from payments.locks.services import lock_sweep
from payments.models import Installment, LockPolicy, Payment, PaymentAllocation, StatementLine
from portal.models import AuditEvent
from portal.uploads import proof_check
from tests.factories import CustomerFactory, ProviderFactory, UserFactory, make_contract

# The review's image: 69 bytes that start like a PNG.
TINY_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 53
assert len(TINY_PNG) == 69
RECEIVED = timezone.now() - dt.timedelta(hours=1)


def always_locks(provider) -> LockPolicy:
    """A policy that lets a lock start at any hour, so nothing depends on the time of day."""
    policy, _ = LockPolicy.objects.update_or_create(
        provider=provider, defaults={"lock_start_hour": 0, "lock_end_hour": 24, "lock_weekdays": list(range(7))}
    )
    return policy


def overdue(provider, *, days: int, number: str = "DLG-500", **kw):
    """60 monthly installments of 2,500, the first due ``days`` ago; the sweep has run."""
    always_locks(provider)
    contract = make_contract(
        provider,
        number=number,
        cash_price=Decimal("160000.00"),
        down_payment=Decimal("10000.00"),
        installment_count=60,
        first_due_date=provider.today() - dt.timedelta(days=days),
        **kw,
    )
    lock_sweep()
    contract.refresh_from_db()
    return contract


@pytest.fixture
def one_behind(provider_a):
    """One installment overdue: arrears 2,500, the phone locked."""
    contract = overdue(provider_a, days=10)
    assert contract.lock_state == "locked"
    return contract


@pytest.fixture
def two_behind(provider_a):
    """Two installments overdue: arrears 5,000, the phone locked."""
    contract = overdue(provider_a, days=40)
    assert contract.lock_state == "locked"
    return contract


def receipt(content: bytes = TINY_PNG):
    return proof_check(SimpleUploadedFile("receipt.png", content, content_type="image/png"))


def record(agent, contract, amount: str, txid: str = "INVENTED-1", channel: str = "mobile_money"):
    return payment_record_from_proof(
        contract=contract,
        actor=agent,
        channel=channel,
        amount=Decimal(amount),
        received_at=RECEIVED,
        transaction_id=txid,
        checked=receipt(),
    )


def paid(contract) -> Decimal:
    return sum(Installment.objects.filter(contract=contract).values_list("amount_paid", flat=True), Decimal("0"))


def phone(contract) -> str:
    return Device.objects.get(pk=contract.device_id).desired_state


def allocated(payment) -> Decimal:
    rows = PaymentAllocation.objects.filter(payment=payment, reversed_at__isnull=True).values_list("amount", flat=True)
    return sum(rows, Decimal("0"))


def record_in_portal(client, contract, amount: str, txid: str, content: bytes = TINY_PNG):
    return client.post(
        reverse("payments:verify_payment", args=[contract.pk]),
        {
            "action": "record",
            "channel": "mobile_money",
            "amount": amount,
            "received_at": timezone.localtime(RECEIVED, contract.provider.zone).strftime("%Y-%m-%dT%H:%M"),
            "transaction_id": txid,
            "receipt": SimpleUploadedFile("r.png", content, content_type="image/png"),
        },
    )


# --- the attack, as the review tried it ----------------------------------------------------------


def test_an_agent_alone_cannot_unlock_a_phone_with_an_invented_transaction_id_and_a_tiny_image(
    two_behind, agent_a, as_user
):
    """Through the portal, as the reviewer did: 1,000,000 from an invented id and 69 bytes; then again; then approve."""
    client = as_user(agent_a)
    response = record_in_portal(client, two_behind, "1000000.00", "INVENTED-0001")
    assert response.status_code == 302, response.content.decode()[:2000]
    assert paid(two_behind) == Decimal("2500.00")  # one installment's arrears, not a million
    assert phone(two_behind) == "locked"  # 2,500 is still overdue

    # Another invented id: the limit is for all the contract's unconfirmed receipts together.
    record_in_portal(client, two_behind, "1000000.00", "INVENTED-0002")
    assert paid(two_behind) == Decimal("2500.00") and phone(two_behind) == "locked"

    # Confirming (or "verifying") their own receipt is refused: four eyes.
    payment = Payment.objects.get(external_id="INVENTED-0001")
    refused = client.post(reverse("payments:payment_confirm", args=[payment.pk]))
    assert refused.status_code == 403 and "another colleague must decide it" in refused.content.decode()
    client.post(reverse("payments:payment_verify", args=[payment.pk]))
    assert set(Payment.objects.values_list("status", flat=True)) == {"provisional"}
    two_behind.refresh_from_db()
    assert (two_behind.status, two_behind.lock_state, phone(two_behind)) == ("active", "locked", "locked")


def test_the_api_cannot_record_a_receipt_it_records_the_channels_payment(two_behind, api_a):
    """A provider's system posts money it received; it cannot claim to be an agent holding a receipt."""
    body = {
        "external_id": "API-RCPT-1",
        "channel": "mobile_money",
        "amount": "5000.00",
        "currency": "LKR",
        "received_at": RECEIVED.isoformat(),
        "reference": two_behind.number,
        "source": "agent",  # ignored: the API is the channel's record
    }
    response = api_a.post("/api/v1/payments/", body, format="json")
    assert response.status_code == 201 and response.json()["source"] == "api"
    assert response.json()["status"] == "matched" and response.json()["held_amount"] == "0.00"


# --- only the limit at once, the rest held --------------------------------------------------------


def test_an_agent_alone_records_50000_against_2500_of_arrears_only_2500_is_credited_and_the_phone_unlocks(
    one_behind, agent_a
):
    payment = record(agent_a, one_behind, "50000.00")
    assert (payment.status, payment.held_amount, payment.recorded_by) == ("provisional", Decimal("47500.00"), agent_a)
    assert allocated(payment) == Decimal("2500.00") == paid(one_behind)
    assert not PaymentAllocation.objects.filter(payment=payment, installment__isnull=True).exists()  # no credit
    assert phone(one_behind) == "unlocked"  # 2,500 was all that was overdue
    event = AuditEvent.objects.get(action="payment.match", object_id=str(payment.pk))
    assert event.actor == agent_a
    assert {k: event.after[k] for k in ("provisional", "credited", "held", "limit")} == {
        "provisional": True,
        "credited": "2500.00",
        "held": "47500.00",
        "limit": "2500.00",
    }


def test_with_two_installments_overdue_the_receipt_clears_one_and_the_phone_stays_locked(two_behind, agent_a):
    payment = record(agent_a, two_behind, "50000.00")
    assert allocated(payment) == Decimal("2500.00") and payment.held_amount == Decimal("47500.00")
    assert phone(two_behind) == "locked"


def test_a_receipt_for_the_last_installment_never_releases_the_phone_until_confirmed(provider_a, agent_a, finance_a):
    always_locks(provider_a)
    contract = make_contract(
        provider_a, cash_price=Decimal("5100.00"), down_payment=Decimal("100.00"), installment_count=2
    )  # two installments of 2,500
    payment_ingest(
        provider=provider_a,
        channel="bank_transfer",
        external_id="REAL-1",
        amount=Decimal("2500.00"),
        currency="LKR",
        received_at=RECEIVED,
        reference=contract.number,
    )
    payment = record(agent_a, contract, "2500.00")
    assert payment.held_amount == 0 and paid(contract) == Decimal("5000.00")  # all of it within the limit
    contract.refresh_from_db()
    assert (contract.status, contract.lock_state) == ("active", "unlocked")  # paid, but not released for good

    from payments.ledger.confirm import payment_confirm

    payment_confirm(payment=payment, actor=finance_a)
    contract.refresh_from_db()
    assert (contract.status, contract.lock_state) == ("paid_off", "released")


@pytest.mark.parametrize(
    ("policy", "credited"),
    [
        ({"provisional_installments": 2}, Decimal("5000.00")),
        ({"provisional_installments": 2, "provisional_max_amount": Decimal("1000.00")}, Decimal("1000.00")),
        ({"provisional_installments": 0}, Decimal("0")),
    ],
)
def test_the_limit_is_the_providers_own_setting(two_behind, provider_a, admin_a, agent_a, policy, credited):
    from payments.locks.services import lock_policy_update

    lock_policy_update(provider=provider_a, actor=admin_a, **policy)
    event = AuditEvent.objects.get(action="lock_policy.change")
    assert event.before["provisional_installments"] == 1
    assert event.after["provisional_installments"] == policy["provisional_installments"]
    payment = record(agent_a, two_behind, "50000.00")
    assert allocated(payment) == credited and payment.held_amount == Decimal("50000.00") - credited
    assert phone(two_behind) == ("unlocked" if credited == Decimal("5000.00") else "locked")


def test_the_admin_sets_the_limit_on_the_lock_policy_page_and_nobody_else_can(
    provider_a, admin_a, agent_a, as_user, client
):
    page = as_user(admin_a).get("/locks/policy/").content.decode()
    assert "Payments recorded from a customer" in page and 'name="provisional_installments"' in page
    form = {
        "grace_days": "3",
        "reminder_days_before": "3, 1",
        "reminder_days_after": "1, 2",
        "lock_start_hour": "9",
        "lock_end_hour": "17",
        "lock_weekdays": ["0", "1", "2", "3", "4", "5"],
        "max_temp_unlock_hours": "72",
        "unlock_alert_minutes": "15",
        "provisional_installments": "2",
        "provisional_max_amount": "4000.00",
        "provisional_confirm_days": "5",
    }
    bad = client.post("/locks/policy/", {**form, "provisional_installments": "-1", "provisional_confirm_days": "0"})
    assert bad.status_code == 200 and not LockPolicy.objects.filter(provider=provider_a).exists()
    assert client.post("/locks/policy/", form).status_code == 302
    policy = LockPolicy.objects.get(provider=provider_a)
    assert (policy.provisional_installments, policy.provisional_max_amount, policy.provisional_confirm_days) == (
        2,
        Decimal("4000.00"),
        5,
    )
    event = AuditEvent.objects.get(action="lock_policy.change")
    assert event.actor == admin_a and event.after["provisional_max_amount"] == "4000.00"
    client.logout()
    assert as_user(agent_a).post("/locks/policy/", {**form, "provisional_installments": "12"}).status_code == 403


# --- confirmation by a second person ---------------------------------------------------------------


def test_a_second_person_confirms_and_all_of_it_is_credited_and_the_phone_unlocks(
    two_behind, agent_a, finance_a, as_user
):
    payment = record(agent_a, two_behind, "50000.00")
    client = as_user(finance_a)
    page = client.get(reverse("payments:payment", args=[payment.pk])).content.decode()
    assert "Provisional: recorded from a receipt alone" in page and "Confirm payment INVENTED-1" in page

    done = client.post(reverse("payments:payment_confirm", args=[payment.pk]), follow=True).content.decode()
    assert "confirmed: all of it is credited" in done and "the phone is now unlocked" in done
    payment.refresh_from_db()
    assert (payment.status, payment.held_amount, payment.confirmed_via) == ("verified", 0, "person")
    assert (payment.confirmed_by, payment.verified_by) == (finance_a, finance_a)
    assert allocated(payment) == Decimal("50000.00") == paid(two_behind)  # installments 1 to 20
    assert phone(two_behind) == "unlocked"
    event = AuditEvent.objects.get(action="payment.confirm", object_id=str(payment.pk))
    assert event.actor == finance_a
    assert event.before == {"status": "provisional", "held": "47500.00", "flag": ""}
    assert (event.after["requested_by_id"], event.after["requested_by"], event.after["via"]) == (
        agent_a.pk,
        "agent.a",
        "person",
    )

    again = client.post(reverse("payments:payment_confirm", args=[payment.pk]), follow=True).content.decode()
    assert "Already confirmed by finance.a" in again and paid(two_behind) == Decimal("50000.00")


def test_another_agent_with_the_customer_on_the_line_confirms_it_from_the_verify_page(
    two_behind, agent_a, provider_a, as_user
):
    record(agent_a, two_behind, "50000.00", txid="QK7PROV1")
    colleague = UserFactory(username="agent.colleague", organisation=provider_a, role="agent")
    client = as_user(colleague)
    url = reverse("payments:verify_payment", args=[two_behind.pk])
    found = client.get(url, {"transaction_id": "QK7PROV1"}).content.decode()
    assert "Recorded from a receipt by agent.a" in found and "Confirm payment QK7PROV1" in found
    payment = Payment.objects.get(external_id="QK7PROV1")
    client.post(url, {"action": "verify", "payment": payment.pk, "transaction_id": "QK7PROV1"})
    payment.refresh_from_db()
    assert (payment.status, payment.confirmed_by) == ("verified", colleague)
    assert phone(two_behind) == "unlocked"


def test_the_agent_who_recorded_it_cannot_confirm_it_and_is_told_why(two_behind, agent_a, as_user):
    from payments.ledger.confirm import payment_confirm

    payment = record(agent_a, two_behind, "50000.00")
    with pytest.raises(PermissionDenied, match="four eyes"):
        payment_confirm(payment=payment, actor=agent_a)
    page = as_user(agent_a).get(reverse("payments:payment", args=[payment.pk])).content.decode()
    assert "You cannot confirm this payment." in page and "Confirm payment INVENTED-1" not in page
    # Again with the customer on the line, from the verify page.
    url = reverse("payments:verify_payment", args=[two_behind.pk])
    refused = as_user(agent_a).post(
        url, {"action": "verify", "payment": payment.pk, "transaction_id": payment.external_id}, follow=True
    )
    assert "another colleague must decide it" in refused.content.decode()
    payment.refresh_from_db()
    assert payment.status == "provisional" and paid(two_behind) == Decimal("2500.00")
    assert not AuditEvent.objects.filter(action="payment.confirm").exists()


def test_an_account_linked_by_four_eyes_cannot_confirm(two_behind, admin_a, finance_a):
    """One admin set up both the recording agent and the confirming finance officer: one person could hold both."""
    from payments.ledger.confirm import payment_confirm
    from portal.services import staff_create

    front, _link = staff_create(organisation=admin_a.organisation, username="a.front", role="agent", actor=admin_a)
    back, _link = staff_create(organisation=admin_a.organisation, username="a.back", role="finance", actor=admin_a)
    payment = record(front, two_behind, "50000.00")
    with pytest.raises(PermissionDenied, match="admin.a set up both your account"):
        payment_confirm(payment=payment, actor=back)
    payment_confirm(payment=payment, actor=finance_a)  # set up independently: a second person
    assert Payment.objects.get(pk=payment.pk).status == "verified"


def test_a_confirmation_from_the_recorders_browser_is_listed_for_the_auditor(
    two_behind, provider_a, agent_a, auditor_a, as_user
):
    """Not refused (a call centre shares computers) but listed: two accounts of one person look like this."""
    from django.test import Client

    from payments.ledger.confirm import payment_confirm
    from tests.test_same_browser import URL, sign_in

    colleague = UserFactory(username="agent.a2", organisation=provider_a, role="agent")
    shared = Client()
    sign_in(shared, agent_a)
    sign_in(shared, colleague)
    payment = record(agent_a, two_behind, "50000.00", txid="SAME-BROWSER-1")
    payment_confirm(payment=payment, actor=colleague)
    body = as_user(auditor_a).get(URL).content.decode()
    assert "Payment from a receipt confirmed: mobile_money SAME-BROWSER-1" in body
    assert "agent.a2" in body and "agent.a:" in body


def test_roles_without_the_right_and_other_providers_cannot_confirm(two_behind, agent_a, admin_a, agent_b, as_user):
    payment = record(agent_a, two_behind, "50000.00")
    assert as_user(admin_a).post(reverse("payments:payment_confirm", args=[payment.pk])).status_code == 403
    assert as_user(agent_b).post(reverse("payments:payment_confirm", args=[payment.pk])).status_code == 404
    assert Payment.objects.get(pk=payment.pk).status == "provisional"


# --- confirmation by the channel's own record ------------------------------------------------------


def test_the_providers_api_posting_the_same_transaction_confirms_it_once(two_behind, agent_a, api_a):
    payment = record(agent_a, two_behind, "50000.00", txid="FT-2026-555")
    body = {
        "external_id": "FT-2026-555",
        "channel": "mobile_money",
        "amount": "50000.00",
        "currency": "LKR",
        "received_at": (RECEIVED - dt.timedelta(minutes=7)).isoformat(),  # the channel's own time
        "reference": "thank you",  # the payer's own words
        "payer_phone": "+94771234567",
    }
    response = api_a.post("/api/v1/payments/", body, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["status"], response.json()["held_amount"]) == ("verified", "0.00")
    payment.refresh_from_db()
    assert (payment.confirmed_via, payment.verified_by) == ("api", agent_a)
    assert paid(two_behind) == Decimal("50000.00") and phone(two_behind) == "unlocked"
    assert AuditEvent.objects.filter(action="payment.channel_confirm", object_id=str(payment.pk)).count() == 1

    retry = api_a.post("/api/v1/payments/", body, format="json")
    assert retry.status_code == 200 and paid(two_behind) == Decimal("50000.00")
    assert PaymentAllocation.objects.filter(payment=payment).count() == 20


def test_the_mpesa_confirmation_with_the_same_trans_id_confirms_it_once(provider_b, agent_b):
    from rest_framework.test import APIClient

    from payments.ledger.mpesa import DARAJA_TIME_ZONE
    from portal.services import api_key_create

    contract = overdue(provider_b, days=40, number="JPC-777")
    payment = record(agent_b, contract, "50000.00", txid="SBK7PROV42")
    assert payment.held_amount == Decimal("47500.00") and phone(contract) == "locked"
    key = api_key_create(provider=provider_b, name="daraja")[1]
    body = {
        "TransactionType": "Pay Bill",
        "TransID": "SBK7PROV42",
        "TransTime": (timezone.now() - dt.timedelta(hours=2)).astimezone(DARAJA_TIME_ZONE).strftime("%Y%m%d%H%M%S"),
        "TransAmount": "50000.00",
        "BusinessShortCode": "600638",
        "BillRefNumber": "jpc 777",
        "MSISDN": "254708374149",
        "FirstName": "Amina",
    }
    daraja = APIClient()
    for _delivery in range(2):  # Daraja's retry credits nothing more
        response = daraja.post(f"/api/v1/c2b/confirmation/?key={key}", body, format="json")
        assert response.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
    payment.refresh_from_db()
    assert (payment.status, payment.confirmed_via, payment.held_amount) == ("verified", "mpesa", 0)
    assert paid(contract) == Decimal("50000.00") and phone(contract) == "unlocked"
    assert Payment.objects.count() == 1


def _berlin():
    provider = ProviderFactory(
        name="Berlin Phones", slug="berlin", country="DE", currency="EUR", time_zone="Europe/Berlin", languages=["en"]
    )
    agent = UserFactory(username="agent.berlin", organisation=provider, role="agent")
    return provider, agent


def _bank_statement(provider, *rows, uploaded_by=None) -> str:
    """A CSV statement with these (amount, purpose, end-to-end id) rows, imported as the task does."""
    from payments.statements.imports import statement_import_create, statement_import_run
    from tests.test_statement_import import HEADER, csv_line

    raw = "\n".join([HEADER, *(csv_line(amount, purpose, e2e, provider.today()) for amount, purpose, e2e in rows)])
    record_ = statement_import_create(provider=provider, filename="s.csv", raw=raw.encode("utf-8"), actor=uploaded_by)
    return statement_import_run(import_id=record_.pk)


@pytest.fixture(params=["set-based", "line by line"])
def import_path(request, monkeypatch):
    """Both ways a statement is credited: in batches (payments/statements/reconcile.py) and the one-by-one fallback."""
    if request.param == "line by line":
        from django.db import IntegrityError

        import payments.statements.imports

        def refuse(**kwargs):
            raise IntegrityError("force the line-by-line path")

        monkeypatch.setattr(payments.statements.imports, "statement_lines_credit", refuse)
    return request.param


def test_the_bank_statement_line_with_the_same_transaction_id_confirms_it(db, import_path):
    provider, agent = _berlin()
    contract = overdue(provider, days=40, number="BP-0077")
    payment = record(agent, contract, "50000.00", txid="E2E-77", channel="bank_transfer")
    assert payment.held_amount == Decimal("47500.00") and phone(contract) == "locked"

    imported = _bank_statement(provider, ("50000,00", "Rate BP 77", "E2E-77"), ("120,00", "BP-0077", "E2E-78"))
    assert (imported.summary["matched"], imported.summary["not_credited"]) == (2, 0)
    payment.refresh_from_db()
    assert (payment.status, payment.confirmed_via, payment.held_amount) == ("verified", "statement", 0)
    assert StatementLine.objects.get(end_to_end_id="E2E-77").payment_id == payment.pk
    assert paid(contract) == Decimal("50120.00") and phone(contract) == "unlocked"
    event = AuditEvent.objects.get(action="payment.channel_confirm", object_id=str(payment.pk))
    assert event.after["requested_by_id"] == agent.pk and event.after["via"] == "statement"

    again = _bank_statement(provider, ("50000,00", "Rate BP 77", "E2E-77"))
    assert again.summary["duplicates"] == 1 and paid(contract) == Decimal("50120.00")


def test_a_finance_officer_cannot_confirm_their_own_receipt_with_a_statement_they_upload(db, import_path):
    """Security review: one officer recorded an invented receipt, then uploaded a statement "confirming" it."""
    provider, _agent = _berlin()
    officer = UserFactory(username="finance.berlin", organisation=provider, role="finance")
    contract = overdue(provider, days=40, number="BP-0091")
    payment = record(officer, contract, "50000.00", txid="SELF-91", channel="bank_transfer")
    assert payment.held_amount == Decimal("47500.00") and phone(contract) == "locked"

    imported = _bank_statement(provider, ("50000,00", "Rate BP 91", "SELF-91"), uploaded_by=officer)
    payment.refresh_from_db()
    assert (payment.status, payment.held_amount) == ("provisional", Decimal("47500.00"))
    assert paid(contract) == Decimal("2500.00") and phone(contract) == "locked"
    line = StatementLine.objects.get(statement_import=imported, end_to_end_id="SELF-91")
    # Neutral for every reader; not linked, so the bank's own statement can still confirm it.
    assert line.payment_id is None and line.note.startswith(f"Not credited: payment #{payment.pk}, a receipt recorded")
    assert (imported.summary["matched"], imported.summary["not_credited"]) == (0, 1)
    assert not AuditEvent.objects.filter(action="payment.channel_confirm").exists()

    # An account the officer set up is the officer too (four eyes), even as the uploader.
    from portal.services import staff_create

    second = staff_create(organisation=provider, username="finance.helper", role="finance", actor=officer)
    second = second[0] if isinstance(second, tuple) else second
    other = record(
        officer, overdue(provider, days=40, number="BP-0092"), "30000.00", txid="SELF-92", channel="bank_transfer"
    )
    _bank_statement(provider, ("30000,00", "Rate BP 92", "SELF-92"), uploaded_by=second)
    other.refresh_from_db()
    assert other.status == "provisional"

    # A colleague's upload of the bank's file is the independent record: it confirms.
    colleague = UserFactory(username="finance.colleague", organisation=provider, role="finance")
    third = record(
        officer, overdue(provider, days=40, number="BP-0093"), "20000.00", txid="SELF-93", channel="bank_transfer"
    )
    _bank_statement(provider, ("20000,00", "Rate BP 93", "SELF-93"), uploaded_by=colleague)
    third.refresh_from_db()
    assert (third.status, third.confirmed_via, third.held_amount) == ("verified", "statement", 0)
    # The officer's own upload does not stop the bank's statement (another entry of the same
    # transaction) from confirming the receipt when a colleague uploads it.
    bank = _bank_statement(provider, ("50000,00", "Transfer BP-0091 from the bank", "SELF-91"), uploaded_by=colleague)
    payment.refresh_from_db()
    assert (payment.status, payment.confirmed_via) == ("verified", "statement")
    assert StatementLine.objects.get(statement_import=bank).payment_id == payment.pk


def test_a_statement_uploaded_with_a_key_answers_for_the_keys_creator(db, client):
    """Review: an API upload skipped the check; a key's creator answers for what it uploads."""
    from payments.statements.imports import statement_import_run
    from portal.services import api_key_create
    from tests.test_statement_import import HEADER, csv_line

    provider, _agent = _berlin()
    admin = UserFactory(username="admin.berlin", organisation=provider, role="provider_admin")
    officer = UserFactory(username="finance.berlin", organisation=provider, role="finance")
    payment = record(
        officer, overdue(provider, days=40, number="BP-0094"), "50000.00", txid="KEY-94", channel="bank_transfer"
    )
    for creator, expected in ((officer, "provisional"), (admin, "verified")):
        _key, secret = api_key_create(provider=provider, name=f"erp {creator.username}", actor=creator)
        raw = "\n".join([HEADER, csv_line("50000,00", f"BP-0094 via {creator.username}", "KEY-94", provider.today())])
        from django.core.files.uploadedfile import SimpleUploadedFile

        response = client.post(
            "/api/v1/statements/",
            {"file": SimpleUploadedFile("s.csv", raw.encode())},
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        assert response.status_code in (201, 202), response.content
        # What the import task does (with a broker configured it would wait for a worker).
        imported = statement_import_run(import_id=response.json()["id"])
        assert imported.status == "done" and imported.summary["credits"] == 1, imported.summary
        payment.refresh_from_db()
        assert payment.status == expected, creator.username


def test_batches_and_line_by_line_treat_receipts_alike(db, monkeypatch):
    """Receipts confirmed, in conflict (amount, another contract), seen twice or not at all: the same both ways."""
    from django.db import IntegrityError

    import payments.statements.imports

    def outcome(provider):
        return {
            "payments": sorted(
                (p.external_id, p.status, p.held_amount, p.flag, p.confirmed_via)
                for p in Payment.objects.filter(provider=provider)
            ),
            "lines": sorted(
                (line.end_to_end_id, line.note, line.payment.external_id if line.payment else None)
                for line in StatementLine.objects.filter(provider=provider).select_related("payment")
            ),
            "paid": sorted(
                (i.contract.number, i.number, i.amount_paid)
                for i in Installment.objects.filter(contract__provider=provider, amount_paid__gt=0)
            ),
            "phones": sorted((c.number, c.lock_state) for c in provider.contracts.all()),
        }

    results = []
    for slug in ("batched", "single"):
        provider = ProviderFactory(slug=slug, country="DE", currency="EUR", time_zone="Europe/Berlin")
        agent = UserFactory(username=f"agent.{slug}", organisation=provider, role="agent")
        first = overdue(provider, days=40, number="BP-1", customer=CustomerFactory(provider=provider))
        second = overdue(provider, days=40, number="BP-2", customer=CustomerFactory(provider=provider))
        for txid, contract, amount in (  # what each credits at once: 2,500 per contract for all its receipts
            ("R-OK", first, "3000.00"),  # 2,500 credited, 500 held
            ("R-AMOUNT", first, "1000.00"),  # all held
            ("R-OTHER", second, "2000.00"),  # all credited
            ("R-TWICE", second, "1000.00"),  # 500 credited, 500 held
            ("R-NONE", second, "200.00"),  # all held
        ):
            record(agent, contract, amount, txid=txid, channel="bank_transfer")
        if slug == "single":
            monkeypatch.setattr(
                payments.statements.imports,
                "statement_lines_credit",
                lambda **kw: (_ for _ in ()).throw(IntegrityError()),
            )
        summary = _bank_statement(
            provider,
            ("3000,00", "BP-1", "R-OK"),
            ("1500,00", "BP-1", "R-AMOUNT"),  # not what the receipt said
            ("2000,00", "BP-1", "R-OTHER"),  # names another contract than the agent credited
            ("1000,00", "danke", "R-TWICE"),
            ("1000,00", "BP-2 again", "R-TWICE"),  # a second entry with the same id
        ).summary
        results.append((outcome(provider), {k: v for k, v in summary.items() if k != "error_lines"}))
    (batched, batched_summary), (single, single_summary) = results
    assert batched == single and batched_summary == single_summary
    statuses = {txid: (status, flag, via) for txid, status, _held, flag, via in batched["payments"]}
    assert statuses == {
        "R-OK": ("verified", "", "statement"),
        "R-AMOUNT": ("provisional", "conflict", ""),
        "R-OTHER": ("provisional", "conflict", ""),
        "R-TWICE": ("verified", "", "statement"),
        "R-NONE": ("provisional", "", ""),
    }
    assert (batched_summary["matched"], batched_summary["not_credited"], batched_summary["duplicates"]) == (2, 2, 1)


# --- a different amount: a conflict, flagged, never a second credit --------------------------------


def test_a_channel_record_with_another_amount_is_a_conflict_flagged_to_finance(
    two_behind, agent_a, finance_a, api_a, as_user
):
    from payments.ledger.confirm import payment_confirm

    payment = record(agent_a, two_behind, "50000.00", txid="FT-9")
    body = {
        "external_id": "FT-9",
        "channel": "mobile_money",
        "amount": "5000.00",
        "currency": "LKR",
        "received_at": RECEIVED.isoformat(),
    }
    response = api_a.post("/api/v1/payments/", body, format="json")
    assert response.status_code == 409 and "amount" in response.json()["errors"]
    payment.refresh_from_db()
    assert (payment.status, payment.held_amount, payment.flag) == ("provisional", Decimal("47500.00"), "conflict")
    assert "says amount 5000.00 (the receipt said 50000.00)" in payment.flag_reason
    assert Payment.objects.count() == 1 and paid(two_behind) == Decimal("2500.00")  # nothing credited twice
    assert AuditEvent.objects.filter(action="payment.flag", object_id=str(payment.pk)).count() == 1
    assert api_a.post("/api/v1/payments/", body, format="json").status_code == 409
    assert AuditEvent.objects.filter(action="payment.flag").count() == 1  # the same conflict is flagged once

    with pytest.raises(ValidationError, match="It cannot be confirmed"):
        payment_confirm(payment=payment, actor=finance_a)
    queue = as_user(finance_a).get(reverse("payments:payments"), {"status": "flagged"}).content.decode()
    assert "FT-9" in queue and "says amount 5000.00" in queue and "Flagged <span" in queue


def test_a_channel_record_naming_another_contract_is_a_conflict(two_behind, provider_a, agent_a, api_a):
    other = make_contract(provider_a, number="DLG-OTHER")
    payment = record(agent_a, two_behind, "50000.00", txid="FT-10")
    body = {
        "external_id": "FT-10",
        "channel": "mobile_money",
        "amount": "50000.00",
        "currency": "LKR",
        "received_at": RECEIVED.isoformat(),
        "contract_number": other.number,
    }
    assert api_a.post("/api/v1/payments/", body, format="json").status_code == 409
    payment.refresh_from_db()
    assert (payment.status, payment.flag) == ("provisional", "conflict") and "DLG-OTHER" in payment.flag_reason
    assert paid(other) == 0 and paid(two_behind) == Decimal("2500.00")


def test_a_conflicting_statement_line_is_not_credited_and_flags_the_receipt(db, import_path):
    provider, agent = _berlin()
    contract = overdue(provider, days=40, number="BP-0088")
    payment = record(agent, contract, "50000.00", txid="E2E-88", channel="bank_transfer")
    imported = _bank_statement(provider, ("40000,00", "BP-0088", "E2E-88"))
    assert imported.summary["not_credited"] == 1
    assert StatementLine.objects.get().note.startswith("Not credited: amount: This transaction id was recorded with")
    payment.refresh_from_db()
    assert (payment.status, payment.flag, payment.held_amount) == ("provisional", "conflict", Decimal("47500.00"))
    assert payment.flag_reason.startswith("The bank statement says amount 40000.00 (the receipt said 50000.00)")
    assert paid(contract) == Decimal("2500.00") and Payment.objects.count() == 1


# --- nobody confirms it in time ---------------------------------------------------------------------


def test_a_receipt_no_channel_confirms_in_10_days_is_flagged_to_finance_once(
    two_behind, provider_a, agent_a, finance_a, as_user
):
    from payments.ledger.confirm import payment_confirm
    from payments.ledger.services import payments_flag_unconfirmed
    from payments.tasks import flag_unconfirmed_payments

    old = record(agent_a, two_behind, "50000.00", txid="OLD-1")
    Payment.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=10))
    fresh = record(agent_a, two_behind, "3000.00", txid="FRESH-1")
    Payment.objects.filter(pk=fresh.pk).update(created_at=timezone.now() - dt.timedelta(days=3))

    assert flag_unconfirmed_payments() == 1  # the periodic task (7 days by default)
    assert payments_flag_unconfirmed() == 0  # idempotent
    old.refresh_from_db()
    assert (old.flag, old.status) == ("unconfirmed", "provisional") and "within 7 days" in old.flag_reason
    assert Payment.objects.get(pk=fresh.pk).flag == ""
    event = AuditEvent.objects.get(action="payment.flag")
    assert (event.object_id, event.actor_id, event.after["flag"]) == (str(old.pk), None, "unconfirmed")

    queue = as_user(finance_a).get(reverse("payments:payments"), {"status": "flagged"}).content.decode()
    assert "OLD-1" in queue and "FRESH-1" not in queue and 'Flagged <span class="count">(1)' in queue
    home = as_user(finance_a).get("/").content.decode()
    assert "flagged" in home and "from receipts, to confirm" in home

    # A late confirmation answers the flag.
    payment_confirm(payment=old, actor=finance_a)
    old.refresh_from_db()
    assert (old.status, old.flag) == ("verified", "")


def test_each_provider_sets_its_own_number_of_days(two_behind, provider_a, admin_a, agent_a):
    from payments.ledger.services import payments_flag_unconfirmed
    from payments.locks.services import lock_policy_update

    lock_policy_update(provider=provider_a, actor=admin_a, provisional_confirm_days=14)
    payment = record(agent_a, two_behind, "50000.00")
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - dt.timedelta(days=10))
    assert payments_flag_unconfirmed() == 0
    assert payments_flag_unconfirmed(now=timezone.now() + dt.timedelta(days=5)) == 1


# --- reversal ------------------------------------------------------------------------------------------


def test_reversing_a_provisional_payment_releases_the_held_part_and_relocks(one_behind, agent_a, finance_a):
    from payments.ledger.verify import payment_reverse

    payment = record(agent_a, one_behind, "50000.00")
    assert phone(one_behind) == "unlocked"
    payment_reverse(payment=payment, actor=finance_a, reason="No such transfer at the bank")
    payment.refresh_from_db()
    assert (payment.status, payment.held_amount, allocated(payment)) == ("reversed", 0, 0)
    assert paid(one_behind) == 0 and phone(one_behind) == "locked"
    event = AuditEvent.objects.get(action="payment.reverse", object_id=str(payment.pk))
    assert event.before == {"status": "provisional", "held": "47500.00"}
    assert event.after["held_released"] == "47500.00"
    # Reversed money is settled: no channel record or person can confirm it any more.
    with pytest.raises(ValidationError, match="reversed payment has nothing to confirm"):
        from payments.ledger.confirm import payment_confirm

        payment_confirm(payment=payment, actor=finance_a)


# --- the pages show it -----------------------------------------------------------------------------


def test_the_console_the_contract_and_the_queue_show_a_provisional_payment(two_behind, agent_a, finance_a, as_user):
    record(agent_a, two_behind, "50000.00", txid="QK7-SHOWN")
    console = as_user(agent_a).get(f"/console/devices/{two_behind.device_id}/").content.decode()
    assert "QK7-SHOWN</a> is <strong>provisional</strong>" in console
    assert "LKR\xa047,500.00 held" in console and "LKR\xa02,500.00 credited" in console
    contract_page = as_user(agent_a).get(reverse("payments:contract", args=[two_behind.pk])).content.decode()
    assert "pay-provisional" in contract_page and "47,500.00 held" in contract_page
    queue = as_user(finance_a).get(reverse("payments:payments"), {"status": "provisional"}).content.decode()
    assert "QK7-SHOWN" in queue and "receipt recorded by agent.a" in queue
    assert 'Provisional <span class="count">(1)' in queue


def test_the_record_form_says_what_a_receipt_alone_credits(two_behind, agent_a, as_user):
    page = (
        as_user(agent_a)
        .get(reverse("payments:verify_payment", args=[two_behind.pk]), {"transaction_id": "NEW-1"})
        .content.decode()
    )
    assert "the payment is <strong>provisional</strong>: at most LKR\xa02,500.00" in page
    response = record_in_portal(as_user(agent_a), two_behind, "50000.00", "NEW-1")
    followed = as_user(agent_a).get(response["Location"]).content.decode()
    assert "LKR\xa02,500.00 credited to DLG-500 at once, LKR\xa047,500.00 held" in followed


# --- races -----------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_agents_recording_receipts_for_one_contract_at_once_credit_the_limit_once(provider_a):
    contract = overdue(provider_a, days=40)
    agents = [UserFactory(username=f"agent.race{i}", organisation=provider_a, role="agent") for i in range(4)]
    errors, start = [], threading.Barrier(len(agents))

    def go(i):
        try:
            start.wait()
            record(agents[i], contract, "50000.00", txid=f"RACE-{i}")
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Payment.objects.filter(status="provisional").count() == 4
    assert paid(contract) == Decimal("2500.00")  # the limit, once, for all four together
