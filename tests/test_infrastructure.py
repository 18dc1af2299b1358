"""With the real services configured, tasks run on a Celery worker over Redis."""

import pytest
from django.conf import settings


def test_without_a_broker_tasks_run_in_process(settings):
    if settings.CELERY_BROKER_URL:
        pytest.skip("a broker is configured in this run; the embedded default is covered on a bare machine")
    from config.celery import ping

    assert ping.delay().get() == "pong"


@pytest.mark.redis
def test_a_task_round_trips_through_a_real_worker_and_redis():
    from celery.contrib.testing.worker import start_worker

    from config.celery import app, ping

    assert settings.CELERY_BROKER_URL.startswith("redis://")
    with start_worker(app, queues=["celery"], perform_ping_check=False, pool="solo", loglevel="WARNING"):
        assert ping.apply_async(ignore_result=False).get(timeout=20) == "pong"
