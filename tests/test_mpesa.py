"""Safaricom Daraja posts M-Pesa paybill payments; each is recorded once, matched, and never dropped.

Stories:
* Daraja's own sample confirmation (the account number set to a real contract) is
  recorded with its amount, its EAT time in UTC, the payer's number in E.164 and the
  TransID, matched, and answered in Daraja's format;
* Daraja's retry of the same TransID credits nothing more; a changed body is a conflict;
* validation accepts a known account number (also as mistyped) and rejects an unknown one
  (C2B00012) or a bad amount (C2B00013); the confirmation of an unknown account is still
  recorded, unmatched, for the finance queue;
* a masked MSISDN is kept as Daraja typed it;
* the key goes in the callback URL (``?key=``) or the Bearer header; a wrong, revoked
  or missing key is 401, never written to a log; provider A's key posts into A only;
* garbage never makes the endpoints fail (no 5xx).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from decimal import Decimal

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from devices.models import Device
from payments.ledger.mpesa import ValidationResult, parse_amount, parse_trans_time, payer_name, payer_phone
from payments.locks.services import lock_sweep
from payments.models import LockPolicy, Payment
from portal.services import api_key_create
from tests.factories import ProviderFactory, make_contract
from tests.samples import SAMPLES as SHARED_SAMPLES

SAMPLES = SHARED_SAMPLES / "mobile_money"
VALIDATION = "/api/v1/c2b/validation/"
CONFIRMATION = "/api/v1/c2b/confirmation/"


def sample(kind: str, **overrides) -> dict:
    """Daraja's 2017 sandbox body for ``kind`` ("confirmation" or "validation"), fields overridden."""
    body = json.loads((SAMPLES / f"mpesa_c2b_v1_{kind}_2017_sandbox.json").read_text())
    return body | overrides


def daraja(key: str) -> APIClient:
    """A client that sends no header, as Daraja does; the key goes in the URL."""
    client = APIClient()
    client.key = key
    return client


def post(client: APIClient, url: str, body, **extra):
    return client.post(f"{url}?key={client.key}", body, format="json", **extra)


@pytest.fixture
def key_b(provider_b):
    return api_key_create(provider=provider_b, name="daraja")[1]


@pytest.fixture
def key_a(provider_a):
    return api_key_create(provider=provider_a, name="daraja")[1]


@pytest.fixture
def contract_b(provider_b):
    return make_contract(provider_b, number="JPC-000123")


# --- pure mapping --------------------------------------------------------------------------------


def test_daraja_fields_map_to_ours():
    assert parse_trans_time("20170727104247") == dt.datetime(2017, 7, 27, 7, 42, 47, tzinfo=dt.UTC)
    for bad in ("2017727104247", "20171327104247", "2017-07-27 10:42", "", "２０１７０７２７１０４２４７"):
        with pytest.raises(ValueError):
            parse_trans_time(bad)
    assert parse_amount("10.00") == Decimal("10.00")
    assert str(parse_amount("10")) == "10.00"  # a retry sending "10" is the same amount
    assert parse_amount(Decimal("2500.5")) == Decimal("2500.50")
    for bad in ("0", "-5", "abc", "NaN", "Infinity", "1.001", "1e20", 10.0, True, ""):
        with pytest.raises(ValueError):
            parse_amount(bad)
    assert payer_phone("254708374149") == "+254708374149"
    assert payer_phone("0708374149") == "+254708374149"
    assert payer_phone("2547 ***** 149") == "2547 ***** 149"
    assert payer_phone("not a number") == "not a number"
    assert payer_name("John", "Doe", "") == "John Doe"


# --- confirmation ---------------------------------------------------------------------------------


def test_the_sample_confirmation_is_recorded_matched_and_answered_in_darajas_format(key_b, contract_b):
    response = post(daraja(key_b), CONFIRMATION, sample("confirmation", BillRefNumber="JPC-000123"))
    assert response.status_code == 200, response.json()
    assert response.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}

    payment = Payment.objects.get()
    assert (payment.external_id, payment.amount, payment.currency) == ("LGR219G3EY", Decimal("10.00"), "KES")
    assert payment.received_at == dt.datetime(2017, 7, 27, 7, 42, 47, tzinfo=dt.UTC)  # 10:42:47 EAT
    assert (payment.payer_phone, payment.payer_name) == ("+254708374149", "John Doe")
    assert (payment.channel, payment.source, payment.reference) == ("mobile_money", "mpesa", "JPC-000123")
    assert (payment.status, payment.contract_id, payment.match_rule) == ("matched", contract_b.pk, "reference_exact")
    assert payment.provider_id == contract_b.provider_id


