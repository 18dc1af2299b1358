"""Pushing signed commands to phones: the outbox worker behind ``devices.tasks``.

A ``DeviceCommand`` row is the outbox entry, written in the same transaction as the
change of desired state. This module turns it into pushes on the channels of
docs/lock-pipeline.md and keeps the bookkeeping on the row:

* **MQTT** (when ``settings.MQTT_URL`` is set): the envelope is published on the
  device's topic with QoS 1 and ``retain=True``, so a phone coming online receives
  its latest command at once.
* **Provider gateway webhook** (when the provider has an enabled ``DeviceGateway``):
  ``POST`` of the envelope, signed the Standard Webhooks way (``portal.outbound``):
  ``webhook-id: cmd_<command id>`` (the same on every retry), ``webhook-timestamp`` and
  ``webhook-signature`` with the gateway's ``whsec_`` secret, so a copy replayed later is
  refused by the gateway's verifier.

Every channel try is a ``DeliveryAttempt`` row. A command is delivered when every
applicable channel has accepted it once (a channel that already succeeded is not
re-sent on a retry); otherwise it is retried with exponential backoff and jitter and,
after ``DELIVERY_MAX_ATTEMPTS`` failed rounds, dead-lettered for staff to retry. That
bookkeeping (claim, backoff, redelivery, dead letters, retry) is the one outbox's,
``portal.outbox``, shared with the provider webhooks; this module adds what is the
commands' own: the channels, supersession and per-device serialisation.

Decisions worth knowing (the portal shows the outcome of each):

* **Only a device's latest command is pushed.** The MQTT topic is retained: whatever
  is published last is what a phone coming online sees. Publishing an older command
  after a newer one would leave the older state on the broker, so an undelivered
  command that has a newer sibling is *superseded*: it is closed without being sent
  (``delivered_at`` set: nothing more to push; ``last_error`` says "Superseded by #N").
  Phones ignore lower sequence numbers anyway; this also keeps the broker right.
  Pushes for one device are serialised (a PostgreSQL advisory lock) so a worker that
  checked "I am the latest" finishes its publish before any newer command's worker
  starts; SQLite serialises all writers anyway.
* **No push channel** (no ``MQTT_URL`` and no enabled gateway: the embedded
  development default, or a pull-only deployment): nothing is sent and nothing is
  recorded as an attempt; the command stays pending with a note, and is looked at
  again after ``DELIVERY_BACKOFF_CAP_SECONDS``. The phone still gets it by pulling
  (check-in). It never goes dead for lack of a channel.
* **At least once.** A worker that dies after a publish but before its transaction
  commits pushes the same command again on the retry. That is harmless: the same
  sequence number is applied once by the phone, and the retained message is the same.
* **Unlocks never wait behind locks.** A command that gives the phone back (``unlocked``,
  ``temp_unlocked``, ``released``) is delivered by ``devices.deliver_unlock``, routed to
  the ``unlocks`` queue (``CELERY_TASK_ROUTES``) that a worker of its own consumes; locks
  and reminders go by ``devices.deliver_command`` on the usual ``celery`` queue. So a
  portfolio's 100,000 locks queued at 08:00 never delay the phone of someone who just
  paid. Both tasks run the same ``command_deliver``; the per-device lock above keeps their
  pushes in order. In-process mode (no broker) has no queues: both run at once, as before.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from paho.mqtt.enums import CallbackAPIVersion

from devices.models import Channel, DeliveryAttempt, DeviceCommand, DeviceGateway, LockState
from devices.protocol import topic_for
from portal.outbound import PushError, backoff_seconds, signed_post
from portal.outbox import ERROR_LIMIT, OutboxTable, Outcome
from portal.queue import enqueue_each
from portal.types import Actor

__all__ = [
    "COMMANDS",
    "NO_CHANNEL_NOTE",
    "SUPERSEDED_PREFIX",
    "UNLOCK_STATES",
    "UNLOCK_TASK",
    "DeliveryError",
    "Outcome",
    "backoff_seconds",
    "command_deliver",
    "command_retry",
    "commands_enqueue",
    "commands_redeliver_pending",
    "delivery_status",
    "envelope_bytes",
    "gateway_message_id",
    "mqtt_publish",
    "pending_commands",
    "webhook_post",
    "with_superseded",
]

logger = logging.getLogger(__name__)

#: ``last_error`` of a command closed because a newer one exists; the portal keys on it.
SUPERSEDED_PREFIX = "Superseded by #"
#: ``last_error`` of a command that has no push channel (it waits for the phone's check-in).
NO_CHANNEL_NOTE = (
    "No push channel configured (MQTT_URL unset and no enabled provider gateway); "
    "the phone receives this command at check-in."
)
#: Namespace of the per-device advisory lock (an arbitrary constant that no other lock in finlock uses).
_ADVISORY_NAMESPACE = 0x0F1C_0DE1

#: States that give a phone back: delivered on the ``unlocks`` queue, ahead of any lock backlog.
UNLOCK_STATES = (LockState.UNLOCKED, LockState.TEMP_UNLOCKED, LockState.RELEASED)
#: The task that delivers them (the same work as ``devices.deliver_command``; routed to "unlocks").
UNLOCK_TASK = "devices.deliver_unlock"
#: Ids per state lookup when queueing (well under every backend's limit on query parameters).
_ROUTE_BATCH = 5000


@dataclass(frozen=True)
class CommandsOutbox(OutboxTable[DeviceCommand]):
    """The commands' outbox: ``portal.outbox``'s, but every queueing routes by the command's state.

    Overriding ``enqueue`` covers every path that queues a command (a new command on commit,
    the periodic redelivery, a staff retry): an unlock is always queued as ``UNLOCK_TASK``.
    """

    def enqueue(self, ids: Iterable[int]) -> int:
        """Queue the unlocks first (``UNLOCK_TASK``), then the rest; return how many were queued.

        One query per 5,000 ids reads their states. Never raises for a broker outage: the
        first failure ends the run, and the periodic job queues what is left.
        """
        pending = list(ids)
        unlocks: set[int] = set()
        for start in range(0, len(pending), _ROUTE_BATCH):
            unlocks.update(
                DeviceCommand.objects.filter(
                    pk__in=pending[start : start + _ROUTE_BATCH], state__in=UNLOCK_STATES
                ).values_list("pk", flat=True)
            )
        first = [pk for pk in pending if pk in unlocks]
        queued = enqueue_each(UNLOCK_TASK, first, what=self.what)
        if len(queued) < len(first):  # the broker failed: the others would wait out the same outage
            return len(queued)
        rest = [pk for pk in pending if pk not in unlocks]
        return len(queued) + len(enqueue_each(self.task_name, rest, what=self.what))


#: The commands' outbox table: claim, backoff, redelivery, dead letters and retry are ``portal.outbox``'s.
COMMANDS: CommandsOutbox = CommandsOutbox(
    model=DeviceCommand,
    task_name="devices.deliver_command",
    what="command",
    log_prefix="deliver",
    redeliver_log_prefix="redeliver",
    claim_related=("device",),
    unscheduled_is_due=True,
)


class DeliveryError(Exception):
    """One channel refused or could not take a command; the message is shown to staff."""


# --- the wire ------------------------------------------------------------------


def envelope_bytes(command: DeviceCommand) -> bytes:
    """The envelope as sent on every push channel: compact JSON with sorted keys.

    The gateway's webhook signature covers exactly these bytes; the Ed25519 signature inside
    covers the canonical form of ``command`` and does not depend on this encoding.
    """
    return json.dumps(command.envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def mqtt_publish(*, url: str, topic: str, payload: bytes, timeout: float) -> None:
    """Publish one retained QoS 1 message and wait for the broker's PUBACK; ``DeliveryError`` if not.

    One short-lived connection per publish. A cached per-process client would save a
    handshake, but paho keeps unacknowledged QoS 1 messages queued across reconnects
    and would send them later, possibly after a newer command was published by another
    worker, leaving an older command retained. A connection that lives exactly as long
    as one publish cannot do that, and it needs no care around Celery's forked workers.
    """
    parsed = urlparse(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"finlock-deliver-{uuid.uuid4().hex[:16]}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if parsed.username:
        client.username_pw_set(unquote(parsed.username), unquote(parsed.password) if parsed.password else None)
    if parsed.scheme == "mqtts":
        client.tls_set()
    client.connect_timeout = timeout
    connected = threading.Event()
    answer: dict[str, Any] = {}

    def on_connect(_client: object, _userdata: object, _flags: object, reason_code: Any, _properties: object) -> None:
        answer["reason"] = reason_code
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(parsed.hostname or "127.0.0.1", parsed.port or (8883 if parsed.scheme == "mqtts" else 1883), 30)
    except (OSError, ValueError) as exc:
        raise DeliveryError(f"MQTT broker unreachable: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise DeliveryError(f"MQTT broker did not answer CONNECT within {timeout:g} s")
        if answer["reason"].is_failure:
            raise DeliveryError(f"MQTT broker refused the connection: {answer['reason']}")
        info = client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise DeliveryError(f"MQTT publish failed: {exc}") from exc
        if not info.is_published():
            raise DeliveryError(f"MQTT broker did not acknowledge the publish within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()


def gateway_message_id(command_id: int) -> str:
    """The ``webhook-id`` of a command's POST to the gateway: the same on every retry."""
    return f"cmd_{command_id}"


