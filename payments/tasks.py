"""Celery tasks of the money side: thin, idempotent, safe to retry.

Queues and time limits are set in one place, ``config/settings.py`` (``CELERY_TASK_ROUTES``,
``CELERY_TASK_ANNOTATIONS``): statement imports run on the ``imports`` queue, so a long
import never holds up a device command.
"""

from typing import Any

from celery import shared_task

from payments.ledger.services import payments_flag_unconfirmed
from payments.locks.services import lock_sweep as lock_sweep_run
from payments.statements.imports import statement_import_run, statement_imports_requeue


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
