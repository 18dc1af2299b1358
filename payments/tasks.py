"""Celery tasks of the money side: thin, idempotent, safe to retry.

Queues and time limits are set in one place, ``config/settings.py`` (``CELERY_TASK_ROUTES``,
``CELERY_TASK_ANNOTATIONS``): statement imports run on the ``imports`` queue, so a long
import never holds up a device command.
"""

import logging
from typing import Any

from celery import shared_task
from celery.app.task import Task

from payments.ledger.services import payments_flag_unconfirmed
from payments.locks.refresh import (
    REFRESH_BATCH,
    RefreshBatch,
    lock_refresh_batch,
    lock_refreshes_resume,
    lock_screens_refresh_after_change,
)
from payments.locks.services import lock_sweep as lock_sweep_run
from payments.statements.imports import statement_import_run, statement_imports_requeue
from portal.outbound import BROKER_ERRORS

log = logging.getLogger(__name__)


@shared_task(name="payments.lock_sweep", ignore_result=True)
def lock_sweep() -> dict[str, Any]:
    """The periodic sweep. Idempotent: a second run right after the first changes nothing."""
    report = lock_sweep_run()
    return {"evaluated": report.evaluated, "changed": report.changed}


@shared_task(name="payments.flag_unconfirmed_payments", ignore_result=True, soft_time_limit=240, time_limit=300)
def flag_unconfirmed_payments() -> int:
    """Flag to finance the receipts no channel confirmed in time (idempotent: flagged ones are left alone)."""
    return payments_flag_unconfirmed()


@shared_task(name="payments.import_statement", ignore_result=True)
def import_statement(import_id: int) -> dict[str, Any]:
    """Import one uploaded statement to done or failed with the reason; a started or finished one is left alone."""

    return statement_import_run(import_id=import_id).summary


@shared_task(name="payments.requeue_imports", ignore_result=True)
def requeue_imports() -> int:
    """Queue again the imports that wait or whose run was lost (every 60 s from beat)."""

    return statement_imports_requeue()


@shared_task(bind=True, name="payments.refresh_lock_screens", ignore_result=True)
def refresh_lock_screens(self: Task, refresh_id: int, batch_size: int = REFRESH_BATCH) -> int:
    """One batch of a refresh (a ``LockRefresh`` row, ``payments.locks.refresh``), then the next one queued.

    Re-queued rather than looped, so locks, reminders and webhooks on the same queue interleave
    with a refresh of 100,000 phones (and unlocks have a queue of their own). In-process mode
    (no broker) does every batch here. Retry-safe: the cursor is stored with each batch, and a
    batch run again skips phones already refreshed.
    """
    refreshed = 0
    while True:
        batch: RefreshBatch = lock_refresh_batch(refresh_id=refresh_id, batch_size=batch_size)
        refreshed += batch.refreshed
        if batch.next_after is None:
            return refreshed
        if not self.request.is_eager:
            try:
                self.apply_async(args=(refresh_id, batch_size))
            except BROKER_ERRORS as exc:
                # Nothing is lost: the periodic pickup queues it again from its stored cursor.
                log.warning("refresh %s stopped after contract %s: %s", refresh_id, batch.next_after, exc)
            return refreshed


@shared_task(name="payments.resume_lock_refreshes", ignore_result=True)
def resume_lock_refreshes() -> int:
    """Queue again the refreshes whose task was lost (every 60 s from beat); how many."""
    return len(lock_refreshes_resume())


@shared_task(name="payments.refresh_lock_screens_after_change", ignore_result=True)
def refresh_lock_screens_after_change(event_id: int) -> int | None:
    """Queued by the Django admin after an organisation change (its audit event's id): refresh the screens."""
    return lock_screens_refresh_after_change(event_id=event_id)
