"""The audit trail: snapshots, events chained by keyed hashes, checkpoints outside the database, verification,
and ``audited_update``, the one way to change a row with its before and after recorded."""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from portal import audit_keys
from portal.audit_keys import UnknownAuditKey
from portal.models import AuditChainHead, AuditEvent, Organisation, User
from portal.queue import registered_task
from portal.types import Actor

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64


def actor_label(actor: Actor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, User):
        return actor.get_username()
    return str(actor)


#: Every field list ``snapshot`` has used in this process, by (model label, requested fields):
#: the resolved fields. A cache, and the record the test suite checks for secrets.
AUDITED_FIELD_LISTS: dict[tuple[str, tuple[str, ...] | None], tuple[models.Field, ...]] = {}


def audited_fields(model: type[models.Model], fields: Iterable[str] | None = None) -> tuple[models.Field, ...]:
    """The fields of ``model`` that may enter the audit trail: an explicit allow-list, never a guess.

    A model declares its list as ``audit_fields`` (names of concrete or many-to-many fields; a
    secret — a password hash, a credential digest, an offline-code secret, a webhook secret —
    is simply never listed). ``fields`` narrows it for one event; for a model that declares
    no list, ``fields`` *is* the allow-list. Neither: ``ImproperlyConfigured`` (fail loudly).
    """
    requested = tuple(fields) if fields is not None else None
    key = (model._meta.label, requested)
    cached = AUDITED_FIELD_LISTS.get(key)
    if cached is not None:
        return cached
    declared = getattr(model, "audit_fields", None)
    if declared is None and requested is None:
        raise ImproperlyConfigured(
            f"{model._meta.label} declares no audit_fields: list the fields that may enter the audit trail "
            f"(never a secret) on the model, or pass fields= to snapshot()"
        )
    if declared is not None and requested is not None and not set(requested) <= set(declared):
        extra = sorted(set(requested) - set(declared))
        raise ImproperlyConfigured(f"{model._meta.label}.audit_fields does not allow {', '.join(extra)}")
    names = requested if requested is not None else tuple(declared)
    try:
        resolved = tuple(model._meta.get_field(name) for name in names)
    except Exception as exc:  # FieldDoesNotExist: a typo must not silently drop a field
        raise ImproperlyConfigured(f"{model._meta.label}: {exc}") from None
    AUDITED_FIELD_LISTS[key] = resolved
    return resolved


def snapshot(obj: models.Model, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """A JSON-safe dict of the object's audited fields (``audited_fields``): foreign keys as ids,
    many-to-many fields as a sorted list of ids (read from the database, so snapshot after saving them)."""
    data = {}
    for field in audited_fields(type(obj), fields):
        if field.many_to_many:
            data[field.name] = sorted(getattr(obj, field.name).values_list("pk", flat=True)) if obj.pk else []
        else:
            data[field.attname] = getattr(obj, field.attname)
    return _json_safe(data)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder, default=str))


def event_canonical(event: AuditEvent) -> bytes:
    """The canonical JSON of an event's content and ``prev_hash`` that its hash covers."""
    content = {
        "created_at": event.created_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "organisation_id": event.organisation_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "ip_address": event.ip_address,
        "before": event.before,
        "after": event.after,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: AuditEvent) -> str:
    """The hash of an event over the canonical JSON of its content and ``prev_hash``.

    HMAC-SHA256 under the audit key ``event.key_id``; for an event written before keyed
    hashing (empty ``key_id``) the plain SHA-256 it was stored with. Raises
    ``UnknownAuditKey`` when the key id is not configured.
    """
    canonical = event_canonical(event)
    if not event.key_id:
        return hashlib.sha256(canonical).hexdigest()
    return audit_keys.mac(event.key_id, canonical)


def _head_fields(head: AuditChainHead) -> dict[str, Any]:
    return {
        "last_event_id": head.last_event_id,
        "last_hash": head.last_hash,
        "legacy_until": head.legacy_until,
        "unverified_since": head.unverified_since,
        "key_id": head.key_id,
    }


def _head_problem(head: AuditChainHead | None) -> str:
    """Why the chain head row cannot be trusted, or "" when its signature verifies."""
    if head is None:
        return "the chain head row is missing (it was deleted in the database)"
    if not head.key_id or not head.mac:
        return "the chain head row is not signed (it was altered in the database)"
    try:
        valid = audit_keys.mac_matches(head.key_id, audit_keys.head_message(**_head_fields(head)), head.mac)
    except UnknownAuditKey as exc:
        return (
            f"the chain head is signed with the audit key {exc.key_id!r}, which is not configured "
            "(keep retired keys in AUDIT_HMAC_RETIRED_KEYS)"
        )
    if not valid:
        return "the chain head row does not match its signature (it was altered in the database)"
    return ""


