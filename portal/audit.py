"""The audit trail: snapshots, events chained by keyed hashes, checkpoints outside the database, verification,
and ``audited_update``, the one way to change a row with its before and after recorded."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from portal import audit_keys
from portal.audit_keys import UnknownAuditKey
from portal.models import AuditChainHead, AuditEvent, Organisation, User
from portal.queue import registered_task
from portal.types import Actor, AuditActor

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64


def actor_label(actor: AuditActor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, User):
        return actor.get_username()
    return str(actor)


#: Every field list ``snapshot`` has used in this process, by (model label, requested fields):
#: the resolved fields. A cache, and the record the test suite checks for secrets.
AUDITED_FIELD_LISTS: dict[tuple[str, tuple[str, ...] | None], tuple[models.Field[Any, Any], ...]] = {}


def audited_fields(
    model: type[models.Model], fields: Iterable[str] | None = None
) -> tuple[models.Field[Any, Any], ...]:
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
    names: tuple[str, ...] = requested if requested is not None else tuple(declared or ())
    try:
        found = [model._meta.get_field(name) for name in names]
    except Exception as exc:  # FieldDoesNotExist: a typo must not silently drop a field
        raise ImproperlyConfigured(f"{model._meta.label}: {exc}") from None
    resolved = cast("tuple[models.Field[Any, Any], ...]", tuple(found))  # the names are the model's own columns
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
    safe: dict[str, Any] = _json_safe(data)
    return safe


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


def head_problem(head: AuditChainHead | None) -> str:
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
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    object_type: str = ""
    object_id: str = ""
    object_repr: str = ""


def _organisation_of(obj: models.Model | None) -> int | None:
    if obj is None:
        return None
    if isinstance(obj, Organisation):
        return obj.pk
    for attr in ("provider_id", "organisation_id"):
        if getattr(obj, attr, None):
            found: int | None = getattr(obj, attr)
            return found
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


def audit_record_many(
    *, actor: AuditActor, entries: list[AuditEntry], ip_address: str | None = None
) -> list[AuditEvent]:
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
        problem = head_problem(head)
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
        fields: dict[str, Any] = {
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
    actor: AuditActor,
    action: str,
    obj: models.Model | None = None,
    organisation: Organisation | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    ip_address: str | None = None,
    object_repr: str = "",
) -> AuditEvent:
    """Append one event to the audit trail (inside the caller's transaction)."""
    entry = AuditEntry(
        action=action, obj=obj, organisation=organisation, before=before, after=after, object_repr=object_repr
    )
    return audit_record_many(actor=actor, entries=[entry], ip_address=ip_address)[0]


def _attname(instance: models.Model, name: str) -> str:
    field = instance._meta.get_field(name)
    assert isinstance(field, models.Field), f"{name} is not a concrete field"
    return field.attname


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
    instance.save(update_fields=[_attname(instance, name) for name in changed])
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
