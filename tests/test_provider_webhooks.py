"""Stories of provider webhooks: finlock tells a provider's systems what happened.

* a matched payment sends one ``payment.matched``, signed the Standard Webhooks way: a
  receiver using the ``standardwebhooks`` library with the secret it was shown accepts it;
  the same delivery replayed later, re-stamped, or altered is refused by that receiver;
* every event finlock sends matches its description in the OpenAPI document (3.1 ``webhooks``);
* a phone confirming a lock sends ``device.locked``, and confirming the unlock after it
  ``device.unlocked``; repeating a state sends nothing more;
* a failing endpoint is retried with growing pauses, then the event is dead, shown on the
  Webhooks page, and an admin's retry (audited) sends it again;
* an admin creates an endpoint on the page and sees its secret once and how to verify it;
  rotating the secret shows the new one once, and both sign until the overlap ends;
  another provider's admin never sees it (404), an agent may not open the page (403);
* a secret issued before finlock followed Standard Webhooks keeps its key;
* with no endpoint configured nothing is written, at the cost of one read.

Only the provider's endpoint is a stand-in, since it is a third party: a local
``http.server`` on a free port that answers as scripted and records what it received.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import json
import re
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from django.apps import apps as django_apps
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks import Webhook, WebhookVerificationError

from devices.services.checkin import device_ack
from devices.services.commands import StateChange, device_states_apply
from devices.services.tokens import enrollment_token_create
from payments.ledger.services import payment_ingest
from payments.locks.services import lock_sweep
from payments.models import LockPolicy
from payments.statements.imports import statement_import_create, statement_import_run
from portal.models import AuditEvent, ProviderWebhook, WebhookEvent
from portal.outbound import standard_webhook_headers
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
                headers = {name.lower(): value for name, value in self.headers.items()}
                endpoint.requests.append({"path": self.path, "headers": headers, "body": body})
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
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


# --- the receiver: what a provider's system does with the off-the-shelf Standard Webhooks library -----


def received(request: dict, secret: str | bytes) -> dict:
    """The event as a receiver verifying with ``standardwebhooks`` gets it; raises ``WebhookVerificationError``."""
    return Webhook(secret).verify(request["body"], request["headers"])


def refused(request: dict, secret: str | bytes) -> str:
    """Why that receiver refuses ``request`` (the test fails if it accepts it)."""
    with pytest.raises(WebhookVerificationError) as refusal:
        received(request, secret)
    return str(refusal.value)


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


def test_a_matched_payment_sends_one_event_a_standard_webhooks_receiver_accepts(
    locked, provider_a, admin_a, endpoint, django_capture_on_commit_callbacks
):
    hook, secret = webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    devices_only, other_secret = webhook_create(
        provider=provider_a, url=endpoint.url + "/devices", events=["device.locked"], actor=admin_a
    )

    with django_capture_on_commit_callbacks(execute=True):
        payment = pay(provider_a, "16666.66")

    assert payment.status == "matched"
    assert len(endpoint.requests) == 1, "one event, to the endpoint subscribed to it only"
    request = endpoint.requests[0]
    assert request["path"] == "/hooks/finlock"
    event = WebhookEvent.objects.get()
    # The receiver, with the library and the secret exactly as the page showed it, gets the event;
    # with another endpoint's secret it gets nothing.
    document = received(request, secret)
    assert document == json.loads(request["body"])
    assert refused(request, other_secret) == "No matching signature found"
    headers = request["headers"]
    assert headers["webhook-id"] == f"evt_{event.pk}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"]), "one v1 signature"
    assert headers["x-finlock-event"] == "payment.matched"
    assert "x-finlock-signature" not in headers, "the replayable signature over the body alone is gone"
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


def test_a_replayed_restamped_or_altered_delivery_is_refused_by_the_receiver(
    locked, provider_a, admin_a, endpoint, django_capture_on_commit_callbacks
):
    _hook, secret = webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "16666.66")
    (captured,) = endpoint.requests  # what an eavesdropper on the provider's side recorded
    assert received(captured, secret)
    stamp = int(captured["headers"]["webhook-timestamp"])
    message_id = captured["headers"]["webhook-id"]
    # finlock's signing, asked for the moment of the capture, gives exactly what was sent ...
    then = standard_webhook_headers(signing_secrets=[secret], msg_id=message_id, body=captured["body"], timestamp=stamp)
    assert then["webhook-signature"] == captured["headers"]["webhook-signature"]

    # ... so the same delivery as finlock signed it ten minutes ago is what a replay now looks
    # like to the receiver: refused, the signed timestamp is outside its tolerance.
    ten_minutes_ago = standard_webhook_headers(
        signing_secrets=[secret], msg_id=message_id, body=captured["body"], timestamp=stamp - 600
    )
    replay = {**captured, "headers": {**captured["headers"], **ten_minutes_ago}}
    assert refused(replay, secret) == "Message timestamp too old"
    # Re-stamping the captured request with a fresh time breaks its signature.
    restamped = {**captured, "headers": {**captured["headers"], "webhook-timestamp": str(int(time.time()) + 1)}}
    assert refused(restamped, secret) == "No matching signature found"
    # Another id (to get past the receiver's deduplication) breaks it too.
    renamed = {**captured, "headers": {**captured["headers"], "webhook-id": message_id + "0"}}
    assert refused(renamed, secret) == "No matching signature found"
    # And so does any change to the body.
    altered = {**captured, "body": captured["body"].replace(b'"16666.66"', b'"99999.99"')}
    assert altered["body"] != captured["body"]
    assert refused(altered, secret) == "No matching signature found"


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
    assert received(endpoint.requests[0], secret)["event"] == "device.locked"
    data = endpoint.events()[0]["data"]
    assert data["imei"] == phone.imei and data["device"] == str(phone.uid)
    assert (data["state"], data["seq"]) == ("locked", lock.seq)
    assert data["at"].endswith("Z")

    unlock = _set_state(phone, "unlocked")
    with django_capture_on_commit_callbacks(execute=True):
        device_ack(device=phone, seq=unlock.seq, state="unlocked")

    assert [e["event"] for e in endpoint.events()] == ["device.locked", "device.unlocked"]
    assert received(endpoint.requests[1], secret)["event"] == "device.unlocked"
    data = endpoint.events()[1]["data"]
    assert (data["state"], data["previous_state"], data["seq"]) == ("unlocked", "locked", unlock.seq)


# --- the documented payloads -------------------------------------------------------------------


def documented(event: str) -> tuple[jsonschema.Draft202012Validator, list[dict]]:
    """A validator for ``event``'s body as the OpenAPI document describes it, and its header parameters.

    Stricter than the document on one point: an object may carry no property it does not
    describe, so a field finlock adds without documenting it fails here.
    """
    document = APIClient().get("/api/schema/?format=json").json()
    assert document["openapi"] == "3.1.0"
    operation = document["webhooks"][event]["post"]

    def closed(node):
        if isinstance(node, dict):
            node = {key: closed(value) for key, value in node.items()}
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [closed(value) for value in node]
        return node

    body = operation["requestBody"]["content"]["application/json"]["schema"]
    root = {**body, "components": closed(document["components"])}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()), operation["parameters"]


def assert_as_documented(request: dict, event: str | None = None) -> None:
    """``request`` (body and headers) is what the document says webhook ``event`` sends (default: the body's event)."""
    event = event or json.loads(request["body"])["event"]
    validator, headers = documented(event)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(json.loads(request["body"]))]
    assert errors == [], (event, errors)
    for header in headers:
        value = request["headers"].get(header["name"].lower())
        assert value is not None or not header["required"], (event, header["name"])
        if value is not None:
            problems = [e.message for e in jsonschema.Draft202012Validator(header["schema"]).iter_errors(value)]
            assert problems == [], (event, header["name"], problems)