def webhook_post(*, gateway: DeviceGateway, body: bytes, command_id: int, timeout: float) -> None:
    """POST the envelope to the provider's gateway, Standard Webhooks-signed; 2xx or ``DeliveryError``.

    Through ``portal.outbound.signed_post``, the one guarded poster: https-only in production,
    no private, loopback or link-local destination, no redirects, a timeout.
    """
    try:
        signed_post(
            url=gateway.url,
            body=body,
            signing_secrets=[gateway.secret],
            msg_id=gateway_message_id(command_id),
            headers={},
            timeout=timeout,
            receiver="gateway",
            user_agent="finlock-delivery/1",
        )
    except PushError as exc:
        raise DeliveryError(str(exc)) from exc
    except ValueError as exc:  # a secret that is no whsec_ secret (the admin form refuses one)
        raise DeliveryError(f"the gateway's secret cannot sign: {exc}") from exc


# --- delivering one command ----------------------------------------------------


def _serialise_device(device_id: int) -> None:
    """Hold a per-device lock until the transaction ends, so pushes of one device never overlap.

    Race prevented: worker A checks that #5 is the device's latest command; #6 is then
    issued and worker B publishes it; A publishes #5 last and the retained topic ends on
    the older command. With this lock B waits until A has published and committed, and
    publishes after it. An advisory lock (not ``SELECT ... FOR UPDATE`` on the device
    row) so that check-ins, acknowledgements and new commands, which update the device
    row, never wait behind a slow publish.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_ADVISORY_NAMESPACE, device_id % 2**31])
    # SQLite (development): one writer at a time anyway, and the default configuration begins
    # every transaction IMMEDIATE, taking the write lock before the check above.


def _channels_for(command: DeviceCommand) -> tuple[list[str], DeviceGateway | None]:
    channels: list[str] = []
    if settings.MQTT_URL:
        channels.append(Channel.MQTT)
    gateway = DeviceGateway.objects.filter(provider_id=command.device.provider_id, enabled=True).first()
    if gateway is not None:
        channels.append(Channel.WEBHOOK)
    return channels, gateway


def _push(channel: str, command: DeviceCommand, body: bytes, gateway: DeviceGateway | None) -> None:
    if channel == Channel.MQTT:
        mqtt_publish(
            url=settings.MQTT_URL or "",
            topic=topic_for(str(command.device.uid)),
            payload=body,
            timeout=settings.MQTT_PUBLISH_TIMEOUT_SECONDS,
        )
    else:
        assert gateway is not None  # the webhook channel exists only with an enabled gateway
        webhook_post(
            gateway=gateway, body=body, command_id=command.pk, timeout=settings.DELIVERY_WEBHOOK_TIMEOUT_SECONDS
        )


def _close_if_superseded(command: DeviceCommand) -> bool:
    """Close ``command`` without pushing it when the device has a newer one (see the module doc)."""
    newer = (
        DeviceCommand.objects.filter(device_id=command.device_id, seq__gt=command.seq)
        .order_by("-seq")
        .values_list("seq", flat=True)
        .first()
    )
    if newer is None:
        return False
    command.delivered_at = timezone.now()
    command.next_attempt_at = None
    command.last_error = f"{SUPERSEDED_PREFIX}{newer}: not pushed any more (the phone gets #{newer} instead)."
    command.save(update_fields=["delivered_at", "next_attempt_at", "last_error"])
    logger.info("deliver: command %s (#%s) superseded by #%s", command.pk, command.seq, newer)
    return True


def _push_round(command: DeviceCommand, channels: list[str], gateway: DeviceGateway | None) -> list[str]:
    """Push on every channel that has not taken the command yet; record each try; return the errors."""
    already = set(DeliveryAttempt.objects.filter(command=command, ok=True).values_list("channel", flat=True))
    body = envelope_bytes(command)
    errors: list[str] = []
    attempts = []
    for channel in (c for c in channels if c not in already):
        try:
            _push(channel, command, body, gateway)
            error = ""
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:
            # A bug or an unexpected library error must not lose the bookkeeping: it is
            # recorded like any failure (and retried, then dead-lettered where staff see it).
            logger.exception("deliver: unexpected error pushing command %s via %s", command.pk, channel)
            error = f"{type(exc).__name__}: {exc}"
        attempts.append(
            DeliveryAttempt(
                command=command, channel=channel, at=timezone.now(), ok=not error, error=error[:ERROR_LIMIT]
            )
        )
        if error:
            errors.append(f"{Channel(channel).label}: {error}"[:ERROR_LIMIT])
    DeliveryAttempt.objects.bulk_create(attempts)
    if attempts:  # a round that pushed nothing (every channel took it before) is not an attempt
        command.attempts += 1
    return errors


def command_deliver(*, command_id: int) -> Outcome:
    """Push one command on its channels and record the outcome on the row (see the module doc).

    Safe to call any number of times for the same command, concurrently or late:
    a delivered, dead, superseded, locked or not-yet-due command is left alone.
    """
    with transaction.atomic():
        claimed = COMMANDS.claim(command_id)
        if isinstance(claimed, Outcome):
            return claimed
        command = claimed
        _serialise_device(command.device_id)
        if _close_if_superseded(command):
            return Outcome("superseded")
        channels, gateway = _channels_for(command)
        if not channels:
            wait = timedelta(seconds=settings.DELIVERY_BACKOFF_CAP_SECONDS)
            COMMANDS.park(command, note=NO_CHANNEL_NOTE, dead=False, wait=wait)
            return Outcome("no_channel")
        errors = _push_round(command, channels, gateway)
        return COMMANDS.settle(command, error="\n".join(errors), label=f"command {command.pk} (#{command.seq})")


# --- queueing ------------------------------------------------------------------


def commands_enqueue(command_ids: Iterable[int]) -> int:
    """Queue delivery tasks for ``command_ids`` (for ``transaction.on_commit``); return how many were queued.

    Unlocks go first and on their own queue (``CommandsOutbox.enqueue``).

    Never raises for a broker outage: the commands are durable rows, so a failed enqueue
    only delays them until ``commands_redeliver_pending`` runs after the broker is back.
    """
    return COMMANDS.enqueue(command_ids)


def pending_commands(now: datetime) -> QuerySet[DeviceCommand]:
    """Commands that still have to be pushed and are due: never tried, or past their backoff."""
    return COMMANDS.pending(now)


def commands_redeliver_pending(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Re-queue every due, undelivered command (the periodic job, ``portal.outbox``); return how many were queued."""
    return COMMANDS.redeliver_pending(now=now, limit=limit)


