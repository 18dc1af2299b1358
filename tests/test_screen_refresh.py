"""An admin fixes a hotline, a payment channel or the wording: phones already locked show it without waiting.

Stories: the operator corrects a provider's hotline in the Django admin and a locked phone
receives, over real Mosquitto, a refreshed signed command (same state, same lease, next seq)
with the new number; the refresh runs in batches of a bounded number of queries, skips
phones that already show the new screen (a retried batch issues nothing twice), never
touches another provider's phones, and is audited once per request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import uuid
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.delivery import mqtt_publish
from devices.keys import public_keys
from devices.models import Device, DeviceCommand
from devices.protocol import check_command, open_envelope, topic_for
from payments.ledger.channels import payment_channel_save
from payments.locks.refresh import (
    RESUME_AFTER,
    lock_refresh_batch,
    lock_refreshes_resume,
    lock_screens_refresh,
    lock_screens_refresh_after_change,
    lock_screens_refresh_batch,
)
from payments.locks.screen import DEFAULT_TEXTS
from payments.locks.services import lock_screen_text_save, lock_sweep
from payments.models import Contract, LockRefresh, LockScreenText
from payments.tasks import refresh_lock_screens
from portal.models import AuditEvent, Organisation
from tests.factories import CustomerFactory, make_contract
from tests.local_services import wait_for
from tests.test_lock_sweep import ESSAY

# 10:00 in Colombo on a Tuesday: the contracts' 15 Jan installment is 33 days late.
TUESDAY_MORNING = dt.datetime(2026, 2, 17, 4, 30, tzinfo=dt.UTC)
NEW_HOTLINE = "+94112000999"


@pytest.fixture
def operator_client(as_user, operator):
    operator.is_superuser = True
    operator.save()
    return as_user(operator)


@pytest.fixture
def in_process():
    """The demo's in-process mode: no broker, every queued task runs at once (even where CI sets a broker)."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture
def no_mqtt(settings):
    settings.MQTT_URL = None


def organisation_form(org: Organisation, **changes) -> dict:
    """The admin's change form for ``org`` as the page shows it, with ``changes`` typed in."""
    data = {
        "kind": org.kind,
        "name": org.name,
        "slug": org.slug,
        "country": org.country,
        "currency": org.currency,
        "time_zone": org.time_zone,
        "languages": json.dumps(org.languages),
        "hotline_numbers": json.dumps(org.hotline_numbers),
        "support_email": org.support_email,
        "website": org.website,
        "served_providers": [p.pk for p in org.served_providers.all()],
    }
    return data | changes


def newest(device_id: int) -> DeviceCommand:
    return DeviceCommand.objects.filter(device_id=device_id).order_by("-seq").first()


def locked_contracts(provider, n: int) -> list[Contract]:
    contracts = [make_contract(provider) for _ in range(n)]
    report = lock_sweep(now=TUESDAY_MORNING)
    assert report.changed.get("locked") == n
    return contracts