def test_every_event_finlock_sends_is_described_in_the_openapi_document(
    locked, provider_a, admin_a, endpoint, django_capture_on_commit_callbacks
):
    from tests.test_statement_import import HEADER, csv_line

    _hook, secret = webhook_create(
        provider=provider_a,
        url=endpoint.url,
        events=["payment.matched", "device.locked", "device.unlocked"],
        actor=admin_a,
    )
    # payment.matched from one payment (the API, M-Pesa and the portal take this path) ...
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "100.00", external_id="TX1")
    # ... and from a statement's credits (the set-based path, its own payload builder), here a
    # German bank's CSV export for a provider in EUR, with its own endpoint.
    berlin = factories.ProviderFactory(slug="berlin", country="DE", currency="EUR", time_zone="Europe/Berlin")
    _berlin_hook, berlin_secret = webhook_create(
        provider=berlin, url=endpoint.url + "/berlin", events=["payment.matched"], actor=None
    )
    factories.make_contract(berlin, number="BP-0200", first_due_date=berlin.today())
    statement = "\n".join([HEADER, csv_line("250,00", "Rate BP-0200", "E2E-1", berlin.today())]).encode("utf-8")
    with django_capture_on_commit_callbacks(execute=True):
        record = statement_import_create(provider=berlin, filename="s.csv", raw=statement, actor=None)
        record = statement_import_run(import_id=record.pk)
    assert record.summary["matched"] == 1, json.dumps(record.summary)
    phone = factories.make_contract(provider_a, number="DLG-200", first_due_date=provider_a.today()).device
    # device.locked and device.unlocked from a phone's acknowledgements.
    lock = _set_state(phone, "locked")
    with django_capture_on_commit_callbacks(execute=True):
        device_ack(device=phone, seq=lock.seq, state="locked")
    unlock = _set_state(phone, "released")
    with django_capture_on_commit_callbacks(execute=True):
        device_ack(device=phone, seq=unlock.seq, state="released")

    sent = [(json.loads(r["body"])["event"], json.loads(r["body"])["data"].get("rule")) for r in endpoint.requests]
    assert sent == [
        ("payment.matched", "reference_exact"),
        ("payment.matched", "reference_normalised"),
        ("device.locked", None),
        ("device.unlocked", None),
    ]
    assert json.loads(endpoint.requests[1]["body"])["data"]["channel"] == "bank_transfer"
    for request in endpoint.requests:
        assert received(request, berlin_secret if request["path"].endswith("/berlin") else secret)
        assert_as_documented(request)