def test_a_mistyped_account_number_still_matches(key_b, contract_b):
    post(daraja(key_b), CONFIRMATION, sample("confirmation", BillRefNumber="jpc 123"))
    payment = Payment.objects.get()
    assert (payment.contract_id, payment.match_rule) == (contract_b.pk, "reference_normalised")


def test_darajas_retry_credits_nothing_more_and_a_changed_body_is_a_conflict(key_b, contract_b, caplog):
    client = daraja(key_b)
    body = sample("confirmation", BillRefNumber="JPC-000123")
    first = post(client, CONFIRMATION, body)
    again = post(client, CONFIRMATION, body)
    assert first.json() == again.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
    assert Payment.objects.count() == 1
    paid = sum(i.amount_paid for i in contract_b.installments.all())
    assert paid == Decimal("10.00")

    with caplog.at_level(logging.INFO):
        conflict = post(client, CONFIRMATION, body | {"TransAmount": "20.00"})
    assert conflict.status_code == 409
    assert conflict.json()["ResultCode"] == 1 and "TransAmount" in conflict.json()["ResultDesc"]
    assert Payment.objects.count() == 1
    assert sum(i.amount_paid for i in contract_b.installments.all()) == Decimal("10.00")
    assert any("LGR219G3EY" in r.getMessage() and "TransAmount" in r.getMessage() for r in caplog.records)
    assert not any(key_b in r.getMessage() for r in caplog.records)


def test_an_unknown_account_is_rejected_at_validation_yet_recorded_unmatched_when_confirmed(key_b, contract_b):
    client = daraja(key_b)
    rejected = post(client, VALIDATION, sample("validation"))  # BillRefNumber "xyz" as in the sample
    assert rejected.status_code == 200
    assert rejected.json() == {"ResultCode": "C2B00012", "ResultDesc": "Rejected"}
    assert not Payment.objects.exists()  # validation records nothing

    # Validation is optional on a paybill: the money may arrive anyway, and must never be dropped.
    confirmed = post(client, CONFIRMATION, sample("confirmation"))
    assert confirmed.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
    payment = Payment.objects.get()
    assert (payment.status, payment.contract_id, payment.reference) == ("unmatched", None, "xyz")


def test_validation_accepts_a_known_account_and_refuses_a_bad_amount(key_b, contract_b):
    client = daraja(key_b)
    for reference in ("JPC-000123", "jpc/123", contract_b.device.imei):
        answer = post(client, VALIDATION, sample("validation", BillRefNumber=reference)).json()
        assert answer == {"ResultCode": "0", "ResultDesc": "Accepted"}, reference
    for amount in ("0", "-1", "abc", "1.001", ""):
        answer = post(client, VALIDATION, sample("validation", BillRefNumber="JPC-000123", TransAmount=amount))
        assert answer.json() == {"ResultCode": ValidationResult.INVALID_AMOUNT.value, "ResultDesc": "Rejected"}
    assert post(client, VALIDATION, sample("validation", BillRefNumber="")).json()["ResultCode"] == "C2B00012"


def test_a_paybill_the_provider_did_not_list_is_refused_and_its_money_never_credited_by_itself(key_b, contract_b):
    """Jamii lists its paybill 522533; a callback for the sandbox's 600134 comes from a URL registered elsewhere."""
    from payments.models import PaymentChannel

    PaymentChannel.objects.create(
        provider=contract_b.provider, kind="mobile_money", name="M-PESA", account="Paybill 522533", short_code="522533"
    )
    validation = post(daraja(key_b), VALIDATION, sample("validation", BillRefNumber="JPC-000123"))
    assert validation.json()["ResultCode"] == "C2B00016"

    confirmed = post(daraja(key_b), CONFIRMATION, sample("confirmation", BillRefNumber="JPC-000123"))
    assert confirmed.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}  # the money moved: recorded
    payment = Payment.objects.get()
    assert (payment.status, payment.contract_id) == ("unmatched", None)  # a finance officer decides

    ours = sample("confirmation", BillRefNumber="JPC-000123", BusinessShortCode="522533", TransID="LGR219G3EZ")
    assert post(daraja(key_b), VALIDATION, ours).json()["ResultCode"] == "0"
    post(daraja(key_b), CONFIRMATION, ours)
    assert Payment.objects.get(external_id="LGR219G3EZ").status == "matched"


