"""Provider webhooks: events of a provider's own business, pushed to its systems.

``payments`` reports ``payment.matched`` and ``devices`` reports ``device.locked`` and
``device.unlocked`` by calling ``webhook_event_emit`` inside the transaction that makes
the change. That writes one ``WebhookEvent`` (the outbox row) per enabled endpoint
subscribed to the event, so an event exists exactly when the change committed, and
queues its delivery once the transaction commits.

Delivery (``webhook_event_deliver``, Celery task ``portal.deliver_webhook_event``) POSTs

    {"id": <event id>, "event": "payment.matched", "created_at": "...Z", "data": {...}}

(compact JSON, sorted keys: the same bytes on every retry) signed the Standard Webhooks
way (``portal.outbound``): ``webhook-id: evt_<event id>`` (the same on every retry),
``webhook-timestamp`` (this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">`` keyed with the base64-decoded ``whsec_``
secret; plus ``X-Finlock-Event: <event name>``. Each event's body is described in the
OpenAPI document's ``webhooks`` (``payments.api.webhooks``, ``devices.api.webhooks``).
2xx is delivered; anything else is retried with the device pipeline's backoff
(``DELIVERY_BACKOFF_*``) and dead after ``DELIVERY_MAX_ATTEMPTS``, shown on the Webhooks
page where an admin can retry it. Delivery is at least once: a receiver deduplicates on
``webhook-id``.

This lives in ``portal`` (the bottom layer) so that ``payments`` and ``devices`` can call
it; it knows nothing of payments or devices beyond the payloads they hand it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from portal.audit import audit_record, snapshot
from portal.models import Organisation, OrganisationKind, ProviderWebhook, User, WebhookEvent, WebhookEventName
from portal.outbound import (
    PushError,
    signed_post,
    webhook_secret_fingerprint,
    webhook_secret_generate,
)
from portal.outbox import ERROR_LIMIT, OutboxTable, Outcome
from portal.templatetags.finlock import local
from portal.types import Actor

logger = logging.getLogger(__name__)

#: ``last_error`` of an event whose endpoint was disabled before it could be delivered.
DISABLED_NOTE = "The webhook was disabled; enable it and retry to send this event."
#: After a rotation every POST is signed with the old secret too for this long, so the
#: receiver can switch to the new one without refusing (and so delaying) any event.
SECRET_OVERLAP = timedelta(hours=24)

#: The events' outbox table: claim, backoff, redelivery, dead letters and retry are ``portal.outbox``'s.
EVENTS: OutboxTable[WebhookEvent] = OutboxTable(
    model=WebhookEvent,
    task_name="portal.deliver_webhook_event",
    what="event",
    log_prefix="webhooks",
    redeliver_log_prefix="webhooks",
    claim_related=("webhook",),
)


def _audited(hook: ProviderWebhook) -> dict[str, Any]:
    """What the audit trail keeps of an endpoint: its non-secret fields and which secret it has.

    ``secret_fingerprint`` (the first 64 bits of SHA-256 over the key) shows a rotation as
    a real before and after without revealing anything usable about a 256-bit key.
    """
    previous = webhook_secret_fingerprint(hook.previous_secret) if hook.previous_secret else None
    return {
        **snapshot(hook),
        "secret_fingerprint": webhook_secret_fingerprint(hook.secret),
        "previous_secret_fingerprint": previous,
    }


# --- emitting -----------------------------------------------------------------


def webhook_event_emit(*, provider: Organisation | int, event: str, payload: dict[str, Any]) -> list[WebhookEvent]:
    """Record ``event`` for every enabled endpoint of ``provider`` subscribed to it; queue delivery on commit.

    Call it inside the transaction that makes the change: the rows commit or roll back
    with it, so a provider is never told of a payment that was rolled back, and never
    misses one that committed. ``provider`` may be the organisation or its id (callers
    that hold only ``provider_id`` save a query). With no subscribed endpoint this is one
    indexed read and writes nothing.
    """
    if event not in WebhookEventName.values:
        raise ValueError(f"unknown webhook event {event!r}")
    provider_id = provider.pk if isinstance(provider, Organisation) else provider
    # Filtered in Python: JSONField "contains" is not available on SQLite, and a provider
    # has a handful of endpoints at most.
    hooks = [
        hook_id
        for hook_id, events in ProviderWebhook.objects.filter(provider_id=provider_id, enabled=True).values_list(
            "id", "events"
        )
        if event in events
    ]
    if not hooks:
        return []
    now = timezone.now()
    # Datetimes become ISO 8601 (UTC, "Z"), decimals strings: what the receiver parses.
    data = json.loads(json.dumps(payload, cls=DjangoJSONEncoder))
    rows = WebhookEvent.objects.bulk_create(
        WebhookEvent(
            provider_id=provider_id, webhook_id=hook_id, event=event, payload=data, created_at=now, next_attempt_at=now
        )
        for hook_id in hooks
    )
    ids = [row.pk for row in rows]
    # Race prevented: a task queued before the commit could run before the rows are
    # visible to the worker and find nothing. on_commit queues only once they are.
    transaction.on_commit(lambda: webhook_events_enqueue(ids))
    return rows


def webhook_events_emit(
    *, provider: Organisation | int, event: str, payloads: list[dict[str, Any]]
) -> list[WebhookEvent]:
    """:func:`webhook_event_emit` for many events of one kind at once (a statement import's matches).

    One read of the provider's endpoints and one insert, whatever the number of events;
    same transaction rules.
    """
    if event not in WebhookEventName.values:
        raise ValueError(f"unknown webhook event {event!r}")
    if not payloads:
        return []
    provider_id = provider.pk if isinstance(provider, Organisation) else provider
    hooks = [
        hook_id
        for hook_id, events in ProviderWebhook.objects.filter(provider_id=provider_id, enabled=True).values_list(
            "id", "events"
        )
        if event in events
    ]
    if not hooks:
        return []
    now = timezone.now()
    data = json.loads(json.dumps(payloads, cls=DjangoJSONEncoder))
    rows = WebhookEvent.objects.bulk_create(
        [
            WebhookEvent(
                provider_id=provider_id,
                webhook_id=hook_id,
                event=event,
                payload=item,
                created_at=now,
                next_attempt_at=now,
            )
            for item in data
            for hook_id in hooks
        ],
        batch_size=2000,
    )
    ids = [row.pk for row in rows]
    transaction.on_commit(lambda: webhook_events_enqueue(ids))
    return rows


def webhook_events_enqueue(event_ids: list[int]) -> int:
    """Queue delivery tasks for ``event_ids`` (for ``transaction.on_commit``); return how many were queued.

    Never raises for a broker outage: the events are durable rows, so a failed enqueue
    only delays them until ``webhook_events_redeliver_pending`` runs after the broker is back.
    """
    return EVENTS.enqueue(event_ids)


# --- delivering ---------------------------------------------------------------


def _utc(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def webhook_message_id(event: WebhookEvent) -> str:
    """The ``webhook-id`` of ``event``: the same on every retry, so a receiver can deduplicate."""
    return f"evt_{event.pk}"


def webhook_event_body(event: WebhookEvent) -> bytes:
    """The exact bytes POSTed for ``event`` (and signed): the same on every retry."""
    document = {"id": event.pk, "event": event.event, "created_at": _utc(event.created_at), "data": event.payload}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _post(event: WebhookEvent, now: dt.datetime) -> tuple[int | None, str]:
    """POST ``event`` to its endpoint once; the status code (when it answered) and the error ("" if 2xx)."""
    hook = event.webhook
    try:
        status_code = signed_post(
            url=hook.url,
            body=webhook_event_body(event),
            signing_secrets=hook.signing_secrets(now),
            msg_id=webhook_message_id(event),
            headers={"X-Finlock-Event": event.event},
            timeout=settings.DELIVERY_WEBHOOK_TIMEOUT_SECONDS,
        )
    except PushError as exc:
        return exc.status_code, str(exc)
    except Exception as exc:
        # A bug or an unexpected library error must not lose the bookkeeping: recorded
        # like any failure (retried, then dead where the admin sees it).
        logger.exception("webhooks: unexpected error posting event %s", event.pk)
        return None, f"{type(exc).__name__}: {exc}"
    return status_code, ""


def webhook_event_deliver(*, event_id: int) -> Outcome:
    """POST one event to its endpoint and record the outcome on the row.

    Safe to call any number of times for the same event, concurrently or late: a
    delivered, dead, locked or not-yet-due event is left alone (``portal.outbox``).
    """
    with transaction.atomic():
        claimed = EVENTS.claim(event_id)
        if isinstance(claimed, Outcome):
            return claimed
        event = claimed
        if not event.webhook.enabled:
            # Not an attempt: nothing was sent. Parked where the admin sees it.
            EVENTS.park(event, note=DISABLED_NOTE, dead=True)
            return Outcome("dead")
        status_code, error = _post(event, timezone.now())
        event.attempts += 1
        event.last_status_code = status_code
        return EVENTS.settle(
            event, error=error[:ERROR_LIMIT], label=f"event {event.pk}", extra_fields=["last_status_code"]
        )


def pending_webhook_events(now: dt.datetime) -> QuerySet[WebhookEvent]:
    """Events still to be sent whose next attempt is due (served by the partial index)."""
    return EVENTS.pending(now)


def webhook_events_redeliver_pending(*, now: dt.datetime | None = None, limit: int = 1000) -> int:
    """Re-queue every due, undelivered event (the periodic job, ``portal.outbox``); return how many were queued."""
    now = now or timezone.now()
    # Housekeeping: a rotated secret past its overlap signs nothing any more; do not keep it.
    ProviderWebhook.objects.filter(previous_secret_until__lte=now).update(
        previous_secret="", previous_secret_until=None
    )
    return EVENTS.redeliver_pending(now=now, limit=limit)


# --- managing endpoints ---------------------------------------------------------


def webhook_create(
    *, provider: Organisation, url: str, events: list[str], actor: Actor, ip_address: str | None = None
) -> tuple[ProviderWebhook, str]:
    """Create an endpoint for ``provider``; returns the row and its secret (shown to the admin once).

    ``ValidationError`` for a non-https URL (unless ``DEBUG``), an unknown event name, or
    a provider that is not a financing provider. Audited as ``webhook.create`` (without
    the secret).
    """
    if provider.kind != OrganisationKind.PROVIDER:
        raise ValidationError({"provider": ["Only a financing provider has webhooks."]})
    secret = webhook_secret_generate()
    hook = ProviderWebhook(
        provider=provider,
        url=(url or "").strip(),
        secret=secret,
        events=sorted(set(events or [])),
        created_by=actor if isinstance(actor, User) else None,
    )
    hook.full_clean()
    with transaction.atomic():
        hook.save()
        audit_record(actor=actor, action="webhook.create", obj=hook, after=_audited(hook), ip_address=ip_address)
    return hook, secret


def webhook_secret_rotate(
    *, webhook: ProviderWebhook, actor: Actor, ip_address: str | None = None
) -> tuple[ProviderWebhook, str]:
    """Give ``webhook`` a new secret; returns the row and the new secret (shown to the admin once).

    The old secret keeps signing alongside the new one for ``SECRET_OVERLAP`` (Standard
    Webhooks sends one signature per secret), so a receiver still holding it accepts
    every event until it switches. Rotating a legacy secret is how an endpoint gets a
    standard one. Audited as ``webhook.secret_rotate`` (which secret signs, which one
    keeps signing and until when; never a secret).

    While that overlap runs, rotating again is refused (``ValidationError``): it would have
    to drop either the secret the receiver holds or the one it is switching to, and a
    reload of the page must change nothing. After a leak, end the overlap first
    (:func:`webhook_secret_overlap_end`), which stops the old secret at once.
    """
    now = timezone.now()
    with transaction.atomic():
        # Race prevented: two admins rotating at once would each keep "the previous secret"
        # of a row the other already changed, and one of the secrets shown would never
        # sign anything. The row lock orders them; the second finds the overlap running.
        locked = ProviderWebhook.objects.select_for_update().get(pk=webhook.pk)
        if locked.previous_secret and locked.previous_secret_until and locked.previous_secret_until > now:
            raise ValidationError(
                "The last rotation is still in its overlap: the old secret signs too until "
                f"{local(locked.previous_secret_until, locked.provider)}. "
                "Rotate again after that, or stop the old secret now (if it leaked) and then rotate."
            )
        before = _audited(locked)
        secret = webhook_secret_generate()
        locked.previous_secret = locked.secret
        locked.previous_secret_until = now + SECRET_OVERLAP
        locked.secret = secret
        locked.secret_legacy = False
        locked.save(update_fields=["secret", "previous_secret", "previous_secret_until", "secret_legacy"])
        audit_record(
            actor=actor,
            action="webhook.secret_rotate",
            obj=locked,
            before=before,
            after=_audited(locked),
            ip_address=ip_address,
        )
    return locked, secret


def webhook_secret_overlap_end(
    *, webhook: ProviderWebhook, actor: Actor, ip_address: str | None = None
) -> ProviderWebhook:
    """Stop the previous secret signing now (it leaked, or the receiver has switched); audited.

    Changes nothing when no previous secret signs. Audited as ``webhook.secret_overlap_end``.
    """
    with transaction.atomic():
        # Race prevented: a rotation at the same moment; the row lock orders them.
        locked = ProviderWebhook.objects.select_for_update().get(pk=webhook.pk)
        if not locked.previous_secret:
            return locked
        before = _audited(locked)
        locked.previous_secret, locked.previous_secret_until = "", None
        locked.save(update_fields=["previous_secret", "previous_secret_until"])
        audit_record(
            actor=actor,
            action="webhook.secret_overlap_end",
            obj=locked,
            before=before,
            after=_audited(locked),
            ip_address=ip_address,
        )
    return locked


def webhook_event_retry(*, event: WebhookEvent, actor: Actor, ip_address: str | None = None) -> WebhookEvent:
    """Give a dead event a fresh set of attempts and queue it now; audited as ``webhook.event_retry``.

    ``ValidationError`` unless the event is dead.
    """
    return EVENTS.retry_dead(
        event,
        actor=actor,
        action="webhook.event_retry",
        not_dead="This event is not dead (it was delivered or retried already).",
        ip_address=ip_address,
        also_reset={"last_status_code": None},
    )
