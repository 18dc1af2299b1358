"""Stories of provider webhooks: finlock tells a provider's systems what happened.

* a matched payment sends one ``payment.matched``, signed with the endpoint's secret;
* a phone confirming a lock sends ``device.locked``, and confirming the unlock after it
  ``device.unlocked``; repeating a state sends nothing more;
* a failing endpoint is retried with growing pauses, then the event is dead, shown on the
  Webhooks page, and an admin's retry (audited) sends it again;
* an admin creates an endpoint on the page and sees its secret once; another provider's
  admin never sees it (404), an agent may not open the page (403);
* with no endpoint configured nothing is written, at the cost of one read.

Only the provider's endpoint is a stand-in, since it is a third party: a local
``http.server`` on a free port that answers as scripted and records what it received.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from devices.services import StateChange, device_ack, device_states_apply, enrollment_token_create
from payments.models import LockPolicy
from payments.services import lock_sweep, payment_ingest
from portal.models import AuditEvent, ProviderWebhook, WebhookEvent
from portal.webhooks import webhook_create, webhook_events_redeliver_pending
from tests import factories
from tests.conftest import signed_in

RECEIVED = timezone.now() - dt.timedelta(hours=1)


# --- the provider's endpoint (a third party, so a local stand-in) ----------------------


class FakeEndpoint:
    """An HTTP server on a free local port; answers each POST with the next scripted status."""

    def __init__(self):
        self.requests: list[dict] = []
        self.statuses = [200]
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = endpoint.statuses.pop(0) if len(endpoint.statuses) > 1 else endpoint.statuses[0]
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"ledger service unavailable")

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/finlock"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *statuses: int) -> None:
        """Answer the next POSTs with these statuses, the last one for ever after."""
        self.statuses = list(statuses)

    def events(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(settings):
    # The stand-in listens on plain http on 127.0.0.1, which finlock allows only with DEBUG on
    # (pytest-django turns DEBUG off; production requires https to a public address).
    settings.DEBUG = True
    server = FakeEndpoint()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def celery_eager():
    """Run queued deliveries in-process, as the embedded (no broker) default does.

    With a real broker (CI sets REDIS_URL) but no worker, a task would wait in Redis for a
    worker that never comes.
    """
    from portal.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def signature_ok(request: dict, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(request["headers"]["X-Finlock-Signature"], expected)


@pytest.fixture
def admin_b(provider_b):
    return factories.UserFactory(username="admin.b", organisation=provider_b, role="provider_admin")


# --- a contract in arrears, its phone locked (as in tests/test_payments.py) -------------


@pytest.fixture
def locked(provider_a):
    LockPolicy.objects.create(provider=provider_a, lock_start_hour=0, lock_end_hour=24, lock_weekdays=list(range(7)))
    contract = factories.make_contract(
        provider_a, number="DLG-100", first_due_date=provider_a.today() - dt.timedelta(days=40)
    )
    lock_sweep()
    contract.refresh_from_db()
    assert contract.lock_state == "locked"
    return contract


def pay(provider, amount, external_id="TX1"):
    payment, _created = payment_ingest(
        provider=provider,
        external_id=external_id,
        amount=Decimal(amount),
        channel="mobile_money",
        currency=provider.currency,
        received_at=RECEIVED,
        reference="DLG-100",
    )
    return payment


# --- payment.matched ----------------------------------------------------------------------


def test_a_matched_payment_sends_one_signed_event(
    locked, provider_a, admin_a, endpoint, django_capture_on_commit_callbacks
):
    hook, secret = webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    devices_only, _ = webhook_create(
        provider=provider_a, url=endpoint.url + "/devices", events=["device.locked"], actor=admin_a
    )

    with django_capture_on_commit_callbacks(execute=True):
        payment = pay(provider_a, "16666.66")

    assert payment.status == "matched"
    assert len(endpoint.requests) == 1, "one event, to the endpoint subscribed to it only"
    request = endpoint.requests[0]
    assert request["path"] == "/hooks/finlock"
    assert signature_ok(request, secret)
    assert not signature_ok(request, "someone else's secret")
    event = WebhookEvent.objects.get()
    assert request["headers"]["X-Finlock-Event"] == "payment.matched"
    assert request["headers"]["X-Finlock-Delivery"] == str(event.pk)
    document = json.loads(request["body"])
    assert document["id"] == event.pk and document["event"] == "payment.matched"
    assert document["created_at"].endswith("Z")
    assert document["data"] == {
        "payment": payment.pk,
        "external_id": "TX1",
        "channel": "mobile_money",
        "amount": "16666.66",
        "currency": "LKR",
        "contract": "DLG-100",
        "rule": "reference_exact",
        "received_at": document["data"]["received_at"],
    }
    # ISO 8601 UTC, to the millisecond (the JSON encoder's precision).
    assert document["data"]["received_at"].endswith("Z")
    assert abs(dt.datetime.fromisoformat(document["data"]["received_at"]) - RECEIVED) < dt.timedelta(milliseconds=1)
    assert (event.webhook_id, event.attempts, event.last_status_code) == (hook.pk, 1, 200)
    assert event.delivered_at is not None and event.status == "delivered"
    assert not WebhookEvent.objects.filter(webhook=devices_only).exists()


def test_a_payment_that_rolls_back_tells_the_provider_nothing(locked, provider_a, admin_a, endpoint):
    webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)

    with pytest.raises(ValidationError):
        payment_ingest(
            provider=provider_a,
            external_id="TX9",
            amount=Decimal("100.00"),
            channel="mobile_money",
            currency="KES",  # refused: the provider works in LKR
            received_at=RECEIVED,
            reference="DLG-100",
        )

    assert not WebhookEvent.objects.exists() and endpoint.requests == []


# --- device.locked / device.unlocked --------------------------------------------------------


def _set_state(device, state):
    (command,) = device_states_apply(
        changes=[
            StateChange(
                device_id=device.pk, state=state, reason="test", screen={"title": state}, allowed_numbers=["119"]
            )
        ]
    )
    return command


def test_a_phone_confirming_its_lock_and_unlock_is_reported(
    provider_a, admin_a, endpoint, django_capture_on_commit_callbacks
):
    phone = factories.DeviceFactory(provider=provider_a)
    _token, token = enrollment_token_create(provider=provider_a, name="Colombo shop", actor=admin_a)
    enrolled = factories.enrol_device(phone.imei, token)
    assert enrolled.credential
    _hook, secret = webhook_create(
        provider=provider_a, url=endpoint.url, events=["device.locked", "device.unlocked"], actor=admin_a
    )
    lock = _set_state(phone, "locked")
    assert endpoint.requests == [], "the server deciding a lock is not the phone showing it"

    with django_capture_on_commit_callbacks(execute=True):
        assert device_ack(device=phone, seq=lock.seq, state="locked")
    with django_capture_on_commit_callbacks(execute=True):
        device_ack(device=phone, seq=lock.seq, state="locked")  # a repeated acknowledgement

    assert [e["event"] for e in endpoint.events()] == ["device.locked"]
    assert signature_ok(endpoint.requests[0], secret)
    data = endpoint.events()[0]["data"]
    assert data["imei"] == phone.imei and data["device"] == str(phone.uid)
    assert (data["state"], data["seq"]) == ("locked", lock.seq)
    assert data["at"].endswith("Z")

    unlock = _set_state(phone, "unlocked")
    with django_capture_on_commit_callbacks(execute=True):
        device_ack(device=phone, seq=unlock.seq, state="unlocked")

    assert [e["event"] for e in endpoint.events()] == ["device.locked", "device.unlocked"]
    data = endpoint.events()[1]["data"]
    assert (data["state"], data["previous_state"], data["seq"]) == ("unlocked", "locked", unlock.seq)


# --- failures, backoff, dead, retry -------------------------------------------------------------


def test_a_failing_endpoint_is_retried_with_growing_pauses_then_dead_then_retried_by_the_admin(
    locked, provider_a, admin_a, endpoint, settings, client, django_capture_on_commit_callbacks
):
    settings.DELIVERY_BACKOFF_BASE_SECONDS = 10
    settings.DELIVERY_MAX_ATTEMPTS = 4
    endpoint.answer(503)
    webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)

    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "16666.66")
    after = timezone.now()
    event = WebhookEvent.objects.get()
    pauses = []
    for attempt in range(1, 4):
        event.refresh_from_db()
        assert (event.status, event.attempts, event.last_status_code) == ("retrying", attempt, 503)
        assert "ledger service unavailable" in event.last_error
        # min(cap, 10·2^(n-1)) × a random 0.5–1.5: the window doubles every attempt.
        low, high = 10 * 2 ** (attempt - 1) * 0.5, 10 * 2 ** (attempt - 1) * 1.5
        assert low <= (event.next_attempt_at - after).total_seconds() + 1
        assert (event.next_attempt_at - before).total_seconds() <= high + 1
        pauses.append(event.next_attempt_at)
        # Not due yet: the periodic job leaves it alone.
        assert webhook_events_redeliver_pending() == 0
        # Time passes: the pause is over.
        WebhookEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
        before = timezone.now()
        assert webhook_events_redeliver_pending() == 1
        after = timezone.now()

    event.refresh_from_db()
    assert (event.status, event.attempts, event.next_attempt_at) == ("dead", 4, None)
    assert len(endpoint.requests) == 4
    assert len({r["body"] for r in endpoint.requests}) == 1, "every retry sends the very same signed bytes"
    assert webhook_events_redeliver_pending() == 0, "a dead event is not retried by itself"

    signed_in(client, admin_a)
    page = client.get(reverse("portal:webhooks"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Dead" in html and "HTTP 503" in html and "ledger service unavailable" in html
    assert reverse("portal:webhook_event_retry", args=[event.pk]) in html

    endpoint.answer(200)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("portal:webhook_event_retry", args=[event.pk]))

    assert response.status_code == 302
    event.refresh_from_db()
    assert event.status == "delivered" and event.attempts == 1 and event.last_status_code == 200
    assert len(endpoint.requests) == 5
    audit = AuditEvent.objects.get(action="webhook.event_retry")
    assert audit.actor_id == admin_a.pk and audit.organisation_id == provider_a.pk
    assert audit.before["attempts"] == 4 and audit.before["dead_at"] is not None
    # Retrying an event that is no longer dead is refused politely.
    again = client.post(reverse("portal:webhook_event_retry", args=[event.pk]), follow=True)
    assert "not dead" in again.content.decode()


def test_a_redirect_is_a_failure_not_a_success(
    locked, provider_a, admin_a, endpoint, django_capture_on_commit_callbacks
):
    endpoint.answer(302)
    webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)

    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "16666.66")

    event = WebhookEvent.objects.get()
    assert (event.status, event.last_status_code) == ("retrying", 302)


# --- the Webhooks page -------------------------------------------------------------------------


def test_an_admin_creates_a_webhook_and_sees_its_secret_once(provider_a, admin_a, endpoint, client):
    signed_in(client, admin_a)

    response = client.post(
        reverse("portal:webhooks"), {"url": endpoint.url, "events": ["payment.matched", "device.unlocked"]}
    )

    assert response.status_code == 200
    hook = ProviderWebhook.objects.get()
    assert hook.provider == provider_a and hook.events == ["device.unlocked", "payment.matched"] and hook.enabled
    assert hook.secret in response.content.decode()
    assert hook.secret not in client.get(reverse("portal:webhooks")).content.decode()
    audit = AuditEvent.objects.get(action="webhook.create")
    assert audit.actor_id == admin_a.pk and "secret" not in audit.after
    assert hook.secret not in json.dumps(audit.after)


def test_the_page_refuses_bad_input_and_production_requires_https(provider_a, admin_a, client, settings):
    signed_in(client, admin_a)
    settings.DEBUG = False

    response = client.post(reverse("portal:webhooks"), {"url": "http://hooks.example.com/x", "events": []})

    assert response.status_code == 200
    html = response.content.decode()
    assert "Choose at least one event." in html and "Use an https:// address." in html
    assert not ProviderWebhook.objects.exists()
    with pytest.raises(ValidationError):
        webhook_create(provider=provider_a, url="https://h.example.com", events=["payment.refunded"], actor=admin_a)


def test_another_providers_admin_sees_nothing_and_an_agent_may_not_open_the_page(
    locked, provider_a, admin_a, admin_b, agent_a, endpoint, client, django_capture_on_commit_callbacks
):
    endpoint.answer(500)
    webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "16666.66")
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(dead_at=timezone.now(), next_attempt_at=None)

    signed_in(client, admin_b)
    page = client.get(reverse("portal:webhooks"))
    assert page.status_code == 200 and endpoint.url not in page.content.decode()
    assert client.post(reverse("portal:webhook_event_retry", args=[event.pk])).status_code == 404
    event.refresh_from_db()
    assert event.dead_at is not None and not AuditEvent.objects.filter(action="webhook.event_retry").exists()

    signed_in(client, agent_a)
    assert client.get(reverse("portal:webhooks")).status_code == 403
    assert (
        client.post(reverse("portal:webhooks"), {"url": endpoint.url, "events": ["payment.matched"]}).status_code == 403
    )
    assert ProviderWebhook.objects.count() == 1


# --- nothing configured -----------------------------------------------------------------------


def test_without_a_webhook_nothing_is_written_and_the_payment_path_pays_one_read(locked, provider_a):
    with CaptureQueriesContext(connection) as queries:
        payment = pay(provider_a, "16666.66")

    assert payment.status == "matched"
    assert not WebhookEvent.objects.exists()
    touching = [q["sql"] for q in queries.captured_queries if "webhook" in q["sql"].lower()]
    assert len(touching) == 1 and touching[0].lstrip().upper().startswith("SELECT"), touching