# --- dead letters --------------------------------------------------------------


def with_superseded(qs: QuerySet[DeviceCommand]) -> QuerySet[DeviceCommand]:
    """Annotate ``superseded``: the device has a newer command (so retrying this one is pointless)."""
    newer = DeviceCommand.objects.filter(device_id=OuterRef("device_id"), seq__gt=OuterRef("seq"))
    return qs.annotate(superseded=Exists(newer))


def _newer_exists(command: DeviceCommand) -> str | None:
    if DeviceCommand.objects.filter(device_id=command.device_id, seq__gt=command.seq).exists():
        return "A newer command exists for this device; it is the one the phone needs."
    return None


def command_retry(*, command: DeviceCommand, actor: Actor, ip_address: str | None = None) -> DeviceCommand:
    """Give a dead-lettered command a fresh set of attempts and queue it now; audited as ``device.command_retry``.

    Refused (``ValidationError``) unless the command is dead and still the device's
    latest: an older command would only be closed as superseded.
    """
    return COMMANDS.retry_dead(
        command,
        actor=actor,
        action="device.command_retry",
        not_dead="This command is not in the dead letters (it was delivered or retried already).",
        ip_address=ip_address,
        related=("device__provider",),
        refuse=_newer_exists,
        organisation=lambda locked: locked.device.provider,
    )


def delivery_status(command: DeviceCommand) -> str:
    """One word for the portal: acknowledged, delivered, superseded, dead or pending."""
    if command.acknowledged_at is not None:
        return "acknowledged"
    if command.dead_at is not None:
        return "dead"
    if command.delivered_at is not None:
        return "superseded" if command.last_error.startswith(SUPERSEDED_PREFIX) else "delivered"
    return "pending"
