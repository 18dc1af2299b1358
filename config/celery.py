"""The Celery application. Beat schedules are defined in one place: ``CELERY_BEAT_SCHEDULE`` in settings."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("finlock")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="portal.ping")
def ping() -> str:
    """Liveness probe used by health checks and the infrastructure test."""
    return "pong"
