"""Unlocks never wait behind locks: a phone whose owner paid is given back even while a portfolio locks.

Stories: unlock, release and temporary-unlock commands are queued as ``devices.deliver_unlock``
on the ``unlocks`` queue, locks and reminders as ``devices.deliver_command`` on ``celery``,
whichever path queues them (a new command, the periodic redelivery, a staff retry); a worker
that consumes only ``unlocks`` delivers an unlock while hundreds of locks wait; and the
embedded in-process mode (no broker) runs both at once, as before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from kombu.simple import SimpleQueue

from devices import delivery
from devices.models import DeviceCommand
from devices.services.commands import StateChange, device_states_apply
from tests.factories import DeviceFactory, ProviderFactory
from tests.local_services import wait_for

UNLOCKS = ("unlocked", "temp_unlocked", "released")


@contextlib.contextmanager
def broker(url: str):
    """Queue to a real broker at ``url`` from this process (the test settings run tasks in-process)."""
    from config.celery import app

    def reset(*, close: bool) -> None:
        if close and app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None

    before = (app.conf.get("broker_write_url"), app.conf.task_always_eager)
    reset(close=False)
    app.conf["broker_write_url"] = url
    app.conf.task_always_eager = False
    try:
        yield app
    finally:
        # kombu keeps pools in a global registry by URL: a closed pool would be handed out again
        # to the next test on the same URL ("Acquire on closed pool"). Only a private Redis's is closed.
        reset(close=not url.startswith("memory://"))
        app.conf["broker_write_url"], app.conf.task_always_eager = before


def drain(app, queue: str) -> list[tuple[str, int]]:
    """(task name, command id) of every message waiting on ``queue``, taken off it."""
    taken = []
    with app.connection_for_write() as conn, SimpleQueue(conn, queue, no_ack=True) as waiting:
        while True:
            try:
                message = waiting.get(block=False)
            except waiting.Empty:
                return taken
            args, _kwargs, _embed = message.payload
            if message.headers["task"].startswith("devices.deliver_"):
                # Only deliveries: other work may share the queue (an audit checkpoint falls due
                # after every AUDIT_CHECKPOINT_EVENTS events, whichever test writes them).
                taken.append((message.headers["task"], args[0]))


def issue(states: list[str]) -> list[DeviceCommand]:
    """One new device per state, and its command issued as the lock API issues it."""
    provider = ProviderFactory()
    changes = []
    for state in states:
        device = DeviceFactory(provider=provider)
        expires = timezone.now() + dt.timedelta(hours=4) if state == "temp_unlocked" else None
        changes.append(StateChange(device_id=device.pk, state=state, reason=state, expires_at=expires))
    return device_states_apply(changes=changes)


def test_the_three_queues_and_their_routes_are_configured():
    from config.celery import app

    def queue_of(task: str) -> str:
        return app.amqp.router.route({}, task, args=(1,))["queue"].name

    assert {q.name for q in app.amqp.queues.values()} == {"celery", "imports", "unlocks"}
    assert queue_of(delivery.UNLOCK_TASK) == "unlocks"
    assert queue_of("devices.deliver_command") == "celery"
    assert queue_of("payments.refresh_lock_screens") == "celery"  # a refresh never goes ahead of an unlock
    assert queue_of("payments.import_statement") == "imports"
    assert delivery.UNLOCK_TASK in app.tasks or app.autodiscover_tasks(force=True) is None


@pytest.mark.django_db
def test_unlocks_releases_and_temporary_unlocks_go_to_the_unlocks_queue_and_locks_to_the_other(
    django_capture_on_commit_callbacks,
):
    with broker("memory://") as app:
        for queue in ("celery", "unlocks"):
            drain(app, queue)
        with django_capture_on_commit_callbacks(execute=True):
            commands = issue(["locked", "unlocked", "reminder", "temp_unlocked", "locked", "released"])
        by_state = {}
        for command in commands:
            by_state.setdefault(command.state, []).append(command.pk)

        unlocks, others = drain(app, "unlocks"), drain(app, "celery")
    assert sorted(unlocks) == sorted((delivery.UNLOCK_TASK, pk) for s in UNLOCKS for pk in by_state[s])
    assert sorted(others) == sorted(
        ("devices.deliver_command", pk) for s in ("locked", "reminder") for pk in by_state[s]
    )


@pytest.mark.django_db
def test_the_periodic_redelivery_and_a_staff_retry_route_by_state_too(settings):
    settings.MQTT_URL = None
    commands = issue(["locked", "unlocked"])  # not queued: no commit in this test's transaction
    lock, unlock = sorted(commands, key=lambda c: c.state)
    with broker("memory://") as app:
        for queue in ("celery", "unlocks"):
            drain(app, queue)
        assert delivery.commands_redeliver_pending() == 2
        assert drain(app, "unlocks") == [(delivery.UNLOCK_TASK, unlock.pk)]
        assert drain(app, "celery") == [("devices.deliver_command", lock.pk)]

        DeviceCommand.objects.filter(pk=unlock.pk).update(dead_at=timezone.now())
        unlock.refresh_from_db()
        delivery.COMMANDS.enqueue([unlock.pk])  # what command_retry queues once its change commits
        assert drain(app, "unlocks") == [(delivery.UNLOCK_TASK, unlock.pk)]


@pytest.mark.django_db
def test_in_process_mode_runs_an_unlock_at_once(settings, django_capture_on_commit_callbacks):
    """No broker (the embedded default): the unlock task runs at once; with no channel it waits for check-in."""
    from config.celery import app

    settings.MQTT_URL = None
    eager, app.conf.task_always_eager = app.conf.task_always_eager, True  # CI sets a broker: be the bare machine
    try:
        with django_capture_on_commit_callbacks(execute=True):
            (command,) = issue(["unlocked"])
    finally:
        app.conf.task_always_eager = eager
    command.refresh_from_db()
    assert command.last_error == delivery.NO_CHANNEL_NOTE and command.next_attempt_at is not None


def _database_url() -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="") + (":" + quote(db["PASSWORD"], safe="") if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
def test_an_unlock_is_delivered_by_its_own_worker_while_hundreds_of_locks_wait(private_redis, tmp_path):
    log = tmp_path / "worker.log"
    env = os.environ | {"CELERY_BROKER_URL": private_redis.url, "DATABASE_URL": _database_url()}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "unlocks", "--pool", "solo"]
        + [
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"unl-{uuid.uuid4().hex[:6]}@%h",
        ],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
    )
    topics = []
    try:
        assert wait_for(lambda: " ready." in log.read_text() or worker.poll() is not None, timeout=60), log.read_text()
        with broker(private_redis.url):
            locks = issue(["locked"] * 300)  # a lock window opens: committed, queued on "celery"
            (unlock,) = issue(["unlocked"])  # then someone pays
        topics = [c.device.uid for c in [*locks, unlock]]
        assert wait_for(
            lambda: DeviceCommand.objects.filter(pk=unlock.pk, delivered_at__isnull=False).exists(), timeout=30
        ), f"the unlock was not delivered; worker log:\n{log.read_text()}"
        # No worker consumes "celery" here: every lock is still waiting, the unlock did not queue behind them.
        assert not DeviceCommand.objects.filter(pk__in=[c.pk for c in locks], delivered_at__isnull=False).exists()
        import redis

        waiting = redis.Redis.from_url(private_redis.url).lrange("celery", 0, -1)
        tasks = [json.loads(raw)["headers"]["task"] for raw in waiting]
        assert tasks.count("devices.deliver_command") == 300 and "devices.deliver_unlock" not in tasks
    finally:
        worker.terminate()
        worker.wait(15)
        from devices.protocol import topic_for

        for uid in topics[-1:]:  # only the unlock was published (retained)
            delivery.mqtt_publish(url=settings.MQTT_URL, topic=topic_for(str(uid)), payload=b"", timeout=5)
