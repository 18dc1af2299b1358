"""Stories of a lock command travelling from the outbox to the phone's channels.

Real services throughout: Mosquitto for MQTT, PostgreSQL for the locks and the worker,
a private redis-server and a real Celery worker process for the outage story. Only the
provider's device-management gateway is a stand-in, since it is a third party: a local
``http.server`` on a free port that answers as scripted and records what it received.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.apps import apps as django_apps
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from devices import delivery
from devices.keys import public_key_b64
from devices.models import DeliveryAttempt, DeviceCommand, DeviceGateway
from devices.protocol import check_command, open_envelope, payload_of, topic_for
from portal.models import AuditEvent
from portal.outbound import standard_webhook_headers
from tests import factories
from tests.conftest import signed_in
from tests.local_services import wait_for
from tests.test_provider_webhooks import assert_as_documented

# A Standard Webhooks secret, as the admin's gateway form generates one (whsec_ + base64 of 32 bytes).
GATEWAY_SECRET = "whsec_" + base64.b64encode(b"gateway-shared-secret-for-tests!").decode()


# --- the provider's gateway (a third party, so a local stand-in) -----------------


class FakeGateway:
    """An HTTP server on a free local port; answers each POST with the next scripted status."""

    def __init__(self):
        self.requests: list[dict] = []
        self.statuses = [200]
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                gateway.requests.append({"path": self.path, "headers": headers, "body": body})
                status = gateway.statuses.pop(0) if len(gateway.statuses) > 1 else gateway.statuses[0]
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"accepted" if status < 300 else b"gateway overloaded")

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/finlock/commands"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *statuses: int) -> None:
        """Answer the next POSTs with these statuses, the last one for ever after."""
        self.statuses = list(statuses)

    def seqs(self) -> list[int]:
        return [payload_of(json.loads(r["body"]))["seq"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway_server(settings):
    # The stand-in listens on plain http on 127.0.0.1, which finlock allows only with DEBUG on
    # (pytest-django turns DEBUG off; production requires https to a public address).
    settings.DEBUG = True
    server = FakeGateway()
    yield server
    server.close()


@pytest.fixture
def signing_key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def device_a(provider_a):
    return factories.DeviceFactory(provider=provider_a)


@pytest.fixture
def with_gateway(provider_a, gateway_server):
    return DeviceGateway.objects.create(provider=provider_a, url=gateway_server.url, secret=GATEWAY_SECRET)


@pytest.fixture
def no_mqtt(settings):
    """Webhook-only stories: the same whether or not this run has Mosquitto."""
    settings.MQTT_URL = None


@pytest.fixture
def celery_eager():
    """Run queued tasks in-process, as the embedded (no broker) default does.

    Needed where a story queues work while the run has a real broker but no worker:
    the task would otherwise wait in Redis for a worker that never comes.
    """
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def make_due(command: DeviceCommand) -> None:
    """Let the backoff pass (what waiting would do) so the next round is due now."""
    DeviceCommand.objects.filter(pk=command.pk).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))


# --- MQTT --------------------------------------------------------------------------


class Subscriber:
    """A phone-like MQTT client: subscribes to one topic (QoS 1) and keeps what arrives."""

    def __init__(self, topic: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.messages: list = []
        self._subscribed = threading.Event()
        parsed = urlparse(settings.MQTT_URL)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"finlock-test-{uuid.uuid4().hex[:10]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.append(msg)
        self.client.connect(parsed.hostname, parsed.port or 1883, 30)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the MQTT broker did not confirm the subscription"

    def envelopes(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.messages if m.payload]

    def seqs(self) -> list[int]:
        return [payload_of(e)["seq"] for e in self.envelopes()]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscribed(topic: str):
    subscriber = Subscriber(topic)
    try:
        yield subscriber
    finally:
        subscriber.close()


def clear_retained(topic: str) -> None:
    """An empty retained message deletes the broker's retained message for the topic."""
    delivery.mqtt_publish(url=settings.MQTT_URL, topic=topic, payload=b"", timeout=5)


def retained_on(topic: str) -> list[dict]:
    """What a phone connecting now receives on its topic."""
    with subscribed(topic) as late:
        wait_for(lambda: late.messages, timeout=2)
        time.sleep(0.3)  # anything beyond the single retained message would show up now
        assert all(m.retain for m in late.messages)
        return late.envelopes()