class Phone:
    """A phone on MQTT: subscribed to its own topic, keeping every envelope that arrives."""

    def __init__(self, topic: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.envelopes: list[dict] = []
        subscribed = threading.Event()
        url = urlparse(settings.MQTT_URL)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"refresh-test-{uuid.uuid4().hex[:10]}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, msg: msg.payload and self.envelopes.append(json.loads(msg.payload))
        self.client.connect(url.hostname, url.port or 1883, 30)
        self.client.loop_start()
        assert subscribed.wait(10), "the broker did not confirm the subscription"

    def commands(self) -> list[dict]:
        """Every command received, verified as the phone does (signature with the trusted keys first)."""
        return [check_command(open_envelope(envelope, public_keys())) for envelope in self.envelopes]


@contextlib.contextmanager
def phone_on(topic: str):
    phone = Phone(topic)
    try:
        yield phone
    finally:
        phone.client.disconnect()
        phone.client.loop_stop()
        mqtt_publish(url=settings.MQTT_URL, topic=topic, payload=b"", timeout=5)  # no retained leftovers


@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
def test_an_admins_hotline_fix_reaches_an_already_locked_phone_over_mqtt(
    provider_a, platform, operator, operator_client, in_process
):
    contract = locked_contracts(provider_a, 1)[0]
    lock = newest(contract.device_id)
    topic = topic_for(str(Device.objects.get(pk=contract.device_id).uid))
    with phone_on(topic) as phone:
        assert wait_for(lambda: phone.commands(), timeout=10)  # the retained lock
        assert phone.commands()[-1]["seq"] == lock.seq

        # The operator corrects the provider's hotline on the admin page.
        form = organisation_form(provider_a, hotline_numbers=json.dumps([NEW_HOTLINE]))
        response = operator_client.post(f"/admin/portal/organisation/{provider_a.pk}/change/", form)
        assert response.status_code == 302, response.content.decode()[:2000]

        assert wait_for(lambda: phone.commands()[-1]["seq"] > lock.seq, timeout=60), "no refreshed command arrived"
    refreshed = phone.commands()[-1]
    assert refreshed["seq"] == lock.seq + 1
    assert refreshed["state"] == "locked" and refreshed["reason"] == lock.payload["reason"]
    for member in ("lease_until", "lease_expiry_state", "paid_until", "offline_lock_days", "lock_window"):
        assert refreshed[member] == lock.payload[member], member
    assert refreshed["screen"]["hotline_numbers"] == [NEW_HOTLINE]
    assert NEW_HOTLINE in refreshed["screen"]["body"] and NEW_HOTLINE in refreshed["allowed_numbers"]
    assert "+94777575727" not in refreshed["allowed_numbers"]

    event = AuditEvent.objects.get(action="lock_screen.refresh")
    assert event.actor == operator and event.organisation_id == provider_a.pk
    assert event.after["changed"] == ["hotline_numbers"] and event.after["devices"] == 1


@pytest.mark.django_db
def test_the_refresh_runs_in_batches_of_a_bounded_number_of_queries_and_a_retried_batch_issues_nothing_twice(
    provider_a, no_mqtt
):
    contracts = locked_contracts(provider_a, 7)
    before = {c.device_id: newest(c.device_id) for c in contracts}
    Organisation.objects.filter(pk=provider_a.pk).update(hotline_numbers=[NEW_HOTLINE])

    queries, cursor, sizes = [], 0, [2, 4]
    for size in sizes:
        with CaptureQueriesContext(connection) as captured:
            batch = lock_screens_refresh_batch(provider_id=provider_a.pk, after_id=cursor, batch_size=size)
        assert (batch.refreshed, batch.unchanged) == (size, 0)
        queries.append(len(captured))
        cursor = batch.next_after
    assert queries[0] == queries[1], f"queries per batch grow with its size: {queries}"
    assert queries[0] <= 30
    last = lock_screens_refresh_batch(provider_id=provider_a.pk, after_id=cursor, batch_size=4)
    assert (last.refreshed, last.next_after) == (1, None)  # the seventh, and the end

    # A batch run again (a redelivered task) finds every screen up to date: nothing issued.
    again = lock_screens_refresh_batch(provider_id=provider_a.pk, after_id=0, batch_size=10)
    assert (again.refreshed, again.unchanged, again.next_after) == (0, 7, None)

    for contract in contracts:
        old, new = before[contract.device_id], newest(contract.device_id)
        assert new.seq == old.seq + 1 and new.state == old.state == "locked"
        assert new.lease_until == old.lease_until and new.expires_at is None
        assert new.payload["screen"]["hotline_numbers"] == [NEW_HOTLINE]
        assert Device.objects.get(pk=contract.device_id).desired_state == "locked"


@pytest.mark.django_db(transaction=True)
def test_a_platform_fallback_fix_refreshes_every_provider_and_a_provider_fix_only_its_own(
    provider_a, provider_b, platform, operator_client, in_process, no_mqtt
):
    a = make_contract(provider_a)
    b = make_contract(provider_b, first_due_date=dt.date(2026, 1, 15))
    lock_sweep(now=TUESDAY_MORNING)
    seqs = {c.device_id: newest(c.device_id).seq for c in (a, b)}
    assert {newest(c.device_id).state for c in (a, b)} <= {"locked", "reminder"}  # B waits for its lock hours

    # Provider A's hotline: A's phone only.
    form = organisation_form(provider_a, hotline_numbers=json.dumps([NEW_HOTLINE]))
    assert operator_client.post(f"/admin/portal/organisation/{provider_a.pk}/change/", form).status_code == 302
    assert newest(a.device_id).seq == seqs[a.device_id] + 1
    assert newest(b.device_id).seq == seqs[b.device_id]

    # The platform's fallback number shows on every provider's screens.
    form = organisation_form(platform, hotline_numbers=json.dumps(["+442000000000"]))
    assert operator_client.post(f"/admin/portal/organisation/{platform.pk}/change/", form).status_code == 302
    for contract, expected in ((a, seqs[a.device_id] + 2), (b, seqs[b.device_id] + 1)):
        command = newest(contract.device_id)
        assert command.seq == expected
        assert command.payload["screen"]["fallback"]["hotline_numbers"] == ["+442000000000"]
    refresh = AuditEvent.objects.filter(action="lock_screen.refresh").order_by("id").last()
    assert refresh.after["providers"] == sorted([provider_a.pk, provider_b.pk]) and refresh.after["devices"] == 2

    # A save that changes nothing a screen shows issues nothing.
    form = organisation_form(platform, hotline_numbers=json.dumps(["+442000000000"]), name="Platform")
    assert operator_client.post(f"/admin/portal/organisation/{platform.pk}/change/", form).status_code == 302
    assert newest(b.device_id).seq == seqs[b.device_id] + 1


@pytest.mark.django_db(transaction=True)
def test_a_service_centre_added_to_a_provider_shows_on_its_locked_phones(
    provider_a, service_center, operator_client, in_process, no_mqtt
):
    contract = locked_contracts(provider_a, 1)[0]
    seq = newest(contract.device_id).seq
    form = organisation_form(service_center, hotline_numbers=json.dumps(["+94115000111"]))
    assert operator_client.post(f"/admin/portal/organisation/{service_center.pk}/change/", form).status_code == 302
    command = newest(contract.device_id)
    assert command.seq == seq + 1
    assert command.payload["screen"]["service_centers"][0]["phone"] == "+94115000111"


@pytest.mark.django_db
def test_new_wording_and_a_new_payment_channel_reach_locked_phones_and_each_request_is_audited_once(
    provider_a, admin_a, no_mqtt, in_process, django_capture_on_commit_callbacks
):
    contract = locked_contracts(provider_a, 1)[0]
    seq = newest(contract.device_id).seq
    with django_capture_on_commit_callbacks(execute=True):
        payment_channel_save(
            provider=provider_a,
            actor=admin_a,
            kind="mobile_money",
            name="eZ Cash",
            account="#111#",
            reference="{contract}",
        )
    command = newest(contract.device_id)
    assert command.seq == seq + 1
    assert [ch["name"] for ch in command.payload["screen"]["payment_channels"]] == ["eZ Cash"]

    language = command.payload["screen"]["language"]
    with django_capture_on_commit_callbacks(execute=True):
        texts = DEFAULT_TEXTS["en"] | {"title": "Locked by {provider}"}
        lock_screen_text_save(provider=provider_a, language=language, actor=admin_a, **texts)
    command = newest(contract.device_id)
    assert command.seq == seq + 2 and command.payload["screen"]["title"] == "Locked by Dialog Finance"
    with django_capture_on_commit_callbacks(execute=True):
        lock_screen_text_save(provider=provider_a, language=language, actor=admin_a, **texts)  # the same again
        texts["title"] = "{provider} locked this phone"
        lock_screen_text_save(provider=provider_a, language=language, actor=admin_a, **texts)
    command = newest(contract.device_id)
    assert command.seq == seq + 3 and command.payload["screen"]["title"] == "Dialog Finance locked this phone"

    events = AuditEvent.objects.filter(action="lock_screen.refresh").order_by("id")
    assert [(e.actor, e.after["changed"], e.after["devices"]) for e in events] == [
        (admin_a, ["payment_channels"], 1),
        (admin_a, [f"lock_screen_text.{name}" for name in sorted(texts)], 1),  # the language's first wording
        (admin_a, ["lock_screen_text.title"], 1),
    ]


@pytest.mark.django_db
def test_a_retried_request_from_the_admin_is_audited_and_refreshed_once(
    provider_a, operator, no_mqtt, in_process, django_capture_on_commit_callbacks
):
    from portal.audit import audit_record, snapshot

    contract = locked_contracts(provider_a, 1)[0]
    seq = newest(contract.device_id).seq
    before = snapshot(provider_a)
    Organisation.objects.filter(pk=provider_a.pk).update(hotline_numbers=[NEW_HOTLINE])
    provider_a.refresh_from_db()
    event = audit_record(
        actor=operator, action="organisation.update", obj=provider_a, before=before, after=snapshot(provider_a)
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert lock_screens_refresh_after_change(event_id=event.pk) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert lock_screens_refresh_after_change(event_id=event.pk) is None  # the task delivered twice
    assert newest(contract.device_id).seq == seq + 1
    assert AuditEvent.objects.filter(action="lock_screen.refresh").count() == 1


# --- one phone that cannot take its command; a refresh that loses its task --------------------


def test_a_phone_whose_refreshed_screen_would_be_too_large_is_skipped_and_the_others_refreshed(provider_a, no_mqtt):
    tamil_text = LockScreenText.objects.create(provider=provider_a, language="ta", **DEFAULT_TEXTS["en"])
    tamil = make_contract(provider_a, customer=CustomerFactory(provider=provider_a, preferred_language="ta"))
    others = [make_contract(provider_a) for _ in range(3)]
    assert lock_sweep(now=TUESDAY_MORNING).changed == {"locked": 4}
    seq = newest(tamil.device_id).seq
    assert newest(tamil.device_id).payload["screen"]["language"] == "ta"
    # The Tamil wording replaced by 40 KB pasted in before the bound was checked, and a new hotline for everyone.
    LockScreenText.objects.filter(pk=tamil_text.pk).update(body=ESSAY)
    Organisation.objects.filter(pk=provider_a.pk).update(hotline_numbers=[NEW_HOTLINE])

    batch = lock_screens_refresh_batch(provider_id=provider_a.pk, batch_size=10)

    assert (batch.refreshed, batch.unchanged, batch.refused, batch.next_after) == (3, 0, 1, None)
    assert all(newest(c.device_id).payload["screen"]["hotline_numbers"] == [NEW_HOTLINE] for c in others)
    assert newest(tamil.device_id).seq == seq  # it keeps the lock it has
    event = AuditEvent.objects.get(action="device.command_refused")
    assert event.object_id == str(tamil.device_id) and event.actor_label == "lock-screen refresh"


@contextlib.contextmanager
def broker_down():
    """The broker unreachable (nothing listens on port 1), with tasks queued as a deployment queues them."""
    from config.celery import app
    from tests.test_delivery import producer_broker

    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    try:
        with producer_broker("redis://127.0.0.1:1/0"):
            yield
    finally:
        app.conf.task_always_eager = eager


@pytest.mark.django_db
def test_a_refresh_whose_next_batch_meets_a_broker_outage_resumes_from_its_cursor_on_the_periodic_pickup(
    provider_a, admin_a, no_mqtt, in_process, django_capture_on_commit_callbacks, caplog
):
    contracts = locked_contracts(provider_a, 5)
    seqs = {c.device_id: newest(c.device_id).seq for c in contracts}
    Organisation.objects.filter(pk=provider_a.pk).update(hotline_numbers=[NEW_HOTLINE])
    with django_capture_on_commit_callbacks(execute=False) as queued:  # the task is in the queue
        assert lock_screens_refresh(provider_ids=[provider_a.pk], changed=["hotline_numbers"], actor=admin_a) == 5
    assert len(queued) == 1
    refresh = LockRefresh.objects.get(provider=provider_a, kind="screen", done_at__isnull=True)

    # A worker takes it and refreshes two phones; queueing the next batch meets the broker down.
    with broker_down():
        assert refresh_lock_screens.run(refresh.pk, 2) == 2
    assert f"refresh {refresh.pk} stopped after contract {contracts[1].pk}" in caplog.text
    refresh.refresh_from_db()
    assert (refresh.cursor, refresh.done_at) == (contracts[1].pk, None)
    assert [newest(c.device_id).seq - seqs[c.device_id] for c in contracts] == [1, 1, 0, 0, 0]

    # The pickup leaves a refresh that moved a moment ago alone, and queues one that did not for five minutes.
    with django_capture_on_commit_callbacks(execute=True):
        assert lock_refreshes_resume() == []
    with django_capture_on_commit_callbacks(execute=True):
        assert lock_refreshes_resume(now=timezone.now() + RESUME_AFTER) == [refresh.pk]

    refresh.refresh_from_db()
    assert refresh.done_at is not None and refresh.cursor == contracts[-1].pk
    assert [newest(c.device_id).seq - seqs[c.device_id] for c in contracts] == [1, 1, 1, 1, 1]  # each once
    assert all(newest(c.device_id).payload["screen"]["hotline_numbers"] == [NEW_HOTLINE] for c in contracts)
    with django_capture_on_commit_callbacks(execute=True):
        assert lock_refreshes_resume(now=timezone.now() + 2 * RESUME_AFTER) == []  # done: never again
    entry = settings.CELERY_BEAT_SCHEDULE["payments.resume-lock-refreshes"]
    assert entry["task"] == "payments.resume_lock_refreshes" and entry["schedule"] <= 60


@pytest.mark.django_db
def test_a_new_change_while_a_refresh_runs_starts_it_again_from_the_first_phone(provider_a, admin_a, no_mqtt):
    contracts = locked_contracts(provider_a, 3)
    Organisation.objects.filter(pk=provider_a.pk).update(hotline_numbers=[NEW_HOTLINE])
    lock_screens_refresh(provider_ids=[provider_a.pk], changed=["hotline_numbers"], actor=admin_a)
    refresh = LockRefresh.objects.get(provider=provider_a, done_at__isnull=True)
    assert lock_refresh_batch(refresh_id=refresh.pk, batch_size=2).next_after == contracts[1].pk

    # The wording changes too: the phones already refreshed must show it as well.
    texts = DEFAULT_TEXTS["en"] | {"title": "Locked by {provider}"}
    language = newest(contracts[0].device_id).payload["screen"]["language"]
    lock_screen_text_save(provider=provider_a, language=language, actor=admin_a, **texts)
    assert LockRefresh.objects.get(done_at__isnull=True).pk == refresh.pk  # one open refresh, from the start
    refresh.refresh_from_db()
    assert refresh.cursor == 0
    while lock_refresh_batch(refresh_id=refresh.pk, batch_size=2).next_after is not None:
        pass
    assert {newest(c.device_id).payload["screen"]["title"] for c in contracts} == {"Locked by Dialog Finance"}
    assert LockRefresh.objects.get(pk=refresh.pk).done_at is not None
