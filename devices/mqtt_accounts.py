"""Phones' accounts on the MQTT broker: a phone reads only its own topic, only finlock publishes.

The broker is Mosquitto 2.0 with its dynamic-security plugin and the configuration in
``deploy/mosquitto/`` (anonymous clients refused). ``manage.py mqtt_setup`` sets it up once,
signed in as the plugin's administrator (``broker_setup``):

* default access for anything no role allows: no publishing, no receiving, no subscribing;
* role ``finlock-publisher`` may publish to ``finlock/v1/devices/+/command``, nothing else.
  Its account is the one in ``MQTT_URL`` (``devices/delivery.py`` publishes with it);
* role ``finlock-provisioner`` may send commands to the plugin (``$CONTROL/dynamic-security/v1``)
  and read its answers. Its account is the one in ``MQTT_PROVISION_URL``: finlock creates
  phones' accounts with it while running, without restarting the broker.

Each enrolled phone then gets (``mqtt_accounts_sync``):

* an account named by the device uid, usable only with client id = that uid (so one phone
  cannot take over another's MQTT session by reusing its client id);
* its own role ``finlock-phone-<uid>``: subscribe to and receive ``finlock/v1/devices/<uid>/command``,
  and nothing else, so publishing anything is refused. One role per phone because Mosquitto
  2.0 does not substitute ``%u`` in dynamic-security ACLs (2.1 does).

The phone's password is never stored: it is HMAC-SHA256, keyed with ``MQTT_PHONE_PASSWORD_KEY``,
over the device uid and the digest of the phone's current device credential. Every
enrolment issues a new device credential, hence a new MQTT password, and the phone's row
here (``MqttAccount.synced_digest``) says which credential the broker knows the password
of. After the enrolment commits, a task gives the broker the new password (the change
disconnects a session still signed in with the old one); when the broker or the task
queue is down, the periodic ``devices.sync_mqtt_accounts`` retries every device whose
broker account is behind its enrolment. Nothing is lost and no secret is kept to retry.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from paho.mqtt.enums import CallbackAPIVersion

from devices.models import Device, MqttAccount
from devices.protocol import topic_for
from portal.audit import AuditEntry, audit_record, audit_record_many
from portal.queue import enqueue_each
from portal.types import Actor

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
COMMAND_TOPICS = topic_for("+")  # finlock/v1/devices/+/command
PUBLISHER_ROLE = "finlock-publisher"
PROVISIONER_ROLE = "finlock-provisioner"
PHONE_ROLE_PREFIX = "finlock-phone-"
#: Phones per message to the plugin: it rewrites its whole JSON file after every command, so a
#: message is kept small enough to be answered well within MQTT_PUBLISH_TIMEOUT_SECONDS.
SYNC_BATCH = 50
#: How long one periodic run keeps taking batches (well under the task's soft time limit).
SYNC_BUDGET_SECONDS = 45.0
_PASSWORD_CONTEXT = b"finlock-mqtt-phone-password-v1"
_ERROR_LIMIT = MqttAccount._meta.get_field("last_error").max_length


class BrokerError(Exception):
    """The broker or its dynamic-security plugin could not be reached or refused; never holds a password."""


def enabled() -> bool:
    """Phone accounts are on: finlock has an account to create them with (``MQTT_PROVISION_URL``)."""
    return bool(settings.MQTT_PROVISION_URL)


def phone_password(*, device_uid: str, credential_digest: str) -> str:
    """The phone's MQTT password: derived, so it never has to be stored and a retry can recompute it."""
    message = b"\x00".join((_PASSWORD_CONTEXT, device_uid.encode(), credential_digest.encode()))
    mac = hmac.new((settings.MQTT_PHONE_PASSWORD_KEY or "").encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def phone_role(device_uid: str) -> str:
    return f"{PHONE_ROLE_PREFIX}{device_uid}"


def account_for_enrolment(*, device: Device) -> dict[str, str] | None:
    """The enrolment's hook: the phone's MQTT credential for the answer, or None when accounts are off.

    Runs inside ``device_enroll``'s transaction, after the new device credential is set.
    Marks the phone as having a broker account and gives the broker its password once the
    enrolment commits (a rolled-back enrolment changes nothing on the broker).
    """
    if not enabled():
        return None
    MqttAccount.objects.bulk_create([MqttAccount(device_id=device.pk)], ignore_conflicts=True)
    transaction.on_commit(lambda: accounts_enqueue([device.pk]))
    username = str(device.uid)
    password = phone_password(device_uid=username, credential_digest=device.credential_digest)
    return {"username": username, "password": password}


def accounts_enqueue(device_ids: Iterable[int]) -> int:
    """Queue one sync task per device; never raises (the periodic job catches up on anything missed)."""
    return len(enqueue_each("devices.sync_mqtt_account", device_ids, what="device"))


# --- the broker's control API ----------------------------------------------------------


def _client_for(url: str, client_id: str) -> tuple[mqtt.Client, str, int]:
    parsed = urlparse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    if parsed.username:
        client.username_pw_set(unquote(parsed.username), unquote(parsed.password) if parsed.password else None)
    if parsed.scheme == "mqtts":
        client.tls_set()
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
    return client, host, port


def dynsec_control(*, url: str, commands: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Send ``commands`` to the dynamic-security plugin as the account in ``url``; its answers, in order.

    Every account allowed to read the plugin's answers receives all of them, so each
    command carries a correlation id unique to this call and only ours are collected.
    Raises ``BrokerError`` (with no password in it) when the broker cannot be reached,
    refuses the account, or does not answer within ``timeout``.
    """
    if not commands:
        return []
    token = uuid.uuid4().hex
    tagged = [{**command, "correlationData": f"{token}:{index}"} for index, command in enumerate(commands)]
    client, host, port = _client_for(url, f"finlock-provision-{token[:16]}")
    client.connect_timeout = timeout
    connected, subscribed, answered = threading.Event(), threading.Event(), threading.Event()
    state: dict[str, Any] = {}
    answers: dict[int, dict[str, Any]] = {}

    def on_connect(_client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        state["connect"] = reason_code
        connected.set()

    def on_subscribe(_client: Any, _userdata: Any, _mid: Any, reason_codes: Any, _properties: Any) -> None:
        state["subscribe"] = reason_codes
        subscribed.set()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        try:
            responses = json.loads(message.payload).get("responses") or []
        except (ValueError, AttributeError):
            return
        for response in responses:
            tag = str(response.get("correlationData") or "")
            prefix, _, index = tag.partition(":")
            if prefix == token and index.isdigit():
                answers[int(index)] = response
        if len(answers) >= len(commands):
            answered.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(host, port, 30)
    except (OSError, ValueError) as exc:
        raise BrokerError(f"MQTT broker unreachable: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise BrokerError(f"MQTT broker did not answer CONNECT within {timeout:g} s")
        if state["connect"].is_failure:
            raise BrokerError(f"MQTT broker refused the account: {state['connect']}")
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(timeout) or any(code.is_failure for code in state["subscribe"]):
            raise BrokerError(
                "this account may not read the dynamic-security plugin's answers "
                "(is the dynamic-security plugin loaded, and has `manage.py mqtt_setup` run?)"
            )
        info = client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        info.wait_for_publish(timeout=timeout)
        if not answered.wait(timeout):
            raise BrokerError(
                f"the dynamic-security plugin did not answer within {timeout:g} s "
                "(is it loaded, and may this account send it commands?)"
            )
    except (RuntimeError, ValueError) as exc:
        raise BrokerError(f"MQTT control message failed: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()
    return [answers[index] for index in range(len(commands))]


# --- phones' accounts --------------------------------------------------------------------


@dataclass
class SyncReport:
    """What a sync did: accounts given their current password, accounts that failed, and why."""

    synced: int = 0
    failed: int = 0
    #: Set when the broker could not be used at all (unreachable, refused finlock's account).
    error: str = ""


@dataclass
class _Plan:
    username: str
    password: str
    digest: str
    exists: bool
    error: str = ""
    done: bool = False


def _phone_commands(plan: _Plan) -> list[dict[str, Any]]:
    role = phone_role(plan.username)
    client = {
        "username": plan.username,
        "password": plan.password,
        # Bound to its own client id: nobody else can connect as this phone, and this phone
        # cannot connect under another phone's client id to push it off the broker.
        "clientid": plan.username,
        "roles": [{"rolename": role}],
    }
    if plan.exists:
        return [{"command": "modifyClient", **client}]
    topic = topic_for(plan.username)
    acls = [
        {"acltype": "subscribeLiteral", "topic": topic, "allow": True},
        {"acltype": "publishClientReceive", "topic": topic, "allow": True},
    ]
    return [{"command": "createRole", "rolename": role, "acls": acls}, {"command": "createClient", **client}]


def _apply_round(plans: list[_Plan]) -> list[_Plan]:
    """One message to the plugin for ``plans``; returns the plans that need a second round."""
    commands: list[dict[str, Any]] = []
    spans: list[tuple[_Plan, int, int]] = []
    for plan in plans:
        start = len(commands)
        commands.extend(_phone_commands(plan))
        spans.append((plan, start, len(commands)))
    answers = dynsec_control(
        url=settings.MQTT_PROVISION_URL or "", commands=commands, timeout=settings.MQTT_PUBLISH_TIMEOUT_SECONDS
    )
    again = []
    for plan, start, end in spans:
        errors = {answer["command"]: answer.get("error", "") for answer in answers[start:end]}
        if plan.exists:
            if errors["modifyClient"] == "Client not found":  # removed on the broker: create it again
                plan.exists = False
                again.append(plan)
            elif errors["modifyClient"]:
                plan.error = f"modifyClient: {errors['modifyClient']}"
            else:
                plan.done = True
            continue
        if errors["createRole"] not in ("", "Role already exists"):
            plan.error = f"createRole: {errors['createRole']}"
        elif errors["createClient"] == "Client already exists":  # e.g. created before a lost answer
            plan.exists = True
            again.append(plan)
        elif errors["createClient"]:
            plan.error = f"createClient: {errors['createClient']}"
        else:
            plan.done = True
    return again


def _sync_batch(device_ids: Sequence[int] | None, report: SyncReport, started: dt.datetime) -> int:
    """Sync one batch of accounts that are behind their enrolment; returns how many were tried.

    Least recently tried first, and none tried since ``started``: a phone the broker keeps
    refusing neither blocks the others nor is tried twice in one run.
    """
    with transaction.atomic():
        # Race prevented: two workers syncing one phone (the task after enrolment and the
        # periodic job) could give the broker an older password last, after a newer one, and
        # the phone would be locked out while its row says "in sync". The row lock makes the
        # workers take turns, each re-reading the current credential digest under the lock;
        # the periodic job skips rows another worker holds instead of waiting for them.
        rows = list(
            MqttAccount.objects.select_for_update(of=("self",), skip_locked=device_ids is None)
            .select_related("device")
            .filter(device__enrolled_at__isnull=False)
            .exclude(synced_digest=F("device__credential_digest"))
            .filter(Q(attempted_at__isnull=True) | Q(attempted_at__lt=started))
            .filter(**({"device_id__in": list(device_ids)} if device_ids is not None else {}))
            .order_by(F("attempted_at").asc(nulls_first=True), "device_id")[:SYNC_BATCH]
        )
        if not rows:
            return 0
        plans = {}
        for row in rows:
            username = str(row.device.uid)
            digest = row.device.credential_digest
            plans[row.pk] = _Plan(
                username=username,
                password=phone_password(device_uid=username, credential_digest=digest),
                digest=digest,
                exists=row.exists,
            )
        now = timezone.now()
        try:
            pending = list(plans.values())
            for _round in range(2):
                pending = _apply_round(pending) if pending else []
            for plan in pending:
                plan.error = "the broker account changed while being set up; retried on the next run"
        except BrokerError as exc:
            for row in rows:
                row.attempted_at, row.last_error = now, str(exc)[:_ERROR_LIMIT]
            MqttAccount.objects.bulk_update(rows, ["attempted_at", "last_error"])
            logger.warning("mqtt accounts: %s account(s) not synced: %s", len(rows), exc)
            report.failed += len(rows)
            report.error = str(exc)
            return len(rows)
        entries = []
        for row in rows:
            plan = plans[row.pk]
            row.attempted_at, row.exists = now, plan.exists or plan.done
            if plan.done:
                before = {"broker_password": "previous enrolment" if row.synced_digest else "none"}
                row.synced_digest, row.synced_at, row.last_error = plan.digest, now, ""
                report.synced += 1
                entries.append(
                    AuditEntry(
                        action="device.mqtt_account",
                        obj=row.device,
                        before=before,
                        after={"broker_password": "current enrolment", "username": plan.username},
                    )
                )
            else:
                row.last_error = plan.error[:_ERROR_LIMIT]
                report.failed += 1
                logger.warning("mqtt accounts: device %s not synced: %s", row.device_id, plan.error)
        MqttAccount.objects.bulk_update(rows, ["attempted_at", "exists", "synced_digest", "synced_at", "last_error"])
        if entries:
            audit_record_many(actor="mqtt account sync", entries=entries)
    return len(rows)


def mqtt_accounts_sync(*, device_ids: Sequence[int] | None = None) -> SyncReport:
    """Give the broker the current password of every phone whose account is behind its enrolment.

    With ``device_ids`` (the task after an enrolment), only those, waiting for a worker that
    holds one of them. Without (the periodic job), every such phone, in batches of
    ``SYNC_BATCH`` for up to ``SYNC_BUDGET_SECONDS``; the next run continues. Audited per
    phone (``device.mqtt_account``, never the password). A broker outage is recorded on
    the rows (``last_error``) and retried by the next run; it never raises.
    """
    report = SyncReport()
    if not enabled():
        return report
    started = timezone.now()
    deadline = time.monotonic() + SYNC_BUDGET_SECONDS
    while True:
        tried = _sync_batch(device_ids, report, started)
        # A broker error ends the run: every further batch would wait for the same dead broker.
        if not tried or report.error or device_ids is not None or time.monotonic() > deadline:
            break
    if report.synced or report.failed:
        logger.info("mqtt accounts: %s synced, %s failed", report.synced, report.failed)
    return report


# --- one-time broker setup ---------------------------------------------------------------


def _account(url: str | None, name: str) -> tuple[str, str]:
    parsed = urlparse(url or "")
    if not (parsed.username and parsed.password):
        raise BrokerError(
            f"{name} must be set with the account's name and password: mqtt://<user>:<password>@host:1883"
        )
    return unquote(parsed.username), unquote(parsed.password)


def _with_account(url: str, username: str, password: str) -> str:
    parsed = urlparse(url)
    host = f"[{parsed.hostname}]" if ":" in (parsed.hostname or "") else parsed.hostname
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return parsed._replace(netloc=netloc).geturl()


#: Anything no role allows is refused: publishing, receiving and subscribing. Unsubscribing
#: stays allowed (it grants nothing).
DEFAULT_ACCESS = [
    {"acltype": "publishClientSend", "allow": False},
    {"acltype": "publishClientReceive", "allow": False},
    {"acltype": "subscribe", "allow": False},
    {"acltype": "unsubscribe", "allow": True},
]
ROLES = {
    PUBLISHER_ROLE: [{"acltype": "publishClientSend", "topic": COMMAND_TOPICS, "allow": True}],
    PROVISIONER_ROLE: [
        {"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
        {"acltype": "subscribeLiteral", "topic": RESPONSE_TOPIC, "allow": True},
        {"acltype": "publishClientReceive", "topic": RESPONSE_TOPIC, "allow": True},
    ],
}


def broker_setup(*, admin_username: str, admin_password: str, actor: Actor = None) -> list[str]:
    """Set the broker up for finlock (idempotent): default access, the two roles, finlock's two accounts.

    Signs in as the dynamic-security administrator (``mosquitto_ctrl dynsec init``) at the
    broker of ``MQTT_PROVISION_URL``. The accounts and passwords are the ones in
    ``MQTT_URL`` (publisher) and ``MQTT_PROVISION_URL`` (provisioner); running it again
    resets their roles and passwords. Audited, without the passwords. Returns what it did.
    """
    publisher, publisher_password = _account(settings.MQTT_URL, "MQTT_URL")
    provisioner, provisioner_password = _account(settings.MQTT_PROVISION_URL, "MQTT_PROVISION_URL")
    if publisher == provisioner:
        raise BrokerError("MQTT_URL and MQTT_PROVISION_URL must use two different accounts")
    if admin_username in (publisher, provisioner):
        raise BrokerError("the administrator account must not be one of finlock's own accounts")
    url = _with_account(settings.MQTT_PROVISION_URL or "", admin_username, admin_password)
    timeout = settings.MQTT_PUBLISH_TIMEOUT_SECONDS
    accounts = {publisher: (publisher_password, PUBLISHER_ROLE), provisioner: (provisioner_password, PROVISIONER_ROLE)}

    def client(command: str, username: str) -> dict[str, Any]:
        password, role = accounts[username]
        # clientid "" clears any binding: finlock's workers connect with a fresh client id each time.
        return {
            "command": command,
            "username": username,
            "password": password,
            "clientid": "",
            "roles": [{"rolename": role}],
        }

    first = [{"command": "setDefaultACLAccess", "acls": DEFAULT_ACCESS}]
    first += [{"command": "createRole", "rolename": role, "acls": acls} for role, acls in ROLES.items()]
    first += [client("createClient", username) for username in accounts]
    answers = dynsec_control(url=url, commands=first, timeout=timeout)
    done, second = [], []
    for command, answer in zip(first, answers, strict=True):
        error = answer.get("error", "")
        name = str(command.get("rolename") or command.get("username") or "default access")
        if not error:
            done.append(f"{command['command']} {name}")
        elif error == "Role already exists":
            second.append({"command": "modifyRole", "rolename": name, "acls": ROLES[name]})
        elif error == "Client already exists":
            second.append(client("modifyClient", name))
        else:
            raise BrokerError(f"{command['command']} {name}: {error}")
    for command, answer in zip(second, dynsec_control(url=url, commands=second, timeout=timeout), strict=True):
        name = str(command.get("rolename") or command["username"])
        if answer.get("error"):
            raise BrokerError(f"{command['command']} {name}: {answer['error']}")
        done.append(f"{command['command']} {name}")
    audit_record(
        actor=actor or "manage.py mqtt_setup",
        action="mqtt.broker_setup",
        object_repr="MQTT broker",
        after={
            "broker": f"{urlparse(url).hostname}:{urlparse(url).port or ''}",
            "administrator": admin_username,
            "publisher": publisher,
            "provisioner": provisioner,
            "default_access": {acl["acltype"]: acl["allow"] for acl in DEFAULT_ACCESS},
            "roles": ROLES,
        },
    )
    return done