# --- without push channels ------------------------------------------------------------


def test_without_a_push_channel_a_command_waits_for_the_phone_to_check_in(device_a, signing_key, settings):
    """The embedded default (no broker, no MQTT_URL, no gateway): nothing is pushed, nothing crashes."""
    from devices.tasks import deliver_command

    settings.MQTT_URL = None
    command = factories.make_command(device_a, private_key=signing_key)

    assert deliver_command.apply(args=[command.pk]).get() == "no_channel"

    command.refresh_from_db()
    assert command.delivered_at is None and command.dead_at is None and command.attempts == 0
    assert not command.delivery_attempts.exists()
    assert "check-in" in command.last_error
    # Looked at again after the cap, not every 30 s and never dead-lettered for lack of a channel.
    later = command.next_attempt_at - timezone.now()
    assert dt.timedelta(minutes=59) < later <= dt.timedelta(seconds=settings.DELIVERY_BACKOFF_CAP_SECONDS)
    assert not delivery.pending_commands(timezone.now()).filter(pk=command.pk).exists()


def test_a_task_for_a_command_that_no_longer_exists_is_dropped_quietly(db):
    from devices.tasks import deliver_command

    assert deliver_command.apply(args=[987654321]).get() == "missing"


# --- MQTT: retained, QoS 1 -------------------------------------------------------------


@pytest.mark.mqtt
def test_a_command_is_retained_on_its_topic_for_a_phone_that_connects_later(device_a, signing_key):
    command = factories.make_command(device_a, private_key=signing_key, state="locked")
    topic = topic_for(str(device_a.uid))
    assert device_a.imei not in topic
    try:
        assert delivery.command_deliver(command_id=command.pk).status == "delivered"

        received = retained_on(topic)
        assert received == [command.envelope]
        # The phone can verify what it got with the server's public key.
        applied = check_command(open_envelope(received[0], {"test-key": public_key_b64(signing_key)}))
        assert applied["seq"] == command.seq and applied["state"] == "locked"

        command.refresh_from_db()
        assert command.delivered_at is not None and command.attempts == 1
        assert [(a.channel, a.ok) for a in command.delivery_attempts.all()] == [("mqtt", True)]
    finally:
        clear_retained(topic)
    assert retained_on(topic) == []


@pytest.mark.mqtt
def test_the_retained_topic_ends_on_the_newest_command_whatever_order_the_tasks_run(device_a, signing_key):
    older = factories.make_command(device_a, private_key=signing_key, state="locked")
    newer = factories.make_command(device_a, private_key=signing_key, state="unlocked")
    topic = topic_for(str(device_a.uid))
    try:
        with subscribed(topic) as phone:
            assert delivery.command_deliver(command_id=newer.pk).status == "delivered"
            # The older command's task runs late (a slow queue, a retry): it must not be published.
            assert delivery.command_deliver(command_id=older.pk).status == "superseded"
            wait_for(lambda: phone.messages, timeout=2)
            time.sleep(0.3)
            assert phone.seqs() == [newer.seq]
        assert retained_on(topic) == [newer.envelope]
    finally:
        clear_retained(topic)


@pytest.mark.mqtt
def test_a_channel_that_took_the_command_is_not_sent_it_again_on_retry(
    device_a, signing_key, gateway_server, with_gateway
):
    gateway_server.answer(502, 200)
    command = factories.make_command(device_a, private_key=signing_key)
    topic = topic_for(str(device_a.uid))
    try:
        with subscribed(topic) as phone:
            assert delivery.command_deliver(command_id=command.pk).status == "retry"
            make_due(command)
            assert delivery.command_deliver(command_id=command.pk).status == "delivered"
            time.sleep(0.3)
            assert phone.seqs() == [command.seq]  # published once, although delivery took two rounds
        channels = list(command.delivery_attempts.order_by("at", "id").values_list("channel", "ok"))
        assert channels == [("mqtt", True), ("webhook", False), ("webhook", True)]
        assert gateway_server.seqs() == [command.seq, command.seq]
    finally:
        clear_retained(topic)


