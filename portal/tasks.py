"""Celery tasks of the portal: thin wrappers, the work is in ``portal.webhooks`` and ``portal.audit_checkpoints``.

Periodic jobs are scheduled in one place only: ``CELERY_BEAT_SCHEDULE`` in
``config/settings.py``.
"""

from __future__ import annotations

from celery import shared_task
from celery.app.task import Task

from portal import webhooks
from portal.audit_checkpoints import audit_checkpoint_write
from portal.outbox import retry_later


@shared_task(bind=True, name="portal.deliver_webhook_event", max_retries=None, ignore_result=True)
def deliver_webhook_event(self: Task, event_id: int) -> str:
    """POST one provider event (``portal.webhooks.webhook_event_deliver``); on failure retry after the backoff.

    The attempt limit is the row's (``portal.outbox``), hence ``max_retries=None``.
    """
    outcome = webhooks.webhook_event_deliver(event_id=event_id)
    retry_later(self, outcome, log_prefix="webhooks", what="event", row_id=event_id)
    return outcome.status


@shared_task(name="portal.redeliver_webhook_events", ignore_result=True)
def redeliver_webhook_events() -> int:
    """Re-queue undelivered provider events whose next attempt is due (every 30 s from beat)."""
    return webhooks.webhook_events_redeliver_pending()


@shared_task(name="portal.audit_checkpoint", ignore_result=True, soft_time_limit=60, time_limit=90)
def audit_checkpoint() -> int | None:
    """Append a signed checkpoint of the audit chain head outside the database (every
    ``AUDIT_CHECKPOINT_MINUTES`` from beat, and after every ``AUDIT_CHECKPOINT_EVENTS`` events).

    Idempotent: nothing is written when the newest checkpoint already covers the head.
    """
    checkpoint = audit_checkpoint_write()
    return checkpoint.event_id if checkpoint else None