def test_the_check_against_the_document_catches_an_undocumented_or_wrong_field(
    locked, provider_a, admin_a, endpoint, django_capture_on_commit_callbacks
):
    """The control of the test above: it fails when a body strays from the document."""
    webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "100.00")
    (request,) = endpoint.requests
    assert_as_documented(request)
    document = json.loads(request["body"])
    for data in ({**document["data"], "payer_name": "Nimal"}, {**document["data"], "amount": 100}):
        with pytest.raises(AssertionError):
            assert_as_documented({**request, "body": json.dumps({**document, "data": data}).encode()})
    with pytest.raises(AssertionError):
        assert_as_documented({**request, "headers": {**request["headers"], "webhook-id": "1"}})


# --- failures, backoff, dead, retry -------------------------------------------------------------


def test_a_failing_endpoint_is_retried_with_growing_pauses_then_dead_then_retried_by_the_admin(
    locked, provider_a, admin_a, endpoint, settings, client, django_capture_on_commit_callbacks
):
    settings.DELIVERY_BACKOFF_BASE_SECONDS = 10
    settings.DELIVERY_MAX_ATTEMPTS = 4
    endpoint.answer(503)
    _hook, secret = webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)

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
    assert len({r["body"] for r in endpoint.requests}) == 1, "every retry sends the very same bytes"
    # One message to the receiver: every retry keeps its webhook-id (the receiver deduplicates on
    # it) and is signed afresh, so each verifies on arrival however late the retry comes.
    assert {r["headers"]["webhook-id"] for r in endpoint.requests} == {f"evt_{event.pk}"}
    assert all(received(r, secret)["id"] == event.pk for r in endpoint.requests)
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
    assert endpoint.requests[4]["headers"]["webhook-id"] == f"evt_{event.pk}", "the admin's retry too"
    assert received(endpoint.requests[4], secret)["id"] == event.pk
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


def test_an_admin_creates_a_webhook_and_sees_its_secret_once_and_how_to_verify(provider_a, admin_a, endpoint, client):
    signed_in(client, admin_a)

    response = client.post(
        reverse("portal:webhooks"), {"url": endpoint.url, "events": ["payment.matched", "device.unlocked"]}
    )

    assert response.status_code == 200
    hook = ProviderWebhook.objects.get()
    assert hook.provider == provider_a and hook.events == ["device.unlocked", "payment.matched"] and hook.enabled
    assert hook.secret in response.content.decode()
    # A Standard Webhooks secret: whsec_ and the padded standard base64 of a 256-bit key.
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", hook.secret)
    assert len(base64.b64decode(hook.secret.removeprefix("whsec_"), validate=True)) == 32
    assert not hook.secret_legacy
    page = client.get(reverse("portal:webhooks")).content.decode()
    assert hook.secret not in page
    # The page says how to verify: the three headers and an off-the-shelf library.
    for words in ("webhook-id", "webhook-timestamp", "webhook-signature", "pip install standardwebhooks"):
        assert words in page, words
    assert "Webhook(secret).verify(body, headers)" in page
    assert reverse("api-docs") in page
    audit = AuditEvent.objects.get(action="webhook.create")
    assert audit.actor_id == admin_a.pk and "secret" not in audit.after
    assert hook.secret not in json.dumps(audit.after)
    assert audit.after["secret_fingerprint"].startswith("sha256:")