# --- the provider's gateway webhook ----------------------------------------------------


def test_the_gateway_gets_the_signed_envelope_and_failures_back_off_exponentially(
    device_a, signing_key, gateway_server, with_gateway, no_mqtt, settings
):
    settings.DELIVERY_BACKOFF_BASE_SECONDS = 10
    settings.DELIVERY_BACKOFF_CAP_SECONDS = 3600
    settings.DELIVERY_MAX_ATTEMPTS = 12
    gateway_server.answer(500, 500, 200)
    command = factories.make_command(device_a, private_key=signing_key)

    delays = []
    for round_no, expected in ((1, "retry"), (2, "retry"), (3, "delivered")):
        if round_no > 1:
            make_due(command)
        before = timezone.now()
        outcome = delivery.command_deliver(command_id=command.pk)
        after = timezone.now()
        assert outcome.status == expected, round_no
        command.refresh_from_db()
        assert command.attempts == round_no
        if expected == "retry":
            # Round n waits base * 2**(n-1) seconds, times a jitter factor between 0.5 and 1.5.
            nominal = 10 * 2 ** (round_no - 1)
            assert 0.5 * nominal <= outcome.retry_in <= 1.5 * nominal
            assert before + dt.timedelta(seconds=0.5 * nominal) <= command.next_attempt_at
            assert command.next_attempt_at <= after + dt.timedelta(seconds=1.5 * nominal)
            assert "HTTP 500" in command.last_error
            delays.append(outcome.retry_in)
            # A duplicate task arriving before the backoff is over pushes nothing.
            assert delivery.command_deliver(command_id=command.pk).status == "not_due"

    assert command.delivered_at is not None and command.next_attempt_at is None and command.last_error == ""
    assert [(a.channel, a.ok) for a in command.delivery_attempts.order_by("at", "id")] == [
        ("webhook", False),
        ("webhook", False),
        ("webhook", True),
    ]
    assert "HTTP 500" in command.delivery_attempts.filter(ok=False).first().error
    assert len(gateway_server.requests) == 3  # the "not_due" duplicates sent nothing
    for request in gateway_server.requests:
        body = request["body"]
        # The gateway verifies with an off-the-shelf Standard Webhooks library and its secret.
        assert Webhook(GATEWAY_SECRET).verify(body, request["headers"]) == command.envelope
        # One message however many tries: the gateway deduplicates on webhook-id.
        assert request["headers"]["webhook-id"] == f"cmd_{command.pk}"
        assert request["headers"]["content-type"] == "application/json"
        assert "x-finlock-signature" not in request["headers"]
        assert_as_documented(request, "gateway.command")
    # A copy of a delivery, replayed once the receiver's tolerance is past, is refused: what finlock
    # signed for this message ten minutes before the last try is what such a replay carries.
    last = gateway_server.requests[-1]
    stale = standard_webhook_headers(
        signing_secrets=[GATEWAY_SECRET],
        msg_id=f"cmd_{command.pk}",
        body=last["body"],
        timestamp=int(last["headers"]["webhook-timestamp"]) - 600,
    )
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(GATEWAY_SECRET).verify(last["body"], {**last["headers"], **stale})
    # The command is base64 inside the envelope: tamper with a member the JSON shows as it is.
    tampered = last["body"].replace(b'"test-key"', b'"some-key"')
    assert tampered != last["body"]
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(GATEWAY_SECRET).verify(tampered, last["headers"])
    # A late duplicate of a delivered command does nothing either.
    assert delivery.command_deliver(command_id=command.pk).status == "closed"
    assert len(gateway_server.requests) == 3


def test_a_command_as_the_server_issues_it_reaches_the_gateway_as_documented(
    device_a, gateway_server, with_gateway, no_mqtt
):
    from devices.services.commands import StateChange, device_states_apply

    until = timezone.now() + dt.timedelta(hours=2)
    (command,) = device_states_apply(
        changes=[
            StateChange(
                device_id=device_a.pk,
                state="temp_unlocked",
                reason="Paid at the shop",
                expires_at=until,
                screen={"title": "Unlocked"},
                allowed_numbers=["119"],
            )
        ]
    )

    assert delivery.command_deliver(command_id=command.pk).status == "delivered"
    (request,) = gateway_server.requests
    assert Webhook(with_gateway.secret).verify(request["body"], request["headers"]) == command.envelope
    assert_as_documented(request, "gateway.command")


