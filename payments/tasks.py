"""Celery tasks of the money side: thin, idempotent, safe to retry."""

from celery import shared_task

from payments import services


@shared_task(name="payments.lock_sweep", ignore_result=True)
def lock_sweep() -> dict:
    """The periodic sweep. Idempotent: a second run right after the first changes nothing."""
    report = services.lock_sweep()
    return {"evaluated": report.evaluated, "changed": report.changed}


@shared_task(name="payments.flag_unconfirmed_payments", ignore_result=True, soft_time_limit=240, time_limit=300)
def flag_unconfirmed_payments() -> int:
    """Flag to finance the receipts no channel confirmed in time (idempotent: flagged ones are left alone)."""
    return services.payments_flag_unconfirmed()


@shared_task(name="payments.import_statement", ignore_result=True)
def import_statement(import_id: int) -> dict:
    """Import one uploaded statement (idempotent: a started or finished import is left alone)."""
    from payments.imports import statement_import_run

    return statement_import_run(import_id=import_id).summary
