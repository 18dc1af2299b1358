"""Celery tasks of the money side: thin, idempotent, safe to retry."""

from celery import shared_task

from payments import services


@shared_task(name="payments.lock_sweep", ignore_result=True)
def lock_sweep() -> dict:
    """The periodic sweep. Idempotent: a second run right after the first changes nothing."""
    report = services.lock_sweep()
    return {"evaluated": report.evaluated, "changed": report.changed}


@shared_task(name="payments.import_statement", ignore_result=True)
def import_statement(import_id: int) -> dict:
    """Import one uploaded statement (idempotent: a started or finished import is left alone)."""
    from payments.imports import statement_import_run

    return statement_import_run(import_id=import_id).summary