def test_a_gateway_secret_is_a_standard_webhooks_secret(provider_a):
    from django.core.exceptions import ValidationError

    gateway = DeviceGateway(provider=provider_a, url="https://gateway.example.com/finlock")
    # The admin's form starts with a fresh secret: whsec_ and the base64 of 32 random bytes.
    assert gateway.secret.startswith("whsec_")
    assert len(base64.b64decode(gateway.secret.removeprefix("whsec_"), validate=True)) == 32
    gateway.full_clean()
    for typed, why in (
        ("gateway-shared-secret", "Not a Standard Webhooks secret"),
        ("whsec_not base64!", "Not a Standard Webhooks secret"),
        ("whsec_" + base64.b64encode(b"too short").decode(), "24 to 64 bytes"),
    ):
        gateway.secret = typed
        with pytest.raises(ValidationError, match=why):
            gateway.full_clean()


def test_a_gateway_secret_from_before_standard_webhooks_keeps_its_key(
    device_a, signing_key, gateway_server, provider_a, no_mqtt
):
    from tests.test_provider_webhooks import _migration

    typed_then = "gateway-shared-secret-for-tests"  # the HMAC used to be keyed with this string
    gateway = DeviceGateway.objects.create(provider=provider_a, url=gateway_server.url, secret=typed_then)

    _migration("devices").to_standard(django_apps, None)

    gateway.refresh_from_db()
    assert gateway.secret == "whsec_" + base64.b64encode(typed_then.encode()).decode()
    command = factories.make_command(device_a, private_key=signing_key)
    assert delivery.command_deliver(command_id=command.pk).status == "delivered"
    (request,) = gateway_server.requests
    assert Webhook(typed_then.encode()).verify(request["body"], request["headers"]) == command.envelope
    _migration("devices").to_legacy(django_apps, None)
    assert DeviceGateway.objects.get(pk=gateway.pk).secret == typed_then


def test_backoff_is_capped_and_jittered(settings):
    settings.DELIVERY_BACKOFF_BASE_SECONDS = 10
    settings.DELIVERY_BACKOFF_CAP_SECONDS = 3600
    samples = [delivery.backoff_seconds(n) for n in range(1, 40) for _ in range(20)]
    assert min(samples) >= 5 and max(samples) <= 1.5 * 3600
    late = [delivery.backoff_seconds(30) for _ in range(200)]
    assert all(1800 <= s <= 5400 for s in late) and len(set(late)) > 100  # capped, and spread out


def test_a_gateway_that_never_accepts_dead_letters_the_command_and_an_admin_retries_it(
    device_a,
    signing_key,
    gateway_server,
    with_gateway,
    no_mqtt,
    settings,
    client,
    admin_a,
    agent_a,
    agent_b,
    celery_eager,
    django_capture_on_commit_callbacks,
):
    settings.DELIVERY_MAX_ATTEMPTS = 3
    gateway_server.answer(503)
    command = factories.make_command(device_a, private_key=signing_key)

    outcomes = []
    for round_no in range(3):
        if round_no:
            make_due(command)
        outcomes.append(delivery.command_deliver(command_id=command.pk).status)
    assert outcomes == ["retry", "retry", "dead"]
    command.refresh_from_db()
    assert command.dead_at is not None and command.next_attempt_at is None and command.attempts == 3
    assert "HTTP 503" in command.last_error and "gateway overloaded" in command.last_error
    # Dead means the periodic job leaves it alone.
    assert delivery.commands_redeliver_pending() == 0
    assert len(gateway_server.requests) == 3

    page = reverse("devices:dead_letters")
    retry_url = reverse("devices:dead_letter_retry", args=[command.pk])

    # An agent of the provider sees it, but may not retry it.
    response = signed_in(client, agent_a).get(page)
    assert response.status_code == 200
    assert device_a.imei in response.content.decode() and "HTTP 503" in response.content.decode()
    assert retry_url not in response.content.decode()
    assert client.post(retry_url).status_code == 403

    # Another provider's agent does not even learn that it exists.
    response = signed_in(client, agent_b).get(page)
    assert device_a.imei not in response.content.decode()
    assert client.post(retry_url).status_code == 404

    # The provider admin retries it once the gateway is healthy again.
    gateway_server.answer(200)
    signed_in(client, admin_a)
    response = client.get(page)
    assert retry_url in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(retry_url, follow=True)
    assert response.status_code == 200
    assert "being delivered again" in response.content.decode()

    command.refresh_from_db()
    assert command.dead_at is None and command.delivered_at is not None and command.attempts == 1
    assert gateway_server.seqs() == [command.seq] * 4
    event = AuditEvent.objects.get(action="device.command_retry")
    assert event.actor_id == admin_a.pk and event.organisation_id == device_a.provider_id
    assert event.object_id == str(command.pk)
    assert event.before["dead_at"] is not None and event.before["attempts"] == 3
    assert event.after["dead_at"] is None and event.after["attempts"] == 0
    assert device_a.imei not in client.get(page).content.decode()

    # Retrying what is not dead is refused, and nothing is audited.
    response = client.post(retry_url, follow=True)
    assert "not in the dead letters" in response.content.decode()
    assert AuditEvent.objects.filter(action="device.command_retry").count() == 1


