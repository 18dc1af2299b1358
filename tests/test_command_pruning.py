"""Old command rows are pruned, and nothing a phone, an agent or an auditor needs goes with them.

Stories (devices/services/pruning.py, daily from beat as ``devices.prune_commands``):
* a command issued more than COMMAND_RETENTION_DAYS ago that a newer acknowledged command
  superseded is deleted with its delivery attempts; one audit event per run says how many;
* a recent command, a phone's newest command and any command of a phone that never
  acknowledged a newer one (a command still on its way) are kept;
* the work is set-based: the queries depend on the number of batches, not of rows; a command
  a delivery worker holds is passed over (PostgreSQL), never deleted under it;
* the device page and the phone's check-in work as before; a delivery task for a pruned
  command finds it gone and does nothing;
* the audit trail still holds every change of state of the pruned commands.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from config.celery import app as celery_app
from devices import delivery
from devices.models import Channel, DeliveryAttempt, Device, DeviceCommand
from devices.protocol import payload_of
from devices.services.checkin import device_ack, device_checkin
from devices.services.commands import StateChange, device_states_apply
from devices.services.pruning import commands_prune
from portal.models import AuditEvent
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db

NOW = timezone.now()
LONG_AGO = NOW - dt.timedelta(days=45)


def issue(device, state, *, issued_at=None, attempts=0) -> DeviceCommand:
    """A command issued through the service, back-dated to ``issued_at``, with ``attempts`` failed pushes."""
    (command,) = device_states_apply(
        changes=[StateChange(device_id=device.pk, state=state, reason=f"{state} story", screen={"title": state})]
    )
    if issued_at is not None:
        DeviceCommand.objects.filter(pk=command.pk).update(issued_at=issued_at)
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(command=command, channel=Channel.MQTT, ok=False, error="broker down") for _ in range(attempts)
    )
    return command


def seqs(device) -> list[int]:
    return sorted(DeviceCommand.objects.filter(device=device).values_list("seq", flat=True))


def test_superseded_acknowledged_commands_past_retention_go_with_their_delivery_attempts(provider_a):
    phone = DeviceFactory(provider=provider_a)
    issue(phone, "reminder", issued_at=LONG_AGO, attempts=2)
    issue(phone, "locked", issued_at=LONG_AGO, attempts=1)
    issue(phone, "unlocked", issued_at=LONG_AGO)
    device_ack(device=phone, seq=3, state="unlocked")
    newest = issue(phone, "reminder", issued_at=LONG_AGO, attempts=1)  # not acknowledged: on its way

    assert commands_prune(now=NOW) == 2

    assert seqs(phone) == [3, 4]
    assert DeliveryAttempt.objects.filter(command__device=phone).count() == 1
    assert DeliveryAttempt.objects.get().command_id == newest.pk
    event = AuditEvent.objects.get(action="device.commands_prune")
    assert event.after["commands"] == 2 and event.after["delivery_attempts"] == 3
    assert event.after["retention_days"] == settings.COMMAND_RETENTION_DAYS and event.after["complete"] is True
    # The auditor's record of the pruned commands stays: every change of state, with its seq.
    issued = AuditEvent.objects.filter(action="device.state", object_id=str(phone.pk)).order_by("id")
    assert [e.after["seq"] for e in issued] == [1, 2, 3, 4]


def test_recent_commands_stay_though_superseded(provider_a):
    phone = DeviceFactory(provider=provider_a)
    issue(phone, "reminder", issued_at=NOW - dt.timedelta(days=settings.COMMAND_RETENTION_DAYS - 1))
    issue(phone, "locked")
    device_ack(device=phone, seq=2, state="locked")

    assert commands_prune(now=NOW) == 0
    assert seqs(phone) == [1, 2]
    assert AuditEvent.objects.get(action="device.commands_prune").after["commands"] == 0


def test_a_phone_that_never_acknowledged_keeps_every_command(provider_a):
    offline = DeviceFactory(provider=provider_a)
    for state in ("reminder", "locked", "unlocked"):
        issue(offline, state, issued_at=LONG_AGO, attempts=1)

    assert commands_prune(now=NOW) == 0
    assert seqs(offline) == [1, 2, 3]
    assert DeliveryAttempt.objects.count() == 3


def test_the_newest_command_stays_and_the_phone_is_answered_it_without_a_new_issue(provider_a):
    phone = DeviceFactory(provider=provider_a)
    for state in ("reminder", "locked", "unlocked"):
        issue(phone, state, issued_at=LONG_AGO)
    device_ack(device=phone, seq=3, state="unlocked")

    assert commands_prune(now=NOW) == 2
    assert seqs(phone) == [3]

    phone.refresh_from_db()
    envelope = device_checkin(device=phone, state="unlocked", last_seq=3)
    assert payload_of(envelope)["seq"] == 3
    assert seqs(phone) == [3]  # answered the kept command, nothing issued anew
    assert commands_prune(now=NOW) == 0  # and a second run finds nothing


def test_a_delivery_task_for_a_pruned_command_finds_it_gone(provider_a):
    phone = DeviceFactory(provider=provider_a)
    old = issue(phone, "locked", issued_at=LONG_AGO)
    issue(phone, "unlocked", issued_at=LONG_AGO)
    device_ack(device=phone, seq=2, state="unlocked")
    commands_prune(now=NOW)

    assert delivery.command_deliver(command_id=old.pk).status == "missing"


def _old_history(devices: int, commands_each: int) -> None:
    """``devices`` phones, each with ``commands_each`` old commands acknowledged up to the newest."""
    phones = DeviceFactory.create_batch(devices, provider=Device.objects.first().provider)
    for _ in range(commands_each):
        device_states_apply(changes=[StateChange(device_id=p.pk, state="locked") for p in phones])
    DeviceCommand.objects.update(issued_at=LONG_AGO)
    Device.objects.update(reported_seq=commands_each, reported_state="locked")


def test_pruning_is_set_based_its_queries_count_batches_not_rows(
    provider_a, django_assert_num_queries, django_assert_max_num_queries
):
    DeviceFactory(provider=provider_a)  # a phone with nothing to prune
    _old_history(devices=3, commands_each=4)  # 9 prunable: seq 1-3 of each phone
    with django_assert_max_num_queries(3 * 5 + 8) as few:
        # 9 rows in batches of 4: two full batches and one of 1, each a savepoint, a locking SELECT
        # of ids, two DELETEs and the release (no fourth: the last batch was short); then the audit event.
        assert commands_prune(now=NOW, batch=4) == 9
    DeviceCommand.objects.all().delete()

    _old_history(devices=30, commands_each=4)  # 90 prunable, ten times as many rows
    with django_assert_num_queries(len(few.captured_queries)):
        assert commands_prune(now=NOW, batch=40) == 90
    assert DeviceCommand.objects.count() == 30  # the newest of each phone


def test_the_device_page_lists_what_is_left(provider_a, admin_a, as_user):
    phone = DeviceFactory(provider=provider_a)
    for state in ("reminder", "locked", "unlocked"):
        issue(phone, state, issued_at=LONG_AGO, attempts=1)
    device_ack(device=phone, seq=2, state="locked")
    commands_prune(now=NOW)

    response = as_user(admin_a).get(reverse("devices:detail", args=[phone.pk]))
    assert response.status_code == 200
    assert [c.seq for c in response.context["commands"]] == [3, 2]
    assert [c.status for c in response.context["commands"]] == ["pending", "acknowledged"]


def test_beat_runs_the_prune_daily_through_a_registered_task():
    entry = settings.CELERY_BEAT_SCHEDULE["devices.prune-commands"]
    assert entry["task"] == "devices.prune_commands" and entry["schedule"] == 86_400.0
    celery_app.loader.import_default_modules()
    assert "devices.prune_commands" in celery_app.tasks


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_command_a_delivery_worker_holds_is_passed_over_and_pruned_by_the_next_run(provider_a):
    phone = DeviceFactory(provider=provider_a)
    held, free = issue(phone, "reminder", issued_at=LONG_AGO), issue(phone, "locked", issued_at=LONG_AGO)
    issue(phone, "unlocked", issued_at=LONG_AGO)
    device_ack(device=phone, seq=3, state="unlocked")
    holding, release = threading.Event(), threading.Event()

    def delivery_worker():  # holds the row as portal.outbox's claim does during a push
        try:
            with transaction.atomic():
                DeviceCommand.objects.select_for_update().get(pk=held.pk)
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=delivery_worker)
    thread.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        assert commands_prune(now=NOW) == 1
        assert time.monotonic() - started < 2  # passed over, not waited for
        assert not DeviceCommand.objects.filter(pk=free.pk).exists()
        assert DeviceCommand.objects.filter(pk=held.pk).exists()
    finally:
        release.set()
        thread.join()
    assert commands_prune(now=NOW) == 1
    assert seqs(phone) == [3]
