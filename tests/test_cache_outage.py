"""A Redis outage never stops payment intake: every rate limit keeps counting in memory and says so once.

Stories (a private redis-server on its own port, configured exactly as production
configures the cache, then stopped and started again; the shared Redis is never touched):
* with Redis stopped, a provider's system posts a payment and Daraja posts its validation
  and confirmation: each is answered 2xx and the payments are recorded; the outage is
  logged once, not once per request;
* every limiter still limits while Redis is down, per process: the API key throttle, the
  enrolment limit, the owners' self-service limit and a phone's check-ins;
* when Redis is back the limits count in Redis again, and the log says it answers again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings as django_settings
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from devices import checkin_cache
from devices.services.tokens import enrollment_token_create
from payments.models import Payment
from portal.api.throttling import ApiKeyRateThrottle
from portal.services import api_key_create
from tests.factories import DeviceFactory, enrolment_body, make_contract
from tests.local_services import wait_for
from tests.samples import SAMPLES
from tests.test_delivery import producer_broker

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

PAYMENTS = "/api/v1/payments/"
VALIDATION = "/api/v1/c2b/validation/"
CONFIRMATION = "/api/v1/c2b/confirmation/"
OUTAGE = "unavailable"


@pytest.fixture
def redis_cache(private_redis, settings):
    """The production cache configuration (config/settings.py), pointed at the private Redis; so are the
    check-in cache and the task producer."""
    settings.CACHES = {"default": {**django_settings.CACHES["default"], "LOCATION": private_redis.url}}
    settings.REDIS_URL = private_redis.url
    checkin_cache._local.clear()
    with producer_broker(private_redis.url):
        yield private_redis
    checkin_cache._local.clear()


@pytest.fixture
def limit(monkeypatch):
    """Sets the API key rate (DRF reads the rates once, at import: patch the class, not the settings)."""
    return lambda rate: monkeypatch.setattr(ApiKeyRateThrottle, "THROTTLE_RATES", {"api_key": rate})


def payment(external_id: str) -> dict:
    return {
        "external_id": external_id,
        "channel": "mobile_money",
        "amount": "500.00",
        "currency": "KES",
        "received_at": (timezone.now() - dt.timedelta(minutes=5)).isoformat(),
        "reference": "JPC-000123",
    }


def daraja(kind: str, **overrides) -> dict:
    body = json.loads((SAMPLES / "mobile_money" / f"mpesa_c2b_v1_{kind}_2017_sandbox.json").read_text())
    return body | {"BillRefNumber": "JPC-000123"} | overrides


def outage_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and OUTAGE in r.getMessage()]


def test_payments_and_both_mpesa_callbacks_are_recorded_while_redis_is_down_and_limits_return_after(
    redis_cache, provider_b, limit, caplog
):
    make_contract(provider_b, number="JPC-000123")
    key = api_key_create(provider=provider_b, name="erp and daraja")[1]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    limit("5/min")
    redis_cache.stop()

    with caplog.at_level(logging.WARNING):
        posted = api.post(PAYMENTS, payment("QK71H2XYZ"), format="json")
        validated = APIClient().post(f"{VALIDATION}?key={key}", daraja("validation"), format="json")
        confirmed = APIClient().post(f"{CONFIRMATION}?key={key}", daraja("confirmation"), format="json")

    assert posted.status_code == 201, posted.content
    assert validated.status_code == 200 and validated.json()["ResultCode"] == "0", validated.content
    assert confirmed.status_code == 200 and confirmed.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
    recorded = Payment.objects.filter(provider=provider_b)
    assert sorted(recorded.values_list("external_id", flat=True)) == sorted(
        ["QK71H2XYZ", daraja("confirmation")["TransID"]]
    )
    assert recorded.filter(status="matched").count() == 2
    # Said once for the outage, not once per request.
    assert len([m for m in outage_warnings(caplog) if m.startswith("cache: Redis")]) == 1, outage_warnings(caplog)

    # Redis is back (empty: no persistence). Once the process asks it again, the limit counts in Redis.
    redis_cache.start()
    probe = redis.Redis.from_url(redis_cache.url)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert wait_for(lambda: cache.set("probe", 1) or probe.exists(cache.make_key("probe")), timeout=10)
    assert any("answers again" in r.getMessage() for r in caplog.records)
    answers = [api.post(PAYMENTS, payment(f"AFTER{i}"), format="json").status_code for i in range(6)]
    assert answers == [201] * 5 + [429]
    assert probe.keys("*throttle_api_key_key-*"), "the API key's window is counted in Redis"


def test_every_limiter_still_limits_in_this_processs_memory_while_redis_is_down(
    redis_cache, provider_a, admin_a, limit, settings
):
    key = api_key_create(provider=provider_a, name="erp")[1]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    limit("3/min")
    settings.DEVICE_ENROLL_RATE = "3/min"
    redis_cache.stop()

    # The provider API key.
    assert [api.get("/api/v1/devices/").status_code for _ in range(4)] == [200, 200, 200, 429]

    # Enrolments per client address (a wrong token is 400 until the limit).
    enrol = {"imei": DeviceFactory(provider=provider_a).imei, "enrollment_token": "fle_nope", "app_version": "1"}
    answers = [APIClient().post("/api/device/v1/enroll", enrol, format="json").status_code for _ in range(4)]
    assert answers == [400, 400, 400, 429]

    # The owners' self-service page, per client address.
    from selfservice.ratelimit import RATE_LIMIT_TRIES

    owner = Client(REMOTE_ADDR="198.51.100.20")
    tries = [
        owner.post("/my-phone/", {"identifier": "DLG-404", "phone": "0771234567"}).status_code
        for _ in range(RATE_LIMIT_TRIES + 1)
    ]
    assert tries == [200] * RATE_LIMIT_TRIES + [429]


def test_a_phones_check_ins_are_answered_and_still_counted_while_redis_is_down(
    redis_cache, provider_a, admin_a, settings, caplog
):
    settings.CHECKIN_CACHE_SECONDS = 600
    settings.DEVICE_API_RATE = "3/min"
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=admin_a)
    phone = DeviceFactory(provider=provider_a)
    challenge = APIClient().post("/api/device/v1/enroll/challenge", {}, format="json").json()["challenge"]
    body = enrolment_body(imei=phone.imei, token=secret, key=Ed25519PrivateKey.generate(), challenge=challenge)
    enrolled = APIClient().post("/api/device/v1/enroll", body, format="json")
    assert enrolled.status_code == 201, enrolled.content
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {enrolled.json()['credential']}")
    redis_cache.stop()
    checkin_cache._local.clear()

    body = {"state": "unlocked", "last_seq": 1, "app_version": "1"}
    with caplog.at_level(logging.WARNING):
        answers = [client.post("/api/device/v1/checkin", body, format="json").status_code for _ in range(4)]

    assert answers == [200, 200, 200, 429]
    said = [m for m in outage_warnings(caplog) if m.startswith("check-in cache: Redis")]
    assert len(said) == 1, outage_warnings(caplog)
