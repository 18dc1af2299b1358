"""Lock-state commands: desired state in, signed commands out (the outbox rows; docs/lock-pipeline.md)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Left
from django.utils import timezone

from devices import checkin_cache
from devices.delivery import commands_enqueue
from devices.keys import current_signer, published_keys, trusted_signer
from devices.models import (
    Device,
    DeviceCommand,
    LockState,
    max_length,
)
from devices.protocol import (
    KIND_COMMAND,
    LEASE_EXPIRY_STATES,
    MAX_ENVELOPE_BYTES,
    MAX_SEQ,
    PROTOCOL_VERSION,
    STATES,
    check_command,
    envelope_of,
    payload_bytes,
    seal,
)
from portal.audit import AuditEntry, audit_record_many
from portal.types import AuditActor

# Ids per SELECT ... FOR UPDATE and rows per bulk write: well under every backend's
# limit on query parameters, and few enough round trips for 10,000 changes at once.
LOCK_BATCH = 5000
WRITE_BATCH = 1000
REASON_LENGTH = max_length(Device, "desired_reason")


@dataclass(frozen=True)
class StateChange:
    """One change of a device's desired lock state, with what the phone shows for it.

    ``screen`` and ``allowed_numbers`` travel inside the signed command as they are, so
    they may hold only strings, integers, booleans, None, lists and dicts (amounts as
    decimal strings). ``expires_at`` is required for ``temp_unlocked`` and refused for any
    other state. The lease (docs/lock-pipeline.md, "Offline leases") comes from the
    decision: with ``offline_lock_days`` set (the provider's offline policy; None = no lease)
    a phone that has not heard from the server by ``lease_until`` = the later of now +
    ``offline_lock_days`` and ``paid_until`` (and a temporary unlock's end) moves to
    ``lease_expiry_state``, warning ``lease_warning_days`` before, never starting a lock
    outside ``lock_window`` in ``time_zone`` (the owner's IANA zone). A check-in renews it.
    """

    device_id: int
    state: str
    reason: str = ""
    screen: dict[str, Any] = field(default_factory=dict)
    allowed_numbers: list[str] = field(default_factory=list)
    expires_at: dt.datetime | None = None
    paid_until: dt.datetime | None = None
    offline_lock_days: int | None = None
    lease_expiry_state: str = "locked"
    lease_warning_days: int = 0
    time_zone: str = "UTC"
    lock_window: dict[str, Any] | None = None


def wire_time(value: dt.datetime) -> str:
    """ISO 8601 UTC with a ``Z``, to the second: the form every command carries."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_change(change: StateChange) -> None:
    where = f"device {change.device_id}"
    if change.state not in STATES:
        raise ValueError(f"{where}: unknown state {change.state!r}")
    if (change.state == LockState.TEMP_UNLOCKED) != (change.expires_at is not None):
        raise ValueError(f"{where}: expires_at is required for temp_unlocked and only for it")
    for name in ("expires_at", "paid_until"):
        value = getattr(change, name)
        if value is not None and timezone.is_naive(value):
            raise ValueError(f"{where}: {name} must be timezone-aware")
    if change.lease_expiry_state not in LEASE_EXPIRY_STATES:
        raise ValueError(f"{where}: a lease expires into one of {LEASE_EXPIRY_STATES}")
    if change.offline_lock_days is not None and not 1 <= change.offline_lock_days <= 365:
        raise ValueError(f"{where}: offline_lock_days is 1 to 365 days")
    if not isinstance(change.screen, dict):
        raise ValueError(f"{where}: screen must be a dict")
    if not isinstance(change.allowed_numbers, list | tuple) or not all(
        isinstance(n, str) for n in change.allowed_numbers
    ):
        raise ValueError(f"{where}: allowed_numbers must be a list of strings")


def device_states_apply(
    *, changes: list[StateChange], actor: AuditActor = None, refused: dict[int, str] | None = None
) -> list[DeviceCommand]:
    """Record desired lock states and issue one signed command per change (the outbox).

    All in one transaction, the caller's if there is one: the devices' rows are
    locked, each change takes the device's next sequence number, the command is
    built exactly as docs/lock-pipeline.md specifies and signed with the current
    key, and every change is audited (``device.state``, before and after). Several
    changes for one device are applied in the given order, each with its own seq.
    Set-based: a fixed number of queries per batch of rows, so 10,000 changes take
    seconds. Delivery (push) is queued only once the transaction commits; until a
    worker delivers it, the command is served by the phone's check-in (pull). ``actor`` may
    also be a text naming a non-person (``"device <uid>"`` when a check-in re-issues a state).

    A change that cannot be issued (``ValueError``: ``CommandTooLarge``, a bad lease, an exhausted
    seq) fails the whole call, unless the caller passes ``refused``: then every command is built
    first, a device with a refused change is left out of the call altogether (nothing written for
    it), its reason goes into ``refused`` (device id: reason), and the others are written at once.
    """
    if not changes:
        return []
    if refused is not None:
        changes = _without_refused(changes, refused)
        if not changes:
            return []
    for change in changes:
        _check_change(change)
    key_id, private_key = trusted_signer()
    now = timezone.now()
    signing = _Signing(key_id=key_id, private_key=private_key, now=now, issued_at=now.replace(microsecond=0))
    ids = sorted({change.device_id for change in changes})
    with transaction.atomic():
        devices = _lock_devices(ids)
        commands: list[DeviceCommand] = []
        entries: list[AuditEntry] = []
        for change in changes:
            command, entry = _issue(change, devices[change.device_id], signing)
            commands.append(command)
            entries.append(entry)
        DeviceCommand.objects.bulk_create(commands, batch_size=WRITE_BATCH)
        _mirror_newest_commands(ids, now)
        if commands[0].pk is None:  # backends without RETURNING: fetch the ids
            _fetch_command_ids(commands, ids, signing.issued_at)
        audit_record_many(actor=actor, entries=entries)
        command_ids = [command.pk for command in commands]
        transaction.on_commit(lambda: _enqueue_delivery(command_ids))
        # A phone checking in must be answered this new command, not a cached older one.
        checkin_cache.invalidate_on_commit(ids)
    return commands


def _without_refused(changes: list[StateChange], refused: dict[int, str]) -> list[StateChange]:
    """The changes whose devices' commands can all be issued; the others' reasons into ``refused``.

    A dry run on the devices as they are (read, not locked: a seq only grows, and a size bound
    missed by a digit is caught by ``device_states_apply`` itself), so one bad device never
    stops a batch of a thousand.
    """
    key_id, private_key = current_signer()
    now = timezone.now()
    signing = _Signing(key_id=key_id, private_key=private_key, now=now, issued_at=now.replace(microsecond=0))
    devices = Device.objects.in_bulk(sorted({change.device_id for change in changes}))
    for change in changes:
        device = devices.get(change.device_id)
        if device is None or change.device_id in refused:
            continue  # a missing device fails the call as before
        try:
            _check_change(change)
            _issue(change, device, signing)  # in memory: the device's seq moves as the real call's will
        except ValueError as exc:
            refused[change.device_id] = str(exc)
    return [change for change in changes if change.device_id not in refused]


def command_check(*, change: StateChange, device: Device) -> None:
    """Raise what ``device_states_apply`` would raise for ``change`` to ``device`` (``CommandTooLarge``, ...).

    Nothing is written and ``device`` is not changed: for a bound checked before it is saved
    (the longest lock screen a provider's wording makes, on a made-up phone).
    """
    _check_change(change)
    key_id, private_key = current_signer()
    now = timezone.now()
    signing = _Signing(key_id=key_id, private_key=private_key, now=now, issued_at=now.replace(microsecond=0))
    _issue(change, copy.copy(device), signing)


@dataclass(frozen=True)
class _Signing:
    """What every command of one ``device_states_apply`` call shares: the key and the times."""

    key_id: str
    private_key: Ed25519PrivateKey
    now: dt.datetime
    issued_at: dt.datetime


def _lock_devices(ids: list[int]) -> dict[int, Device]:
    """The devices' rows, locked for this transaction; ``Device.DoesNotExist`` naming any missing id."""
    devices: dict[int, Device] = {}
    for start in range(0, len(ids), LOCK_BATCH):
        # Race: the sweep and a verified payment changing the same device at once
        # would both read command_seq and issue the same seq; the row locks
        # serialise them, and taking them in id order prevents deadlocks.
        batch = Device.objects.select_for_update().filter(pk__in=ids[start : start + LOCK_BATCH]).order_by("id")
        devices.update((device.pk, device) for device in batch)
    missing = [pk for pk in ids if pk not in devices]
    if missing:
        raise Device.DoesNotExist(f"No device with id {', '.join(map(str, missing[:10]))}")
    return devices


def _issue(change: StateChange, device: Device, signing: _Signing) -> tuple[DeviceCommand, AuditEntry]:
    """Apply ``change`` to the locked ``device`` in memory; its signed command (unsaved) and audit entry."""
    before = {"state": device.desired_state, "reason": device.desired_reason, "seq": device.command_seq}
    if device.command_seq >= MAX_SEQ:
        # Never reached in practice (one command a minute for 3,800 years), but a seq above
        # MAX_SEQ could be neither acknowledged nor reported: refuse rather than strand the phone.
        raise ValueError(f"device {device.pk}: sequence numbers exhausted (MAX_SEQ {MAX_SEQ}); re-key the device")
    reason = change.reason[: DeviceCommand._meta.get_field("reason").max_length]
    expires_at = change.expires_at.replace(microsecond=0) if change.expires_at else None
    lease_until = _lease_until(change, signing.issued_at, expires_at)
    # A check-in after half the offline period renews the lease (devices.services.checkin).
    renew_at = (
        lease_until - dt.timedelta(days=change.offline_lock_days) / 2
        if lease_until is not None and change.offline_lock_days
        else None
    )
    device.command_seq += 1
    device.desired_state = change.state
    device.desired_reason = reason[:REASON_LENGTH]
    device.desired_changed_at = signing.now
    device.updated_at = signing.now
    payload = {
        "kind": KIND_COMMAND,
        "device": str(device.uid),
        "imeis": [imei for imei in (device.imei, device.imei2) if imei],
        "seq": device.command_seq,
        "state": change.state,
        "reason": reason,
        "issued_at": wire_time(signing.issued_at),
        "expires_at": wire_time(expires_at) if expires_at else None,
        "lease_until": wire_time(lease_until) if lease_until else None,
        "lease_expiry_state": change.lease_expiry_state if lease_until else None,
        "lease_warning_days": change.lease_warning_days,
        "paid_until": wire_time(change.paid_until) if change.paid_until else None,
        "offline_lock_days": change.offline_lock_days,
        "time_zone": change.time_zone,
        "lock_window": change.lock_window,
        "screen": change.screen,
        "allowed_numbers": list(change.allowed_numbers),
    }
    # The server never signs what a phone would refuse as malformed (docs/lock-pipeline.md).
    check_command(payload)
    body = payload_bytes(payload)
    envelope = seal(body, key_id=signing.key_id, private_key=signing.private_key)
    try:
        _check_envelope_size(envelope, device)
    except CommandTooLarge:
        if change.state not in NEVER_HELD_BACK:
            raise
        # An unlock or a release is never held back by its screen (a paid phone would stay
        # locked): the phone works normally and needs no more than who to call.
        payload["screen"] = {k: change.screen[k] for k in MINIMAL_SCREEN if k in change.screen}
        body = payload_bytes(payload)
        envelope = seal(body, key_id=signing.key_id, private_key=signing.private_key)
        _check_envelope_size(envelope, device)
    command = DeviceCommand(
        device=device,
        seq=device.command_seq,
        state=change.state,
        reason=reason,
        expires_at=expires_at,
        lease_until=lease_until,
        lease_renew_at=renew_at,
        body=body.decode("utf-8"),
        version=PROTOCOL_VERSION,
        signature=envelope["signature"],
        key_id=signing.key_id,
        issued_at=signing.issued_at,
        next_attempt_at=signing.now,
    )
    after = {
        "state": change.state,
        "reason": reason,
        "seq": device.command_seq,
        "expires_at": expires_at,
        "lease_until": lease_until,
        "lease_expiry_state": change.lease_expiry_state if lease_until else None,
    }
    return command, AuditEntry(action="device.state", obj=device, before=before, after=after)


#: States whose command is issued with a minimal screen rather than refused when too large.
NEVER_HELD_BACK = frozenset({LockState.UNLOCKED, LockState.TEMP_UNLOCKED, LockState.RELEASED})
MINIMAL_SCREEN = ("language", "provider", "hotline_numbers")


class CommandTooLarge(ValueError):
    """A command whose envelope a phone would refuse unread (over ``MAX_ENVELOPE_BYTES``): never issued."""


def _check_envelope_size(envelope: dict[str, Any], device: Device) -> None:
    """Refuse a command its phone would refuse as ``too_large``: issued, it would be retried and never applied."""
    # The envelope's text on every channel (members only ASCII, no whitespace; the order does not change the size).
    size = len(json.dumps(envelope, separators=(",", ":")).encode("ascii"))
    if size > MAX_ENVELOPE_BYTES:
        raise CommandTooLarge(
            f"device {device.pk} ({device.uid}): the command's envelope would be {size} bytes, over the "
            f"{MAX_ENVELOPE_BYTES} a phone accepts; shorten its lock screen (texts, payment channels, service centres)"
        )


#: States a lease applies to: a phone that is usable now. A locked or released phone has
#: nothing to fall to when out of contact.
LEASED_STATES = frozenset({LockState.UNLOCKED, LockState.REMINDER, LockState.TEMP_UNLOCKED})


def _lease_until(change: StateChange, now: dt.datetime, expires_at: dt.datetime | None) -> dt.datetime | None:
    """When a phone out of contact stops keeping ``change``'s state: None without an offline policy."""
    if change.offline_lock_days is None or change.state not in LEASED_STATES:
        return None
    ends = [now + dt.timedelta(days=change.offline_lock_days)]
    ends += [value for value in (change.paid_until, expires_at) if value is not None]
    return max(ends).replace(microsecond=0)


def _mirror_newest_commands(ids: list[int], now: dt.datetime) -> None:
    """Each device row now mirrors its newest command.

    One UPDATE per batch with correlated subqueries on the (device, seq) index. bulk_update's
    CASE per row costs seconds per thousand devices; this stays set-based.
    """
    newest = DeviceCommand.objects.filter(device_id=OuterRef("pk")).order_by("-seq")
    for start in range(0, len(ids), LOCK_BATCH):
        Device.objects.filter(pk__in=ids[start : start + LOCK_BATCH]).update(
            command_seq=Subquery(newest.values("seq")[:1]),
            desired_state=Subquery(newest.values("state")[:1]),
            desired_reason=Left(Subquery(newest.values("reason")[:1]), REASON_LENGTH),
            lease_renew_at=Subquery(newest.values("lease_renew_at")[:1]),
            desired_changed_at=now,
            updated_at=now,
        )


def _fetch_command_ids(commands: list[DeviceCommand], ids: list[int], issued_at: dt.datetime) -> None:
    by_key = {
        (d, s): pk
        for d, s, pk in DeviceCommand.objects.filter(device_id__in=ids, issued_at=issued_at).values_list(
            "device_id", "seq", "id"
        )
    }
    for command in commands:
        command.pk = by_key[(command.device_id, command.seq)]


def _enqueue_delivery(command_ids: list[int]) -> None:
    """Hand committed commands to the push workers (``devices.deliver_command``).

    Never raises: the caller's change is committed already. Nothing is lost when this
    fails: every command is an outbox row with ``next_attempt_at`` set, so the periodic
    redelivery job picks it up once the broker is back, and the phone's check-in (pull)
    serves it meanwhile.
    """
    commands_enqueue(command_ids)


def latest_command(device_id: int) -> DeviceCommand | None:
    return DeviceCommand.objects.filter(device_id=device_id).order_by("-seq").first()


def reissue_current_state(device: Device, *, latest: DeviceCommand | None, actor: AuditActor = None) -> DeviceCommand:
    """Issue the device's desired state again, with the newest command's screen if there is one."""
    state, expires_at = device.desired_state, None
    if state == LockState.TEMP_UNLOCKED:
        expires_at = latest.expires_at if latest is not None and latest.state == state else None
        if expires_at is None or expires_at <= timezone.now():
            # A temporary unlock that ended: the state it interrupted (what the phone itself
            # returns to), never a plain unlock a check-in could mint; the sweep decides next.
            before = (
                DeviceCommand.objects.filter(device_id=device.pk)
                .exclude(state=LockState.TEMP_UNLOCKED)
                .order_by("-seq")
                .values_list("state", flat=True)
                .first()
            )
            state, expires_at = before or LockState.UNLOCKED, None
    payload = latest.payload if latest is not None else {}
    (command,) = device_states_apply(
        changes=[_again(device.pk, state, device.desired_reason, payload, expires_at)], actor=actor
    )
    return command


def _again(
    device_id: int, state: str, reason: str, payload: dict[str, Any], expires_at: dt.datetime | None
) -> StateChange:
    """The change that issues a state again with the newest command's screen, window and lease policy."""
    paid_until = payload.get("paid_until")
    return StateChange(
        device_id=device_id,
        state=state,
        reason=reason,
        screen=payload.get("screen") or {},
        allowed_numbers=payload.get("allowed_numbers") or [],
        expires_at=expires_at,
        paid_until=dt.datetime.fromisoformat(paid_until) if paid_until else None,
        offline_lock_days=payload.get("offline_lock_days"),
        lease_expiry_state=payload.get("lease_expiry_state") or "locked",
        lease_warning_days=int(payload.get("lease_warning_days") or 0),
        time_zone=payload.get("time_zone") or "UTC",
        lock_window=payload.get("lock_window"),
    )


def device_current_envelope(device: Device) -> dict[str, Any]:
    """The signed envelope of the device's newest command, issuing a first one if it has none.

    A device that never had a command gets its current desired state (``unlocked``
    for a new device, but never an unlock of a device already meant to be locked),
    so check-in and enrolment always answer a signed command.
    """
    # Every check-in comes here: read just the two columns, no model instance.
    latest_row = (
        DeviceCommand.objects.filter(device_id=device.pk)
        .order_by("-seq")
        .values_list("body", "key_id", "signature", "version")[:1]
    )
    trusted = published_keys()
    for body, key_id, signature, version in latest_row:
        # A command signed by a key since retired (a stale worker's, say) is refused by every
        # up-to-date phone: it is issued again below with the current key instead of served.
        if version == PROTOCOL_VERSION and (not trusted or key_id in trusted):
            return envelope_of(body.encode("utf-8"), key_id=key_id, signature=signature)
    with transaction.atomic():
        # Race: two check-ins of a never-commanded device (or one whose newest command was
        # signed under version 1) at once would each issue a command; with the row locked
        # the second sees the first's command.
        locked = Device.objects.select_for_update().get(pk=device.pk)
        latest = latest_command(device.pk)
        if latest is None or latest.version != PROTOCOL_VERSION or (trusted and latest.key_id not in trusted):
            latest = reissue_current_state(locked, latest=latest)
    return latest.envelope
