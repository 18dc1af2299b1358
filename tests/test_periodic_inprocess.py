"""With no broker (the embedded default), the demo still runs its periodic jobs in-process.

A newcomer's `./dev demo` has no Celery beat; without these jobs no phone would ever be
locked or unlocked by the sweep while the demo serves. The runner is driven by a fake
monotonic clock here, so nothing waits.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from devices.models import DeviceCommand
from portal.models import AuditEvent
from portal.periodic import PeriodicRunner
from tests.factories import make_contract

pytestmark = pytest.mark.django_db(transaction=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_beat_entry_runs_once_its_interval_has_passed_and_the_sweep_acts(provider_a):
    # The runner runs each job right here (Task.apply), broker or not; the demo starts it only
    # when there is no broker (CELERY_TASK_ALWAYS_EAGER), which this test does not need.
    contract = make_contract(provider_a)  # installments from 15 Jan 2026, long overdue
    assert contract.lock_state == "unlocked"
    clock = Clock()
    runner = PeriodicRunner(settings.CELERY_BEAT_SCHEDULE, clock=clock)

    assert runner.run_due() == []  # nothing runs before its first interval

    clock.now += settings.LOCK_SWEEP_SECONDS
    ran = runner.run_due()
    assert "lock-sweep" in ran
    contract.refresh_from_db()
    # Locked inside the lock window, else reminded: either way the sweep decided it.
    assert contract.lock_state in {"locked", "reminder"}
    command = DeviceCommand.objects.get(device_id=contract.device_id)
    assert command.state == contract.lock_state  # and the phone has its signed command
    assert AuditEvent.objects.filter(action="device.state", object_id=str(contract.device_id)).count() == 1

    clock.now += max(float(entry["schedule"]) for entry in settings.CELERY_BEAT_SCHEDULE.values())
    assert set(runner.run_due()) == set(settings.CELERY_BEAT_SCHEDULE)  # every job, once
    assert runner.run_due() == []  # and not again until its next interval


def test_a_failing_job_does_not_stop_the_others(provider_a, caplog):
    clock = Clock()
    schedule = {
        "broken": {"task": "no.such_task", "schedule": 10.0},
        "lock-sweep": {"task": "payments.lock_sweep", "schedule": 10.0},
    }
    runner = PeriodicRunner(schedule, clock=clock)
    clock.now += 10
    assert sorted(runner.run_due()) == ["broken", "lock-sweep"]
    assert "periodic job broken (no.such_task) failed" in caplog.text