def test_a_dead_command_with_a_newer_sibling_is_not_retried(
    device_a, signing_key, gateway_server, with_gateway, no_mqtt, settings, client, admin_a
):
    settings.DELIVERY_MAX_ATTEMPTS = 1
    gateway_server.answer(500)
    dead = factories.make_command(device_a, private_key=signing_key, state="locked")
    assert delivery.command_deliver(command_id=dead.pk).status == "dead"
    factories.make_command(device_a, private_key=signing_key, state="unlocked")

    response = signed_in(client, admin_a).get(reverse("devices:dead_letters"))
    assert "superseded" in response.content.decode()
    retry_url = reverse("devices:dead_letter_retry", args=[dead.pk])
    assert retry_url not in response.content.decode()
    response = client.post(retry_url, follow=True)
    assert "A newer command exists" in response.content.decode()
    dead.refresh_from_db()
    assert dead.dead_at is not None
    assert not AuditEvent.objects.filter(action="device.command_retry").exists()


def test_an_older_pending_command_is_never_pushed_after_a_newer_one(
    device_a, signing_key, gateway_server, with_gateway, no_mqtt, celery_eager
):
    # #1 (lock) failed its first push and waits for its backoff ...
    gateway_server.answer(500, 200)
    older = factories.make_command(device_a, private_key=signing_key, state="locked")
    assert delivery.command_deliver(command_id=older.pk).status == "retry"
    # ... the owner pays, #2 (unlock) is issued and delivered at once ...
    newer = factories.make_command(device_a, private_key=signing_key, state="unlocked")
    assert delivery.command_deliver(command_id=newer.pk).status == "delivered"
    # ... and when #1's backoff is over, the periodic job must not push the lock again.
    make_due(older)
    assert delivery.commands_redeliver_pending() == 1

    assert gateway_server.seqs() == [older.seq, newer.seq]  # the failed try of #1, then only #2
    older.refresh_from_db()
    assert delivery.delivery_status(older) == "superseded"
    assert older.last_error.startswith(f"Superseded by #{newer.seq}")
    assert older.delivery_attempts.count() == 1  # only the original failure; no push for closing it
    assert delivery.commands_redeliver_pending() == 0


def test_the_periodic_job_queues_due_commands_in_order_and_delivers_only_the_latest(
    device_a, signing_key, gateway_server, with_gateway, no_mqtt, celery_eager, provider_a
):
    """After an outage, several never-queued commands of one device: only the newest is pushed."""
    first = factories.make_command(device_a, private_key=signing_key, state="reminder")
    second = factories.make_command(device_a, private_key=signing_key, state="locked")
    other_device = factories.DeviceFactory(provider=provider_a)
    other = factories.make_command(other_device, private_key=signing_key, state="locked")
    not_due = factories.make_command(
        factories.DeviceFactory(provider=provider_a),
        private_key=signing_key,
        next_attempt_at=timezone.now() + dt.timedelta(minutes=5),
        attempts=1,
    )

    assert delivery.commands_redeliver_pending() == 3
    assert sorted(gateway_server.seqs()) == sorted([second.seq, other.seq])
    statuses = {c.pk: delivery.delivery_status(c) for c in DeviceCommand.objects.all()}
    assert statuses == {
        first.pk: "superseded",
        second.pk: "delivered",
        other.pk: "delivered",
        not_due.pk: "pending",
    }
    assert delivery.commands_redeliver_pending() == 0


