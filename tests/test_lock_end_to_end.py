"""From an overdue contract to a lock screen on the phone, through the real pipeline.

PostgreSQL, Redis, a Celery worker and Mosquitto are real; the phone is the reference agent
talking HTTP to a live server and listening on its MQTT topic. The clock is moved by
running the sweep at a later ``now``.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion

from devices.agent import Agent
from devices.agent.client import ApiError, HttpTransport
from devices.agent.mqtt import MqttListener, parse_mqtt_url
from devices.models import Device
from devices.protocol import topic_for
from devices.services.enrolment import device_reenrollment_code_issue
from devices.services.offline import offline_code_issue
from devices.services.tokens import enrollment_token_create
from payments.locks.services import lock_sweep
from payments.models import PaymentChannel
from support.services.unlocks import unlock_request_approve, unlock_request_create
from tests.conftest import signed_in
from tests.factories import UserFactory, make_contract

# Tuesday 17 Feb 2026, 10:00 in Colombo: the contract's 15 Jan and 15 Feb installments are unpaid.
TUESDAY_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def clear_retained(topic: str) -> None:
    host, port, _tls, username, password = parse_mqtt_url(settings.MQTT_URL)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cleanup-{uuid.uuid4().hex[:8]}")
    if username:
        client.username_pw_set(username, password)
    client.connect(host, port)
    client.loop_start()
    try:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def phone_contract(provider_a, platform):
    PaymentChannel.objects.create(
        provider=provider_a, kind="mobile_money", name="eZ Cash", account="#111#", reference="{contract}"
    )
    return make_contract(provider_a, number="DLG-E2E")


@pytest.fixture
def enrolled_phone(live_server, tmp_path, phone_contract, provider_a):
    _token, secret = enrollment_token_create(provider=provider_a, name="shop", actor=None)
    phone = Agent(tmp_path / "phone", transport=HttpTransport(timeout=10))
    (phone.user_data_dir / "photos.txt").write_text("the owner's photos")
    outcome = phone.enroll(live_server.url, phone_contract.device.imei, secret)
    assert outcome.accepted and phone.view().state == "unlocked"
    phone.enrollment_secret = secret
    yield phone
    if settings.MQTT_URL:  # the delivery pushed a retained command on this phone's topic
        clear_retained(topic_for(str(Device.objects.get(pk=phone_contract.device_id).uid)))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
def test_past_grace_the_sweep_locks_the_phone_over_mqtt_and_the_portal_sees_it_acknowledged(
    enrolled_phone, phone_contract, agent_a, client
):
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    listener = MqttListener(enrolled_phone, settings.MQTT_URL).start()
    try:
        with start_worker(app, queues=["celery"], perform_ping_check=False, pool="solo", loglevel="WARNING"):
            report = lock_sweep(now=TUESDAY_MORNING)
            assert report.changed == {"locked": 1}
            wait_for(lambda: enrolled_phone.view().state == "locked", what="the phone to show the lock")
            wait_for(
                lambda: Device.objects.get(pk=phone_contract.device_id).reported_state == "locked",
                what="the acknowledgement",
            )
    finally:
        listener.stop()

    assert enrolled_phone.log[-1]["source"] == "mqtt"  # pushed, not pulled
    screen = enrolled_phone.render_text()
    for expected in ("16,666.66", "DLG-E2E", "+94777575727", "#111#", "Dialog Finance"):
        assert expected in screen, expected
    assert (enrolled_phone.user_data_dir / "photos.txt").read_text() == "the owner's photos"

    page = signed_in(client, agent_a).get(f"/devices/{phone_contract.device_id}/").content.decode()
    assert "Phone reports" in page and page.count("badge-bad") >= 2  # should be locked, reports locked


@pytest.mark.django_db(transaction=True)
def test_a_factory_reset_does_not_remove_the_lock_and_keeps_the_owners_data(
    enrolled_phone, phone_contract, live_server
):
    # Locked while the phone was offline: it learns of it at its next check-in.
    lock_sweep(now=TUESDAY_MORNING)
    assert enrolled_phone.checkin().accepted and enrolled_phone.view().state == "locked"
    old_credential = enrolled_phone.state.enrolment.credential

    enrolled_phone.factory_reset()
    assert enrolled_phone.view().state == "locked"  # reset-proof storage keeps the lock on screen
    assert not enrolled_phone.enrolled  # the reset wiped the credential: the phone must enrol again
    outcome = enrolled_phone.enroll(live_server.url, phone_contract.device.imei, enrolled_phone.enrollment_secret)
    assert outcome.status in {"applied", "duplicate"}
    assert enrolled_phone.view().state == "locked"
    assert enrolled_phone.state.enrolment.credential != old_credential
    assert (enrolled_phone.user_data_dir / "photos.txt").read_text() == "the owner's photos"


@pytest.mark.django_db(transaction=True)
def test_an_offline_code_from_the_server_unlocks_the_phone_once(
    enrolled_phone, phone_contract, provider_a, agent_a, technician
):
    lock_sweep(now=TUESDAY_MORNING)
    enrolled_phone.checkin()
    assert enrolled_phone.view().state == "locked"
    approver = UserFactory(username="admin.approver", organisation=provider_a, role="provider_admin")
    code = offline_code_issue(
        device=Device.objects.get(pk=phone_contract.device_id),
        kind="unlock_days",
        days=3,
        requested_by=technician,
        approved_by=approver,
        reason="owner paid at a branch; phone has no signal",
    )
    first = enrolled_phone.enter_code(code.token)
    assert first.ok and first.days == 3
    assert enrolled_phone.view().state == "temp_unlocked"
    again = enrolled_phone.enter_code(code.token)
    assert not again.ok


@pytest.mark.django_db(transaction=True)
def test_a_phone_that_lost_its_protected_storage_enrols_again_only_with_a_staff_code(
    enrolled_phone, phone_contract, live_server, provider_a
):
    """Re-flashed: the device key is gone with the protected storage. The token alone no longer enrols it."""
    lock_sweep(now=TUESDAY_MORNING)
    enrolled_phone.checkin()
    assert enrolled_phone.view().state == "locked"
    imei = phone_contract.device.imei
    shutil.rmtree(enrolled_phone.store.root / "protected")
    enrolled_phone.factory_reset()

    with pytest.raises(ApiError) as refused:
        enrolled_phone.enroll(live_server.url, imei, enrolled_phone.enrollment_secret)
    assert refused.value.status == 400

    admin = UserFactory(username="admin.codes", organisation=provider_a, role="provider_admin")
    code, _expires = device_reenrollment_code_issue(device=Device.objects.get(pk=phone_contract.device_id), actor=admin)
    outcome = enrolled_phone.enroll(live_server.url, imei, enrolled_phone.enrollment_secret, reenrollment_code=code)

    assert outcome.accepted and enrolled_phone.view().state == "locked"  # the lock came back with the enrolment
    assert enrolled_phone.checkin().status == "duplicate"


@pytest.mark.django_db(transaction=True)
def test_a_new_offline_code_key_reaches_the_phone_at_its_next_enrolment_and_old_codes_stop_working(
    enrolled_phone, phone_contract, live_server, provider_a, agent_a, technician
):
    device = Device.objects.get(pk=phone_contract.device_id)
    approver = UserFactory(username="admin.rekey", organisation=provider_a, role="provider_admin")
    old_code = offline_code_issue(
        device=device, kind="unlock_days", days=2, requested_by=technician, approved_by=approver, reason="spare"
    )
    request = unlock_request_create(device=device, kind="rekey", requested_by=agent_a, reason="secret lost")
    unlock_request_approve(unlock_request=request, approver=approver)
    old_secret = enrolled_phone.protected.offline.secret

    # The phone enrols again (after a reset, say), signing with its device key: the new key arrives.
    enrolled_phone.factory_reset()
    assert enrolled_phone.enroll(live_server.url, device.imei, enrolled_phone.enrollment_secret).status in {
        "applied",
        "duplicate",
    }

    assert enrolled_phone.protected.offline.secret not in (None, old_secret)
    assert not enrolled_phone.enter_code(old_code.token).ok
    new_code = offline_code_issue(
        device=Device.objects.get(pk=device.pk),
        kind="unlock_days",
        days=2,
        requested_by=technician,
        approved_by=approver,
        reason="owner paid at a branch; phone offline",
    )
    assert enrolled_phone.enter_code(new_code.token).ok