def test_a_hashed_msisdn_is_kept_whole(key_b, contract_b):
    hashed = "a" * 64  # newer Daraja versions send the SHA-256 of the number
    post(daraja(key_b), CONFIRMATION, sample("confirmation", MSISDN=hashed, BillRefNumber="JPC-000123"))
    assert Payment.objects.get().payer_phone == hashed


def test_a_masked_msisdn_is_kept_as_typed_and_never_matches_by_phone(key_b, contract_b):
    post(daraja(key_b), CONFIRMATION, sample("confirmation", MSISDN="2547 ***** 149", BillRefNumber="nothing"))
    payment = Payment.objects.get()
    assert (payment.payer_phone, payment.status) == ("2547 ***** 149", "unmatched")


def test_the_payers_plain_msisdn_matches_the_customer_when_the_account_number_does_not(key_b, contract_b):
    phone = str(contract_b.customer.phone)
    msisdn = phone.lstrip("+")  # Daraja's form: 2547XXXXXXXX
    post(daraja(key_b), CONFIRMATION, sample("confirmation", MSISDN=msisdn, BillRefNumber="wrong"))
    payment = Payment.objects.get()
    assert (payment.contract_id, payment.match_rule, payment.payer_phone) == (
        contract_b.pk,
        "payer_phone",
        phone,
    )


def test_paying_the_arrears_by_mpesa_unlocks_the_phone_at_once(key_b, provider_b):
    LockPolicy.objects.create(provider=provider_b, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    contract = make_contract(provider_b, number="JPC-7", first_due_date=provider_b.today() - dt.timedelta(days=40))
    lock_sweep()
    assert Device.objects.get(pk=contract.device_id).desired_state == "locked"
    arrears = sum(i.amount_due for i in contract.installments.filter(due_date__lte=provider_b.today()))
    trans_time = timezone.localtime(timezone.now(), timezone=dt.timezone(dt.timedelta(hours=3)))
    body = sample(
        "confirmation", BillRefNumber="JPC-7", TransAmount=str(arrears), TransTime=trans_time.strftime("%Y%m%d%H%M%S")
    )
    assert post(daraja(key_b), CONFIRMATION, body).json()["ResultCode"] == 0
    assert Device.objects.get(pk=contract.device_id).desired_state == "unlocked"


# --- malformed bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"TransID": ""}, "TransID"),
        ({"TransTime": "27/07/2017 10:42"}, "TransTime"),
        ({"TransTime": "20990101000000"}, "TransTime"),  # in the future
        ({"TransAmount": "ten"}, "TransAmount"),
        ({"TransAmount": "0.00"}, "TransAmount"),
        ({"TransAmount": "1.005"}, "TransAmount"),
        ({"BillRefNumber": "JPC\x00123"}, "BillRefNumber"),
        ({"FirstName": {"first": "John"}}, "FirstName"),
        ({"MSISDN": "2" * 500}, "MSISDN"),
    ],
)
def test_a_malformed_confirmation_is_400_naming_the_field_and_records_nothing(key_b, contract_b, change, field):
    response = post(daraja(key_b), CONFIRMATION, sample("confirmation", BillRefNumber="JPC-000123") | change)
    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]
    assert not Payment.objects.exists()


def test_missing_fields_and_non_objects_are_400(key_b, contract_b):
    client = daraja(key_b)
    response = post(client, CONFIRMATION, {"TransAmount": "10.00"})
    assert response.status_code == 400
    assert {"TransID", "TransTime"} <= set(response.json()["errors"])
    assert post(client, CONFIRMATION, ["LGR219G3EY"]).status_code == 400
    garbage = client.post(f"{CONFIRMATION}?key={key_b}", b"{not json", content_type="application/json")
    assert garbage.status_code == 400 and "detail" in garbage.json()
    deep = client.post(f"{CONFIRMATION}?key={key_b}", b"[" * 100_000, content_type="application/json")
    assert deep.status_code == 400


def test_an_amount_sent_as_a_bare_number_is_read_without_float(key_b, contract_b):
    body = json.dumps(sample("confirmation", BillRefNumber="JPC-000123")).replace('"10.00"', "10.10")
    client = daraja(key_b)
    response = client.post(f"{CONFIRMATION}?key={key_b}", body, content_type="application/json")
    assert response.status_code == 200, response.json()
    assert Payment.objects.get().amount == Decimal("10.10")


