"""Celery tasks of the device registry: thin wrappers, the work is in ``devices.delivery``.

Periodic jobs are scheduled in one place only: ``CELERY_BEAT_SCHEDULE`` in
``config/settings.py``.
"""

from __future__ import annotations

from celery import shared_task
from celery.app.task import Task

from devices import delivery, mqtt_accounts
from devices.services.checkin import device_checkins_flush
from devices.services.pruning import commands_prune
from portal.outbox import retry_later


@shared_task(bind=True, name="devices.deliver_command", max_retries=None, ignore_result=True)
def deliver_command(self: Task, command_id: int) -> str:
    """Push one command (``devices.delivery.command_deliver``); on a transient failure retry after the backoff.

    The attempt limit is the row's (``portal.outbox``), hence ``max_retries=None``.
    """
    outcome = delivery.command_deliver(command_id=command_id)
    retry_later(self, outcome, log_prefix="deliver", what="command", row_id=command_id)
    return outcome.status


@shared_task(bind=True, name=delivery.UNLOCK_TASK, max_retries=None, ignore_result=True)
def deliver_unlock(self: Task, command_id: int) -> str:
    """``deliver_command`` for an unlock, a release or a temporary unlock, on the ``unlocks`` queue.

    A task of its own so that routing (``CELERY_TASK_ROUTES``) puts it, and its retries, on a
    queue no lock backlog stands in (``devices.delivery``, "Unlocks never wait behind locks").
    """
    outcome = delivery.command_deliver(command_id=command_id)
    retry_later(self, outcome, log_prefix="deliver", what="command", row_id=command_id)
    return outcome.status


@shared_task(name="devices.redeliver_pending", ignore_result=True)
def redeliver_pending() -> int:
    """Re-queue undelivered commands whose next attempt is due (every 30 s from beat)."""
    return delivery.commands_redeliver_pending()


@shared_task(name="devices.flush_checkins", ignore_result=True)
def flush_checkins() -> int:
    """Write buffered check-in times to the devices (every ``CHECKIN_FLUSH_SECONDS`` from beat)."""
    return device_checkins_flush()


@shared_task(name="devices.sync_mqtt_account", ignore_result=True, soft_time_limit=60, time_limit=90)
def sync_mqtt_account(device_id: int) -> int:
    """Give the broker one phone's current MQTT password (queued after its enrolment commits)."""
    return mqtt_accounts.mqtt_accounts_sync(device_ids=[device_id]).synced


@shared_task(name="devices.sync_mqtt_accounts", ignore_result=True, soft_time_limit=120, time_limit=150)
def sync_mqtt_accounts() -> int:
    """Every phone whose broker account is behind its enrolment (every 60 s from beat)."""
    return mqtt_accounts.mqtt_accounts_sync().synced


@shared_task(name="devices.prune_commands", ignore_result=True, soft_time_limit=660, time_limit=720)
def prune_commands() -> int:
    """Delete superseded command rows past their retention (daily from beat; devices.services.pruning)."""
    return commands_prune()