def test_an_unreachable_gateway_is_a_failed_attempt_with_the_reason(
    device_a, signing_key, provider_a, no_mqtt, settings
):
    settings.DEBUG = True  # plain http to 127.0.0.1, as for the gateway stand-in
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    DeviceGateway.objects.create(provider=provider_a, url=f"http://127.0.0.1:{port}/hook")
    command = factories.make_command(device_a, private_key=signing_key)
    assert delivery.command_deliver(command_id=command.pk).status == "retry"
    attempt = command.delivery_attempts.get()
    assert not attempt.ok and "unreachable" in attempt.error


def test_a_disabled_gateway_is_not_called(device_a, signing_key, gateway_server, with_gateway, no_mqtt):
    DeviceGateway.objects.filter(pk=with_gateway.pk).update(enabled=False)
    command = factories.make_command(device_a, private_key=signing_key)
    assert delivery.command_deliver(command_id=command.pk).status == "no_channel"
    assert gateway_server.requests == []


# --- the staff device page -------------------------------------------------------------


def test_the_device_page_shows_the_command_history_newest_first_in_the_providers_time(
    device_a, signing_key, gateway_server, with_gateway, no_mqtt, client, agent_a, technician, settings
):
    settings.DELIVERY_MAX_ATTEMPTS = 2
    gateway_server.answer(500)
    issued = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
    dead = factories.make_command(device_a, private_key=signing_key, state="locked", issued_at=issued)
    delivery.command_deliver(command_id=dead.pk)
    make_due(dead)
    assert delivery.command_deliver(command_id=dead.pk).status == "dead"
    gateway_server.answer(200)
    unlock = factories.make_command(
        device_a, private_key=signing_key, state="unlocked", reason="Arrears cleared", issued_at=issued
    )
    delivery.command_deliver(command_id=unlock.pk)
    DeviceCommand.objects.filter(pk=unlock.pk).update(acknowledged_at=issued + dt.timedelta(minutes=3))

    response = signed_in(client, agent_a).get(reverse("devices:detail", args=[device_a.pk]))
    html = response.content.decode()
    assert [c.seq for c in response.context["commands"]] == [unlock.seq, dead.seq]
    assert [c.status for c in response.context["commands"]] == ["acknowledged", "dead"]
    assert "Arrears cleared" in html
    assert "23 Nov 2026 14:30 +0530" in html  # 09:00 UTC in Asia/Colombo
    assert "23 Nov 2026 14:33 +0530" in html  # acknowledged
    assert "Provider gateway webhook" in html and "HTTP 500" in html

    # A service-center technician sees that a push failed, not the provider's error texts.
    client.logout()
    response = signed_in(client, technician).get(reverse("devices:detail", args=[device_a.pk]))
    assert response.status_code == 200
    assert "failed" in response.content.decode() and "HTTP 500" not in response.content.decode()


def test_the_command_history_costs_the_same_queries_for_2_or_25_commands(
    provider_a, signing_key, gateway_server, with_gateway, no_mqtt, client, agent_a
):
    few = factories.DeviceFactory(provider=provider_a)
    many = factories.DeviceFactory(provider=provider_a)
    for device, count in ((few, 2), (many, 25)):
        for _ in range(count):
            command = factories.make_command(device, private_key=signing_key)
        DeliveryAttempt.objects.bulk_create(
            [DeliveryAttempt(command=c, channel="webhook", ok=True) for c in device.commands.all()]
        )
    assert command.seq == 25
    signed_in(client, agent_a)
    client.get(reverse("devices:detail", args=[few.pk]))  # warm the session and caches

    counts = {}
    for device in (few, many):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse("devices:detail", args=[device.pk]))
        assert response.status_code == 200
        counts[device.pk] = len(queries)
    assert counts[few.pk] == counts[many.pk]
    shown = [c.seq for c in response.context["commands"]]
    assert shown == list(range(25, 5, -1))  # the newest 20


