"""Statement imports on their own queue, with time limits, surviving a broker outage.

Real services: PostgreSQL, a private redis-server as the broker (stopped and started by the
test) and real Celery worker processes started as the README runs them, one on the
``celery`` queue (device commands) and one on the ``imports`` queue. The provider's
device-management gateway is the only stand-in (a third party): tests/test_delivery.py's
local HTTP server.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.files.uploadedfile import SimpleUploadedFile

from devices import delivery
from devices.models import DeviceCommand, DeviceGateway
from payments.models import LockPolicy, Payment, StatementImport, StatementLine
from payments.statements.imports import CREDIT_BATCH, statement_import_create
from payments.tasks import import_statement
from portal.models import AuditEvent
from tests import factories, test_delivery
from tests.conftest import signed_in
from tests.local_services import wait_for
from tests.test_delivery import GATEWAY_SECRET, producer_broker
from tests.test_statement_import import HEADER, csv_line

# The delivery stories' fixtures: a private redis-server, real worker processes, the gateway.
start_worker = test_delivery.start_worker
gateway_server = test_delivery.gateway_server


@pytest.fixture
def berlin(db):
    provider = factories.ProviderFactory(
        name="Berlin Phones", slug="berlin", country="DE", currency="EUR", time_zone="Europe/Berlin", languages=["en"]
    )
    LockPolicy.objects.create(provider=provider, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    return provider


def big_statement(lines: int, day: dt.date) -> bytes:
    """A real 1822direkt export with ``lines`` credits that quote no contract (each becomes an unmatched payment)."""
    rows = [csv_line(f"{10 + i % 90},{i % 100:02d}", f"Danke {i}", f"E2E-BIG-{i}", day) for i in range(lines)]
    return "\n".join([HEADER, *rows]).encode("utf-8")


@pytest.fixture
def worker(start_worker, settings):
    """Start a worker that reads the uploads where this test stores them (MEDIA_ROOT is per test)."""
    return lambda **options: start_worker(FINLOCK_VAR_DIR=settings.MEDIA_ROOT.parent, **options)


def status_of(record: StatementImport) -> str:
    return StatementImport.objects.values_list("status", flat=True).get(pk=record.pk)


# --- the configuration: every task bounded in time, imports on their own queue -------------------


def test_every_task_has_a_soft_and_a_hard_time_limit():
    from config.celery import app

    app.loader.import_default_modules()  # every app's tasks module, as a worker loads them
    ours = [task for name, task in app.tasks.items() if not name.startswith("celery.")]
    assert {"payments.import_statement", "devices.deliver_command", "portal.deliver_webhook_event"} <= {
        task.name for task in ours
    }
    for task in app.tasks.values():
        soft, hard = task.soft_time_limit, task.time_limit
        assert soft and hard and soft < hard, f"{task.name}: soft {soft}, hard {hard}"
        # What a producer sends with the task (Celery puts the limits in the message).
        assert task._get_exec_options()["soft_time_limit"] == soft


def test_imports_have_their_own_limit_and_a_push_a_tighter_one(settings):
    from devices.tasks import deliver_command

    assert import_statement.soft_time_limit == settings.STATEMENT_IMPORT_TIME_LIMIT_SECONDS
    assert import_statement.time_limit == settings.STATEMENT_IMPORT_HARD_LIMIT_SECONDS
    assert deliver_command.soft_time_limit < settings.CELERY_TASK_SOFT_TIME_LIMIT


def test_statement_imports_go_to_their_own_queue_and_only_unlocks_to_another():
    from config.celery import app

    app.loader.import_default_modules()
    queues = {name: app.amqp.router.route({}, name)["queue"] for name in app.tasks if not name.startswith("celery.")}
    assert queues.pop("payments.import_statement").name == "imports"
    assert queues.pop("devices.deliver_unlock").name == "unlocks"  # tests/test_unlock_priority.py
    assert {queue.name for queue in queues.values()} == {"celery"}
    bindings = {
        (q.exchange.name, q.routing_key) for q in (app.amqp.queues[n] for n in ("imports", "celery", "unlocks"))
    }
    # Bound apart: a message for one queue is never copied into another.
    assert len(bindings) == 3


def test_the_periodic_job_that_requeues_imports_is_scheduled(settings):
    from config.celery import app

    app.loader.import_default_modules()
    jobs = {entry["task"]: entry for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "payments.requeue_imports" in jobs and "payments.requeue_imports" in app.tasks
    assert jobs["payments.requeue_imports"]["schedule"] <= 60


# --- finding 5: a slow import never holds up a device command ------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_slow_import_occupying_the_imports_worker_does_not_delay_a_device_command(
    berlin, private_redis, worker, gateway_server
):
    DeviceGateway.objects.create(provider=berlin, url=gateway_server.url, secret=GATEWAY_SECRET)
    device = factories.DeviceFactory(provider=berlin)
    # The workers as the README runs them, but unlocks and the rest on one: commands on one, imports on the other.
    commands_worker = worker(queues="unlocks,celery", MQTT_URL="")
    imports_worker = worker(queues="imports", MQTT_URL="")
    record = statement_import_create(
        provider=berlin, filename="year.csv", raw=big_statement(40_000, berlin.today()), actor=None
    )

    with producer_broker(private_redis.url):
        import_statement.delay(record.pk)
        assert wait_for(lambda: status_of(record) == "running", timeout=30), imports_worker.log()

        # An unlock is issued while the import is busy on its worker.
        command = factories.make_command(device, private_key=Ed25519PrivateKey.generate(), state="unlocked")
        issued = time.monotonic()
        assert delivery.commands_enqueue([command.pk]) == 1
        delivered = wait_for(
            lambda: DeviceCommand.objects.filter(pk=command.pk, delivered_at__isnull=False).exists(),
            timeout=60,
            interval=0.05,
        )
        took = time.monotonic() - issued
        still_importing = status_of(record) == "running"
        assert delivered, commands_worker.log()
        assert took < 3, f"the unlock waited {took:.1f} s behind the import"
        assert still_importing, "the import finished before the unlock was pushed: it was not slow enough to prove it"
        assert gateway_server.seqs() == [command.seq]
        # Each queue reached only its own worker.
        assert "payments.import_statement[" not in commands_worker.log()
        assert "devices.deliver_unlock[" not in imports_worker.log()
        assert "devices.deliver_command[" not in imports_worker.log()

        # And the import still ends, every line once.
        assert wait_for(lambda: status_of(record) != "running", timeout=300, interval=0.5), imports_worker.log()
    record.refresh_from_db()
    assert record.status == "done", record.error
    assert record.summary["credits"] == 40_000 == StatementLine.objects.filter(statement_import=record).count()


# --- finding 5: an import that reaches its soft time limit ends failed, consistent ----------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_an_import_that_reaches_its_time_limit_ends_failed_with_the_reason_and_whole_batches_only(
    berlin, private_redis, worker
):
    # prefork: the pool that enforces time limits (a worker started without --pool uses it).
    imports_worker = worker(queues="imports", pool="prefork", STATEMENT_IMPORT_TIME_LIMIT_SECONDS=2)
    record = statement_import_create(
        provider=berlin, filename="year.csv", raw=big_statement(30_000, berlin.today()), actor=None
    )

    with producer_broker(private_redis.url):
        # Celery sends the limits with the task, from the settings of the process that queues
        # it: here what a web process with STATEMENT_IMPORT_TIME_LIMIT_SECONDS=2 would send.
        import_statement.apply_async([record.pk], soft_time_limit=2, time_limit=62)
        assert wait_for(lambda: status_of(record) in ("done", "failed"), timeout=60, interval=0.25), (
            imports_worker.log()
        )

    record.refresh_from_db()
    assert record.status == "failed", record.summary
    assert "took longer than its time limit of 2 s (STATEMENT_IMPORT_TIME_LIMIT_SECONDS)" in record.error
    assert record.finished_at is not None and record.attempts == 1
    # Consistent: only whole batches were kept (the one in flight was rolled back), each line
    # stored is credited or says why not, and the summary and the message say how many.
    stored = StatementLine.objects.filter(statement_import=record)
    assert stored.count() % CREDIT_BATCH == 0
    assert record.summary["stored"] == stored.count()
    assert Payment.objects.filter(provider=berlin).count() == stored.filter(payment__isnull=False).count()
    assert all(line.payment_id or line.note for line in stored)
    kept = f"{stored.count()} entries read before it stopped were recorded" if stored else "Nothing was recorded"
    assert kept in record.error
    assert AuditEvent.objects.filter(action="statement.failed", object_id=str(record.pk)).count() == 1
    # The worker's own soft limit stopped it (not only the check between batches).
    assert "SoftTimeLimitExceeded" in imports_worker.log() or "Soft time limit" in imports_worker.log()


# --- finding 9: an upload while the broker is down is kept and imported once afterwards ----------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_statements_uploaded_while_the_broker_is_down_are_imported_once_when_it_is_back(
    berlin, private_redis, worker, client
):
    from rest_framework.test import APIClient

    from portal.services import api_key_create

    finance = factories.UserFactory(username="finance.berlin", organisation=berlin, role="finance")
    portal = signed_in(client, finance)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(provider=berlin, name='erp')[1]}")
    today = berlin.today()
    portal_file = "\n".join([HEADER, csv_line("25,00", "Danke", "E2E-PORTAL", today)]).encode()
    api_file = "\n".join([HEADER, csv_line("30,00", "Danke", "E2E-API", today)]).encode()
    imports_worker = worker(queues="imports")

    with producer_broker(private_redis.url):
        private_redis.stop()

        # The portal: stored, waiting, and the officer is told it is queued (no 500).
        page = portal.post("/contracts/statements/", {"file": SimpleUploadedFile("portal.csv", portal_file)})
        from_portal = StatementImport.objects.get(filename="portal.csv")
        assert page.status_code == 302 and page["Location"] == f"/contracts/statements/{from_portal.pk}/"
        shown = portal.get(page["Location"]).content.decode()
        assert "queued for import" in shown and "Queued for import" in shown

        # The API: 202 with the stored import, waiting.
        upload = {"file": SimpleUploadedFile("api.csv", api_file)}
        accepted = api.post("/api/v1/statements/", upload, format="multipart")
        assert accepted.status_code == 202, accepted.content
        assert accepted.json()["status"] == "pending"
        from_api = StatementImport.objects.get(pk=accepted.json()["id"])
        assert {from_portal.status, from_api.status} == {"pending"}
        assert from_portal.queued_at is None and from_api.queued_at is None  # nothing reached a broker

        # Redis comes back empty; the periodic job queues both (a run while the producer is
        # still reconnecting queues nothing and the next run tries again).
        private_redis.start()
        from payments.statements.imports import statement_imports_requeue

        assert wait_for(lambda: statement_imports_requeue() == 2, timeout=20, interval=1)
        assert wait_for(
            lambda: set(StatementImport.objects.values_list("status", flat=True)) == {"done"},
            timeout=60,
            interval=0.25,
        ), imports_worker.log()

        # Once: a later tick queues nothing, and a duplicate task is a no-op.
        assert statement_imports_requeue() == 0
        import_statement.delay(from_api.pk)
        assert wait_for(lambda: imports_worker.log().count("succeeded") >= 3, timeout=30), imports_worker.log()

    for record in (from_portal, from_api):
        record.refresh_from_db()
        assert record.attempts == 1 and record.summary["credits"] == 1
        assert AuditEvent.objects.filter(action="statement.import", object_id=str(record.pk)).count() == 1
    assert sorted(Payment.objects.filter(provider=berlin).values_list("external_id", flat=True)) == [
        "E2E-API",
        "E2E-PORTAL",
    ]