def test_a_provider_not_in_kes_is_refused_and_nothing_recorded(key_a, provider_a):
    make_contract(provider_a, number="xyz")
    response = post(daraja(key_a), CONFIRMATION, sample("confirmation"))
    assert response.status_code == 400
    assert "KES" in response.json()["errors"]["non_field_errors"][0]
    assert not Payment.objects.exists()
    assert post(daraja(key_a), VALIDATION, sample("validation")).json()["ResultCode"] == "C2B00016"


# --- authentication -------------------------------------------------------------------------------


def test_a_wrong_missing_or_revoked_key_is_401_in_the_apis_error_shape_and_never_logged(
    key_b, provider_b, contract_b, caplog
):
    body = sample("confirmation", BillRefNumber="JPC-000123")
    wrong = key_b[:-4] + "AAAA"
    with caplog.at_level(logging.DEBUG):
        for url in (f"{CONFIRMATION}?key={wrong}", f"{CONFIRMATION}?key=nonsense", CONFIRMATION, VALIDATION):
            response = APIClient().post(url, body, format="json")
            assert response.status_code == 401, url
            assert set(response.json()) == {"detail"}
    assert "?key=" in APIClient().post(CONFIRMATION, body, format="json").json()["detail"]
    assert not any(wrong in r.getMessage() or key_b in r.getMessage() for r in caplog.records)

    from portal.models import ApiKey

    ApiKey.objects.filter(provider=provider_b).update(revoked_at=timezone.now())
    response = post(daraja(key_b), CONFIRMATION, body)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert not Payment.objects.exists()


def test_the_bearer_header_works_too(api_b, contract_b):
    response = api_b.post(CONFIRMATION, sample("confirmation", BillRefNumber="JPC-000123"), format="json")
    assert response.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}


def test_another_providers_key_cannot_post_into_provider_b(key_a, contract_b):
    # Dialog (LKR) is refused outright; a second Kenyan lender, in KES like Jamii, is the real test.
    other = ProviderFactory(name="Other Kenyan Lender", slug="other-ke", country="KE", currency="KES")
    key_other = api_key_create(provider=other, name="daraja")[1]
    for key in (key_a, key_other):
        answer = post(daraja(key), VALIDATION, sample("validation", BillRefNumber="JPC-000123")).json()
        assert answer["ResultCode"] != "0", key  # Jamii's contract does not exist for this key
        post(daraja(key), CONFIRMATION, sample("confirmation", BillRefNumber="JPC-000123"))
    assert not contract_b.payments.exists()
    assert not Payment.objects.filter(provider=contract_b.provider).exists()
    # The other lender's money is its own, unmatched: never credited to Jamii's contract.
    assert list(Payment.objects.values_list("provider_id", "status")) == [(other.pk, "unmatched")]


def test_the_key_in_the_url_is_accepted_by_the_mpesa_callbacks_only(key_b, contract_b):
    assert APIClient().get(f"/api/v1/contracts/?key={key_b}").status_code == 401


# --- no garbage makes them fail ------------------------------------------------------------------

_text = st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False))
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
_fields = [
    "TransactionType",
    "TransID",
    "TransTime",
    "TransAmount",
    "BusinessShortCode",
    "BillRefNumber",
    "InvoiceNumber",
    "MSISDN",
    "FirstName",
    "MiddleName",
    "LastName",
]


def test_no_garbage_makes_the_callbacks_fail(monkeypatch, key_b, contract_b):
    from portal.api.throttling import ApiKeyRateThrottle

    # DRF reads the rates once, at import: patch the class, not the settings.
    monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": "1000000/min"})
    client = daraja(key_b)
    base = sample("confirmation", BillRefNumber="JPC-000123")
    bodies = st.one_of(
        st.fixed_dictionaries({}, optional=dict.fromkeys(_fields, _text)).map(lambda d: base | d),
        st.dictionaries(st.sampled_from(_fields), _json, max_size=6),
        _json,
        st.binary(max_size=60),
    )

    @given(body=bodies, url=st.sampled_from([VALIDATION, CONFIRMATION]))
    @hypothesis_settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def send(body, url):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(f"{url}?key={key_b}", raw, content_type="application/json")
        assert response.status_code < 500, (url, body, response.content)
        json.loads(response.content)  # every answer is JSON

    send()