def test_the_dead_letters_page_is_in_the_navigation(client, agent_a):
    response = signed_in(client, agent_a).get(reverse("portal:home"))
    assert reverse("devices:dead_letters") in response.content.decode()


# --- PostgreSQL: two workers, one command ----------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_never_push_the_same_command_at_once(provider_a, signing_key, gateway_server, no_mqtt):
    DeviceGateway.objects.create(provider=provider_a, url=gateway_server.url, secret=GATEWAY_SECRET)
    device = factories.DeviceFactory(provider=provider_a)
    command = factories.make_command(device, private_key=signing_key)
    holding, release = threading.Event(), threading.Event()

    def other_worker():  # holds the command as a worker in the middle of its push would
        try:
            with transaction.atomic():
                DeviceCommand.objects.select_for_update().get(pk=command.pk)
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        assert delivery.command_deliver(command_id=command.pk).status == "busy"
        assert time.monotonic() - started < 2  # skipped, not queued behind the other worker
    finally:
        release.set()
        thread.join()
    assert gateway_server.requests == []
    assert delivery.command_deliver(command_id=command.pk).status == "delivered"
    assert gateway_server.seqs() == [command.seq]


# --- Redis outage: a real worker process on a private Redis ---------------------------


@contextlib.contextmanager
def producer_broker(url: str):
    """Point this process's Celery producer at ``url`` (what CELERY_BROKER_URL does at start-up)."""
    from config.celery import app

    def reset(*, close: bool):
        # Only the private pool is closed: kombu keeps pools in a global registry keyed by
        # the broker URL, and a closed pool for the run's real broker would be handed out
        # again to later tests ("Acquire on closed pool").
        if close and app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None

    # broker_write_url is what producers use; unlike broker_url it is not overridden by
    # a CELERY_BROKER_URL environment variable (set in CI).
    before = app.conf.get("broker_write_url")
    reset(close=False)
    app.conf["broker_write_url"] = url
    try:
        yield
    finally:
        reset(close=True)
        app.conf["broker_write_url"] = before