def test_a_second_rotation_in_the_overlap_is_refused_and_a_leaked_secret_is_stopped_at_once(
    locked, provider_a, admin_a, endpoint, client, django_capture_on_commit_callbacks
):
    """Reviews: a reload of the "Secret rotated" page rotated again and cut the receiver off; rotating
    again and again must not keep a leaked secret alive either."""
    hook, leaked = webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    signed_in(client, admin_a)
    client.post(reverse("portal:webhook_secret_rotate", args=[hook.pk]))
    hook.refresh_from_db()
    installed, until = hook.secret, hook.previous_secret_until

    again = client.post(reverse("portal:webhook_secret_rotate", args=[hook.pk]), follow=True)

    assert "The last rotation is still in its overlap" in again.content.decode()
    hook.refresh_from_db()
    assert (hook.secret, hook.previous_secret, hook.previous_secret_until) == (installed, leaked, until)
    assert AuditEvent.objects.filter(action="webhook.secret_rotate").count() == 1

    # The old secret leaked: the admin stops it at once; from then on only the new one signs.
    page = client.get(reverse("portal:webhooks")).content.decode()
    assert "Stop the previous secret now" in page
    client.post(reverse("portal:webhook_secret_overlap_end", args=[hook.pk]))
    hook.refresh_from_db()
    assert (hook.previous_secret, hook.previous_secret_until) == ("", None)
    event = AuditEvent.objects.get(action="webhook.secret_overlap_end")
    assert event.actor_id == admin_a.pk and event.before["previous_secret_fingerprint"].startswith("sha256:")
    assert event.after["previous_secret_fingerprint"] is None and leaked not in json.dumps(event.before)
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "100.00", external_id="TX-LEAK")
    delivery = endpoint.requests[-1]
    assert received(delivery, installed)["data"]["external_id"] == "TX-LEAK"
    assert refused(delivery, leaked) == "No matching signature found"
    # And the endpoint can be rotated again.
    assert client.post(reverse("portal:webhook_secret_rotate", args=[hook.pk])).status_code == 200


def test_an_admin_rotates_a_secret_and_both_sign_until_the_overlap_ends(
    locked, provider_a, admin_a, endpoint, client, django_capture_on_commit_callbacks
):
    hook, old_secret = webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    signed_in(client, admin_a)

    response = client.post(reverse("portal:webhook_secret_rotate", args=[hook.pk]))

    assert response.status_code == 200
    hook.refresh_from_db()
    new_secret = hook.secret
    assert new_secret != old_secret and hook.previous_secret == old_secret
    html = response.content.decode()
    assert "Secret rotated" in html and new_secret in html and old_secret not in html
    assert new_secret not in client.get(reverse("portal:webhooks")).content.decode(), "shown once"
    audit = AuditEvent.objects.get(action="webhook.secret_rotate")
    assert audit.actor_id == admin_a.pk and audit.organisation_id == provider_a.pk
    assert audit.before["secret_fingerprint"] != audit.after["secret_fingerprint"]
    assert audit.before["previous_secret_until"] is None and audit.after["previous_secret_until"]
    assert old_secret not in json.dumps([audit.before, audit.after])
    assert new_secret not in json.dumps([audit.before, audit.after])

    # During the overlap a receiver holding either secret accepts the event.
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "100.00", external_id="TX1")
    during = endpoint.requests[-1]
    assert len(during["headers"]["webhook-signature"].split(" ")) == 2
    assert received(during, old_secret) == received(during, new_secret)

    # Once it ends, the old secret signs nothing and is not kept.
    ProviderWebhook.objects.filter(pk=hook.pk).update(previous_secret_until=timezone.now() - dt.timedelta(seconds=1))
    webhook_events_redeliver_pending()
    hook.refresh_from_db()
    assert (hook.previous_secret, hook.previous_secret_until) == ("", None)
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "100.00", external_id="TX2")
    after = endpoint.requests[-1]
    assert received(after, new_secret)["data"]["external_id"] == "TX2"
    assert refused(after, old_secret) == "No matching signature found"