@dataclass(frozen=True)
class AuditEntry:
    """What to record; ``audit_record_many`` chains and stores a batch of these."""

    action: str
    obj: models.Model | None = None
    organisation: Organisation | None = None
    before: dict | None = None
    after: dict | None = None
    object_type: str = ""
    object_id: str = ""
    object_repr: str = ""


def _organisation_of(obj) -> int | None:
    if obj is None:
        return None
    if isinstance(obj, Organisation):
        return obj.pk
    for attr in ("provider_id", "organisation_id"):
        if getattr(obj, attr, None):
            return getattr(obj, attr)
    return None


def _locked_head() -> AuditChainHead:
    """The chain head, locked for this transaction; recreated (unsigned) if someone deleted it."""
    head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
    if head is not None:
        return head
    # The migrations create the row and PostgreSQL refuses to delete it; it is missing only
    # after a flush (tests) or behind our back. An empty trail starts again from a signed
    # genesis; a trail with events keeps its unsigned head, so the append marks the break.
    AuditChainHead.objects.get_or_create(pk=1, defaults={"last_hash": GENESIS_HASH})
    head = AuditChainHead.objects.select_for_update().get(pk=1)
    if not head.mac and not AuditEvent.objects.exists():
        head.key_id = audit_keys.signing_key()[0]
        head.mac = audit_keys.mac(head.key_id, audit_keys.head_message(**_head_fields(head)))
    return head


def audit_record_many(*, actor, entries: list[AuditEntry], ip_address: str | None = None) -> list[AuditEvent]:
    """Append a batch of events to the chain in one transaction.

    Each event's hash is keyed with the current audit key and the head is signed again,
    so a database user can neither rewrite events nor move the head without the key.
    Race prevented: two writers appending at once would both read the same
    head and fork the chain; locking the single head row serialises appends.
    """
    if not entries:
        return []
    now = timezone.now()
    label = actor_label(actor)
    # Store the address in the form the database returns it, so the hash verifies.
    ip_address = AuditEvent._meta.get_field("ip_address").get_prep_value(ip_address) or None
    actor_id = actor.pk if isinstance(actor, User) else None
    key_id, _key = audit_keys.signing_key()
    with transaction.atomic():
        head = _locked_head()
        problem = _head_problem(head)
        if problem:
            # Refusing to record would let whoever altered the row stop sign-ins and payments;
            # signing it again would launder the alteration. Record, and mark the head for good.
            log.critical("audit: %s; events are still recorded and the trail is marked broken", problem)
        prev = head.last_hash
        events = []
        for entry in entries:
            obj = entry.obj
            org_id = entry.organisation.pk if entry.organisation else _organisation_of(obj)
            event = AuditEvent(
                created_at=now,
                actor_id=actor_id,
                actor_label=label,
                organisation_id=org_id,
                action=entry.action,
                object_type=entry.object_type or (obj._meta.label if obj is not None else ""),
                object_id=entry.object_id or (str(obj.pk) if obj is not None else ""),
                object_repr=(entry.object_repr or (str(obj) if obj is not None else ""))[:200],
                ip_address=ip_address,
                before=_json_safe(entry.before) if entry.before is not None else None,
                after=_json_safe(entry.after) if entry.after is not None else None,
                prev_hash=prev,
                key_id=key_id,
            )
            event.hash = event_hash(event)
            prev = event.hash
            events.append(event)
        AuditEvent.objects.bulk_create(events, batch_size=2000)
        last_id = AuditEvent.objects.filter(hash=prev).values_list("id", flat=True).first()
        unverified_since = head.unverified_since
        if problem and unverified_since is None:
            unverified_since = events[0].pk or AuditEvent.objects.values_list("id", flat=True).get(hash=events[0].hash)
        fields = {
            "last_hash": prev,
            "last_event_id": last_id,
            "legacy_until": head.legacy_until,
            "unverified_since": unverified_since,
            "key_id": key_id,
        }
        AuditChainHead.objects.filter(pk=1).update(
            **fields, mac=audit_keys.mac(key_id, audit_keys.head_message(**fields))
        )
        every = settings.AUDIT_CHECKPOINT_EVENTS
        if every and last_id is not None and last_id // every != (head.last_event_id or 0) // every:
            transaction.on_commit(_enqueue_checkpoint, robust=True)
    return events