def worker_database_url() -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Worker:
    """``celery -A config worker -Q <queues>`` in its own process, on the test database and the private Redis.

    ``queues`` as the README runs them: ``celery`` (commands, webhooks, periodic jobs) or
    ``imports`` (statement imports). ``pool="prefork"`` (one child) where a story needs the
    time limits, which the solo pool ignores.
    """

    def __init__(self, broker_url: str, log_path, *, queues: str = "celery", pool: str = "solo", **env):
        self.log_path = log_path
        environment = os.environ | {
            "CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": worker_database_url(),
            "PYTHONUNBUFFERED": "1",
        }
        environment |= {k: str(v) for k, v in env.items()}
        pool_args = ["--pool", pool] + (["--concurrency", "1"] if pool == "prefork" else [])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, *pool_args, "--loglevel", "INFO"]
            + ["--without-gossip", "--without-mingle", "--hostname", f"deltest-{uuid.uuid4().hex[:6]}@%h"],
            cwd=settings.BASE_DIR,
            env=environment,
            stdout=open(log_path, "w"),  # noqa: SIM115 - lives as long as the process
            stderr=subprocess.STDOUT,
        )
        assert wait_for(lambda: " ready." in self.log() or self.process.poll() is not None, timeout=60)
        assert self.process.poll() is None, f"the worker exited:\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def start_worker(transactional_db, private_redis, tmp_path):
    """Start a worker on the private Redis; stopped before the test database is flushed."""
    workers = []

    def start(*, queues: str = "celery", pool: str = "solo", **env):
        worker = Worker(private_redis.url, tmp_path / f"worker{len(workers)}.log", queues=queues, pool=pool, **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.mqtt
@pytest.mark.django_db(transaction=True)
def test_a_redis_outage_loses_no_command_and_delivers_it_exactly_once(
    provider_a, signing_key, private_redis, start_worker
):
    device = factories.DeviceFactory(provider=provider_a)
    topic = topic_for(str(device.uid))
    worker = start_worker()
    try:
        with producer_broker(private_redis.url), subscribed(topic) as phone:
            private_redis.stop()

            # The lock is issued while Redis is down: queueing fails quietly, the outbox row stays.
            command = factories.make_command(device, private_key=signing_key, state="locked")
            assert delivery.commands_enqueue([command.pk]) == 0
            command.refresh_from_db()
            assert command.delivered_at is None and command.attempts == 0 and command.dead_at is None
            assert not command.delivery_attempts.exists()

            # Redis comes back empty (no persistence): whatever it held is gone; the row is not.
            private_redis.start()
            # The periodic job (beat every 30 s) re-queues it; a run while the producer is
            # still reconnecting queues nothing and the next run tries again.
            assert wait_for(lambda: delivery.commands_redeliver_pending() == 1, timeout=20, interval=1)

            assert wait_for(
                lambda: DeviceCommand.objects.filter(pk=command.pk, delivered_at__isnull=False).exists(),
                timeout=60,
                interval=0.25,
            ), f"not delivered; worker log:\n{worker.log()}"
            assert wait_for(lambda: phone.messages, timeout=5)

            # Duplicates change nothing: nothing is due any more, and a stray task is a no-op.
            assert delivery.commands_redeliver_pending() == 0
            assert delivery.commands_enqueue([command.pk]) == 1
            assert wait_for(lambda: "'closed'" in worker.log(), timeout=30), worker.log()
            time.sleep(0.5)

            assert phone.seqs() == [command.seq]  # arrived, and exactly once
            assert phone.envelopes() == [command.envelope]
        command.refresh_from_db()
        assert command.delivered_at is not None and command.attempts == 1
        assert [(a.channel, a.ok) for a in command.delivery_attempts.all()] == [("mqtt", True)]
        assert retained_on(topic) == [command.envelope]
    finally:
        clear_retained(topic)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_failed_push_is_retried_by_the_task_itself_after_the_backoff(
    provider_a, signing_key, private_redis, start_worker, gateway_server
):
    DeviceGateway.objects.create(provider=provider_a, url=gateway_server.url, secret=GATEWAY_SECRET)
    gateway_server.answer(503, 200)
    device = factories.DeviceFactory(provider=provider_a)
    worker = start_worker(DELIVERY_BACKOFF_BASE_SECONDS=1, MQTT_URL="")
    command = factories.make_command(device, private_key=signing_key)

    with producer_broker(private_redis.url):
        assert delivery.commands_enqueue([command.pk]) == 1
        # No periodic job runs here: only the task's own retry (countdown = the backoff) can deliver it.
        assert wait_for(
            lambda: DeviceCommand.objects.filter(pk=command.pk, delivered_at__isnull=False).exists(),
            timeout=30,
            interval=0.25,
        ), f"not delivered; worker log:\n{worker.log()}"

    command.refresh_from_db()
    assert command.attempts == 2
    assert gateway_server.seqs() == [command.seq, command.seq]
    assert "Retry in" in worker.log()
    failed = command.delivery_attempts.get(ok=False)
    succeeded = command.delivery_attempts.get(ok=True)
    # The second push came after the jittered backoff of round 1 (0.5 to 1.5 times 1 s).
    assert (succeeded.at - failed.at).total_seconds() >= 0.5


def test_the_gateway_post_is_guarded_like_every_outbound_call(device_a, signing_key, provider_a, no_mqtt, settings):
    """Production (DEBUG off): https only, and never to a private, loopback or link-local address."""
    settings.DEBUG = False
    gateway = DeviceGateway.objects.create(provider=provider_a, url="http://gateway.example.com/hook")
    command = factories.make_command(device_a, private_key=signing_key)
    assert delivery.command_deliver(command_id=command.pk).status == "retry"
    assert "must be https" in command.delivery_attempts.get().error

    DeviceGateway.objects.filter(pk=gateway.pk).update(url="https://127.0.0.1:9/hook")
    make_due(command)
    assert delivery.command_deliver(command_id=command.pk).status == "retry"
    assert "non-public address" in command.delivery_attempts.order_by("-id").first().error
