"""An owner pays the arrears by M-Pesa and the locked phone unlocks at once, through the real pipeline.

PostgreSQL, Redis, a Celery worker and Mosquitto are real; Daraja is played by an HTTP POST
of its own confirmation JSON to a live server, with the provider's key in the callback URL;
the phone is the reference agent enrolled over HTTP and listening on its MQTT topic.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import requests
from django.conf import settings
from django.utils import timezone

from devices.agent import Agent
from devices.agent.client import HttpTransport
from devices.agent.mqtt import MqttListener
from devices.models import Device
from devices.protocol import topic_for
from devices.services.tokens import enrollment_token_create
from payments.ledger.mpesa import DARAJA_TIME_ZONE
from payments.locks.services import lock_sweep
from payments.models import LockPolicy, Payment
from portal.services import api_key_create
from tests.factories import make_contract
from tests.samples import SAMPLES as SHARED_SAMPLES
from tests.test_lock_end_to_end import clear_retained, wait_for

SAMPLE = SHARED_SAMPLES / "mobile_money" / "mpesa_c2b_v1_confirmation_2017_sandbox.json"


@pytest.fixture
def overdue_contract(provider_b):
    """A Jamii contract past grace, with a policy that may lock at any hour of any day."""
    LockPolicy.objects.create(provider=provider_b, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    return make_contract(provider_b, number="JPC-E2E-1", first_due_date=provider_b.today() - dt.timedelta(days=40))


@pytest.fixture
def enrolled_phone(live_server, tmp_path, overdue_contract, provider_b):
    _token, secret = enrollment_token_create(provider=provider_b, name="shop", actor=None)
    phone = Agent(tmp_path / "phone", transport=HttpTransport(timeout=10))
    outcome = phone.enroll(live_server.url, overdue_contract.device.imei, secret)
    assert outcome.accepted and phone.view().state == "unlocked"
    yield phone
    if settings.MQTT_URL:  # the delivery pushed a retained command on this phone's topic
        clear_retained(topic_for(str(Device.objects.get(pk=overdue_contract.device_id).uid)))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
def test_an_mpesa_payment_of_the_arrears_unlocks_the_phone_over_mqtt_at_once(
    live_server, enrolled_phone, overdue_contract, provider_b
):
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    _key, api_key = api_key_create(provider=provider_b, name="daraja")
    device_id = overdue_contract.device_id
    listener = MqttListener(enrolled_phone, settings.MQTT_URL).start()
    try:
        # Locks travel on "celery", the unlock on its own "unlocks" queue (devices/delivery.py).
        queues = ["celery", "unlocks"]
        with start_worker(app, queues=queues, perform_ping_check=False, pool="solo", loglevel="WARNING"):
            report = lock_sweep()
            assert report.changed == {"locked": 1}
            wait_for(lambda: enrolled_phone.view().state == "locked", what="the phone to show the lock")
            wait_for(lambda: Device.objects.get(pk=device_id).reported_state == "locked", what="the lock's ack")

            # The owner pays exactly the arrears at a paybill; Daraja posts its confirmation.
            due = overdue_contract.installments.filter(due_date__lte=provider_b.today())
            arrears = sum(i.amount_due - i.amount_paid for i in due)
            paid_at = timezone.now().astimezone(DARAJA_TIME_ZONE) - dt.timedelta(minutes=1)
            body = json.loads(SAMPLE.read_text()) | {
                "TransID": "SBK7E2E001",
                "TransTime": paid_at.strftime("%Y%m%d%H%M%S"),
                "TransAmount": f"{arrears:.2f}",
                "BillRefNumber": "jpc e2e 1",  # as an owner types it
            }
            response = requests.post(
                f"{live_server.url}/api/v1/c2b/confirmation/", params={"key": api_key}, json=body, timeout=10
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}

            wait_for(lambda: enrolled_phone.view().state == "unlocked", what="the phone to unlock")
            wait_for(lambda: Device.objects.get(pk=device_id).reported_state == "unlocked", what="the unlock's ack")
    finally:
        listener.stop()

    assert enrolled_phone.log[-1]["source"] == "mqtt"  # pushed, not waiting for a check-in
    payment = Payment.objects.get()
    assert (payment.status, payment.contract_id, payment.source) == ("matched", overdue_contract.pk, "mpesa")
    assert payment.amount == arrears
    overdue_contract.refresh_from_db()
    assert overdue_contract.lock_state == "unlocked"