def _enqueue_checkpoint() -> None:
    """Ask a worker for a checkpoint (every ``AUDIT_CHECKPOINT_EVENTS``); the periodic job covers a failure."""
    try:
        registered_task("portal.audit_checkpoint").apply_async(retry=False)
    except Exception as exc:  # broker down: the audited change is committed; beat checkpoints later
        log.warning("audit: could not queue a checkpoint (%s); the periodic job will write one", exc)


def audit_record(
    *,
    actor,
    action: str,
    obj: models.Model | None = None,
    organisation: Organisation | None = None,
    before: dict | None = None,
    after: dict | None = None,
    ip_address: str | None = None,
    object_repr: str = "",
) -> AuditEvent:
    """Append one event to the audit trail (inside the caller's transaction)."""
    entry = AuditEntry(
        action=action, obj=obj, organisation=organisation, before=before, after=after, object_repr=object_repr
    )
    return audit_record_many(actor=actor, entries=[entry], ip_address=ip_address)[0]


# --- checkpoints outside the database ------------------------------------------

#: Marks a checkpoint in a log line; ``audit_checkpoints_read`` accepts such lines as they are.
CHECKPOINT_MARKER = "audit-checkpoint "
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint file holds a line that is not a well-formed checkpoint."""


@dataclass(frozen=True)
class AuditCheckpoint:
    """The chain head at a moment (event id and hash), signed with the audit key, kept outside the database."""

    event_id: int
    hash: str
    at: str
    key_id: str
    mac: str
    source: str = ""

    def message(self) -> bytes:
        return audit_keys.checkpoint_message(event_id=self.event_id, hash=self.hash, at=self.at, key_id=self.key_id)

    def line(self) -> str:
        content = {"v": 1, "event_id": self.event_id, "hash": self.hash, "at": self.at, "key_id": self.key_id}
        return json.dumps(content | {"mac": self.mac}, separators=(",", ":"))


def _checkpoint_parse(text: str, source: str) -> AuditCheckpoint | None:
    """The checkpoint in one line of a checkpoint file or a log; None for a line that holds none."""
    stripped = text.strip()
    if CHECKPOINT_MARKER in stripped:
        stripped = stripped.split(CHECKPOINT_MARKER, 1)[1].strip()
    elif not stripped.startswith("{"):
        return None
    try:
        # raw_decode: a log format may put more text after the message.
        data, _end = json.JSONDecoder().raw_decode(stripped)
    except ValueError:
        raise CheckpointError(f"{source}: not a checkpoint (the JSON cannot be read)") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise CheckpointError(f"{source}: not a version 1 checkpoint")
    event_id, hash_, at, key_id, mac = (data.get(k) for k in ("event_id", "hash", "at", "key_id", "mac"))
    if not isinstance(event_id, int) or isinstance(event_id, bool) or event_id < 1:
        raise CheckpointError(f"{source}: event_id must be a positive integer")
    if not isinstance(hash_, str) or not _HEX64.match(hash_) or not isinstance(mac, str) or not _HEX64.match(mac):
        raise CheckpointError(f"{source}: hash and mac must be 64 hexadecimal digits")
    if not isinstance(at, str) or not isinstance(key_id, str) or not key_id:
        raise CheckpointError(f"{source}: at and key_id must be text")
    return AuditCheckpoint(event_id=event_id, hash=hash_, at=at, key_id=key_id, mac=mac, source=source)


def audit_checkpoints_read(path: str | Path) -> list[AuditCheckpoint]:
    """Every checkpoint in a checkpoint file, or in a log holding ``audit-checkpoint {...}`` lines.

    Lines holding no checkpoint (other log messages, blank lines) are skipped; a line that
    looks like one but is malformed raises ``CheckpointError`` naming the file and line.
    Signatures are checked by ``audit_verify_chain``.
    """
    path = Path(path)
    checkpoints = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            checkpoint = _checkpoint_parse(text, f"{path.name}:{number}")
            if checkpoint is not None:
                checkpoints.append(checkpoint)
    return checkpoints


def _last_checkpoint_in(handle) -> AuditCheckpoint | None:
    """The newest checkpoint at the end of an open checkpoint file (its last lines only)."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 8192))
    for text in reversed(handle.read().decode("utf-8", "replace").splitlines()):
        try:
            checkpoint = _checkpoint_parse(text, "tail")
        except CheckpointError:
            continue
        if checkpoint is not None:
            return checkpoint
    return None


