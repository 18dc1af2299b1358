"""Celery tasks of the portal: thin wrappers, the work is in ``portal.webhooks`` and ``portal.audit``.

Periodic jobs are scheduled in one place only: ``CELERY_BEAT_SCHEDULE`` in
``config/settings.py``.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import Retry

from portal import audit, webhooks

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="portal.deliver_webhook_event", max_retries=None, ignore_result=True)
def deliver_webhook_event(self, event_id: int) -> str:
    """POST one provider event (``portal.webhooks.webhook_event_deliver``); on failure retry after the backoff.

    The retry is an optimisation for latency: the row already holds ``next_attempt_at``,
    so if the retry cannot be queued (broker down) the periodic redelivery picks the event
    up anyway. The attempt limit is the row's, hence ``max_retries=None``.
    """
    outcome = webhooks.webhook_event_deliver(event_id=event_id)
    if outcome.status == "retry" and not self.request.is_eager:
        # In eager mode (no broker) Celery would re-run the task at once, ignoring the
        # countdown; the event simply waits for its next_attempt_at instead.
        try:
            self.retry(countdown=outcome.retry_in, throw=True)
        except Retry:
            raise
        except Exception as exc:  # broker gone between the POST and the retry: the row remembers
            logger.warning("webhooks: could not schedule the retry of event %s (%s)", event_id, exc)
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
    checkpoint = audit.audit_checkpoint_write()
    return checkpoint.event_id if checkpoint else None
