"""Celery tasks of the money side: thin, idempotent, safe to retry."""

from celery import shared_task

from payments import services


@shared_task(name="payments.lock_sweep", ignore_result=True)
def lock_sweep() -> dict:
    """The periodic sweep. Idempotent: a second run right after the first changes nothing."""
    report = services.lock_sweep()
    return {"evaluated": report.evaluated, "changed": report.changed}