def audit_checkpoint_write(*, path: str | Path | None = None, force: bool = False) -> AuditCheckpoint | None:
    """Append a signed checkpoint of the chain head to the checkpoint file and the log.

    Writes nothing when the trail is empty, when the head does not verify (a checkpoint
    must never vouch for a head someone altered), or, unless ``force``, when the newest
    checkpoint in the file already covers the head. Returns the checkpoint written.
    Not an audit event itself: it would move the head it records.
    """
    path = Path(path or settings.AUDIT_CHECKPOINT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a+b") as handle:
        # Race prevented: two workers checkpointing at once would interleave lines or write
        # them out of order; the lock makes read-head-then-append one step per file.
        fcntl.flock(handle, fcntl.LOCK_EX)
        head = AuditChainHead.objects.filter(pk=1).first()
        if head is None or head.last_event_id is None:
            return None
        problem = _head_problem(head)
        if problem:
            log.error("audit: not writing a checkpoint: %s", problem)
            return None
        newest = _last_checkpoint_in(handle)
        if not force and newest is not None and newest.event_id >= head.last_event_id:
            return None
        key_id, _key = audit_keys.signing_key()
        at = timezone.now().astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        checkpoint = AuditCheckpoint(event_id=head.last_event_id, hash=head.last_hash, at=at, key_id=key_id, mac="")
        checkpoint = dataclasses.replace(checkpoint, mac=audit_keys.mac(key_id, checkpoint.message()))
        handle.write((checkpoint.line() + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())
    # The same line in the log: shipped off the host, it is a second copy the host cannot rewrite.
    log.info("%s%s", CHECKPOINT_MARKER, checkpoint.line())
    return checkpoint


# --- verification -----------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    """The outcome of ``audit_verify_chain``: ``ok``, or the first problem found."""

    checked: int
    first_broken_id: int | None = None
    reason: str = ""
    unkeyed: int = 0
    key_ids: tuple[str, ...] = ()
    checkpoints_matched: int = 0
    newest_checkpoint: AuditCheckpoint | None = None

    @property
    def ok(self) -> bool:
        return not self.reason


def _checkpoint_problem(checkpoint: AuditCheckpoint) -> str:
    try:
        valid = audit_keys.mac_matches(checkpoint.key_id, checkpoint.message(), checkpoint.mac)
    except UnknownAuditKey as exc:
        return (
            f"checkpoint {checkpoint.source} is signed with the audit key {exc.key_id!r}, which is not configured "
            "(keep retired keys in AUDIT_HMAC_RETIRED_KEYS)"
        )
    if not valid:
        return (
            f"checkpoint {checkpoint.source} (event #{checkpoint.event_id}) does not match its signature: "
            "forged or altered"
        )
    return ""


def audit_verify_chain(*, batch_size: int = 5000, checkpoints: Iterable[AuditCheckpoint] = ()) -> ChainReport:
    """Walk the whole trail in id order and report the first problem.

    Checks each event's link to the previous one and its hash (keyed, or unkeyed only up to
    the head's ``legacy_until``), the signed chain head (the trail must end exactly where
    the head says, an empty trail needs a genesis head), and each given checkpoint: the
    event it names must still exist and still have the checkpointed hash.
    """
    checkpoints = sorted(checkpoints, key=lambda c: c.event_id)
    for checkpoint in checkpoints:
        problem = _checkpoint_problem(checkpoint)
        if problem:
            return ChainReport(0, None, problem)
    pending = deque(checkpoints)
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is None:
        return ChainReport(0, None, _head_problem(head))
    # A head that does not verify is reported after the walk, which can name an altered event
    # more precisely; its legacy_until cannot be trusted, but the report is a failure anyway.
    head_problem = _head_problem(head)
    prev = GENESIS_HASH
    checked = unkeyed = matched = 0
    last_id = 0
    key_ids: set[str] = set()
    newest: AuditCheckpoint | None = None
    # The first event after the newest matching checkpoint: a rewrite found by a later
    # checkpoint happened between the two.
    range_start: int | None = None

    def report(first_broken_id: int | None, reason: str) -> ChainReport:
        return ChainReport(checked, first_broken_id, reason, unkeyed, tuple(sorted(key_ids)), matched, newest)

    upto = head.last_event_id or 0
    while True:
        batch = list(AuditEvent.objects.filter(id__gt=last_id, id__lte=upto).order_by("id")[:batch_size])
        if not batch:
            # Events newer than the head read at the start: appended since (then the head moved
            # too, read it again and go on), or inserted behind the application's back.
            newer = AuditEvent.objects.filter(id__gt=upto).order_by("id").values_list("id", flat=True).first()
            if newer is None:
                break
            latest = AuditChainHead.objects.filter(pk=1).first()
            if latest is None:
                return report(None, _head_problem(latest))
            head_problem = head_problem or _head_problem(latest)
            if (latest.last_event_id or 0) <= upto:
                return report(newer, f"it comes after the chain head (#{upto}): it was inserted behind the application")
            head, upto = latest, latest.last_event_id
            continue
        for event in batch:
            if pending and pending[0].event_id < event.id:
                missing = pending[0]
                return report(
                    missing.event_id,
                    f"it is missing although the checkpoint {missing.source} of {missing.at} covers it (removed)",
                )
            if range_start is None:
                range_start = event.id
            if event.prev_hash != prev:
                return report(
                    event.id,
                    "its prev_hash does not match the previous event's hash "
                    "(an event before it was removed or altered)",
                )
            if not event.key_id:
                if event.id > head.legacy_until:
                    return report(
                        event.id,
                        f"it is not keyed although every event after #{head.legacy_until} is: "
                        "the row was altered and rehashed with the plain SHA-256",
                    )
                unkeyed += 1
            else:
                key_ids.add(event.key_id)
            try:
                expected = event_hash(event)
            except UnknownAuditKey as exc:
                return report(
                    event.id,
                    f"its hash is keyed with the audit key {exc.key_id!r}, which is not configured, so it cannot "
                    "be verified (keep retired keys in AUDIT_HMAC_RETIRED_KEYS)",
                )
            if not hmac.compare_digest(expected, event.hash):
                return report(event.id, "its content does not match its hash (the row was altered)")
            prev = event.hash
            checked += 1
            last_id = event.id
            while pending and pending[0].event_id == event.id:
                checkpoint = pending.popleft()
                if checkpoint.hash != event.hash:
                    return report(
                        range_start,
                        f"the trail up to #{event.id} no longer hashes to the value of checkpoint {checkpoint.source} "
                        f"of {checkpoint.at}: events #{range_start}-#{event.id} were rewritten",
                    )
                matched += 1
                newest = checkpoint
                range_start = None
    if pending:
        furthest = pending[-1]
        return report(
            last_id + 1,
            f"the trail ends at #{last_id} but checkpoint {furthest.source} of {furthest.at} covers events up to "
            f"#{furthest.event_id}: events #{last_id + 1}-#{furthest.event_id} are missing (removed)",
        )
    if head_problem:
        return report(None, head_problem)
    if head.unverified_since is not None:
        return report(
            head.unverified_since,
            f"when event #{head.unverified_since} was recorded the chain head did not verify (the head row had "
            "been altered in the database): the trail before it cannot be trusted",
        )
    if not checked and head.last_hash != GENESIS_HASH:
        return report(
            head.last_event_id,
            f"the trail is empty but the chain head holds the hash of event #{head.last_event_id}: "
            "every event was removed",
        )
    if head.last_hash != prev or (head.last_event_id or 0) != last_id:
        return report(
            head.last_event_id or last_id,
            f"the trail ends at #{last_id} but the chain head is at #{head.last_event_id}: "
            "the newest events were removed",
        )
    return report(None, "")


def audited_update(
    instance: models.Model,
    *,
    actor: Actor,
    action: str,
    changes: Mapping[str, Any],
    fields: Iterable[str] | None = None,
    organisation: Organisation | None = None,
    ip_address: str | None = None,
    clean: bool = True,
) -> bool:
    """Apply ``changes`` to ``instance``, validate, save, and audit the real before and after.

    The one way a service changes a row it has already loaded (and, where a race matters,
    locked with ``select_for_update``) inside its own ``transaction.atomic``: snapshot the
    audited ``fields``, set the attributes, ``full_clean`` (``ValidationError`` per field,
    nothing saved), save only the changed columns, and write one event. Nothing changed:
    nothing is saved or audited, and ``False`` is returned.
    """
    before = snapshot(instance, fields)
    changed = [name for name, value in changes.items() if getattr(instance, name) != value]
    if not changed:
        return False
    for name in changed:
        setattr(instance, name, changes[name])
    if clean:
        instance.full_clean()
    instance.save(update_fields=[instance._meta.get_field(name).attname for name in changed])
    after = snapshot(instance, fields)
    audit_record(
        actor=actor,
        action=action,
        obj=instance,
        organisation=organisation,
        before=before,
        after=after,
        ip_address=ip_address,
    )
    return True