def _migration(app: str):
    """This branch's data migration to Standard Webhooks secrets, whatever number it gets when merged."""
    (path,) = Path(django_apps.get_app_config(app).path, "migrations").glob("*_standard_webhooks.py")
    spec = importlib.util.spec_from_file_location(f"{app}_standard_webhooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_secret_from_before_standard_webhooks_keeps_its_key(
    locked, provider_a, admin_a, endpoint, client, django_capture_on_commit_callbacks
):
    # What finlock issued before: "whsec_" and a urlsafe token (secrets.token_urlsafe(32)), the
    # HMAC keyed with the string itself.
    shown_then = "whsec_fwiIjmaafJmuzzwbFjIS8O-9ELVz-nFDxP_7e5ajY1k"
    hook, _ = webhook_create(provider=provider_a, url=endpoint.url, events=["payment.matched"], actor=admin_a)
    ProviderWebhook.objects.filter(pk=hook.pk).update(secret=shown_then)

    _migration("portal").to_standard(django_apps, None)

    hook.refresh_from_db()
    assert hook.secret_legacy and hook.secret != shown_then
    with django_capture_on_commit_callbacks(execute=True):
        pay(provider_a, "16666.66")
    # The receiver keeps the string it holds and hands the library its bytes: the key never changed.
    assert received(endpoint.requests[0], shown_then.encode())["event"] == "payment.matched"
    # Handed the string as a standard secret, the library derives another key (it skips the
    # urlsafe characters): the reason the page tells legacy receivers to pass bytes, or rotate.
    assert refused(endpoint.requests[0], shown_then) == "No matching signature found"
    signed_in(client, admin_a)
    assert "Webhook(secret.encode())" in client.get(reverse("portal:webhooks")).content.decode()
    # Rotating gives it a standard secret.
    rotated = client.post(reverse("portal:webhook_secret_rotate", args=[hook.pk]))
    hook.refresh_from_db()
    assert not hook.secret_legacy and hook.secret in rotated.content.decode()
    # And the migration is reversible: the old code gets its string back.
    ProviderWebhook.objects.filter(pk=hook.pk).update(secret_legacy=True, secret=hook.previous_secret)
    _migration("portal").to_legacy(django_apps, None)
    assert ProviderWebhook.objects.get(pk=hook.pk).secret == shown_then


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

    hook = ProviderWebhook.objects.get()
    assert client.post(reverse("portal:webhook_secret_rotate", args=[hook.pk])).status_code == 404

    signed_in(client, agent_a)
    assert client.get(reverse("portal:webhooks")).status_code == 403
    assert (
        client.post(reverse("portal:webhooks"), {"url": endpoint.url, "events": ["payment.matched"]}).status_code == 403
    )
    assert client.post(reverse("portal:webhook_secret_rotate", args=[hook.pk])).status_code == 403
    assert ProviderWebhook.objects.count() == 1
    assert ProviderWebhook.objects.get().secret == hook.secret and not hook.previous_secret
    assert not AuditEvent.objects.filter(action="webhook.secret_rotate").exists()


# --- nothing configured -----------------------------------------------------------------------


def test_without_a_webhook_nothing_is_written_and_the_payment_path_pays_one_read(locked, provider_a):
    with CaptureQueriesContext(connection) as queries:
        payment = pay(provider_a, "16666.66")

    assert payment.status == "matched"
    assert not WebhookEvent.objects.exists()
    touching = [q["sql"] for q in queries.captured_queries if "webhook" in q["sql"].lower()]
    assert len(touching) == 1 and touching[0].lstrip().upper().startswith("SELECT"), touching


# --- in the browser --------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_the_browser_an_admin_creates_a_webhook_reads_how_to_verify_and_rotates_its_secret(
    browser, live_server, provider_a, admin_a, request
):
    from tests.conftest import browser_sign_in, shot

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    browser_sign_in(page, live_server.url, admin_a)
    page.goto(f"{live_server.url}{reverse('portal:webhooks')}")
    page.fill("input[name=url]", "https://erp.example.com/hooks/finlock")
    page.get_by_label("payment.matched").check()
    page.get_by_role("button", name="Create webhook").click()
    page.wait_for_load_state()

    created = page.locator("[role=status] code.secret").inner_text()
    assert created == ProviderWebhook.objects.get().secret
    assert page.get_by_role("heading", name="How to verify an event").is_visible()
    assert "pip install standardwebhooks" in page.content()
    shot(page, request, "created")

    page.get_by_role("button", name="Rotate the secret of https://erp.example.com/hooks/finlock").click()
    page.wait_for_load_state()
    rotated = page.locator("[role=status] code.secret").inner_text()
    hook = ProviderWebhook.objects.get()
    assert page.get_by_role("heading", name="Secret rotated").is_visible()
    assert rotated == hook.secret != created and hook.previous_secret == created
    assert "The previous secret also signs until" in page.content()
    shot(page, request, "rotated")
